"""Which data trained a model, with licence notes: recorded in every model manifest.

A device that runs a model must be able to say what it learnt from: the phantom (the code version and
seeds that rendered it), the real films (which set, which patients, under what licence) and the CT
DRRs (which CTs, which one was kept out).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from tools.train.train import Recipe

REAL_SET_NOTE = (
    "AASCE 2019 challenge training split (SpineWeb dataset 16): real AP whole-spine radiographs of adolescents "
    "with scoliosis, vertebra corner landmarks by two clinicians (London Health Sciences Centre); copied from "
    "github zlinzju/ke30_u7_AASCE2019 @ 09e5818554c3577e0e05e946c065db4222f109eb (boostnet_labeldata)"
)
REAL_SET_LICENCE = (
    "reported as Open Data Commons PDDL 1.0 (tensorflow/datasets issue 974), not checked against the original "
    "SpineWeb page; used as development and evaluation data. A site can retrain on its own labelled films."
)


def code_version() -> str:
    """The repository commit the phantom and the training code come from ('unknown' outside git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def data_provenance(recipe: Recipe) -> dict[str, Any]:
    phantom_images = recipe.samples + recipe.lateral_rotation_samples
    sources: dict[str, Any] = {
        "phantom": {
            "generator": "tools.phantom (synthetic lumbar DRR phantom, own code; no licence restrictions)",
            "code_version": code_version(),
            "images": phantom_images,
            "seeds": {
                "train": recipe.train_seed,
                "lateral_rotation": recipe.train_seed if recipe.lateral_rotation_samples else None,
                "validation": recipe.validation_seed,
            },
            "labels": "every structure, exact projections of the 3D truth",
            "share_of_batches": round(1.0 - recipe.real_fraction - recipe.ct_fraction, 4),
        }
    }
    if recipe.real_fraction > 0:
        from tools.aasce.dataset import HELDOUT_MODULUS, VALIDATION_MODULUS, load_films

        root = Path(recipe.real_set)
        trained = load_films(root, "train", trusted_only=True)
        everything = load_films(root, "all")
        sources["real_ap"] = {
            "set": REAL_SET_NOTE,
            "path": recipe.real_set,
            "licence": REAL_SET_LICENCE,
            "films": len(trained),
            "patients": len({f.patient for f in trained}),
            "films_in_set": len(everything),
            "split": (
                f"by patient (tools.aasce.dataset): sha256 of the patient key mod {HELDOUT_MODULUS} == 0 held out; of "
                f"the rest, mod {VALIDATION_MODULUS} == 0 (second hash) kept for validation and calibration; "
                "films with labelling slips excluded; held-out and validation patients never trained"
            ),
            "labels": "bodies T12-L5 (corner quadrilaterals) and disc spaces T12/L1-L4/L5; nothing else supervised",
            "share_of_batches": recipe.real_fraction,
        }
    if recipe.ct_fraction > 0:
        from tools.ctdrr import HELD_OUT_CTS, TRAINING_CTS
        from tools.ctdrr.volumes import SOURCES

        sources["ct_drr"] = {
            "renders": recipe.ct_samples,
            "seed": recipe.ct_seed,
            "cts": {
                name: {"data": SOURCES[name].description, "licence": SOURCES[name].licence} for name in TRAINING_CTS
            },
            "held_out_cts": {name: SOURCES[name].description for name in HELD_OUT_CTS},
            "labels": "the channels each CT's labels allow (tools.ctdrr); the rest unsupervised",
            "share_of_batches": recipe.ct_fraction,
        }
    return sources


def model_note(recipe: Recipe) -> str:
    if recipe.real_fraction <= 0 and recipe.ct_fraction <= 0:
        return "Trained and evaluated on the synthetic lumbar phantom only; not validated on clinical images."
    parts = ["the synthetic lumbar phantom"]
    if recipe.real_fraction > 0:
        parts.append("real AP films (AASCE development patients; bodies and disc spaces only)")
    if recipe.ct_fraction > 0:
        parts.append("DRRs of two real CTs")
    return (
        f"Trained on {', '.join(parts)}. Figures per domain under evaluation (phantom), evaluation_real "
        "(held-out real AP films) and evaluation_ctdrr (a held-out CT). Not a clinically validated device."
    )
