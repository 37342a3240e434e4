"""A contact sheet for a person to look at: each image with its structure outlines and verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from scipy import ndimage

COLOURS: Final[dict[str, tuple[int, int, int]]] = {
    "field": (255, 255, 0),
    "sacrum": (255, 128, 0),
    "pedicle_left": (0, 255, 0),
    "pedicle_right": (0, 160, 255),
    "spinous_process": (255, 0, 255),
    "transverse_process": (0, 255, 255),
    "si_joint_left": (255, 80, 80),
    "si_joint_right": (255, 80, 80),
    "iliac_crest": (200, 200, 0),
    "disc": (120, 120, 255),
    "foramen": (255, 255, 255),
    "articular_process": (255, 60, 160),
}
BODY_COLOUR: Final = (255, 40, 40)


def display_image(stored: NDArray[np.uint16], photometric: str, max_value: int) -> NDArray[np.uint8]:
    """Stored values -> 8-bit greyscale as displayed (MONOCHROME1 inverted)."""
    grey = stored.astype(np.float32) / max_value
    if photometric == "MONOCHROME1":
        grey = 1.0 - grey
    return np.asarray(np.clip(grey * 255, 0, 255), dtype=np.uint8)


def tile(grey: NDArray[np.uint8], masks: dict[str, NDArray[np.bool_]], height: int, caption: str) -> Image.Image:
    """The exposed field (plus a margin) at `height` pixels, each structure's outline in its colour."""
    field = masks.get("field")
    rows, cols = (
        (np.flatnonzero(field.any(axis=1)), np.flatnonzero(field.any(axis=0)))
        if field is not None and field.any()
        else (np.arange(grey.shape[0]), np.arange(grey.shape[1]))
    )
    pad = grey.shape[0] // 40
    r0, r1 = max(rows[0] - pad, 0), min(rows[-1] + pad + 1, grey.shape[0])
    c0, c1 = max(cols[0] - pad, 0), min(cols[-1] + pad + 1, grey.shape[1])
    step = max(1, (r1 - r0) // height)
    small = grey[r0:r1:step, c0:c1:step]
    rgb = np.repeat(small[:, :, None], 3, axis=2).astype(np.uint8)
    for name, mask in masks.items():
        m = mask[r0:r1:step, c0:c1:step]
        edge = m & ~ndimage.binary_erosion(m)
        rgb[edge] = BODY_COLOUR if name.startswith("body_") else COLOURS.get(name, (255, 255, 255))
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, image.width, 12), fill=(0, 0, 0))
    draw.text((2, 1), caption, fill=(255, 255, 255))
    return image


def contact_sheet(tiles: list[Image.Image], columns: int = 6) -> Image.Image:
    w = max(t.width for t in tiles)
    h = max(t.height for t in tiles)
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * w, rows * h), (32, 32, 32))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % columns) * w, (i // columns) * h))
    return sheet


def caption(entry: dict[str, Any]) -> str:
    qc = entry["qc"]
    failed = ",".join(qc["failed_items"]) or "-"
    return f"#{entry['index']} {entry['projection']} {qc['verdict'].upper()} {failed}"[:48]


def write_preview(path: Path, tiles: list[Image.Image]) -> None:
    contact_sheet(tiles).save(path)


def preview_from_set(out: Path, entries: list[dict[str, Any]], limit: int = 16, height: int = 320) -> Path:
    """Read the written files back (as a viewer would) and draw the first `limit` images."""
    import pydicom

    from tools.phantom.dataset import load_masks

    tiles = []
    for entry in entries[:limit]:
        ds = pydicom.dcmread(out / entry["file"])
        grey = display_image(ds.pixel_array, str(ds.PhotometricInterpretation), (1 << int(ds.BitsStored)) - 1)
        tiles.append(tile(grey, load_masks(out / entry["masks"]), height, caption(entry)))
    path = out / "preview.png"
    write_preview(path, tiles)
    return path
