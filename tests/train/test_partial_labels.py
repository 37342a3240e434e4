"""Partial labels and augmentation: a sample supervises only what its source labels."""

from __future__ import annotations

import numpy as np
import torch

from edge.imaging.preprocess import make_transform, normalise
from edge.qc.structures import STRUCTURES, VIEW_CLASSES
from tools.train.augment import AugmentSettings, augment_batch, geometry, renormalise, shutters
from tools.train.train import seg_loss

C = len(STRUCTURES)
FIELD = STRUCTURES.index("field")
BODY_L3 = STRUCTURES.index("body_L3")
SACRUM = STRUCTURES.index("sacrum")


def test_unlabelled_channels_and_pixels_get_no_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, C, 16, 16, generator=gen, requires_grad=True)
    target = (torch.rand(2, C, 16, 16, generator=gen) > 0.5).float()
    known = torch.zeros(2, C, 16, 16)
    known[:, BODY_L3] = 1.0  # a real film: bodies known everywhere
    known[0, STRUCTURES.index("disc"), :8] = 1.0  # the disc known in the top half only
    loss = seg_loss(logits, target, known)
    loss.backward()  # type: ignore[no-untyped-call]
    grad = logits.grad
    assert grad is not None
    assert torch.all(grad[known == 0] == 0)  # exactly zero, not small
    assert grad[:, BODY_L3].abs().sum() > 0 and grad[0, STRUCTURES.index("disc"), :8].abs().sum() > 0
    # changing what an unlabelled channel predicts cannot change the loss
    with torch.no_grad():
        other = logits.clone()
        other[:, SACRUM] += 5.0
        assert torch.isclose(seg_loss(other, target, known), loss)


def test_per_channel_flags_equal_the_same_map_spelled_out() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, C, 8, 8, generator=gen)
    target = torch.rand(3, C, 8, 8, generator=gen)
    flags = torch.rand(3, C, generator=gen) > 0.4
    spelled = flags[:, :, None, None].float().expand(3, C, 8, 8)
    assert torch.isclose(seg_loss(logits, target, flags), seg_loss(logits, target, spelled))
    # deep supervision at a coarser resolution keeps the same rule
    coarse = torch.randn(3, C, 4, 4, generator=gen, requires_grad=True)
    seg_loss(coarse, target, spelled).backward()  # type: ignore[no-untyped-call]
    assert coarse.grad is not None and torch.all(coarse.grad[~flags] == 0)


def _batch(view: str = "ap") -> tuple[torch.Tensor, ...]:
    images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    masks = torch.zeros(4, C, 32, 32)
    masks[:, BODY_L3, 10:20, 12:22] = 1.0
    masks[:, FIELD] = 1.0
    known = torch.zeros(4, C, 32, 32)
    known[:, BODY_L3] = 1.0
    valid = torch.ones(4, 1, 32, 32)
    views = torch.full((4,), VIEW_CLASSES.index(view), dtype=torch.int64)
    return images, masks, known, valid, views


def test_shutters_hide_anatomy_and_make_the_field_known_absent_there() -> None:
    images, masks, known, valid, _ = _batch()
    settings = AugmentSettings(shutter=1.0)
    for seed in range(6):
        generator = torch.Generator().manual_seed(seed)
        out_images, out_masks, out_known = shutters(images, masks, known, valid, settings, generator)
        hidden = (out_known[:, FIELD] == 1) & (valid[:, 0] > 0)
        if not hidden.any():
            continue
        assert torch.all(out_masks[:, FIELD][hidden] == 0) and torch.all(out_masks[:, BODY_L3][hidden] == 0)
        shade = out_images[:, 0][hidden]
        assert torch.all((shade == 0) | (shade == 1))  # black or white, flat
        return
    raise AssertionError("no shutter drawn in six tries")


def test_only_laterals_are_mirrored() -> None:
    settings = AugmentSettings(geometry=0.0, lateral_mirror=1.0)
    for view, mirrored in (("ap", False), ("oblique_left", False), ("lateral", True)):
        images, masks, known, valid, views = _batch(view)
        masks[:, BODY_L3] = 0
        masks[:, BODY_L3, 10:20, 2:8] = 1.0  # off to the image's left
        _, out_masks, _, _ = geometry(images, masks, known, valid, views, settings, torch.Generator().manual_seed(0))
        left = out_masks[:, BODY_L3, :, :16].sum()
        right = out_masks[:, BODY_L3, :, 16:].sum()
        assert (right > left) == mirrored, view


def test_geometry_keeps_the_outside_known_empty_and_unlabelled_channels_unknown() -> None:
    images, masks, known, valid, views = _batch()
    settings = AugmentSettings(geometry=1.0, zoom=(0.5, 0.5), rotation_deg=0.0, shift=0.0)
    out_images, out_masks, out_known, out_valid = geometry(
        images, masks, known, valid, views, settings, torch.Generator().manual_seed(0)
    )
    outside = out_valid[:, 0] == 0
    assert outside.any() and torch.all(out_images[:, 0][outside] == 0)
    assert torch.all(out_known[:, BODY_L3][outside] == 1)  # nothing lies outside the image: known empty
    assert torch.all(out_known[:, SACRUM] == 0)  # never labelled, still not
    body_area = (out_masks[:, BODY_L3] > 0.5).sum(dim=(1, 2)).float()
    assert torch.allclose(body_area, torch.full_like(body_area, 100 * 0.25), atol=8)  # half size: a quarter the area


def test_augmented_inputs_are_normalised_like_the_appliance() -> None:
    rng = np.random.default_rng(0)
    square = np.zeros((64, 64), dtype=np.float32)
    square[8:56, :] = rng.random((48, 64), dtype=np.float32)
    transform = make_transform(48, 64, 64)
    expected = normalise(square, transform)
    valid = torch.zeros(1, 1, 64, 64)
    valid[0, 0, 8:56] = 1.0
    got = renormalise(torch.from_numpy(square)[None, None], valid)[0, 0].numpy()
    assert np.abs(got - expected).max() < 2e-3
    images, masks, known, valid4, views = _batch()
    out, _, _ = augment_batch(images, masks, known, valid4, views, torch.Generator().manual_seed(3))
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
