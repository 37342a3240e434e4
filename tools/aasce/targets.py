"""Corner landmarks -> soft masks and supervision maps on the network grid (partial labels).

A real film labels the vertebral bodies T12-L5 (boxes from the corners) and, from the gaps between
them, the disc spaces T12/L1..L4/L5. It says nothing about the sacrum, the posterior elements, the SI
joints or the iliac crests, and nothing about the L5/S1 disc (S1 is not labelled): those stay
unsupervised (`known` 0), so training leaves the model's own answer there alone.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from edge.imaging.preprocess import Transform
from edge.qc.structures import BODY_CHANNELS, STRUCTURES, VERTEBRAL_LEVELS
from tools.aasce.dataset import LEVELS, Film

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

SUPERSAMPLE: Final = 4  # polygons are drawn on a 4x finer grid and area-averaged: soft edges
DISC_CHANNEL: Final = STRUCTURES.index("disc")
DISC_UPPER_LEVELS: Final = ("T12", "L1", "L2", "L3", "L4")  # the labelled disc spaces below these
# Where the unlabelled L5/S1 disc may lie: below L5's bottom edge, this many L5 heights down, and this
# much wider than L5 on each side (as a fraction of its width). The disc channel is unsupervised there.
L5S1_DEPTH: Final = 1.2
L5S1_WIDEN: Final = 0.3


def polygon_area_map(polygons: list[F64], size: int) -> F32:
    """Area fraction of each network pixel covered by the union of polygons (network coordinates,
    pixel centres at integers)."""
    canvas = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        fine = (np.asarray(poly, dtype=np.float64) + 0.5) * SUPERSAMPLE - 0.5
        draw.polygon([(float(x), float(y)) for x, y in fine], fill=255)
    fine_map = np.asarray(canvas, dtype=np.float32) / np.float32(255.0)
    return np.asarray(fine_map.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3)), dtype=np.float32)


def to_network(points: F64, crop: tuple[int, int, int, int], transform: Transform) -> F64:
    """Film pixels -> network pixels of the crop (x0, y0, x1, y1) seen through `transform`."""
    shifted = np.asarray(points, dtype=np.float64) - np.array([crop[0], crop[1]], dtype=np.float64)
    return transform.to_network(shifted)


def l5s1_region(film: Film) -> F64:
    """A quadrilateral (film pixels) that contains the unlabelled L5/S1 disc."""
    quad = film.quad("L5")
    tl, tr, br, bl = quad
    height = float(np.mean([np.linalg.norm(bl - tl), np.linalg.norm(br - tr)]))
    across = br - bl
    widen = across * L5S1_WIDEN
    down = np.array([0.0, L5S1_DEPTH * height])
    return np.asarray([bl - widen, br + widen, br + widen + down, bl - widen + down], dtype=np.float64)


def film_targets(
    film: Film, crop: tuple[int, int, int, int], transform: Transform
) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """Soft masks (C x S x S, area fraction x 255) and supervision (C x S x S, 1 where known) for a
    crop of `film` preprocessed with `transform`. Bodies: known everywhere (a level outside the crop is
    known to be absent). Disc: known everywhere but around L5/S1. Every other channel: unknown."""
    size = transform.size
    masks = np.zeros((len(STRUCTURES), size, size), dtype=np.uint8)
    known = np.zeros((len(STRUCTURES), size, size), dtype=np.uint8)
    valid = np.zeros((size, size), dtype=bool)
    valid[transform.valid] = True
    for channel, level in zip(BODY_CHANNELS, VERTEBRAL_LEVELS, strict=True):
        area = polygon_area_map([to_network(film.quad(level), crop, transform)], size)
        masks[channel] = np.rint(area * valid * 255).astype(np.uint8)
        known[channel] = 1
    discs = [to_network(film.disc_quad(upper), crop, transform) for upper in DISC_UPPER_LEVELS]
    masks[DISC_CHANNEL] = np.rint(polygon_area_map(discs, size) * valid * 255).astype(np.uint8)
    unknown_disc = polygon_area_map([to_network(l5s1_region(film), crop, transform)], size) > 0
    known[DISC_CHANNEL] = (~unknown_disc).astype(np.uint8)
    return masks, known


def truth_quads(film: Film, crop: tuple[int, int, int, int]) -> dict[str, F64]:
    """The scored bodies' quadrilaterals in the crop's pixel coordinates."""
    offset = np.array([crop[0], crop[1]], dtype=np.float64)
    return {level: film.quad(level) - offset for level in LEVELS[LEVELS.index("T12") :]}
