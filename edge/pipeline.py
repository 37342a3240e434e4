"""One image from bytes to verdict: decode -> preprocess -> infer -> measure -> judge.

`edge-qc check` and the daemon both call `Pipeline.process`; there is no second path that could
drift. Every stage is timed, and every way an image can go wrong ends in a verdict (rejected or
indeterminate with a reason), never in an exception the caller has to interpret.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

import edge
from edge.config import Config
from edge.dicom.decode import Radiograph, Rejection, decode, read_dataset
from edge.engines.manifest import ModelManifest, load_manifest
from edge.imaging.preprocess import Transform, preprocess
from edge.inference.backend import Backend, ModelOutputs, open_with_fallback
from edge.qc.judge import ItemResult, judge
from edge.qc.measure import Context, Measurement, Spine, anatomy_mask, measure_all
from edge.qc.segmentation import Segmentation, field_box
from edge.qc.standard import Standard, site_standard
from edge.qc.structures import VIEW_CLASSES, View, view_of_class
from edge.qc.verdict import Verdict, ViewInfo

# The model's view head decides the view when at least this sure; below it, the DICOM tags do.
VIEW_CONFIDENCE: Final = 0.8
# Without any pixel spacing, millimetres come from the anatomy: adult lumbar vertebrae repeat every
# ~35 mm (body 25-28 mm plus disc 8-11 mm), to within about 15 %.
LUMBAR_SEGMENT_MM: Final = 35.0

_TAG_VIEWS: Final[dict[str, View]] = {
    "AP": "ap",
    "PA": "ap",
    "LL": "lateral",
    "RL": "lateral",
    "LAT": "lateral",
    "LATERAL": "lateral",
    "LPO": "oblique",
    "RPO": "oblique",
    "LAO": "oblique",
    "RAO": "oblique",
    "OBL": "oblique",
    "OBLIQUE": "oblique",
}
# Body Part Examined values under which a lumbar spine may be filed (DICOM CID 4031 terms and the
# free text modalities write); anything else explicitly named is another examination.
LUMBAR_BODY_PARTS: Final = frozenset(
    {
        "",
        "LSPINE",
        "L SPINE",
        "L-SPINE",
        "LUMBAR",
        "LUMBARSPINE",
        "LUMBAR SPINE",
        "SPINE",
        "TLSPINE",
        "LSSPINE",
        "SSPINE",
        "SACRUM",
        "ABDOMEN",
        "PELVIS",
        "BACK",
        "TSPINE LSPINE",
    }
)
_TAG_SIDES: Final = {"LPO": "left", "RAO": "left", "RPO": "right", "LAO": "right"}


def faces_left(radiograph: Radiograph) -> bool:
    """A lateral shown with the patient's front on the image's left (Patient Orientation's row
    direction "P"): the model reads it mirrored to the orientation it knows best (front on the right)
    and its masks are mirrored back, so measurements see the image as it is."""
    return radiograph.patient_orientation[0].upper().startswith("P")


def view_from_tags(radiograph: Radiograph) -> tuple[View | None, str | None]:
    """The view (and oblique side) the modality recorded: View Position, else the view code's meaning."""
    position = radiograph.view_position.replace(" ", "")
    if position in _TAG_VIEWS:
        return _TAG_VIEWS[position], _TAG_SIDES.get(position)
    meaning = radiograph.view_code.lower()
    if "oblique" in meaning:
        side = "left" if "left posterior" in meaning or "right anterior" in meaning else None
        side = "right" if "right posterior" in meaning or "left anterior" in meaning else side
        return "oblique", side
    if "lateral" in meaning:
        return "lateral", None
    if "antero-posterior" in meaning or "postero-anterior" in meaning:
        return "ap", None
    return None, None


def clipped_fraction(radiograph: Radiograph, transform: Transform, anatomy: NDArray[np.bool_]) -> float | None:
    """Share of the anatomy's image pixels at the detector's limits. The network-grid anatomy mask is
    mapped onto the image inside its bounding box only (nearest neighbour), so a 2,500-pixel image
    costs a few milliseconds."""
    if not anatomy.any():
        return None
    if not radiograph.clipped.any():
        return 0.0
    rows, cols = np.flatnonzero(anatomy.any(axis=1)), np.flatnonzero(anatomy.any(axis=0))
    corners = transform.to_image(np.array([[cols[0] - 0.5, rows[0] - 0.5], [cols[-1] + 0.5, rows[-1] + 0.5]]))
    c0, r0 = (max(int(np.floor(v)), 0) for v in corners[0])
    c1 = min(int(np.ceil(corners[1][0])), radiograph.shape[1] - 1)
    r1 = min(int(np.ceil(corners[1][1])), radiograph.shape[0] - 1)
    img_cols, img_rows = np.arange(c0, c1 + 1), np.arange(r0, r1 + 1)
    net_cols = np.clip(
        np.rint((img_cols + 0.5) * transform.scale_x + transform.offset_x - 0.5), 0, anatomy.shape[1] - 1
    )
    net_rows = np.clip(
        np.rint((img_rows + 0.5) * transform.scale_y + transform.offset_y - 0.5), 0, anatomy.shape[0] - 1
    )
    inside = anatomy[np.ix_(net_rows.astype(int), net_cols.astype(int))]
    if not inside.any():
        return None
    return float(radiograph.clipped[r0 : r1 + 1, c0 : c1 + 1][inside].mean())


