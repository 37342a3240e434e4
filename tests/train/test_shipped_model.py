"""The model that ships in engines/: intact, within the Jetson's budget, and still as good as recorded.

A fresh phantom set (a seed no training run used) is segmented in CI and must meet a floor close to
the targets of the issue (Dice AP 0.93, lateral 0.90, oblique 0.88; view head 99 %), so that a
regression in the model, the preprocessing or the phantom fails the build.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tools.evaluate.segmentation import evaluate_model
from tools.export.export import ort_session

ENGINES = Path(__file__).resolve().parents[2] / "engines"
REAL_FIXTURE = Path(__file__).resolve().parents[1] / "data" / "aasce"
FLOOR = {"ap": 0.92, "lateral": 0.89, "oblique": 0.87}  # targets 0.93 / 0.90 / 0.88, less 0.01
VIEW_ACCURACY_FLOOR = 0.97


def shipped() -> list[Path]:
    return sorted(p.parent for p in ENGINES.glob("*/*/manifest.json"))


def manifest(model: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((model / "manifest.json").read_text())
    return data


def test_a_model_ships_intact_and_within_budget() -> None:
    models = shipped()
    assert models, f"no model under {ENGINES}"
    for model in models:
        m = manifest(model)
        path = model / m["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == m["sha256"]
        assert path.stat().st_size <= 30 * 2**20
        assert m["parameters"] <= 10_000_000
        assert m["flops_per_image"] <= 20e9
        assert set(m["evaluation"]["fp32"]["views"]) == {"ap", "lateral", "oblique"}
        assert m["evaluation"]["count"] >= 300


# The references were thresholded on one CPU; another CPU's kernels round differently, so a pixel whose
# probability sits at 0.5 may flip (one in 1.18 M did on an AMD EPYC). A wrong model flips thousands.
MAX_FLIPPED_PIXEL_FRACTION = 1e-5
VIEW_PROBABILITY_TOLERANCE = 1e-4


def test_shipped_validation_references_reproduce() -> None:
    for model in shipped():
        m = manifest(model)
        session = ort_session(model / m["file"])
        files = sorted((model / m["validation_set"]["folder"]).glob("*.npz"))
        assert len(files) == m["validation_set"]["count"]
        flipped, pixels = 0, 0
        for f in files:
            with np.load(f) as data:
                masks, view = session.run(["masks", "view"], {"image": data["image"]})
                reference = np.unpackbits(data["reference_masks"], count=masks[0].size).reshape(masks[0].shape)
                flipped += int(np.count_nonzero((masks[0] > 0.5) != reference.astype(bool)))
                pixels += reference.size
                assert np.allclose(view[0], data["reference_view"], atol=VIEW_PROBABILITY_TOLERANCE)
        assert flipped <= MAX_FLIPPED_PIXEL_FRACTION * pixels, (model, flipped, pixels)


@pytest.mark.parametrize("model", shipped(), ids=lambda p: f"{p.parent.name}-{p.name}")
def test_shipped_model_meets_the_floor_on_fresh_phantom_images(model: Path) -> None:
    result = evaluate_model(model, seed=950_123, count=36, fp16=False)
    for view, floor in FLOOR.items():
        assert result["fp32"]["views"][view]["dice_mean"] >= floor, (view, result["fp32"]["views"][view])
    assert result["fp32"]["view_accuracy"] >= VIEW_ACCURACY_FLOOR


@pytest.mark.xfail(
    strict=True,
    reason="issue 12 open: the default model (0.2.0, phantom-trained) does not read real films yet; "
    "strict, so this fails the build as soon as a default model passes and the mark must go",
)
def test_default_model_reads_real_held_out_films() -> None:
    """Three real AP films of held-out patients (tests/data/aasce): the default model finds L1-L5 on the
    lumbar crop, each at the right level, and the verdict is a reading, not a rejection."""
    from edge.config import DEFAULT_MODEL
    from tools.aasce.dataset import load_films
    from tools.evaluate_real.run import RealEvaluator

    films = [f for f in load_films(REAL_FIXTURE, "heldout") if f.trusted]
    assert len(films) == 3
    evaluator = RealEvaluator(DEFAULT_MODEL)
    try:
        for film in films:
            result = evaluator.evaluate(film, "lumbar")
            for level in ("L1", "L2", "L3", "L4", "L5"):
                score = result.score.levels[level]
                assert score.found and score.level_right, (film.name, level, score)
                assert score.centroid_error < 0.25, (film.name, level, score)
            assert result.verdict["verdict"] != "rejected", result.verdict
    finally:
        evaluator.close()


def test_evaluate_real_prints_the_split_and_writes_its_files(tmp_path: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "er"
    result = subprocess.run(
        [sys.executable, "-m", "tools.evaluate_real", "--model", str(ENGINES / "lumbar-resunet" / "0.2.0"),
         "--set", str(REAL_FIXTURE), "--split", "heldout", "--crop", "lumbar", "--out", str(out)],
        cwd=repo, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "split heldout: 3 films of 3 patients" in result.stdout
    assert "body Dice vs boxes, L1-L5 mean" in result.stdout and "below 1" in result.stdout
    records = json.loads((out / "results-lumbar-resunet-0.2.0-heldout-lumbar.json").read_text())
    assert [r["patient"] for r in records] == ["171", "172", "173"]
    assert set(records[0]["levels"]) == {"T12", "L1", "L2", "L3", "L4", "L5"}
    assert (out / "sheet-lumbar-resunet-0.2.0-heldout-lumbar.png").stat().st_size > 10_000
