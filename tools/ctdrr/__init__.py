"""Digitally reconstructed radiographs (DRRs) of three real CT volumes, with exact projected masks.

A second, more realistic domain beside the parametric phantom: the bones, soft tissue and texture come
from real patients (../shared/data/ct, read its README first), the geometry and the detector chain
follow the phantom (cone beam, SID 1100 mm, scatter, noise, For Presentation processing), and every
mask is the exact projection of a 3D label derived from the CT's segmentation (`labels.py` says how,
per CT and channel, and which channels each CT can label at all).

`verse012` is held out: its renders are a measurement domain and must never be used for training;
`TRAINING_CTS` is what training may use, and the CLI renders `verse012` only when asked by name. Held
out is the one whose renders look most like a lumbar radiograph (1 mm in-plane, a clean spine from
T10 to L3) and the one unlike the others (a spine-only slab, its trunk substituted), so that it
measures generalisation to an anatomy and a scanner training never saw; training keeps the two
whole-trunk CTs (abdomen-pelvis with the sacrum and ilia, and the thoracolumbar chest).
"""

from __future__ import annotations

from typing import Final

TRAINING_CTS: Final[tuple[str, ...]] = ("totalseg", "chest")
HELD_OUT_CTS: Final[tuple[str, ...]] = ("verse012",)  # measurement only: never train on its renders
CT_NAMES: Final[tuple[str, ...]] = (*TRAINING_CTS, *HELD_OUT_CTS)
