"""Decode and preprocess: the same pixels for training and the appliance, coordinates both ways."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from edge.dicom.decode import decode
from edge.imaging.preprocess import make_transform, preprocess, resample
from tests.conftest import ideal_acquisition, render_case
from tools.phantom.dataset import SetOptions, write_image


@pytest.mark.parametrize(
    ("rows", "cols", "size"), [(2500, 2500, 256), (2500, 2048, 256), (1800, 2600, 512), (64, 48, 256)]
)
def test_coordinates_round_trip(rows: int, cols: int, size: int) -> None:
    t = make_transform(rows, cols, size)
    rng = np.random.default_rng(0)
    pts = np.stack([rng.uniform(0, cols - 1, 50), rng.uniform(0, rows - 1, 50)], axis=1)
    assert np.abs(t.to_image(t.to_network(pts)) - pts).max() < 1e-9
    corners = t.to_network(np.array([[-0.5, -0.5], [cols - 0.5, rows - 0.5]]))
    valid_rows, valid_cols = t.valid
    assert corners[0] == pytest.approx([valid_cols.start - 0.5, valid_rows.start - 0.5])
    assert corners[1] == pytest.approx([valid_cols.stop - 0.5, valid_rows.stop - 0.5])


def test_resampled_mask_keeps_its_centroid_and_area() -> None:
    mask = np.zeros((2500, 2100), dtype=np.float32)
    mask[700:900, 1300:1420] = 1.0
    t = make_transform(*mask.shape, 256)
    small = resample(mask, t)
    ys, xs = np.nonzero(small)
    w = small[ys, xs]
    centroid = t.to_image(np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()]))
    assert centroid == pytest.approx([1359.5, 799.5], abs=0.1)  # a tenth of an image pixel
    assert small.sum() / (t.scale_x * t.scale_y) == pytest.approx(mask.sum(), rel=1e-3)


def test_preprocess_output_and_padding() -> None:
    pixels = np.linspace(0, 1, 300 * 200, dtype=np.float32).reshape(300, 200)
    x, t = preprocess(pixels, 128)
    assert x.shape == (1, 1, 128, 128) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    _valid_rows, valid_cols = t.valid
    assert (valid_cols.start, valid_cols.stop) == (21, 106)
    assert not x[0, 0, :, : valid_cols.start].any()


def test_preprocess_rejects_what_is_not_an_image() -> None:
    with pytest.raises(ValueError, match="2-D image"):
        preprocess(np.zeros((3, 64, 64), dtype=np.float32))
    with pytest.raises(ValueError, match="at least 16"):
        preprocess(np.zeros((8, 8), dtype=np.float32))


def test_monochrome1_and_2_decode_to_the_same_display(tmp_path: Path) -> None:
    shown = {}
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        image = render_case(ideal_acquisition("lateral", projection="LAT", photometric=photometric), size_px=256)
        (tmp_path / photometric / "images").mkdir(parents=True)
        (tmp_path / photometric / "masks").mkdir()
        entry = write_image(image, tmp_path / photometric, SetOptions(seed=3, size_px=256))
        radiograph = decode(pydicom.dcmread(tmp_path / photometric / entry["file"]))
        assert radiograph.spacing_source == "PixelSpacing"
        assert radiograph.pixel_spacing_mm == pytest.approx((entry["pixel_spacing_mm"],) * 2, rel=1e-5)
        shown[photometric] = radiograph.pixels
    assert np.abs(shown["MONOCHROME1"] - shown["MONOCHROME2"]).max() < 1e-4
    # bone is bright: the L3 body is brighter than the soft tissue in front of it
    assert shown["MONOCHROME2"].std() > 0.1


def test_spacing_falls_back_to_imager_spacing_then_unknown(tmp_path: Path) -> None:
    image = render_case(ideal_acquisition("ap", projection="AP"), size_px=256)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    entry = write_image(image, tmp_path, SetOptions(seed=3, size_px=256))
    ds = pydicom.dcmread(tmp_path / entry["file"])
    calibrated = decode(ds).pixel_spacing_mm
    copied = pydicom.dcmread(tmp_path / entry["file"])
    copied.PixelSpacing = copied.ImagerPixelSpacing  # the pitch repeated, no calibration: detector mm
    if "PixelSpacingCalibrationType" in copied:
        del copied.PixelSpacingCalibrationType
    assert decode(copied).spacing_source == "ImagerPixelSpacing/magnification"
    del copied.EstimatedRadiographicMagnificationFactor
    at_detector = decode(copied)
    assert at_detector.spacing_source == "ImagerPixelSpacing"
    assert at_detector.pixel_spacing_mm == pytest.approx(tuple(float(v) for v in copied.ImagerPixelSpacing))
    copied.PixelSpacingCalibrationType = "GEOMETRY"  # calibrated, and equal by chance: believed
    assert decode(copied).spacing_source == "PixelSpacing"
    del ds.PixelSpacing
    r = decode(ds)
    assert r.spacing_source == "ImagerPixelSpacing/magnification"
    assert r.pixel_spacing_mm is not None and calibrated is not None
    assert abs(r.pixel_spacing_mm[0] - calibrated[0]) < 1e-4  # pitch / magnification = the calibrated spacing
    del ds.EstimatedRadiographicMagnificationFactor
    assert decode(ds).spacing_source == "ImagerPixelSpacing"
    ds.ImagerPixelSpacing = [0, 0]  # some CR readers write 0\\0: absent, not zero
    assert decode(ds).spacing_source == "unknown"
    del ds.ImagerPixelSpacing
    r = decode(ds)
    assert r.spacing_source == "unknown" and r.pixel_spacing_mm is None


@pytest.mark.parametrize(("n_in", "n_out", "axis"), [(2500, 256, 0), (2500, 256, 1), (3001, 205, 0), (300, 256, 0)])
def test_area_average_equals_the_weight_matrix_product(n_in: int, n_out: int, axis: int) -> None:
    from edge.imaging.preprocess import _area_weights, area_average

    rng = np.random.default_rng(3)
    image = rng.random((n_in, 37) if axis == 0 else (37, n_in), dtype=np.float32)
    weights = _area_weights(n_in, n_out).astype(np.float64)
    reference = weights @ image if axis == 0 else image @ weights.T
    assert np.abs(area_average(image, n_out, axis) - reference).max() < 1e-5
