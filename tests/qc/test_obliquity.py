"""The obliquity read from both pedicles: the projection it inverts, and the fit of its constant."""

from __future__ import annotations

import numpy as np
import pytest

from edge.qc.items.oblique import PEDICLE_HALF_SPAN_TO_DEPTH, angle_from_pedicles
from tools.fit_obliquity import Sample, fit_ratio, two_pedicle_angle


def projected_positions(
    angle_deg: float, half_span: float, depth: float, width: float, body_depth: float
) -> tuple[float, float]:
    """Near and far pedicle across an elliptic body turned by `angle_deg` from AP (0 anterior edge,
    1 posterior edge): the projection the item inverts."""
    a = np.radians(angle_deg)
    extent = np.hypot(width * np.cos(a), body_depth * np.sin(a))
    near = -half_span * np.cos(a) + depth * np.sin(a)
    far = half_span * np.cos(a) + depth * np.sin(a)
    return float((near + extent) / (2 * extent)), float((far + extent) / (2 * extent))


@pytest.mark.parametrize("angle", [20.0, 30.0, 45.0, 55.0, 65.0])
@pytest.mark.parametrize(("width", "body_depth"), [(25.0, 21.0), (22.0, 17.0), (30.0, 24.0)])
def test_both_pedicles_give_the_turn_whatever_the_body(angle: float, width: float, body_depth: float) -> None:
    """The body's width and depth drop out: only the pedicles' half span over their depth counts."""
    depth = 23.0
    near, far = projected_positions(angle, PEDICLE_HALF_SPAN_TO_DEPTH * depth, depth, width, body_depth)
    estimate = angle_from_pedicles(near, far)
    assert estimate is not None and estimate == pytest.approx(angle, abs=1e-6)


def test_another_anatomy_errs_by_its_own_ratio() -> None:
    """A patient whose pedicles span 10 % more than the constant assumes reads 2-3 degrees less at 45."""
    depth = 23.0
    near, far = projected_positions(45.0, 1.1 * PEDICLE_HALF_SPAN_TO_DEPTH * depth, depth, 25.0, 21.0)
    estimate = angle_from_pedicles(near, far)
    assert estimate is not None and -3.5 < estimate - 45.0 < -2.0


def test_pedicles_drawn_over_each_other_are_not_read() -> None:
    assert angle_from_pedicles(0.50, 0.55) is None
    assert angle_from_pedicles(0.60, 0.40) is None


def samples(source: str, ratio: float, angles: list[float]) -> list[Sample]:
    out = []
    for angle in angles:
        positions = {lv: projected_positions(angle, ratio * 23.0, 23.0, 25.0, 21.0) for lv in ("L2", "L3", "L4")}
        out.append(Sample(source, angle, {lv: (near, far) for lv, (near, far) in positions.items()}))
    return out


def test_fit_recovers_one_anatomy_and_weighs_two_alike() -> None:
    angles = [30.0, 35.0, 40.0, 45.0, 50.0, 55.0]
    assert fit_ratio(samples("a", 0.70, angles)) == pytest.approx(0.70, abs=0.003)
    # twice as many images of one anatomy do not pull the constant towards it
    both = samples("a", 0.65, angles * 2) + samples("b", 0.75, angles)
    assert 0.66 < fit_ratio(both) < 0.74
    sample = samples("a", 0.70, [45.0])[0]
    assert two_pedicle_angle(sample, 0.70) == pytest.approx(45.0, abs=1e-6)
    one_level = Sample("a", 45.0, {"L3": sample.pedicles["L3"], "L4": (sample.pedicles["L4"][0], None)})
    assert two_pedicle_angle(one_level, 0.70) is None  # two levels with both pedicles, as the item asks
