"""Dice per view and per structure, view-head accuracy, and the same in FP16, on held-out phantom images."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.engines.precision import write_mixed_precision
from edge.qc.structures import BODY_CHANNELS, STRUCTURES, VIEW_CLASSES, view_of_class
from tools.export.export import ort_session
from tools.train.data import Samples, build_samples
from tools.train.metrics import dice_scores


@dataclass
class Scores:
    dice: NDArray[np.float64]  # images x structures, NaN where undefined or the truth is empty
    false_positive: NDArray[np.bool_]  # images x structures: empty truth, non-empty prediction
    view_predicted: NDArray[np.int64]


def run_model(model_path: Path, samples: Samples) -> Scores:
    session = ort_session(model_path)
    dices, fps, views = [], [], []
    for i in range(len(samples)):
        x = (samples.images[i].astype(np.float32) / 255.0)[None, None]
        masks, view = session.run(["masks", "view"], {"image": x})
        d, fp = dice_scores(np.asarray(masks[0]) > 0.5, samples.masks[i] > 127, samples.defined[i])
        dices.append(d)
        fps.append(fp)
        views.append(int(np.argmax(view[0])))
    return Scores(np.stack(dices), np.stack(fps), np.array(views))


def summarise(scores: Scores, samples: Samples) -> dict[str, Any]:
    view_of = np.array([view_of_class(VIEW_CLASSES[v]) for v in samples.views])
    per_image = np.nanmean(scores.dice, axis=1)
    bodies = scores.dice[:, list(BODY_CHANNELS)]
    out: dict[str, Any] = {"images": len(samples), "views": {}, "structures": {}}
    for view in ("ap", "lateral", "oblique"):
        sel = view_of == view
        values = per_image[sel]
        out["views"][view] = {
            "images": int(sel.sum()),
            "dice_mean": float(np.mean(values)),
            "dice_sd": float(np.std(values)),
            "dice_min": float(np.min(values)),
            "dice_max": float(np.max(values)),
            "view_accuracy": float(np.mean(scores.view_predicted[sel] == samples.views[sel])),
            "body_dice_mean": float(np.nanmean(bodies[sel])) if np.isfinite(bodies[sel]).any() else None,
        }
    for c, name in enumerate(STRUCTURES):
        values = scores.dice[:, c]
        values = values[~np.isnan(values)]
        empty_truth = samples.defined[:, c] & ~(samples.masks[:, c] > 127).any(axis=(1, 2))
        out["structures"][name] = {
            "n": int(values.size),
            "dice_mean": float(values.mean()) if values.size else None,
            "dice_sd": float(values.std()) if values.size else None,
            "dice_min": float(values.min()) if values.size else None,
            "false_positive_rate": float(scores.false_positive[:, c].sum() / max(int(empty_truth.sum()), 1)),
        }
    out["view_accuracy"] = float(np.mean(scores.view_predicted == samples.views))
    out["dice_mean"] = float(np.mean(per_image))
    return out


def with_mirrored_laterals(samples: Samples) -> Samples:
    """The set plus every lateral mirrored (masks too): laterals facing both ways, in equal numbers."""
    lateral = samples.views == VIEW_CLASSES.index("lateral")
    mirrored = Samples(
        np.ascontiguousarray(samples.images[lateral][:, :, ::-1]),
        np.ascontiguousarray(samples.masks[lateral][:, :, :, ::-1]),
        samples.defined[lateral],
        samples.views[lateral],
    )
    return samples.concatenate(mirrored)


def evaluate_model(
    model_dir: Path, seed: int, count: int, fp16: bool = True, domain: str = "phantom"
) -> dict[str, Any]:
    """Held-out figures of one domain: "phantom" (fresh phantom renders) or "ctdrr" (DRRs of the CT that
    training never saw, laterals facing both ways)."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    training = manifest["training"]
    size = manifest["input"]["shape"][-1]
    if domain == "phantom":
        if seed in (training["train_seed"], training["validation_seed"], manifest["validation_set"]["seed"]):
            raise ValueError(f"seed {seed} was used to train or validate this model; pick another")
        samples = build_samples(seed, count, size)
        title = f"held-out phantom set: seed {seed}, {count} images (phantom figures, not clinical)"
    elif domain == "ctdrr":
        from tools.ctdrr import HELD_OUT_CTS
        from tools.ctdrr.samples import build_ct_samples

        samples = with_mirrored_laterals(build_ct_samples(seed, count, HELD_OUT_CTS, size))
        title = (
            f"held-out CT DRRs ({', '.join(HELD_OUT_CTS)}, a CT no training saw): seed {seed}, {count} renders "
            f"+ their laterals mirrored = {len(samples)} images (CT-DRR figures: real anatomy, simulated imaging)"
        )
    else:
        raise ValueError(f"unknown domain {domain!r} (phantom, ctdrr)")
    result: dict[str, Any] = {
        "domain": domain,
        "title": title,
        "seed": seed,
        "count": count,
        "model": manifest["name"],
        "version": manifest["version"],
        "fp32": summarise(run_model(model_dir / manifest["file"], samples), samples),
    }
    if fp16:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model_fp16.onnx"
            write_mixed_precision(model_dir / manifest["file"], path)
            result["fp16"] = summarise(run_model(path, samples), samples)
        result["fp16_minus_fp32_dice"] = {
            view: result["fp16"]["views"][view]["dice_mean"] - result["fp32"]["views"][view]["dice_mean"]
            for view in result["fp32"]["views"]
        }
    return result


def format_table(result: dict[str, Any]) -> str:
    title = result.get("title") or (
        f"held-out phantom set: seed {result['seed']}, {result['count']} images (phantom figures, not clinical)"
    )
    lines = [
        title,
        "",
        "view      n    Dice mean +- sd   min-max        view acc  body Dice"
        + ("   FP16 Dice (delta)" if "fp16" in result else ""),
    ]
    for view, v in result["fp32"]["views"].items():
        body = v.get("body_dice_mean")
        line = (
            f"{view:9s} {v['images']:3d}  {v['dice_mean']:.4f} +- {v['dice_sd']:.4f}  "
            f"{v['dice_min']:.3f}-{v['dice_max']:.3f}  {v['view_accuracy']:.4f}    "
            + ("  -   " if body is None else f"{body:.4f}")
        )
        if "fp16" in result:
            line += f"   {result['fp16']['views'][view]['dice_mean']:.4f} ({result['fp16_minus_fp32_dice'][view]:+.4f})"
        lines.append(line)
    lines += ["", "structure             n   Dice mean +- sd   min     FP rate (empty truth)"]
    for name, s in result["fp32"]["structures"].items():
        if s["n"]:
            lines.append(
                f"{name:20s} {s['n']:4d}  {s['dice_mean']:.4f} +- {s['dice_sd']:.4f}  {s['dice_min']:.3f}"
                f"   {s['false_positive_rate']:.3f}"
            )
    lines.append(
        f"\nall views: Dice {result['fp32']['dice_mean']:.4f}, view accuracy {result['fp32']['view_accuracy']:.4f}"
    )
    return "\n".join(lines)
