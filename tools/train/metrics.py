"""Segmentation metrics shared by training validation and the held-out evaluation."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def dice_scores(
    pred: NDArray[np.bool_], truth: NDArray[np.bool_], defined: NDArray[np.bool_]
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Dice per structure (over the last two axes) where the truth is non-empty and the structure is
    defined for the view (NaN elsewhere), and false positives: empty truth, non-empty prediction."""
    inter = (pred & truth).sum(axis=(-2, -1))
    p, t = pred.sum(axis=(-2, -1)), truth.sum(axis=(-2, -1))
    dice = np.where(t > 0, 2 * inter / np.maximum(p + t, 1), np.nan)
    dice[~defined] = np.nan
    return dice, (t == 0) & (p > 0) & defined
