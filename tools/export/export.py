"""Trained run -> engines/<model>/<version>/: model.onnx, manifest.json, validation/.

The ONNX graph has a fixed 1 x 1 x H x W float32 input named "image" and two named outputs: "masks"
(sigmoid probabilities, one channel per structure) and "view" (softmax over the view classes). The
manifest records everything a device needs to trust and use it: checksum, input spec and
preprocessing, channel names, training recipe and data seeds, size, FLOPs, and the evaluation.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

import edge
from edge.engines.store import sha256_of
from edge.imaging.preprocess import NORMALISE_PERCENTILES
from edge.qc.structures import STRUCTURE_VIEWS, STRUCTURES, VIEW_CLASSES
from tools.train.data import RENDER_PX, make_sample
from tools.train.model import ExportWrapper, ResUNet, conv_flops, parameter_count
from tools.train.provenance import data_provenance, model_note
from tools.train.train import Recipe, build_model

OPSET = 17
MODEL_NAME = "lumbar-resunet"
VALIDATION_SEED = 777_000  # the validation images that ship with the model (not a training seed)
VALIDATION_COUNT = 6


def load_run(run: Path) -> tuple[ResUNet, Recipe, dict[str, Any]]:
    state = torch.load(run / "last.pt", weights_only=False, map_location="cpu")
    recipe = Recipe(**state["recipe"])
    model = build_model(recipe)
    model.load_state_dict(state["model"])
    model.eval()
    return model, recipe, state


def training_seconds(run: Path) -> float | None:
    """Wall time of the training epochs (log.csv), without building the sample cache."""
    log = run / "log.csv"
    if not log.exists():
        return None
    with log.open() as f:
        return round(sum(float(row["seconds"]) for row in csv.DictReader(f)), 1)


# Largest difference allowed between ONNX Runtime's and PyTorch's FP32 outputs (probabilities): the
# two runtimes sum convolutions in different orders; 5e-4 moves no mask pixel across the threshold
# unless it already lay within 5e-4 of it (0.1.0 measured 1.6e-5, 0.2.0 1.9e-4).
EQUIVALENCE_LIMIT = 5e-4


def ort_session(path: Path, threads: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_run(run: Path, out: Path) -> dict[str, Any]:
    model, recipe, state = load_run(run)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    wrapper = ExportWrapper(model).eval()
    example = torch.zeros(1, 1, recipe.size, recipe.size)
    torch.onnx.export(
        wrapper,
        (example,),
        str(onnx_path),
        opset_version=OPSET,
        input_names=["image"],
        output_names=["masks", "view"],
        dynamo=False,
        do_constant_folding=True,
    )
    onnx.checker.check_model(onnx.load(str(onnx_path)), full_check=True)

    # equivalence: ONNX Runtime against PyTorch (FP32) on real phantom inputs
    session = ort_session(onnx_path)
    validation = out / "validation"
    validation.mkdir(exist_ok=True)
    max_diff = 0.0
    for i in range(VALIDATION_COUNT):
        image, masks, defined, view = make_sample(VALIDATION_SEED, i, recipe.size, RENDER_PX)
        x = (image.astype(np.float32) / 255.0)[None, None]
        with torch.no_grad():
            torch_masks, torch_view = (t.numpy() for t in wrapper(torch.from_numpy(x)))
        ort_masks, ort_view = session.run(["masks", "view"], {"image": x})
        max_diff = max(
            max_diff, float(np.abs(ort_masks - torch_masks).max()), float(np.abs(ort_view - torch_view).max())
        )
        np.savez_compressed(
            validation / f"{i:02d}.npz",
            image=x,
            reference_masks=np.packbits(ort_masks[0] > 0.5),
            reference_view=ort_view[0],
            truth_masks=np.packbits(masks > 127),
            defined=defined,
            truth_view=np.int64(view),
        )
    if max_diff > EQUIVALENCE_LIMIT:
        raise RuntimeError(f"ONNX Runtime differs from PyTorch by {max_diff:.2e} (limit {EQUIVALENCE_LIMIT:.0e})")

    manifest = {
        "name": MODEL_NAME,
        "version": out.name,
        "created_by": f"edge-qc {edge.__version__} tools.export",
        "created_unix": int(time.time()),
        "note": model_note(recipe),
        "file": onnx_path.name,
        "sha256": sha256_of(onnx_path),
        "bytes": onnx_path.stat().st_size,
        "opset": OPSET,
        "input": {"name": "image", "shape": [1, 1, recipe.size, recipe.size], "dtype": "float32"},
        "outputs": [
            {
                "name": "masks",
                "shape": [1, len(STRUCTURES), recipe.size, recipe.size],
                "dtype": "float32",
                "activation": "sigmoid",
                "threshold": 0.5,
                "channels": list(STRUCTURES),
            },
            {
                "name": "view",
                "shape": [1, len(VIEW_CLASSES)],
                "dtype": "float32",
                "activation": "softmax",
                "classes": list(VIEW_CLASSES),
            },
        ],
        "structure_views": {name: sorted(STRUCTURE_VIEWS[name]) for name in STRUCTURES},
        "preprocessing": {
            "function": "edge.imaging.preprocess.preprocess",
            "display": "Modality LUT, VOI LUT/window, MONOCHROME1 inverted (edge.dicom.decode.display_pixels)",
            "size": recipe.size,
            "resample": "area, aspect preserved, centred, zero padding",
            "normalise_percentiles": list(NORMALISE_PERCENTILES),
        },
        "training": {
            "recipe": state["recipe"],
            "train_seed": recipe.train_seed,
            "validation_seed": recipe.validation_seed,
            "epochs_completed": int(state["epoch"]) + 1,
            "epoch_wall_seconds": training_seconds(run),
            "validation_metrics": state.get("metrics", {}),
            "data": data_provenance(recipe),
        },
        "parameters": parameter_count(model),
        "flops_per_image": conv_flops(model, recipe.size),
        "export_check": {"onnxruntime_vs_pytorch_max_abs_diff": max_diff},
        "validation_set": {"seed": VALIDATION_SEED, "count": VALIDATION_COUNT, "folder": "validation"},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
