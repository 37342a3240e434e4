"""Reading the corner-labelled AP set: films, landmarks per level, label checks, patient split, crops.

Format (`../shared/data/aasce-train`): `filenames.csv` (a name a row), `landmarks.csv` (a row per
image: 68 x then 68 y, normalised to width / height), 17 vertebrae T1..L5 with 4 corners each in the
order top-left, top-right, bottom-left, bottom-right (image left / right).
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

F64 = NDArray[np.float64]
Split = Literal["development", "heldout", "all", "train", "validation"]

DEFAULT_ROOT: Final = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "aasce-train"
LEVELS: Final[tuple[str, ...]] = (*(f"T{i}" for i in range(1, 13)), *(f"L{i}" for i in range(1, 6)))
SCORED_LEVELS: Final[tuple[str, ...]] = ("T12", "L1", "L2", "L3", "L4", "L5")

# Held-out patients: those whose key hashes to 0 mod HELDOUT_MODULUS (about a fifth). A rule of the
# patient key alone, fixed in code, so the split never moves when files are added or reordered.
HELDOUT_MODULUS: Final = 5
VALIDATION_MODULUS: Final = 10

# The lumbar crop of a whole-spine film: a lumbar AP film shows about T11 to the pelvis. These films
# run from about C7 to the pelvis; over the whole set the top of T11 lies at 43-61 % of the film's
# height (1st percentile to maximum) and the bottom of L5 above 98 %, so the rows from 40 % of the
# height to the bottom show a lumbar film's extent on every film. The rule uses the film's size only,
# never its labels.
LUMBAR_CROP_TOP: Final = 0.40

# Label checks (the set has known slips: a level skipped, corners misplaced, L5 corners wrapped to
# the top of the film). Heights and gaps are compared with the median lumbar body height.
MIN_HEIGHT_RATIO: Final = 0.5
MAX_HEIGHT_RATIO: Final = 1.8
MIN_GAP_RATIO: Final = -0.3  # boxes may touch or overlap a little at a collapsed disc
MAX_GAP_RATIO: Final = 1.2  # a disc is thinner than a body; a larger gap is a skipped level or a slip

_PATIENT = re.compile(r"-(\d+) [A-Z] AP")


def patient_of(name: str) -> str:
    """The patient key of a file name: the number before the letter ("...-162 B AP.jpg" -> "162").
    Names without one (the "coronalN" series, all from one day) are grouped as one patient, so they
    can never fall on both sides of the split."""
    match = _PATIENT.search(name)
    if match:
        return match.group(1)
    if "coronal" in name:
        return "coronal"
    return Path(name).stem


def split_of(patient: str) -> Literal["development", "heldout"]:
    digest = hashlib.sha256(f"aasce-patient:{patient}".encode()).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") % HELDOUT_MODULUS == 0 else "development"


def development_part(patient: str) -> Literal["train", "validation"]:
    """Within the development patients, about one in ten is kept out of training to watch training
    and to calibrate on (never the held-out patients, which are for the final figures only)."""
    digest = hashlib.sha256(f"aasce-development:{patient}".encode()).digest()
    return "validation" if int.from_bytes(digest[:8], "big") % VALIDATION_MODULUS == 0 else "train"


def label_problems(corners: F64) -> tuple[str, ...]:
    """Why a film's landmarks cannot be trusted (empty: they can). `corners`: 17 x 4 x 2 pixels."""
    problems = []
    top = corners[:, :2, 1].mean(axis=1)
    bottom = corners[:, 2:, 1].mean(axis=1)
    height = bottom - top
    centre_y = corners[:, :, 1].mean(axis=1)
    if np.any(np.diff(centre_y) <= 0):
        problems.append("levels not ordered top to bottom")
    if np.any(height <= 0):
        problems.append("a box with its bottom edge above its top edge")
    if np.any(corners[:, 1, 0] <= corners[:, 0, 0]) or np.any(corners[:, 3, 0] <= corners[:, 2, 0]):
        problems.append("left and right corners swapped")
    lumbar_height = float(np.median(height[LEVELS.index("T12") :]))
    if lumbar_height <= 0:
        return (*problems, "no positive lumbar body height")
    ratio = height[LEVELS.index("T11") :] / lumbar_height
    if np.any(ratio < MIN_HEIGHT_RATIO) or np.any(ratio > MAX_HEIGHT_RATIO):
        problems.append("implausible body height between T11 and L5")
    gaps = (top[1:] - bottom[:-1]) / lumbar_height
    if np.any(gaps < MIN_GAP_RATIO):
        problems.append("overlapping boxes")
    if np.any(gaps > MAX_GAP_RATIO):
        problems.append("a gap larger than a body (a level skipped or a box misplaced)")
    return tuple(problems)


