"""Digitally reconstructed radiographs (DRRs) of three real CT volumes, with exact projected masks.

A second, more realistic domain beside the parametric phantom: the bones, soft tissue and texture come
from real patients (../shared/data/ct, read its README first), the geometry and the detector chain
follow the phantom (cone beam, SID 1100 mm, scatter, noise, For Presentation processing), and every
mask is the exact projection of a 3D label derived from the CT's segmentation (`labels.py` says how,
per CT and channel, and which channels each CT can label at all).

`chest` is held out: its renders are a measurement domain and must never be used for training;
`TRAINING_CTS` is what training may use, and the CLI renders `chest` only when asked by name.
"""

from __future__ import annotations

from typing import Final

TRAINING_CTS: Final[tuple[str, ...]] = ("totalseg", "verse012")
HELD_OUT_CTS: Final[tuple[str, ...]] = ("chest",)  # measurement only: never train on its renders
CT_NAMES: Final[tuple[str, ...]] = (*TRAINING_CTS, *HELD_OUT_CTS)
