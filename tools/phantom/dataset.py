"""Generate a phantom set: DICOM files, masks and one JSON manifest with the truth of every image.

Each image draws from its own child of the set's seed (numpy SeedSequence spawn key = index), so an
image's bytes depend only on (seed, index, options): parallel workers and larger counts reproduce
the same files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

import edge
from edge.qc.standard import Standard, load_standard
from edge.qc.structures import LUMBAR_LEVELS, STRUCTURE_VIEWS, STRUCTURES, View
from tools.phantom.acquisition import OBLIQUE_SIDE, Acquisition, sample_acquisition
from tools.phantom.anatomy import Anatomy, PatientParams, build_anatomy, sample_patient
from tools.phantom.dicom_io import COMPRESSIONS, Compression, ImageIdentity, build_dataset, write_dicom
from tools.phantom.raycast import project_points
from tools.phantom.render import Rendering, render
from tools.phantom.truth import effective_obliquity, evaluate, summarise

VIEW_ALIASES: Final[dict[str, View]] = {
    "ap": "ap",
    "pa": "ap",
    "lat": "lateral",
    "lateral": "lateral",
    "obl": "oblique",
    "oblique": "oblique",
}
LANDMARKS: Final = tuple(
    [f"body.{lv}.centre" for lv in ("T12", *LUMBAR_LEVELS)]
    + [f"pedicle.{lv}.{side}.centre" for lv in LUMBAR_LEVELS for side in ("left", "right")]
    + [f"spinous.{lv}.centre" for lv in LUMBAR_LEVELS]
    + ["pelvis.si_joint.left.centre", "pelvis.si_joint.right.centre"]
)


@dataclass(frozen=True)
class SetOptions:
    seed: int
    views: tuple[View, ...] = ("ap", "lateral", "oblique")
    fault_rate: float = 0.5
    size_px: int = 2500
    compression: Compression | str = "none"  # or "mixed": cycles through every lossless syntax


@dataclass
class PhantomImage:
    """One generated image with everything needed to write it or to test against it."""

    index: int
    patient: PatientParams
    acquisition: Acquisition
    anatomy: Anatomy
    rendering: Rendering
    entry: dict[str, Any]


def parse_views(text: str) -> tuple[View, ...]:
    views = []
    for word in text.split(","):
        key = word.strip().lower()
        if key not in VIEW_ALIASES:
            raise ValueError(f"--views: unknown view {word!r} (use ap, lat, obl)")
        views.append(VIEW_ALIASES[key])
    return tuple(views)


def view_class(acq: Acquisition) -> str:
    """The label of the model's view head: ap, lateral, oblique_left, oblique_right."""
    if acq.view == "oblique":
        return f"oblique_{OBLIQUE_SIDE[acq.projection]}"
    return acq.view


def image_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def generate_image(
    options: SetOptions,
    index: int,
    standard: Standard | None = None,
    patient: PatientParams | None = None,
    acquisition: Acquisition | None = None,
) -> PhantomImage:
    """Sample (unless given), build, render and judge image `index` of the set."""
    standard = standard or load_standard()
    rng = image_rng(options.seed, index)
    view = options.views[index % len(options.views)]
    sampled_patient = sample_patient(rng)
    sampled_acq = sample_acquisition(rng, view, options.fault_rate)
    patient = patient or sampled_patient
    acq = acquisition or sampled_acq
    anatomy = build_anatomy(patient, acq.lordosis_factor)
    rendering = render(anatomy, acq, options.size_px, rng)
    items = evaluate(anatomy, acq, rendering, standard)
    summary = summarise(items, standard, acq.view)
    entry = {
        "index": index,
        "view": acq.view,
        "projection": acq.projection,
        "view_class": view_class(acq),
        "faults": list(acq.faults),
        "rows": rendering.detector.rows,
        "columns": rendering.detector.cols,
        "imager_pixel_spacing_mm": rendering.detector.pitch_mm,
        "pixel_spacing_mm": rendering.detector.pitch_mm / rendering.pose.magnification,
        "magnification": rendering.pose.magnification,
        "display_flipped": rendering.display_flipped,
        "photometric": acq.photometric,
        "bits_stored": acq.bits_stored,
        "exposure": {
            "exposure_index": rendering.exposure_index,
            "target_exposure_index": acq.target_ei,
            "deviation_index": rendering.deviation_index,
            "clipped_fraction": rendering.clipped_fraction,
        },
        "angles": {
            "rotation_deg": acq.rotation_deg,
            "obliquity_deg": effective_obliquity(acq) if acq.view == "oblique" else 0.0,
            "tilt_deg": acq.tilt_deg,
            "pelvis_rotation_deg": acq.pelvis_rotation_deg,
            "tube_angle_deg": acq.tube_angle_deg,
        },
        "field_px": _field_px(rendering),
        "landmarks_px": _landmarks_px(anatomy, rendering),
        "qc": {**summary, "items": {name: t.as_dict() for name, t in items.items()}},
        "acquisition": _jsonable(acq.as_dict()),
        "patient": _jsonable(patient.as_dict()),
    }
    return PhantomImage(index, patient, acq, anatomy, rendering, entry)


