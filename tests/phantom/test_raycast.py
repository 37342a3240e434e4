"""The ray caster against closed-form chord lengths and areas."""

from __future__ import annotations

import numpy as np
import pytest

from tools.phantom.raycast import Detector, Plane, Primitive, project

SOURCE = np.array([0.0, 0.0, -1000.0])
DET = Detector(rows=201, cols=201, pitch_mm=0.5)


def solid(shape: str, half: float = 10.0, **kw: object) -> Primitive:
    return Primitive(shape, np.array([0.0, 0.0, -100.0]), np.eye(3), np.array([half, half, half]), 1.0, "x", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", ["ellipsoid", "cylinder", "box"])
def test_central_chord_is_the_diameter(shape: str) -> None:
    total, _ = project([solid(shape)], DET, SOURCE)
    assert total[100, 100] == pytest.approx(20.0, abs=0.01)


def test_sphere_shadow_has_the_magnified_area() -> None:
    _, masks = project([solid("ellipsoid")], DET, SOURCE)
    # radius 10 mm at 900 mm from the source, detector at 1000 mm: shadow radius ~11.1 mm
    expected_px = np.pi * (10 * 1000 / np.sqrt(900**2 - 10**2)) ** 2 / DET.pitch_mm**2
    assert masks["x"].sum() == pytest.approx(expected_px, rel=0.02)


def test_off_centre_chord_through_sphere() -> None:
    total, _ = project([solid("ellipsoid")], DET, SOURCE)
    # pixel 10 columns right of centre (x = 5 mm): ray passes ~4.5 mm from the centre
    x = DET.col_x()[110]
    offset = x * 900 / 1000  # lateral distance of the ray at the sphere's depth (near-parallel)
    assert total[100, 110] == pytest.approx(2 * np.sqrt(100 - offset**2), rel=0.01)


def test_half_space_cuts_a_box_in_half() -> None:
    cut = solid("box", planes=(Plane(np.array([0.0, 0.0, -100.0]), np.array([1.0, 0.0, 0.0])),))
    total, masks = project([cut], DET, SOURCE)
    _full_total, full_masks = project([solid("box")], DET, SOURCE)
    assert masks["x"].sum() == pytest.approx(full_masks["x"].sum() / 2, rel=0.03)
    assert total[100, 90] == pytest.approx(20.0, abs=0.01)
    assert total[100, 112] == 0.0


def test_negative_attenuation_cancels() -> None:
    outer = solid("ellipsoid")
    hole = Primitive("ellipsoid", outer.centre, outer.axes, outer.half_mm, -1.0, None)
    total, _ = project([outer, hole], DET, SOURCE)
    assert np.abs(total).max() < 1e-4


def test_region_of_interest_limits_attenuation_but_not_named_masks() -> None:
    roi = (0, 201, 0, 100)  # left half only
    total, masks = project([solid("ellipsoid")], DET, SOURCE, roi=roi, full_frame=frozenset({"x"}))
    assert total[:, 100:].max() == 0.0
    assert total[100, 95] > 0
    assert masks["x"][:, 101:].any()