@dataclass(frozen=True)
class Film:
    """One radiograph with its landmarks in pixels of the full film."""

    name: str
    path: Path
    width: int
    height: int
    corners: F64  # 17 x 4 x 2 (x, y) pixels: TL, TR, BL, BR per level T1..L5

    @property
    def patient(self) -> str:
        return patient_of(self.name)

    @property
    def split(self) -> Literal["development", "heldout"]:
        return split_of(self.patient)

    @cached_property
    def problems(self) -> tuple[str, ...]:
        return label_problems(self.corners)

    @property
    def trusted(self) -> bool:
        return not self.problems

    def quad(self, level: str) -> F64:
        """The body's corner quadrilateral in polygon order TL, TR, BR, BL (4 x 2 pixels)."""
        c = self.corners[LEVELS.index(level)]
        return np.asarray(c[[0, 1, 3, 2]], dtype=np.float64)

    def disc_quad(self, upper: str) -> F64:
        """The disc space below `upper`: its bottom edge to the next body's top edge (TL, TR, BR, BL)."""
        i = LEVELS.index(upper)
        above, below = self.corners[i], self.corners[i + 1]
        return np.asarray([above[2], above[3], below[1], below[0]], dtype=np.float64)

    def pixels(self) -> NDArray[np.float32]:
        """The film as display values 0..1 (8-bit greyscale JPEG, higher = brighter)."""
        with Image.open(self.path) as im:
            return np.asarray(im.convert("L"), dtype=np.float32) / np.float32(255.0)

    def lumbar_crop(self) -> tuple[int, int, int, int]:
        return lumbar_crop(self.width, self.height)


def lumbar_crop(width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the lumbar film inside a whole-spine film (see LUMBAR_CROP_TOP)."""
    return 0, round(LUMBAR_CROP_TOP * height), width, height


def load_films(root: Path = DEFAULT_ROOT, split: Split = "all", trusted_only: bool = False) -> list[Film]:
    """The films of `root` in file order, or one part of the patient split: heldout, development, or
    the development part's train and validation patients."""
    names_path, landmarks_path = root / "filenames.csv", root / "landmarks.csv"
    for path in (names_path, landmarks_path, root / "images"):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: expected filenames.csv, landmarks.csv and images/ (AASCE)")
    with names_path.open(newline="") as f:
        names = [row[0] for row in csv.reader(f) if row]
    landmarks = np.loadtxt(landmarks_path, delimiter=",", ndmin=2)
    if landmarks.shape != (len(names), 2 * 4 * len(LEVELS)):
        raise ValueError(
            f"{landmarks_path}: expected {len(names)} rows of {2 * 4 * len(LEVELS)} values, got {landmarks.shape}"
        )
    films = []
    for name, row in zip(names, landmarks, strict=True):
        path = root / "images" / name
        with Image.open(path) as im:
            width, height = im.size
        xy = np.stack([row[: 4 * len(LEVELS)] * width, row[4 * len(LEVELS) :] * height], axis=-1)
        film = Film(name, path, width, height, xy.reshape(len(LEVELS), 4, 2))
        if split in ("development", "heldout") and film.split != split:
            continue
        if split in ("train", "validation") and (
            film.split != "development" or development_part(film.patient) != split
        ):
            continue
        if trusted_only and not film.trusted:
            continue
        films.append(film)
    return films