@dataclass(frozen=True)
class Result:
    """A verdict and what made it (for overlays and evaluation; the daemon publishes the verdict only)."""

    verdict: Verdict
    radiograph: Radiograph | None = None
    segmentation: Segmentation | None = None
    measurements: dict[str, Measurement] | None = None


class Pipeline:
    def __init__(self, config: Config, backend: Backend | None = None) -> None:
        self.config = config
        self.standard: Standard = site_standard(config.qc, config.source)
        self.manifest: ModelManifest = load_manifest(config.model.path)
        self.degraded = ""
        if backend is None:
            opened = open_with_fallback(
                config.model.backend,
                config.model.engine or self.manifest.model_path,
                self.manifest.model_path,
                config.model.threads,
                config.model.fallback,
            )
            backend, self.degraded = opened.backend, opened.degraded
        self.backend = backend
        self.backend.warm_up()
        described = self.backend.describe()
        self.versions = {
            "edge_qc": edge.__version__,
            "model": self.manifest.label,
            "engine": f"{described['name']} {described['precision']} on {described['device']}"
            f" ({self.manifest.file} sha256:{self.manifest.sha256[:16]})",
            "backend": str(described["name"]),
            "precision": str(described["precision"]),
            "standard": f"{self.standard.name} {self.standard.version}",
        }

    def close(self) -> None:
        self.backend.close()

    def _notes(self) -> list[str]:
        return [f"degraded: {self.degraded}; judged with ONNX Runtime on the CPU"] if self.degraded else []

    def _rejected(self, exc: Rejection, timings: dict[str, float]) -> Result:
        verdict = Verdict.rejected(
            reason=exc.message,
            code=exc.reason,
            versions=self.versions,
            notes=self._notes(),
            timings_ms=timings,
            degraded=bool(self.degraded),
        )
        return Result(verdict)

    def process(self, source: bytes | Path | str | Dataset) -> Result:
        timings: dict[str, float] = {}
        start = t = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal t
            now = time.perf_counter()
            timings[stage] = (now - t) * 1000
            t = now

        try:
            ds = source if isinstance(source, Dataset) else read_dataset(source)
            radiograph = decode(ds)
        except Rejection as exc:
            lap("decode")
            timings["total"] = (time.perf_counter() - start) * 1000
            return self._rejected(exc, timings)
        lap("decode")
        net_input, transform = preprocess(radiograph.pixels, self.manifest.input_size)
        mirrored = faces_left(radiograph)
        if mirrored:
            net_input = np.ascontiguousarray(net_input[..., ::-1])
        lap("preprocess")
        outputs = self.backend.infer(net_input)
        if mirrored:
            outputs = ModelOutputs(np.ascontiguousarray(outputs.masks[..., ::-1]), outputs.view)
        lap("infer")

        image = {
            "sop_instance_uid": radiograph.sop_instance_uid,
            "rows": radiograph.shape[0],
            "columns": radiograph.shape[1],
            "modality": radiograph.modality,
            "view_position": radiograph.view_position,
            "photometric": radiograph.photometric,
            "transfer_syntax": radiograph.transfer_syntax,
            "pixel_spacing_mm": None if radiograph.pixel_spacing_mm is None else radiograph.pixel_spacing_mm[0],
            "spacing_source": radiograph.spacing_source,
        }
        notes = self._notes()
        if radiograph.resampled_to_square:
            notes.append("non-square pixels were resampled to square before measuring")
        spacing = radiograph.pixel_spacing_mm[0] if radiograph.pixel_spacing_mm else None
        seg = Segmentation(outputs.masks, outputs.view, transform, (spacing or 1.0) / transform.scale_x)
        if spacing is None:
            seg, estimated = self._spacing_from_anatomy(seg, notes)
            image["spacing_source"] = "anatomy (estimated)" if estimated else "unknown"
        elif radiograph.spacing_source == "ImagerPixelSpacing":
            notes.append("no calibrated Pixel Spacing: millimetres are at the detector (about 10-20 % larger)")

        view_info = self._view(radiograph, seg)

        def indeterminate(reason: str, code: str, measurements: dict[str, Measurement] | None = None) -> Result:
            lap("measure")
            timings["total"] = (time.perf_counter() - start) * 1000
            verdict = Verdict.indeterminate(
                reason=reason,
                code=code,
                view=view_info,
                image=image,
                versions=self.versions,
                notes=notes,
                timings_ms=timings,
                degraded=bool(self.degraded),
            )
            return Result(verdict, radiograph, seg, measurements)

        if radiograph.body_part not in LUMBAR_BODY_PARTS:
            return indeterminate(
                f"not a lumbar spine examination (Body Part Examined {radiograph.body_part})", "not_lumbar_spine"
            )
        if view_info.judged is None:
            return indeterminate("view unknown: neither the DICOM tags nor the model identify it", "view_unknown")
        if view_info.agree is False:
            notes.append(
                f"view disagreement: DICOM says {view_info.from_tags}, the image looks like {view_info.from_model}"
                f" ({view_info.model_confidence:.2f}); judged as {view_info.judged}"
            )
        view: View = view_info.judged  # type: ignore[assignment]
        anatomy = anatomy_mask(seg, view, field_box(seg))
        target = self.config.qc.target_exposure_index.get(view)
        ctx = Context(
            view=view,
            oblique_side=view_info.oblique_side or "",
            exposure=radiograph.exposure,
            clipped_fraction=clipped_fraction(radiograph, transform, anatomy),
            target_exposure_index=target,
            image=radiograph.pixels,
            image_spacing_mm=seg.mm_per_px * transform.scale_x,
        )
        measurements, reason = measure_all(seg, self.standard, ctx)
        if reason:
            return indeterminate(reason, "not_lumbar_spine", measurements)
        lap("measure")
        results: dict[str, ItemResult] = judge(measurements, self.standard, view)
        lap("judge")
        timings["total"] = (time.perf_counter() - start) * 1000
        verdict = Verdict.judged(
            items=results,
            view=view_info,
            image=image,
            versions=self.versions,
            notes=notes,
            timings_ms=timings,
            degraded=bool(self.degraded),
        )
        return Result(verdict, radiograph, seg, measurements)

    def _view(self, radiograph: Radiograph, seg: Segmentation) -> ViewInfo:
        tag_view, tag_side = view_from_tags(radiograph)
        probabilities = seg.view_probabilities
        model_class = VIEW_CLASSES[int(np.argmax(probabilities))]
        confidence = float(np.max(probabilities))
        model_view = view_of_class(model_class)
        judged: View | None = model_view if confidence >= VIEW_CONFIDENCE else tag_view
        agree = None if tag_view is None else tag_view == model_view
        side = None
        if judged == "oblique":
            side = model_class.split("_")[1] if model_view == "oblique" else tag_side
        return ViewInfo(judged, tag_view, model_class, confidence, agree, side)

    def _spacing_from_anatomy(self, seg: Segmentation, notes: list[str]) -> tuple[Segmentation, bool]:
        spine = Spine(seg)
        levels = spine.lumbar_levels
        if len(levels) < 3:
            return seg, False
        centres = np.stack([spine.centres[lv] for lv in levels])
        pitch_px = float(np.median(np.linalg.norm(np.diff(centres, axis=0), axis=1)))
        notes.append(
            f"pixel spacing unknown: millimetres estimated from the vertebral spacing (~{LUMBAR_SEGMENT_MM:g} mm)"
        )
        return Segmentation(
            seg.probabilities, seg.view_probabilities, seg.transform, LUMBAR_SEGMENT_MM / pitch_px
        ), True