def _to_pixels(r: Rendering, xy_mm: NDArray[np.float64]) -> NDArray[np.float64]:
    px = r.detector.to_pixel(xy_mm)
    if r.display_flipped:
        px[..., 0] = r.detector.cols - 1 - px[..., 0]
    return px


def _field_px(r: Rendering) -> list[float]:
    corners = _to_pixels(r, np.array([[r.field.x0, r.field.y0], [r.field.x1, r.field.y1]]))
    return [round(float(v), 2) for v in (min(corners[:, 0]), max(corners[:, 0]), corners[0, 1], corners[1, 1])]


def _landmarks_px(anatomy: Anatomy, r: Rendering) -> dict[str, list[float]]:
    out = {}
    for name in LANDMARKS:
        lab = r.pose.to_lab(anatomy.points[name], pelvis=name.startswith("pelvis."))
        px = _to_pixels(r, project_points(lab, r.pose.source)).mean(axis=0)
        out[name] = [round(float(px[0]), 3), round(float(px[1]), 3)]
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_masks(path: Path, masks: dict[str, NDArray[np.bool_]]) -> None:
    """Bit-packed, zlib-compressed masks; load with `load_masks`."""
    shape = next(iter(masks.values())).shape
    packed = {name: np.packbits(m, axis=None) for name, m in masks.items()}
    arrays: dict[str, Any] = {"__shape__": np.array(shape), **packed}
    np.savez_compressed(path, **arrays)


def load_masks(path: Path) -> dict[str, NDArray[np.bool_]]:
    with np.load(path) as data:
        shape = tuple(int(v) for v in data["__shape__"])
        n = shape[0] * shape[1]
        return {
            name: np.unpackbits(data[name], count=n).astype(bool).reshape(shape)
            for name in data.files
            if name != "__shape__"
        }


def compression_for(options: SetOptions, index: int) -> Compression:
    if options.compression == "mixed":
        names = list(COMPRESSIONS)
        return names[index % len(names)]  # type: ignore[return-value]
    if options.compression not in COMPRESSIONS:
        raise ValueError(f"--compression: unknown {options.compression!r} (use {', '.join(COMPRESSIONS)}, mixed)")
    return options.compression  # type: ignore[return-value]


def image_dataset(image: PhantomImage, seed: int) -> Dataset:
    """The DICOM dataset a modality would send for this image (uncompressed, no file meta)."""
    r, acq = image.rendering, image.acquisition
    half_lat, half_ap = image.anatomy.trunk_half_mm
    thickness = 2 * (half_lat if acq.view == "lateral" else half_ap)
    return build_dataset(
        r.stored,
        acq,
        ImageIdentity(seed, image.index),
        r.detector.pitch_mm,
        r.pose.magnification,
        r.exposure_index,
        r.window_centre,
        r.window_width,
        image.patient.sex,
        thickness,
    )


def write_image(image: PhantomImage, out: Path, options: SetOptions) -> dict[str, Any]:
    acq = image.acquisition
    ds = image_dataset(image, options.seed)
    compression = compression_for(options, image.index)
    name = f"{image.index:04d}_{acq.projection}"
    write_dicom(ds, out / "images" / f"{name}.dcm", compression)
    save_masks(out / "masks" / f"{name}.npz", image.rendering.masks)
    entry = dict(image.entry)
    entry.update(
        {
            "file": f"images/{name}.dcm",
            "masks": f"masks/{name}.npz",
            "transfer_syntax": str(COMPRESSIONS[compression]),
            "sop_instance_uid": str(ds.SOPInstanceUID),
            "exposure_tags": {
                "ExposureIndex": float(ds.ExposureIndex),
                "TargetExposureIndex": float(ds.TargetExposureIndex),
                "DeviationIndex": float(ds.DeviationIndex),
            },
        }
    )
    return entry


def _make_and_write(args: tuple[SetOptions, int, str]) -> dict[str, Any]:
    options, index, out = args
    image = generate_image(options, index)
    return write_image(image, Path(out), options)


def generate_set(out: Path, count: int, options: SetOptions, workers: int | None = None) -> Iterator[dict[str, Any]]:
    """Write `count` images under `out` and yield each manifest entry as it is done (in order)."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    compression_for(options, 0)  # validate before spawning workers
    jobs = [(options, i, str(out)) for i in range(count)]
    workers = workers or min(os.cpu_count() or 1, count) or 1
    if workers == 1:
        for job in jobs:
            yield _make_and_write(job)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_make_and_write, jobs)


def write_manifest(out: Path, options: SetOptions, entries: list[dict[str, Any]], standard: Standard) -> Path:
    manifest = {
        "generator": "edge-qc lumbar phantom (digitally reconstructed radiographs)",
        "note": "Synthetic phantom data with exact ground truth; not clinical images.",
        "version": edge.__version__,
        "seed": options.seed,
        "count": len(entries),
        "size_px": options.size_px,
        "views": list(options.views),
        "fault_rate": options.fault_rate,
        "compression": options.compression,
        "standard": {"name": standard.name, "version": standard.version},
        "structures": list(STRUCTURES),
        "structure_views": {name: sorted(STRUCTURE_VIEWS[name]) for name in STRUCTURES},
        "images": entries,
    }
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1, sort_keys=False, allow_nan=False, default=_json_default))
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
