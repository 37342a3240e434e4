"""Run a model over real films: segmentation scores against the boxes, and the appliance's verdict.

Each film (or its lumbar crop) goes through the appliance's own pipeline twice over the same model:
`preprocess` + the backend for the masks that are scored, and `Pipeline.process` on the film wrapped
as DICOM for the verdict, so the verdict is exactly what a radiographer would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from edge.config import Config, ModelConfig
from edge.imaging.preprocess import Transform, preprocess
from edge.pipeline import Pipeline
from edge.qc.structures import BODY_CHANNELS
from tools.aasce.dataset import Film
from tools.aasce.dicom import film_dataset
from tools.aasce.targets import truth_quads
from tools.evaluate_real.metrics import FilmScore, Grid, score_film

Crop = Literal["lumbar", "whole"]
F32 = NDArray[np.float32]


@dataclass
class FilmResult:
    film: Film
    crop: tuple[int, int, int, int]
    score: FilmScore
    verdict: dict[str, Any]  # outcome, reason code, reason, failed items, view
    probabilities: F32  # the body channels on the network grid (for the contact sheet)
    transform: Transform


def crop_box(film: Film, crop: Crop) -> tuple[int, int, int, int]:
    return film.lumbar_crop() if crop == "lumbar" else (0, 0, film.width, film.height)


def verdict_summary(result: Any) -> dict[str, Any]:
    verdict = result.verdict
    return {
        "verdict": verdict.verdict,
        "reason_code": verdict.reason_code,
        "reason": verdict.reason,
        "failed_items": [r.item for r in verdict.failed],
        "view": None if verdict.view is None else verdict.view.judged,
    }


class RealEvaluator:
    """One model, many films."""

    def __init__(self, model_dir: Path, threads: int = 2) -> None:
        self.pipeline = Pipeline(Config(model=ModelConfig(path=model_dir, threads=threads)))
        self.label = self.pipeline.manifest.label

    def close(self) -> None:
        self.pipeline.close()

    def evaluate(self, film: Film, crop: Crop) -> FilmResult:
        box = crop_box(film, crop)
        full = film.pixels()
        pixels = full[box[1] : box[3], box[0] : box[2]]
        net_input, transform = preprocess(pixels, self.pipeline.manifest.input_size)
        outputs = self.pipeline.backend.infer(net_input)
        bodies = np.asarray(outputs.masks[list(BODY_CHANNELS)], dtype=np.float32)
        score = score_film(bodies, transform, Grid(*pixels.shape), truth_quads(film, box))
        stored = np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8)
        body_part = "LSPINE" if crop == "lumbar" else "SPINE"
        result = self.pipeline.process(film_dataset(stored, f"{film.name}:{crop}", body_part))
        return FilmResult(film, box, score, verdict_summary(result), bodies, transform)
