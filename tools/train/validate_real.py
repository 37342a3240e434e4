"""Watching training on real films: the development validation patients' lumbar crops, scored on the
network grid after every epoch (quick; `tools.evaluate_real` gives the full figures on the film grid)."""

from __future__ import annotations

import numpy as np
import torch

from edge.imaging.preprocess import preprocess
from edge.qc.structures import BODY_CHANNELS, LUMBAR_LEVELS, VERTEBRAL_LEVELS
from tools.aasce.dataset import Film
from tools.aasce.targets import film_targets
from tools.train.model import ResUNet

LUMBAR_ROWS = [VERTEBRAL_LEVELS.index(lv) for lv in LUMBAR_LEVELS]


class RealValidation:
    def __init__(self, films: list[Film], size: int) -> None:
        inputs, truths = [], []
        for film in films:
            crop = film.lumbar_crop()
            pixels = film.pixels()[crop[1] : crop[3], crop[0] : crop[2]]
            net_input, transform = preprocess(pixels, size)
            masks, _ = film_targets(film, crop, transform)
            inputs.append(net_input[0])
            truths.append(masks[list(BODY_CHANNELS)] > 127)
        self.inputs = torch.from_numpy(np.stack(inputs))
        self.truths = np.stack(truths)  # films x 6 x S x S

    def evaluate(self, model: ResUNet, bf16: bool) -> dict[str, float]:
        model.eval()
        preds = []
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for start in range(0, len(self.inputs), 8):
                logits, _, _ = model(self.inputs[start : start + 8])
                preds.append(logits.float()[:, list(BODY_CHANNELS)].numpy() > 0.0)
        model.train()
        pred = np.concatenate(preds)  # films x 6 x S x S
        inter = np.einsum("npij,ntij->npt", pred.astype(np.float32), self.truths.astype(np.float32))
        sums = pred.sum(axis=(2, 3))[:, :, None] + self.truths.sum(axis=(2, 3))[:, None, :]
        dice = 2 * inter / np.maximum(sums, 1)  # films x predicted level x true level
        own = np.stack([dice[:, r, r] for r in LUMBAR_ROWS], axis=1)
        right = np.stack([(dice[:, :, r].argmax(axis=1) == r) & (dice[:, r, r] > 0) for r in LUMBAR_ROWS], axis=1)
        return {
            "real_dice_l1_l5": float(own.mean()),
            "real_level_right": float(right.mean()),
            "real_all_five_right": float(right.all(axis=1).mean()),
        }
