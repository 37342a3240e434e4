"""Electronic shutters: a frame the modality painted black or white (or named in its tags) is shown as the
collimator's shadow and never counts as clipping, so the field and the clipping item do not move."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from edge.dicom.decode import decode
from edge.dicom.shutter import burnt_in, from_tags
from edge.pipeline import Pipeline
from tests.conftest import ideal_acquisition, render_case
from tests.qc.conftest import write_case


def _field_area_and_clipping(pipeline: Pipeline, ds: pydicom.Dataset) -> tuple[float, float]:
    verdict = pipeline.process(ds).verdict
    field_mm = verdict.items["collimation"].detail["field_mm"]
    assert isinstance(field_mm, list)
    width, height = field_mm
    clipping = verdict.items["clipping"].value
    assert clipping is not None, verdict.summary()
    return float(width) * float(height), clipping


@pytest.mark.parametrize("paint", ["black", "white"])
def test_a_painted_shutter_moves_neither_field_nor_clipping(pipeline: Pipeline, tmp_path: Path, paint: str) -> None:
    image = render_case(ideal_acquisition("ap", projection="AP", saturation_fraction=0.05))
    path = write_case(image, tmp_path)
    plain = pydicom.dcmread(path)
    field = image.rendering.masks["field"]
    rows, cols = np.flatnonzero(field.any(axis=1)), np.flatnonzero(field.any(axis=0))
    r0, r1, c0, c1 = rows[0] - 3, rows[-1] + 4, cols[0] - 3, cols[-1] + 4  # just outside the exposed field
    assert r0 > 10 and c0 > 10 and r1 < field.shape[0] - 10 and c1 < field.shape[1] - 10
    top = 2 ** int(plain.BitsStored) - 1
    dark = 0 if plain.PhotometricInterpretation == "MONOCHROME2" else top
    value = dark if paint == "black" else top - dark
    shuttered = pydicom.dcmread(path)
    stored = shuttered.pixel_array.copy()
    stored[:r0], stored[r1:], stored[:, :c0], stored[:, c1:] = value, value, value, value
    shuttered.PixelData = stored.tobytes()

    found = decode(shuttered).shutter
    assert found is not None and found.box == (r0, r1, c0, c1)
    area, clipping = _field_area_and_clipping(pipeline, plain)
    area_shuttered, clipping_shuttered = _field_area_and_clipping(pipeline, shuttered)
    assert abs(area_shuttered - area) <= 0.01 * area
    assert clipping > 0.02 and abs(clipping_shuttered - clipping) <= 0.01


def test_shutter_tags_rectangle_circle_and_polygon() -> None:
    ds = pydicom.Dataset()
    ds.ShutterShape = ["RECTANGULAR", "CIRCULAR"]
    ds.ShutterLeftVerticalEdge, ds.ShutterRightVerticalEdge = 11, 90
    ds.ShutterUpperHorizontalEdge, ds.ShutterLowerHorizontalEdge = 21, 80
    ds.CenterOfCircularShutter, ds.RadiusOfCircularShutter = [51, 51], 30
    shutter = from_tags(ds, (100, 100))
    assert shutter is not None and shutter.box == (20, 80, 10, 90)
    covered = shutter.shuttered(np.arange(100), np.arange(100))
    assert covered[0, 50] and covered[50, 5] and not covered[50, 50]
    assert covered[25, 25]  # inside the rectangle but outside the circle
    polygon = pydicom.Dataset()
    polygon.ShutterShape = "POLYGONAL"
    polygon.VerticesOfThePolygonalShutter = [11, 11, 11, 90, 90, 90, 90, 11]
    shutter = from_tags(polygon, (100, 100))
    assert shutter is not None and shutter.mask is not None
    assert shutter.mask[5, 50] and not shutter.mask[50, 50]
    assert from_tags(pydicom.Dataset(), (100, 100)) is None


def test_noise_at_the_border_is_no_shutter() -> None:
    rng = np.random.default_rng(0)
    stored = rng.integers(100, 4000, size=(300, 200), dtype=np.uint16)
    assert burnt_in(stored) is None
    stored[:2] = 0  # a two-line dead strip is below the minimum frame
    assert burnt_in(stored) is None
    stored[:30] = 0
    shutter = burnt_in(stored)
    assert shutter is not None and shutter.box == (30, 300, 0, 200)
