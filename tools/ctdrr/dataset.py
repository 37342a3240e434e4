"""Generate a CT DRR set: DICOM files, masks, a manifest and an optional preview.

Image `index` uses view views[index % len(views)] of CT cts[(index // len(views)) % len(cts)] and
draws everything else from its own child of the seed (SeedSequence(seed, spawn_key=(index,))), so its
bytes depend only on (seed, index, cts, views, size). Renders of the held-out CT (`verse012`) are for
measurement only and must never be used for training.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

import edge
from edge.qc.structures import STRUCTURES, View
from tools.ctdrr import CT_NAMES, HELD_OUT_CTS, TRAINING_CTS
from tools.ctdrr.dicom import build_dataset, write_dicom
from tools.ctdrr.render import CtRendering, exposure_dict, render_random
from tools.ctdrr.volumes import licences, load_ct
from tools.phantom.dataset import parse_views, save_masks

DATA_NOTE: Final = (
    "Digitally reconstructed radiographs of real public CT volumes (../shared/data/ct) with exact projected "
    "labels; synthetic identifiers. Renders of held-out CTs are a measurement domain, never training data."
)


@dataclass(frozen=True)
class CtSetOptions:
    seed: int
    cts: tuple[str, ...] = TRAINING_CTS
    views: tuple[View, ...] = ("ap", "lateral", "oblique")
    size_px: int = 512


def parse_cts(text: str) -> tuple[str, ...]:
    cts = tuple(w.strip().lower() for w in text.split(",") if w.strip())
    unknown = [c for c in cts if c not in CT_NAMES]
    if unknown or not cts:
        raise ValueError(f"--cts: unknown CT {unknown} (use {', '.join(CT_NAMES)})")
    return cts


def image_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def choice(options: CtSetOptions, index: int) -> tuple[str, View]:
    """The CT and view of image `index`."""
    view = options.views[index % len(options.views)]
    ct = options.cts[(index // len(options.views)) % len(options.cts)]
    return ct, view


def generate(options: CtSetOptions, index: int) -> CtRendering:
    ct, view = choice(options, index)
    return render_random(ct, view, options.size_px, image_rng(options.seed, index))


def entry_of(r: CtRendering, index: int, name: str) -> dict[str, Any]:
    pose = r.pose
    return {
        "index": index,
        "file": f"images/{name}.dcm",
        "masks": f"masks/{name}.npz",
        "ct": r.ct,
        "held_out": r.ct in HELD_OUT_CTS,
        "view": pose.view,
        "view_class": pose.view_class,
        "projection": pose.projection,
        "view_position": pose.projection,
        "facing": pose.facing or None,
        "patient_orientation": pose.patient_orientation,
        "display_flipped": pose.mirrored,
        "pose": pose.as_dict(),
        "field_mm": r.field.as_dict(),
        "field_px": r.field_px,
        "rows": r.detector.rows,
        "columns": r.detector.cols,
        "imager_pixel_spacing_mm": r.detector.pitch_mm,
        "pixel_spacing_mm": r.pixel_spacing_mm,
        "labelled": [s for s, ok in zip(STRUCTURES, r.labelled, strict=True) if ok],
        "exposure": {
            **exposure_dict(r.exposure),
            "exposure_index": r.exposure_index,
            "deviation_index": r.deviation_index,
        },
        "render_seconds": round(r.seconds, 3),
    }


def generate_set(out: Path, count: int, options: CtSetOptions) -> Iterator[dict[str, Any]]:
    """Write `count` images under `out` (one process: the CTs are cached in it) and yield entries."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        r = generate(options, index)
        name = f"{index:04d}_{r.pose.projection}"
        ds = build_dataset(r, options.seed, index)
        write_dicom(ds, out / "images" / f"{name}.dcm")
        save_masks(out / "masks" / f"{name}.npz", r.masks)
        yield entry_of(r, index, name)


def write_manifest(out: Path, options: CtSetOptions, entries: list[dict[str, Any]]) -> Path:
    notes = {name: load_ct(name).notes for name in options.cts}
    manifest = {
        "generator": "edge-qc CT DRR (tools.ctdrr)",
        "note": DATA_NOTE,
        "version": edge.__version__,
        "seed": options.seed,
        "count": len(entries),
        "cts": list(options.cts),
        "training_cts": list(TRAINING_CTS),
        "held_out_cts": list(HELD_OUT_CTS),
        "views": list(options.views),
        "size_px": options.size_px,
        "structures": list(STRUCTURES),
        "licences": licences(),
        "label_derivation": notes,
        "images": entries,
    }
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1, default=_json_default))
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_preview(out: Path, entries: list[dict[str, Any]], limit: int = 18, height: int = 300) -> Path:
    """Contact sheet read back from the written files, with every mask's outline."""
    import pydicom

    from tools.phantom.dataset import load_masks
    from tools.phantom.preview import contact_sheet, display_image, tile

    tiles = []
    for e in entries[:limit]:
        ds = pydicom.dcmread(out / e["file"])
        grey = display_image(ds.pixel_array, str(ds.PhotometricInterpretation), (1 << int(ds.BitsStored)) - 1)
        caption = f"#{e['index']} {e['ct']} {e['projection']} {e['facing'] or ''} {ds.PatientOrientation[0]}"
        tiles.append(tile(grey, load_masks(out / e["masks"]), height, caption))
    path = out / "preview.png"
    contact_sheet(tiles).save(path)
    return path


__all__ = ["CtSetOptions", "generate", "generate_set", "parse_cts", "parse_views", "write_manifest", "write_preview"]
