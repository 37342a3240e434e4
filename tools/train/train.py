"""Training loop: Dice + BCE on the phantom, deep supervision, view head; seeded and resumable.

Runs on this 2-core CPU: bfloat16 autocast (AMX/AVX-512 where the CPU has them), a cache of
preprocessed samples built once per run, cheap intensity augmentations on the fly.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from edge.imaging.preprocess import DEFAULT_SIZE
from edge.qc.structures import STRUCTURES, VIEW_CLASSES
from tools.train.data import Samples, build_samples
from tools.train.metrics import dice_scores
from tools.train.model import ResUNet

# Seeds of the phantom sets: training and validation never share an image with evaluation.
TRAIN_SEED_OFFSET = 0
VALIDATION_SEED_OFFSET = 500_000


@dataclass(frozen=True)
class Recipe:
    seed: int = 1
    samples: int = 4000
    validation_samples: int = 150
    size: int = DEFAULT_SIZE
    base_channels: int = 16
    epochs: int = 12
    batch: int = 8
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    bf16: bool = True
    init: str = ""  # a checkpoint whose weights start this run (fine-tuning); empty: random init
    lateral_rotation_samples: int = 0  # extra lateral views with axial rotation up to 15 degrees
    symmetric_pedicles: bool = False  # on laterals, score the pedicle channels in the better order

    @property
    def train_seed(self) -> int:
        return self.seed + TRAIN_SEED_OFFSET

    @property
    def validation_seed(self) -> int:
        return self.seed + VALIDATION_SEED_OFFSET


def augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """What real radiographs vary in and the phantom does not: contrast, brightness, gamma, noise, blur."""
    n = images.shape[0]

    def uniform(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=generator)

    x = images.clamp(0, 1) ** uniform(0.7, 1.4)
    x = x * uniform(0.8, 1.2) + uniform(-0.1, 0.1)
    blur = torch.rand(n, generator=generator) < 0.3
    if blur.any():
        x[blur] = F.avg_pool2d(x[blur], 3, stride=1, padding=1)
    x = x + torch.randn(x.shape, generator=generator) * uniform(0.0, 0.04)
    return x.clamp(-0.2, 1.2)


def seg_loss(logits: Tensor, target: Tensor, defined: Tensor) -> Tensor:
    """BCE + soft Dice over the structures defined in each sample's view."""
    weight = defined[:, :, None, None].float()
    if logits.shape[-1] != target.shape[-1]:
        target = F.adaptive_avg_pool2d(target, (int(logits.shape[-2]), int(logits.shape[-1])))
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (bce * weight).sum() / (weight.sum() * logits.shape[-1] * logits.shape[-2]).clamp(min=1)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(2, 3))
    denom = prob.sum(dim=(2, 3)) + target.sum(dim=(2, 3))
    dice = (2 * inter + 1.0) / (denom + 1.0)
    dice_loss = ((1 - dice) * defined.float()).sum() / defined.float().sum().clamp(min=1)
    return bce + dice_loss


PEDICLES = (STRUCTURES.index("pedicle_left"), STRUCTURES.index("pedicle_right"))
LATERAL_CLASS = VIEW_CLASSES.index("lateral")


def order_pedicles(logits: Tensor, masks: Tensor, views: Tensor) -> Tensor:
    """On a lateral view nothing in the image says which pedicle is the left one (they differ only in
    magnification), so each lateral sample's pedicle targets are swapped where the swapped order fits
    the prediction better: the loss then asks for two pedicles, not for a guess of their sides."""
    left, right = PEDICLES
    with torch.no_grad():
        p = torch.sigmoid(logits[:, [left, right]].float())
        t = masks[:, [left, right]]
        same = (p - t).abs().mean(dim=(1, 2, 3))
        swapped = (p - t.flip(1)).abs().mean(dim=(1, 2, 3))
        swap = (swapped < same) & (views == LATERAL_CLASS)
    if not bool(swap.any()):
        return masks
    out = masks.clone()
    out[swap, left], out[swap, right] = masks[swap, right], masks[swap, left]
    return out


def batches(samples: Samples, order: np.ndarray, batch: int) -> list[np.ndarray]:
    return [order[i : i + batch] for i in range(0, len(order) - batch + 1, batch)]


def to_tensors(samples: Samples, idx: np.ndarray) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    images = torch.from_numpy(samples.images[idx].astype(np.float32) / 255.0)[:, None]
    masks = torch.from_numpy(samples.masks[idx].astype(np.float32) / 255.0)
    defined = torch.from_numpy(samples.defined[idx])
    views = torch.from_numpy(samples.views[idx])
    return images, masks, defined, views


def evaluate_samples(model: ResUNet, samples: Samples, bf16: bool) -> dict[str, float]:
    model.eval()
    dices, correct = [], 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(samples), 8):  # every sample, the last batch possibly short
            images, masks, defined, views = to_tensors(samples, np.arange(start, min(start + 8, len(samples))))
            logits, view_logits, _ = model(images)
            d, _ = dice_scores(logits.float().numpy() > 0.0, masks.numpy() > 0.5, defined.numpy())
            dices.append(d)
            correct += int((view_logits.float().argmax(1) == views).sum())
    model.train()
    all_d = np.concatenate(dices)
    per_image = np.nanmean(all_d, axis=1)
    return {
        "dice": float(np.nanmean(per_image)),
        "view_accuracy": correct / len(samples),
        **{f"dice_{name}": float(np.nanmean(all_d[:, c])) for c, name in enumerate(STRUCTURES)},
    }


