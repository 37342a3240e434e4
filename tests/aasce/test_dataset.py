"""The real AP set: landmark reading, label checks, the patient split, the lumbar crop, the targets."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from edge.imaging.preprocess import preprocess
from edge.qc.structures import BODY_CHANNELS, STRUCTURES
from tools.aasce.dataset import (
    DEFAULT_ROOT,
    LEVELS,
    LUMBAR_CROP_TOP,
    development_part,
    label_problems,
    load_films,
    lumbar_crop,
    patient_of,
    split_of,
)
from tools.aasce.targets import DISC_CHANNEL, film_targets, truth_quads
from tools.evaluate_real.metrics import Grid, score_film
from tools.evaluate_real.report import summarise
from tools.evaluate_real.run import FilmResult

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "aasce"
READ_BY_EYE = "sunhl-1th-09-Jan-2017-197 A AP.jpg"
# Body centres of that film read by eye from the pixels alone (zoomed, contrast-equalised): the rows
# between each body's two endplates. A box one level off would miss by ~125 px (a body and a disc).
EYE_ROWS = {"T12": 990, "L1": 1100, "L2": 1225, "L3": 1352, "L4": 1488, "L5": 1612}
EYE_SPINE_COLUMN = 335


def fixture_film(name: str):  # type: ignore[no-untyped-def]
    return next(f for f in load_films(FIXTURE) if f.name == name)


def test_landmarks_put_the_lumbar_boxes_on_the_rows_read_by_eye() -> None:
    film = fixture_film(READ_BY_EYE)
    assert (film.width, film.height) == (666, 1780)
    for level, row in EYE_ROWS.items():
        centre = film.quad(level).mean(axis=0)
        assert abs(centre[1] - row) < 25, (level, centre, row)
        assert abs(centre[0] - EYE_SPINE_COLUMN) < 40, (level, centre)
    top, bottom = film.quad("L1"), film.quad("L1")
    assert top[0, 1] < top[3, 1] and bottom[0, 0] < bottom[1, 0]  # TL above BL, TL left of TR
    assert film.trusted


def test_fixture_rows_equal_the_shared_set() -> None:
    if not (DEFAULT_ROOT / "landmarks.csv").exists():
        pytest.skip(f"{DEFAULT_ROOT} not present (the fixture is a copy of four of its films)")
    shared = {f.name: f for f in load_films(DEFAULT_ROOT)}
    for film in load_films(FIXTURE):
        assert np.array_equal(film.corners, shared[film.name].corners)


def test_patient_keys_and_a_split_that_never_divides_a_patient() -> None:
    assert patient_of("sunhl-1th-02-Jan-2017-162 B AP.jpg") == "162"
    assert patient_of("sunhl-1th-22-Nov-2016-142 A AP (2).jpg") == "142"
    assert patient_of("sunhl-1th-20-Jul-2016-coronal12.jpg") == "coronal"
    root = DEFAULT_ROOT if (DEFAULT_ROOT / "filenames.csv").exists() else FIXTURE
    with (root / "filenames.csv").open() as f:
        names = [row[0] for row in csv.reader(f) if row]
    sides: dict[str, set[str]] = {}
    parts: dict[str, set[str]] = {}
    for name in names:
        patient = patient_of(name)
        sides.setdefault(patient, set()).add(split_of(patient))
        parts.setdefault(patient, set()).add(development_part(patient))
    assert all(len(s) == 1 for s in sides.values())
    assert all(len(p) == 1 for p in parts.values())
    if root == DEFAULT_ROOT:  # the whole set: about a fifth of the patients held out
        held = sum("heldout" in s for s in sides.values())
        assert 0.12 < held / len(sides) < 0.28, held
    assert split_of("171") == split_of("172") == split_of("173") == "heldout"  # the fixture's held-out films


def test_label_checks_catch_the_known_slips() -> None:
    film = fixture_film(READ_BY_EYE)
    assert label_problems(film.corners) == ()
    wrapped = film.corners.copy()
    wrapped[LEVELS.index("L5"), 2:, 1] = 0.04 * film.height  # L5's bottom corners at the top (as in the set)
    assert "levels not ordered top to bottom" in label_problems(wrapped)
    skipped = film.corners.copy()
    skipped[LEVELS.index("L1") :] += np.array([0.0, 120.0])  # a level left out above L1
    assert any("gap" in p for p in label_problems(skipped))


def test_lumbar_crop_uses_the_size_only_and_keeps_t12_to_l5() -> None:
    assert lumbar_crop(800, 2000) == (0, round(LUMBAR_CROP_TOP * 2000), 800, 2000)
    for film in load_films(FIXTURE):
        _, y0, _, y1 = film.lumbar_crop()
        assert film.quad("T12")[:, 1].min() > y0 and film.quad("L5")[:, 1].max() <= y1


def lumbar_targets(name: str):  # type: ignore[no-untyped-def]
    """A fixture film's lumbar crop: its pixels, transform, crop box, targets and supervision."""
    film = fixture_film(name)
    crop = film.lumbar_crop()
    pixels = film.pixels()[crop[1] : crop[3], crop[0] : crop[2]]
    _, transform = preprocess(pixels, 256)
    masks, known = film_targets(film, crop, transform)
    return film, crop, pixels, transform, masks, known


def test_targets_cover_the_boxes_and_leave_the_unlabelled_alone() -> None:
    film, crop, pixels, transform, masks, known = lumbar_targets(READ_BY_EYE)
    for channel in BODY_CHANNELS:
        assert known[channel].all() and masks[channel].max() == 255
    assert masks[DISC_CHANNEL].max() == 255 and 0 < known[DISC_CHANNEL].mean() < 1  # L5/S1 left open
    for name in ("sacrum", "pedicle_left", "spinous_process", "si_joint_left", "iliac_crest", "field"):
        assert not known[STRUCTURES.index(name)].any(), name
    # the targets, scored back on the film's own grid, match the boxes (rasterisation round trip)
    bodies = (masks[list(BODY_CHANNELS)] / np.float32(255)).astype(np.float32)
    score = score_film(bodies, transform, Grid(*pixels.shape), truth_quads(film, crop))
    assert set(score.levels) == {"T12", "L1", "L2", "L3", "L4", "L5"}
    for level in score.levels.values():
        assert level.dice > 0.95 and level.level_right and level.centroid_error < 0.05
        assert level.tilt_error_deg is not None and level.tilt_error_deg < 3.0


def test_a_mask_one_level_off_is_found_but_at_the_wrong_level() -> None:
    film, crop, pixels, transform, masks, _ = lumbar_targets(READ_BY_EYE)
    bodies = (masks[list(BODY_CHANNELS)] / np.float32(255)).astype(np.float32)
    shifted = np.roll(bodies, 1, axis=0)  # channel L2 now holds L1's box, and so on
    shifted[0] = 0
    score = score_film(shifted, transform, Grid(*pixels.shape), truth_quads(film, crop))
    l3 = score.levels["L3"]
    assert l3.found and not l3.level_right and l3.best_level == "L4"
    assert l3.dice < 0.05 and l3.centroid_error > 1.0
    assert l3.shift == 1 and score.whole_shift(("L1", "L2", "L3", "L4")) == 1  # the spine counted one too low
    verdict = {"verdict": "fail", "reason_code": "", "failed_items": []}
    summary = summarise([FilmResult(film, crop, score, verdict, shifted, transform)])
    assert summary["level_shifts"]["one level too low"] >= 4 and summary["films_shifted_whole"] == {"+1": 1}