class ReloadingPipeline:
    """A pipeline that follows the engines directory's `current` pointer between images.

    Before each image it resolves the configured model path; when an activation (or rollback) has
    moved it, the new version is loaded and warmed up beside the running one and swapped in only
    once it works. If it fails, the running version keeps serving, and every verdict says which
    activation failed and why, until the pointer moves again (as Triton's model control does)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._pipeline = Pipeline(config)
        self._serving = self._resolved()
        self._tried = self._serving
        self.problem = ""

    def _resolved(self) -> Path:
        return self.config.model.path.resolve()

    @property
    def serving(self) -> str:
        return self._pipeline.manifest.label

    @property
    def versions(self) -> dict[str, str]:
        return self._pipeline.versions

    def check_activation(self) -> None:
        target = self._resolved()
        if target == self._tried:
            return
        self._tried = target
        try:
            candidate = Pipeline(self.config)
        except Exception as exc:  # whatever a broken version throws, the running one keeps serving
            self.problem = f"activation of {target.name} failed ({exc}); still serving {self.serving}"
            return
        old, self._pipeline, self._serving, self.problem = self._pipeline, candidate, target, ""
        old.close()

    def process(self, source: bytes | Path | str | Dataset) -> Result:
        self.check_activation()
        result = self._pipeline.process(source)
        if self.problem:
            return dataclasses.replace(result, verdict=result.verdict.with_note(self.problem))
        return result

    def close(self) -> None:
        self._pipeline.close()
