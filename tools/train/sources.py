"""Where training samples come from, each with what it supervises.

- `CachedSource`: preprocessed samples built once (phantom renders, CT DRRs): every channel with
  `defined` set is supervised over the whole image, the others not at all.
- `RealFilmSource`: the development films of the real AP set, cropped afresh for every sample (lumbar
  films with the field cutting T12 or L5 now and then, whole-spine films, tight crops) and put through
  the appliance's own preprocessing; only the bodies T12-L5 and the labelled disc spaces are supervised.

All sources yield `Item`s on the network grid; `tools.train.augment` varies them afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from edge.imaging.preprocess import preprocess
from edge.qc.structures import VIEW_CLASSES
from tools.aasce.dataset import LEVELS, Film
from tools.aasce.targets import film_targets
from tools.train.data import Samples

F32 = NDArray[np.float32]
U8 = NDArray[np.uint8]

FILM_LONG_SIDE: Final = 1024  # films are kept at this size: a 256-pixel crop of one stays sharp
AP: Final = VIEW_CLASSES.index("ap")


@dataclass
class Item:
    image: F32  # S x S network input (0..1, zero padding)
    masks: U8  # C x S x S soft targets x 255
    known: U8  # C x S x S, or C: 1 where the target is known
    valid: NDArray[np.bool_]  # S x S: the image area (not padding)
    view: int  # index into VIEW_CLASSES
    real: bool = False  # a real radiograph (already a vendor's processing): less appearance randomisation


class Source(Protocol):
    name: str

    def draw(self, rng: np.random.Generator) -> Item: ...


def valid_area(image: F32) -> NDArray[np.bool_]:
    """The non-padding area of a preprocessed image: rows and columns with any non-zero pixel."""
    rows, cols = np.asarray(image.any(axis=1)), np.asarray(image.any(axis=0))
    return np.asarray(rows[:, None] & cols[None, :])


class CachedSource:
    """Cached sample sets read as one (without copying them into one array: they may be memory-mapped)."""

    def __init__(self, name: str, parts: list[Samples]) -> None:
        self.name = name
        self.parts = parts
        self.starts = np.cumsum([0, *(len(p) for p in parts)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def draw(self, rng: np.random.Generator) -> Item:
        return self.item(int(rng.integers(len(self))))

    def item(self, i: int) -> Item:
        part = int(np.searchsorted(self.starts, i, side="right")) - 1
        samples, j = self.parts[part], i - int(self.starts[part])
        image = samples.images[j].astype(np.float32) / np.float32(255.0)
        return Item(
            image=image,
            masks=np.asarray(samples.masks[j]),
            known=np.asarray(samples.defined[j], dtype=np.uint8),
            valid=valid_area(image),
            view=int(samples.views[j]),
        )


@dataclass(frozen=True)
class LoadedFilm:
    film: Film  # with width, height and corners at the kept size
    pixels: F32


def load_film(film: Film, long_side: int = FILM_LONG_SIDE) -> LoadedFilm:
    with Image.open(film.path) as im:
        grey = im.convert("L")
        scale = min(1.0, long_side / max(grey.size))
        size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
        if scale < 1.0:
            grey = grey.resize(size, Image.Resampling.BOX)
        pixels = np.asarray(grey, dtype=np.float32) / np.float32(255.0)
    sx, sy = size[0] / film.width, size[1] / film.height
    scaled = replace(film, width=size[0], height=size[1], corners=film.corners * np.array([sx, sy]))
    return LoadedFilm(scaled, pixels)


def training_crop(film: Film, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A crop the appliance could be sent: mostly lumbar films (T11 to the pelvis, with the field now
    and then cutting into T12 or L5, narrow or wide), sometimes the whole spine or a tight crop."""
    w, h = film.width, film.height
    top_t12 = float(film.corners[LEVELS.index("T12"), :2, 1].min())
    bottom_l5 = float(film.corners[LEVELS.index("L5"), 2:, 1].max())
    lumbar = film.corners[LEVELS.index("T12") :]
    body_h = float(np.median(lumbar[:, 2:, 1].mean(axis=1) - lumbar[:, :2, 1].mean(axis=1)))
    centre_x = float(lumbar[:, :, 0].mean())
    mode = rng.random()
    if mode < 0.2:  # the whole film, sometimes without its top part
        top = int(rng.uniform(0.0, 0.3) * h) if rng.random() < 0.5 else 0
        return 0, top, w, h
    if mode < 0.85:  # a lumbar film
        y0 = top_t12 - body_h * (rng.uniform(-0.6, 0.0) if rng.random() < 0.15 else rng.uniform(0.3, 3.5))
        y1 = bottom_l5 + body_h * (rng.uniform(-0.6, 0.0) if rng.random() < 0.1 else rng.uniform(0.2, 3.0))
        half_w = (y1 - y0) * rng.uniform(0.3, 0.7)
    else:  # a tight crop around the lumbar spine
        y0 = top_t12 - body_h * rng.uniform(0.2, 1.5)
        y1 = bottom_l5 + body_h * rng.uniform(0.2, 1.5)
        half_w = body_h * rng.uniform(1.5, 3.5)
    cx = centre_x + rng.uniform(-0.4, 0.4) * half_w
    x0, x1 = int(max(0, cx - half_w)), int(min(w, cx + half_w))
    y0i, y1i = int(max(0, y0)), int(min(h, y1))
    if x1 - x0 < 64 or y1i - y0i < 64:
        return 0, 0, w, h
    return x0, y0i, x1, y1i


class RealFilmSource:
    name = "real"

    def __init__(self, films: list[Film], size: int) -> None:
        if not films:
            raise ValueError("no real films to train on")
        self.films = [load_film(f) for f in films]
        self.size = size

    def draw(self, rng: np.random.Generator) -> Item:
        loaded = self.films[int(rng.integers(len(self.films)))]
        crop = training_crop(loaded.film, rng)
        pixels = loaded.pixels[crop[1] : crop[3], crop[0] : crop[2]]
        net_input, transform = preprocess(pixels, self.size)
        masks, known = film_targets(loaded.film, crop, transform)
        valid = np.zeros((self.size, self.size), dtype=bool)
        valid[transform.valid] = True
        return Item(net_input[0, 0], masks, known, valid, AP, real=True)
