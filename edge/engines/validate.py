"""Validate an engine before it is activated: the model's shipped validation set through the engine
and through the FP32 reference, compared output by output and verdict by verdict.

FP16 can break a U-Net silently (overflow past 65504 in a normalisation, a saturated sigmoid), so an
engine must show no NaN or Inf, masks that agree with FP32 per structure, the same view, and the
same QC outcome for every item, before any radiograph meets it.

Agreeing with FP32 proves the conversion, not the model: a model that sees nothing agrees with itself
perfectly. So the engine must also still segment the validation phantoms against their exact truth
(shipped in the same files): a floor far below the model's measured accuracy, which only a broken or
wrong model misses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray

from edge.engines.manifest import ModelManifest
from edge.imaging.preprocess import make_transform
from edge.imaging.radiograph import ExposureTags, Radiograph
from edge.inference.backend import Backend, ModelOutputs
from edge.qc.assess import assess
from edge.qc.confidence import Calibration
from edge.qc.segmentation import THRESHOLD
from edge.qc.standard import Standard
from edge.qc.structures import STRUCTURES

MIN_DICE_AGREEMENT: Final = 0.98
# Against the phantom truth, mean over structures and images: 0.1.0 and 0.2.0 reach 0.86 on these
# six validation phantoms (network resolution, thin structures included); a blind model gets 0.
MIN_TRUTH_DICE: Final = 0.75
MIN_TRUTH_VIEW_ACCURACY: Final = 0.8
# The validation inputs are network squares without their DICOM header: measure them at a nominal
# spacing (0.17 mm detector pixels over 43 cm -> 1.5 mm per network pixel at the spine plane).
NOMINAL_MM_PER_PX: Final = 1.5
# DI of 0 so that the exposure item is judged too (the tags travel with images, not with tensors).
NOMINAL_EXPOSURE: Final = ExposureTags(exposure_index=300.0, target_exposure_index=300.0, deviation_index=0.0)


@dataclass
class ValidationReport:
    engine: str
    reference: str
    images: int
    finite: bool
    dice_agreement: dict[str, float] = field(default_factory=dict)  # mean over images, per structure
    view_agreement: float = 0.0
    verdict_agreement: float = 0.0  # share of images with the same outcome for every QC item
    truth_dice: float = 0.0  # the engine's masks against the phantom truth, mean over structures and images
    truth_view_accuracy: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "passed": self.passed,
            "min_dice_agreement": MIN_DICE_AGREEMENT,
            "min_truth_dice": MIN_TRUTH_DICE,
            "min_truth_view_accuracy": MIN_TRUTH_VIEW_ACCURACY,
        }


def _dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * int((a & b).sum()) / total


def nominal_radiograph(image: NDArray[np.float32]) -> Radiograph:
    """A validation input as a radiograph: the network square itself, at the nominal spacing and
    exposure, no tags (the model decides the view), nothing clipped."""
    pixels = np.asarray(image, dtype=np.float32).reshape(image.shape[-2:])
    return Radiograph(
        pixels=pixels,
        pixel_spacing_mm=(NOMINAL_MM_PER_PX, NOMINAL_MM_PER_PX),
        spacing_source="PixelSpacing",
        stored=np.broadcast_to(np.uint16(1), pixels.shape),  # mid-range: nothing clipped
        stored_range=(0, 65535),
        view_position="",
        view_from_tags=None,
        oblique_side_from_tags=None,
        faces_left=False,
        modality="DX",
        body_part="",
        lumbar_examination=True,
        photometric="MONOCHROME2",
        exposure=NOMINAL_EXPOSURE,
        transfer_syntax="",
        sop_instance_uid="",
        resampled_to_square=False,
    )


def _outcomes(
    image: NDArray[np.float32], outputs: ModelOutputs, standard: Standard, calibration: Calibration
) -> dict[str, str]:
    """Every QC item's outcome for one network output, judged by the pipeline's own assessment step."""
    size = outputs.masks.shape[-1]
    verdict = assess(
        nominal_radiograph(image),
        outputs.masks,
        outputs.view,
        make_transform(size, size, size),
        standard,
        target_exposure_index={},
        versions={},
        calibration=calibration,
    ).verdict
    if not verdict.items:
        return {"(image)": f"{verdict.verdict}: {verdict.reason}"}
    return {"(image)": verdict.verdict, **{name: r.outcome for name, r in verdict.items.items()}}


def validation_inputs(manifest: ModelManifest) -> list[Path]:
    files = sorted((manifest.folder / "validation").glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"{manifest.folder / 'validation'}: the model ships no validation set")
    return files


def validate(manifest: ModelManifest, engine: Backend, reference: Backend, standard: Standard) -> ValidationReport:
    """Run the validation set through `engine` and `reference` (ONNX Runtime FP32) and compare."""
    files = validation_inputs(manifest)
    report = ValidationReport(engine.name, reference.name, len(files), True)
    dice: dict[str, list[float]] = {name: [] for name in STRUCTURES}
    truth_dice: dict[str, list[float]] = {name: [] for name in STRUCTURES}
    same_view = same_verdict = true_view = 0
    for path in files:
        with np.load(path) as data:
            image = np.asarray(data["image"], dtype=np.float32)
            truth = np.unpackbits(data["truth_masks"]).astype(bool).reshape((len(STRUCTURES), *image.shape[-2:]))
            defined, truth_view = np.asarray(data["defined"], dtype=bool), int(data["truth_view"])
        got, want = engine.infer(image), reference.infer(image)
        if not (np.isfinite(got.masks).all() and np.isfinite(got.view).all()):
            report.finite = False
            report.problems.append(f"{path.name}: NaN or Inf in the engine's outputs")
            continue
        for c, name in enumerate(STRUCTURES):
            d = _dice(got.masks[c] > THRESHOLD, want.masks[c] > THRESHOLD)
            if d is not None:
                dice[name].append(d)
            t = _dice(got.masks[c] > THRESHOLD, truth[c]) if defined[c] else None
            if t is not None:
                truth_dice[name].append(t)
        same_view += int(np.argmax(got.view) == np.argmax(want.view))
        true_view += int(np.argmax(got.view) == truth_view)
        limits = manifest.reading_confidence
        got_outcomes, want_outcomes = _outcomes(image, got, standard, limits), _outcomes(image, want, standard, limits)
        if got_outcomes == want_outcomes:
            same_verdict += 1
        else:
            differ = sorted(k for k in want_outcomes if got_outcomes.get(k) != want_outcomes[k])
            report.problems.append(f"{path.name}: QC outcomes differ from FP32 for {', '.join(differ)}")
    report.dice_agreement = {name: round(float(np.mean(v)), 4) for name, v in dice.items() if v}
    for name, value in report.dice_agreement.items():
        if value < MIN_DICE_AGREEMENT:
            report.problems.append(f"{name}: mask Dice agreement with FP32 {value:.4f} < {MIN_DICE_AGREEMENT}")
    report.view_agreement = same_view / len(files)
    report.verdict_agreement = same_verdict / len(files)
    if same_view != len(files):
        report.problems.append(f"view head disagrees with FP32 on {len(files) - same_view} of {len(files)} images")
    scored = [float(np.mean(v)) for v in truth_dice.values() if v]
    report.truth_dice = round(float(np.mean(scored)) if scored else 0.0, 4)
    report.truth_view_accuracy = round(true_view / len(files), 4)
    if report.truth_dice < MIN_TRUTH_DICE:
        report.problems.append(
            f"masks against the phantom truth: mean Dice {report.truth_dice:.3f} < {MIN_TRUTH_DICE} (a broken model)"
        )
    if report.truth_view_accuracy < MIN_TRUTH_VIEW_ACCURACY:
        report.problems.append(
            f"view against the phantom truth: {true_view} of {len(files)} right (< {MIN_TRUTH_VIEW_ACCURACY:.0%})"
        )
    return report