def load_or_build(run: Path, name: str, seed: int, count: int, size: int, lateral_rotation: bool = False) -> Samples:
    path = run / f"{name}-seed{seed}-n{count}-s{size}.npz"
    if path.exists():
        return Samples.load(path)
    start = time.perf_counter()
    samples = build_samples(seed, count, size, lateral_rotation=lateral_rotation)
    samples.save(path)
    print(f"{name}: built {count} phantom samples in {time.perf_counter() - start:.0f} s -> {path.name}", flush=True)
    return samples


def train(run: Path, recipe: Recipe, max_steps: int | None = None, quiet: bool = False) -> dict[str, float]:
    """Train (or resume) the model in `run`; returns the last validation metrics."""
    run.mkdir(parents=True, exist_ok=True)
    recipe_path = run / "recipe.json"
    if recipe_path.exists() and json.loads(recipe_path.read_text()) != asdict(recipe):
        raise ValueError(f"{run} holds a run with another recipe ({recipe_path}); use a new --out")
    recipe_path.write_text(json.dumps(asdict(recipe), indent=1))
    torch.manual_seed(recipe.seed)
    train_set = load_or_build(run, "train", recipe.train_seed, recipe.samples, recipe.size)
    if recipe.lateral_rotation_samples:
        extra = load_or_build(
            run,
            "lateral-rotation",
            recipe.train_seed,
            recipe.lateral_rotation_samples,
            recipe.size,
            lateral_rotation=True,
        )
        train_set = train_set.concatenate(extra)
    val_set = load_or_build(run, "validation", recipe.validation_seed, recipe.validation_samples, recipe.size)

    model = ResUNet(len(STRUCTURES), len(VIEW_CLASSES), base=recipe.base_channels)
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    steps_per_epoch = len(batches(train_set, np.arange(len(train_set)), recipe.batch))
    total_steps = steps_per_epoch * recipe.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / 200) * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
    )
    start_epoch, step = 0, 0
    checkpoint = run / "last.pt"
    if recipe.init and not checkpoint.exists():
        model.load_state_dict(torch.load(recipe.init, weights_only=False, map_location="cpu")["model"])
        print(f"starting from the weights of {recipe.init}", flush=True)
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        print(f"resuming after epoch {start_epoch} (step {step})", flush=True)
    generator = torch.Generator().manual_seed(recipe.seed)
    log_path = run / "log.csv"
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, recipe.epochs):
        order = np.random.default_rng([recipe.seed, epoch]).permutation(len(train_set))
        started, losses = time.perf_counter(), []
        for i, idx in enumerate(batches(train_set, order, recipe.batch)):
            images, masks, defined, views = to_tensors(train_set, idx)
            images = augment(images, generator).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16):
                logits, view_logits, aux = model(images)
            if recipe.symmetric_pedicles:
                masks = order_pedicles(logits, masks, views)
            loss = seg_loss(logits.float(), masks, defined) + 0.2 * F.cross_entropy(view_logits.float(), views)
            for weight, a in zip((0.5, 0.25), aux, strict=True):
                loss = loss + weight * seg_loss(a.float(), masks, defined)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            schedule.step()
            step += 1
            losses.append(loss.item())
            if not quiet and (i % 25 == 0 or i == steps_per_epoch - 1):
                rate = (i + 1) * recipe.batch / (time.perf_counter() - started)
                print(
                    f"\repoch {epoch + 1}/{recipe.epochs} [{i + 1}/{steps_per_epoch}] loss {np.mean(losses[-25:]):.4f}"
                    f" {rate:.1f} img/s",
                    end="",
                    flush=True,
                )
            if max_steps is not None and step >= max_steps:
                break
        metrics = evaluate_samples(model, val_set, recipe.bf16)
        elapsed = time.perf_counter() - started
        if not quiet:
            print(
                f"\repoch {epoch + 1}/{recipe.epochs} loss {np.mean(losses):.4f} val dice {metrics['dice']:.4f} "
                f"view acc {metrics['view_accuracy']:.3f} ({elapsed:.0f} s)",
                flush=True,
            )
        new_log = not log_path.exists()
        with log_path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new_log:
                writer.writerow(["epoch", "step", "loss", "val_dice", "val_view_accuracy", "seconds"])
            writer.writerow(
                [
                    epoch + 1,
                    step,
                    f"{np.mean(losses):.5f}",
                    f"{metrics['dice']:.5f}",
                    f"{metrics['view_accuracy']:.4f}",
                    f"{elapsed:.1f}",
                ]
            )
        state = {
            "model": model.state_dict(),
            "optimiser": optimiser.state_dict(),
            "schedule": schedule.state_dict(),
            "epoch": epoch,
            "step": step,
            "recipe": asdict(recipe),
            "metrics": metrics,
        }
        torch.save(state, run / "last.pt.tmp")
        (run / "last.pt.tmp").replace(checkpoint)
        (run / "metrics.json").write_text(json.dumps({"epoch": epoch + 1, **metrics}, indent=1))
        if max_steps is not None and step >= max_steps:
            break
    return metrics


def losses_of_first_steps(run: Path, recipe: Recipe, steps: int) -> list[float]:
    """For the smoke test: the loss of each of the first `steps` steps on a fixed batch."""
    samples = load_or_build(run, "train", recipe.train_seed, recipe.samples, recipe.size)
    torch.manual_seed(recipe.seed)
    model = ResUNet(len(STRUCTURES), len(VIEW_CLASSES), base=recipe.base_channels)
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate)
    images, masks, defined, views = to_tensors(samples, np.arange(min(recipe.batch, len(samples))))
    out = []
    for _ in range(steps):
        logits, view_logits, _ = model(images)
        loss = seg_loss(logits, masks, defined) + 0.2 * F.cross_entropy(view_logits, views)
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        out.append(float(loss))
    return out
