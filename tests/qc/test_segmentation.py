"""The segmentation's geometry: sub-pixel masks and cached per-structure extents give the same numbers as
the direct computation over the whole network square."""

from __future__ import annotations

import numpy as np
import pytest

from edge.imaging.preprocess import make_transform
from edge.qc.segmentation import THRESHOLD, Segmentation, field_box, fine_box, fine_points
from edge.qc.structures import STRUCTURES, VIEW_CLASSES


def _blob_segmentation() -> Segmentation:
    """Smooth blobs for two structures on a 64-pixel square."""
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    probs = np.zeros((len(STRUCTURES), 64, 64), dtype=np.float32)
    probs[STRUCTURES.index("body_L3")] = np.exp(-(((xx - 30.3) / 6) ** 2 + ((yy - 20.7) / 4) ** 2))
    probs[STRUCTURES.index("sacrum")] = np.exp(-(((xx - 40) / 5) ** 2 + ((yy - 50) / 7) ** 2)) * 0.9
    views = np.full(len(VIEW_CLASSES), 1 / len(VIEW_CLASSES), np.float32)
    return Segmentation(probs, views, make_transform(64, 64, 64), 1.5)


def _fine_reference(prob: np.ndarray, region: np.ndarray | None, factor: int = 4) -> np.ndarray:
    """Bilinear interpolation by gathering the four corners of every sub-pixel over the whole square."""
    p = prob if region is None else np.where(region, prob, np.float32(0.0))
    ys = np.arange(0, 63 + 1e-9, 1 / factor)
    iy = np.minimum(ys.astype(int), 62)
    ty = (ys - iy).astype(np.float32)
    fine = (p[iy] * (1 - ty[:, None]) + p[iy + 1] * ty[:, None])[:, iy] * (1 - ty[None, :]) + (
        p[iy] * (1 - ty[:, None]) + p[iy + 1] * ty[:, None]
    )[:, iy + 1] * ty[None, :]
    yy, xx = np.nonzero(fine > THRESHOLD)
    return np.stack([ys[xx], ys[yy]], axis=1)


@pytest.mark.parametrize("banded", [False, True])
def test_fine_points_equal_interpolating_the_whole_square(banded: bool) -> None:
    seg = _blob_segmentation()
    region = None
    if banded:
        region = np.zeros((64, 64), dtype=bool)
        region[18:30] = True
    got = fine_points(seg.prob("body_L3"), region)
    want = _fine_reference(seg.prob("body_L3"), region)
    assert len(got) > 100
    assert np.array_equal(got[np.lexsort(got.T)], want[np.lexsort(want.T)])
    box = fine_box(seg.prob("body_L3"), region)
    assert box is not None
    assert box.x0 == pytest.approx(want[:, 0].min() - 0.125) and box.y1 == pytest.approx(want[:, 1].max() + 0.125)


def test_cached_extents_give_the_whole_square_centroid_and_area() -> None:
    seg = _blob_segmentation()
    p = seg.prob("body_L3")
    mask = p > THRESHOLD
    band = np.zeros((64, 64), dtype=bool)
    band[:21] = True
    for within in (None, band):
        m = mask if within is None else mask & within
        w = np.where(m, p, 0).astype(np.float64)
        yy, xx = np.mgrid[0:64, 0:64]
        want = [float((w * xx).sum() / w.sum()), float((w * yy).sum() / w.sum())]
        got = seg.centroid("body_L3", within)
        assert got is not None and got == pytest.approx(want, abs=1e-9)
    assert seg.area("body_L3") == float(mask.sum())
    assert seg.centroid("body_L1") is None and seg.area("body_L1") == 0.0 and seg.extent("body_L1") is None


def test_unions_are_found_once_and_cannot_be_changed() -> None:
    seg = _blob_segmentation()
    union = seg.union(["body_L3", "sacrum"])
    assert seg.union(("body_L3", "sacrum")) is union
    assert np.array_equal(union, np.maximum(seg.prob("body_L3"), seg.prob("sacrum")))
    with pytest.raises(ValueError, match="read-only"):
        union[0, 0] = 1.0
    assert seg.union_box(["body_L3", "sacrum"]) == fine_box(union)


def test_a_scattered_field_mask_is_no_field() -> None:
    """Field pixels strewn over the square (as a model gives on an image it cannot read) reach one half
    in no row or column: no field, which assess makes indeterminate, instead of an error."""
    rng = np.random.default_rng(6)
    probs = np.zeros((len(STRUCTURES), 64, 64), dtype=np.float32)
    probs[STRUCTURES.index("field")] = np.where(rng.random((64, 64)) < 0.3, np.float32(0.9), np.float32(0.0))
    views = np.full(len(VIEW_CLASSES), 1 / len(VIEW_CLASSES), np.float32)
    seg = Segmentation(probs, views, make_transform(64, 64, 64), 1.5)
    assert field_box(seg) is None
    probs[STRUCTURES.index("field"), 10:50, 8:40] = 0.9  # and a field where there is one
    box = field_box(Segmentation(probs, views, make_transform(64, 64, 64), 1.5))
    assert box is not None and (box.x0, box.x1, box.y0, box.y1) == pytest.approx((8.0, 40.0, 10.0, 50.0), abs=1.0)
