"""The mixed-precision recipe: FP16 body, FP32 inputs and outputs, the output layers kept in FP32.

TensorRT 10.12+ deprecates (and 11 removes) the builder's FP16 flag; the portable path is an ONNX
model converted to mixed precision offline and built as a strongly typed network. The same converted
model runs on ONNX Runtime, so the cost of FP16 is measured before any device sees it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def output_layers(model: Any, depth: int = 2) -> list[str]:
    """Names of the nodes within `depth` steps of a graph output (final conv, sigmoid, softmax...)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    frontier = [o.name for o in model.graph.output]
    names: list[str] = []
    for _ in range(depth):
        next_frontier = []
        for tensor in frontier:
            node = producers.get(tensor)
            if node is not None and node.name not in names:
                names.append(node.name)
                next_frontier.extend(node.input)
        frontier = next_frontier
    return names


def to_mixed_precision(model: Any) -> Any:
    """An ONNX ModelProto in FP16 except its inputs, outputs and output layers (needs onnxconverter-common)."""
    import warnings

    from onnxconverter_common import float16

    with warnings.catch_warnings():  # tiny weights rounding to FP16's smallest normal: expected, not news
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, node_block_list=output_layers(model), disable_shape_infer=False
        )
    return _float32_outputs(converted)


def _float32_outputs(model: Any) -> Any:
    """Make the graph outputs FP32 again. With the output layers blocked (kept FP32), the converter
    ends each output with a Cast to FP16 despite keep_io_types; that Cast becomes FP32 -> FP32."""
    from onnx import TensorProto

    outputs = {o.name: o for o in model.graph.output}
    for node in model.graph.node:
        if node.op_type == "Cast" and node.output and node.output[0] in outputs:
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == TensorProto.FLOAT16:
                    attribute.i = TensorProto.FLOAT
    for output in model.graph.output:
        if output.type.tensor_type.elem_type == TensorProto.FLOAT16:
            output.type.tensor_type.elem_type = TensorProto.FLOAT
    return model


def write_mixed_precision(source: Path, target: Path) -> None:
    """Convert the ONNX model at `source` (FP32) to mixed precision and save it as `target`."""
    import onnx

    onnx.save(to_mixed_precision(onnx.load(str(source))), str(target))
