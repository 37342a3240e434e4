"""Training loop: Dice + BCE with partial labels, deep supervision, view head; seeded and resumable.

Sources (tools.train.sources): phantom renders (every structure labelled), CT DRRs (the channels the
CT labels allow) and real AP films (bodies T12-L5 and their disc spaces). Each sample supervises only
what its source labels: the loss is weighted by a per-pixel, per-channel `known` map, so an
unlabelled channel gets no gradient at all. Runs on this 2-core CPU: bfloat16 autocast (AMX/AVX-512
where the CPU has them), sample caches built once, augmentation on the fly (tools.train.augment).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from edge.imaging.preprocess import DEFAULT_SIZE
from edge.qc.structures import STRUCTURES, VIEW_CLASSES
from tools.train.augment import AugmentSettings, augment_batch
from tools.train.data import Samples, build_samples
from tools.train.metrics import dice_scores
from tools.train.model import ResUNet
from tools.train.recover import is_model_folder, load_exported_weights
from tools.train.sources import CachedSource, Item, RealFilmSource, Source
from tools.train.validate_real import RealValidation

# Seeds of the sample sets: training and validation never share an image with evaluation.
TRAIN_SEED_OFFSET = 0
VALIDATION_SEED_OFFSET = 500_000
CT_SEED_OFFSET = 700_000
# Real films already carry one vendor's processing: they get the tone and multi-scale changes half as
# often as renders do (which need them to look like anything but their own generator).
REAL_APPEARANCE_CHANCE = 0.5


@dataclass(frozen=True)
class Recipe:
    seed: int = 1
    samples: int = 4000  # phantom training images
    validation_samples: int = 150
    size: int = DEFAULT_SIZE
    base_channels: int = 16
    epochs: int = 12
    batch: int = 8
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    bf16: bool = True
    init: str = ""  # a checkpoint or an exported model folder whose weights start this run; empty: random init
    lateral_rotation_samples: int = 0  # extra lateral views with axial rotation up to 15 degrees
    symmetric_pedicles: bool = False  # on laterals, score the pedicle channels in the better order
    real_set: str = ""  # a corner-labelled AP set (AASCE layout); its development "train" patients train
    real_fraction: float = 0.0  # share of each batch drawn from the real films
    ct_samples: int = 0  # CT DRRs rendered from the training CTs (tools.ctdrr)
    ct_fraction: float = 0.0  # share of each batch drawn from them
    steps_per_epoch: int = 0  # 0: one pass over the phantom set
    augment: str = "basic"  # "basic": intensity only; "full": tools.train.augment (geometry, shutters, vendors)
    attention: bool = False  # global self-attention at the bottleneck (tools.train.model.GlobalAttention)

    @property
    def train_seed(self) -> int:
        return self.seed + TRAIN_SEED_OFFSET

    @property
    def validation_seed(self) -> int:
        return self.seed + VALIDATION_SEED_OFFSET

    @property
    def ct_seed(self) -> int:
        return self.seed + CT_SEED_OFFSET

    def check(self) -> None:
        """Refuse what cannot run, naming the field."""
        if self.real_fraction + self.ct_fraction >= 1.0 or min(self.real_fraction, self.ct_fraction) < 0:
            raise ValueError("real_fraction + ct_fraction must lie in [0, 1): the phantom supplies the rest")
        if self.real_fraction > 0 and not self.real_set:
            raise ValueError("real_fraction > 0 needs real_set (a corner-labelled AP set)")
        if self.ct_fraction > 0 and self.ct_samples < self.batch:
            raise ValueError("ct_fraction > 0 needs ct_samples >= batch")
        if self.augment not in ("basic", "full"):
            raise ValueError(f"augment: {self.augment!r} is not basic or full")


def batch_norm_frozen(state: dict[str, Any]) -> bool:
    """Whether a checkpoint's BatchNorms hold folded statistics that must stay frozen: it says so, or
    (checkpoints written before it said) its run started from an exported model folder."""
    if "frozen_batch_norm" in state:
        return bool(state["frozen_batch_norm"])
    init = str(state.get("recipe", {}).get("init", ""))
    return bool(init) and is_model_folder(Path(init))


def build_model(recipe: Recipe) -> ResUNet:
    """The network a recipe trains (and export rebuilds from its checkpoint)."""
    depth = 5
    cells = recipe.size // 2 ** (depth - 1) if recipe.attention else 0
    return ResUNet(len(STRUCTURES), len(VIEW_CLASSES), base=recipe.base_channels, depth=depth, attention_cells=cells)


def augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """Basic intensity augmentation: contrast, brightness, gamma, noise, blur."""
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


def seg_loss(logits: Tensor, target: Tensor, known: Tensor) -> Tensor:
    """BCE + soft Dice over what is known. `known` is N x C (a channel supervised everywhere or not at
    all) or N x C x H x W (per pixel); pixels and channels where it is 0 contribute nothing, not even
    through the Dice denominators, so an unlabelled structure gets no gradient."""
    weight = known.float()
    if weight.dim() == 2:
        weight = weight[:, :, None, None].expand_as(target)
    if logits.shape[-1] != target.shape[-1]:
        size = (int(logits.shape[-2]), int(logits.shape[-1]))
        target = F.adaptive_avg_pool2d(target, size)
        weight = F.adaptive_avg_pool2d(weight.contiguous(), size)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (bce * weight).sum() / weight.sum().clamp(min=1)
    prob = torch.sigmoid(logits) * weight
    target = target * weight
    inter = (prob * target).sum(dim=(2, 3))
    denom = prob.sum(dim=(2, 3)) + target.sum(dim=(2, 3))
    dice = (2 * inter + 1.0) / (denom + 1.0)
    supervised = (weight.sum(dim=(2, 3)) > 0).float()
    dice_loss = ((1 - dice) * supervised).sum() / supervised.sum().clamp(min=1)
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


def to_tensors(samples: Samples, idx: np.ndarray) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    images = torch.from_numpy(samples.images[idx].astype(np.float32) / 255.0)[:, None]
    masks = torch.from_numpy(samples.masks[idx].astype(np.float32) / 255.0)
    defined = torch.from_numpy(samples.defined[idx])
    views = torch.from_numpy(samples.views[idx])
    return images, masks, defined, views


@dataclass
class Batch:
    images: Tensor  # N x 1 x S x S
    masks: Tensor  # N x C x S x S
    known: Tensor  # N x C x S x S
    valid: Tensor  # N x 1 x S x S
    views: Tensor  # N
    real: Tensor  # N, bool: a real radiograph


def collate(items: list[Item]) -> Batch:
    size = items[0].image.shape[-1]
    known = np.empty((len(items), len(STRUCTURES), size, size), dtype=np.float32)
    for i, item in enumerate(items):
        known[i] = item.known[:, None, None] if item.known.ndim == 1 else item.known
    return Batch(
        images=torch.from_numpy(np.stack([it.image for it in items]).astype(np.float32))[:, None],
        masks=torch.from_numpy(np.stack([it.masks for it in items]).astype(np.float32) / 255.0),
        known=torch.from_numpy(known),
        valid=torch.from_numpy(np.stack([it.valid for it in items]).astype(np.float32))[:, None],
        views=torch.tensor([it.view for it in items], dtype=torch.int64),
        real=torch.tensor([it.real for it in items], dtype=torch.bool),
    )


class Mixture:
    """Draws each batch slot from a source by its share. The phantom is walked through a fresh
    permutation each epoch (with the phantom alone, every image once per epoch, as before)."""

    def __init__(self, phantom_count: int, others: list[tuple[Source, float]], batch: int) -> None:
        self.phantom_count = phantom_count
        self.others = others
        self.batch = batch
        self.phantom_share = 1.0 - sum(share for _, share in others)

    def batches(self, seed: int, epoch: int, steps: int) -> list[tuple[np.ndarray, list[tuple[int, int]]]]:
        """Per step: the phantom indices and the (source, slot) of the other slots."""
        order = np.random.default_rng([seed, epoch]).permutation(self.phantom_count)
        choose = np.random.default_rng([seed, epoch, 1])
        shares = np.array([self.phantom_share, *(share for _, share in self.others)])
        plan, cursor = [], 0
        for _ in range(steps):
            picks = choose.choice(len(shares), size=self.batch, p=shares / shares.sum()) if self.others else None
            n_phantom = self.batch if picks is None else int((picks == 0).sum())
            idx = order[np.arange(cursor, cursor + n_phantom) % len(order)]
            cursor += n_phantom
            others = [] if picks is None else [(int(p) - 1, slot) for slot, p in enumerate(picks) if p != 0]
            plan.append((idx, others))
        return plan


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


def load_or_build(
    cache: Path, name: str, seed: int, count: int, size: int, lateral_rotation: bool = False
) -> Samples:
    path = cache / f"{name}-seed{seed}-n{count}-s{size}"
    if path.exists():
        return Samples.load(path)
    start = time.perf_counter()
    samples = build_samples(seed, count, size, lateral_rotation=lateral_rotation, out=path)
    print(f"{name}: built {count} phantom samples in {time.perf_counter() - start:.0f} s -> {path.name}", flush=True)
    return samples


def load_or_build_ct(cache: Path, seed: int, count: int, size: int) -> Samples:
    from tools.ctdrr import TRAINING_CTS
    from tools.ctdrr.samples import build_ct_samples

    path = cache / f"ct-{'-'.join(TRAINING_CTS)}-seed{seed}-n{count}-s{size}"
    if path.exists():
        return Samples.load(path)
    start = time.perf_counter()
    samples = build_ct_samples(seed, count, TRAINING_CTS, size, out=path)
    print(f"ct: built {count} CT DRR samples in {time.perf_counter() - start:.0f} s -> {path.name}", flush=True)
    return samples


def train(
    run: Path, recipe: Recipe, max_steps: int | None = None, quiet: bool = False, cache: Path | None = None
) -> dict[str, float]:
    """Train (or resume) the model in `run`; returns the last validation metrics. Sample caches live in
    `cache` (default: the run folder), so runs with the same data share them."""
    recipe.check()
    run.mkdir(parents=True, exist_ok=True)
    cache = cache or run
    cache.mkdir(parents=True, exist_ok=True)
    recipe_path = run / "recipe.json"
    if recipe_path.exists() and json.loads(recipe_path.read_text()) != asdict(recipe):
        raise ValueError(f"{run} holds a run with another recipe ({recipe_path}); use a new --out")
    recipe_path.write_text(json.dumps(asdict(recipe), indent=1))
    torch.manual_seed(recipe.seed)
    phantom_parts = [load_or_build(cache, "train", recipe.train_seed, recipe.samples, recipe.size)]
    if recipe.lateral_rotation_samples:
        phantom_parts.append(
            load_or_build(
                cache,
                "lateral-rotation",
                recipe.train_seed,
                recipe.lateral_rotation_samples,
                recipe.size,
                lateral_rotation=True,
            )
        )
    phantom = CachedSource("phantom", phantom_parts)
    val_set = load_or_build(cache, "validation", recipe.validation_seed, recipe.validation_samples, recipe.size)
    others: list[tuple[Source, float]] = []
    real_validation = None
    if recipe.real_fraction > 0:
        from tools.aasce.dataset import load_films

        real_set = Path(recipe.real_set)
        films = load_films(real_set, "train", trusted_only=True)
        others.append((RealFilmSource(films, recipe.size), recipe.real_fraction))
        real_validation = RealValidation(load_films(real_set, "validation", trusted_only=True), recipe.size)
    if recipe.ct_fraction > 0:
        ct = load_or_build_ct(cache, recipe.ct_seed, recipe.ct_samples, recipe.size)
        others.append((CachedSource("ct", [ct]), recipe.ct_fraction))
    mixture = Mixture(len(phantom), others, recipe.batch)

    model = build_model(recipe)
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    steps_per_epoch = recipe.steps_per_epoch or len(phantom) // recipe.batch
    total_steps = steps_per_epoch * recipe.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / 200) * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
    )
    start_epoch, step = 0, 0
    checkpoint = run / "last.pt"
    if recipe.init and is_model_folder(Path(recipe.init)):  # also on resume: BatchNorms stay frozen
        copied = load_exported_weights(model, Path(recipe.init), recipe.size)
        if not checkpoint.exists():
            print(f"starting from the exported model {recipe.init} ({copied} tensors; BatchNorms frozen)", flush=True)
    elif recipe.init and not checkpoint.exists():
        initial = torch.load(recipe.init, weights_only=False, map_location="cpu")
        model.load_state_dict(initial["model"])
        model.frozen_batch_norm = batch_norm_frozen(initial)
        print(f"starting from the weights of {recipe.init}", flush=True)
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        model.frozen_batch_norm = model.frozen_batch_norm or batch_norm_frozen(state)
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        print(f"resuming after epoch {start_epoch} (step {step})", flush=True)
    model.train()  # puts frozen BatchNorms in evaluation mode
    log_path = run / "log.csv"
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, recipe.epochs):
        generator = torch.Generator().manual_seed(recipe.seed * 1000 + epoch)
        draws = np.random.default_rng([recipe.seed, epoch, 2])
        started, losses = time.perf_counter(), []
        for i, (idx, slots) in enumerate(mixture.batches(recipe.seed, epoch, steps_per_epoch)):
            items = [phantom.item(int(j)) for j in idx]
            for source, _slot in slots:
                items.append(others[source][0].draw(draws))
            batch = collate(items)
            if recipe.augment == "full":
                chance = torch.where(batch.real, REAL_APPEARANCE_CHANCE, AugmentSettings().appearance)
                images, masks, known = augment_batch(
                    batch.images, batch.masks, batch.known, batch.valid, batch.views, generator, None, chance
                )
            else:
                images, masks, known = augment(batch.images, generator), batch.masks, batch.known
            images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16):
                logits, view_logits, aux = model(images)
            if recipe.symmetric_pedicles:
                masks = order_pedicles(logits, masks, batch.views)
            loss = seg_loss(logits.float(), masks, known) + 0.2 * F.cross_entropy(view_logits.float(), batch.views)
            for weight, a in zip((0.5, 0.25), aux, strict=True):
                loss = loss + weight * seg_loss(a.float(), masks, known)
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
        if real_validation is not None:
            metrics.update(real_validation.evaluate(model, recipe.bf16))
        elapsed = time.perf_counter() - started
        if not quiet:
            real = (
                f" real Dice {metrics['real_dice_l1_l5']:.4f} level right {metrics['real_level_right']:.3f}"
                if "real_dice_l1_l5" in metrics
                else ""
            )
            print(
                f"\repoch {epoch + 1}/{recipe.epochs} loss {np.mean(losses):.4f} val dice {metrics['dice']:.4f} "
                f"view acc {metrics['view_accuracy']:.3f}{real} ({elapsed:.0f} s)",
                flush=True,
            )
        new_log = not log_path.exists()
        with log_path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new_log:
                columns = ["epoch", "step", "loss", "val_dice", "val_view_accuracy", "real_dice", "real_level_right"]
                writer.writerow([*columns, "seconds"])
            writer.writerow(
                [
                    epoch + 1,
                    step,
                    f"{np.mean(losses):.5f}",
                    f"{metrics['dice']:.5f}",
                    f"{metrics['view_accuracy']:.4f}",
                    f"{metrics.get('real_dice_l1_l5', float('nan')):.5f}",
                    f"{metrics.get('real_level_right', float('nan')):.4f}",
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
            "frozen_batch_norm": model.frozen_batch_norm,
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
    model = build_model(recipe)
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
