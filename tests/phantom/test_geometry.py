"""The projected anatomy against the 3D truth: rotation, coverage, obliquity."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import ideal_acquisition, render_case
from tools.phantom.dataset import PhantomImage
from tools.phantom.truth import _Geometry, eye_position

LEVELS = ("L1", "L2", "L3", "L4", "L5")


def column_centroid(mask: np.ndarray) -> float:
    cols = np.arange(mask.shape[1])
    return float((mask.sum(axis=0) * cols).sum() / mask.sum())


def spinous_offset_px(image: PhantomImage) -> tuple[float, list[float]]:
    """Spinous process minus pedicle midpoint, from the masks and per level from the landmarks."""
    m = image.rendering.masks
    from_masks = (
        column_centroid(m["spinous_process"])
        - (column_centroid(m["pedicle_left"]) + column_centroid(m["pedicle_right"])) / 2
    )
    lm = image.entry["landmarks_px"]
    per_level = [
        lm[f"spinous.{lv}.centre"][0] - (lm[f"pedicle.{lv}.left.centre"][0] + lm[f"pedicle.{lv}.right.centre"][0]) / 2
        for lv in LEVELS
    ]
    return from_masks, per_level


def test_unrotated_spinous_process_lies_midway_between_pedicles() -> None:
    image = render_case(ideal_acquisition("ap", projection="AP"))
    from_masks, per_level = spinous_offset_px(image)
    assert abs(from_masks) < 1.0
    assert max(abs(v) for v in per_level) < 1.0
    assert image.entry["qc"]["items"]["rotation_spinous"]["outcome"] == "pass"


@pytest.mark.parametrize("angle", [5.0, 10.0])
def test_rotation_moves_spinous_process_to_opposite_sides_by_the_expected_amount(angle: float) -> None:
    left = render_case(ideal_acquisition("ap", projection="AP", rotation_deg=angle))
    right = render_case(ideal_acquisition("ap", projection="AP", rotation_deg=-angle))
    off_left, levels_left = spinous_offset_px(left)
    off_right, _levels_right = spinous_offset_px(right)
    assert off_left * off_right < 0
    assert abs(off_left + off_right) < 1.0  # symmetric
    # expected: (D - d) sin(theta) x magnification / pixel pitch, with D - d the posterior distance
    # from the pedicles' midpoint to the spinous process, across the rotation axis (phantom-anatomy.md)
    pts = left.anatomy.points
    midpoint = (pts["pedicle.L3.left.centre"][0] + pts["pedicle.L3.right.centre"][0]) / 2
    depth = abs(pts["spinous.L3.centre"][0][1] - midpoint[1])
    pose = left.rendering.pose
    z_spinous = pose.to_lab(pts["spinous.L3.centre"])[0, 2]
    magnification = -pose.source[2] / (z_spinous - pose.source[2])  # at the spinous process' depth
    expected = depth * np.sin(np.radians(angle)) * magnification / left.rendering.detector.pitch_mm
    assert abs(levels_left[2]) == pytest.approx(expected, rel=0.05)
    assert abs(off_left) == pytest.approx(np.mean(np.abs(levels_left)), abs=1.5)


def test_ten_degree_rotation_fails_the_rotation_item() -> None:
    image = render_case(ideal_acquisition("ap", projection="AP", rotation_deg=10.0))
    qc = image.entry["qc"]
    assert qc["verdict"] == "fail"
    assert "rotation_spinous" in qc["failed_items"]
    assert image.entry["angles"]["rotation_deg"] == 10.0


def test_field_that_cuts_t12_clips_the_mask_and_fails_upper_coverage() -> None:
    acq = ideal_acquisition("ap", projection="AP", faults=("cut_top",), fault_values={"cut_top": 12.0})
    image = render_case(acq)
    field = image.rendering.masks["field"]
    t12 = image.rendering.masks["body_T12"]
    unclipped = image.rendering.unclipped["body_T12"]
    field_top = int(np.flatnonzero(field.any(axis=1))[0])
    assert int(np.flatnonzero(t12.any(axis=1))[0]) == field_top
    assert int(np.flatnonzero(unclipped.any(axis=1))[0]) < field_top - 5
    assert not (t12 & ~field).any()
    item = image.entry["qc"]["items"]["upper_coverage"]
    assert item["outcome"] == "fail" and item["value"] < 0
    assert "upper_coverage" in image.entry["qc"]["failed_items"]


def test_good_field_passes_upper_coverage() -> None:
    image = render_case(ideal_acquisition("ap", projection="AP"))
    assert image.entry["qc"]["items"]["upper_coverage"]["outcome"] == "pass"


@pytest.mark.parametrize("projection", ["LPO", "RPO", "LAO", "RAO"])
def test_oblique_eye_moves_across_the_body_with_the_angle(projection: str) -> None:
    positions = {}
    for angle in (20.0, 45.0, 70.0):
        image = render_case(ideal_acquisition("oblique", projection=projection, obliquity_deg=angle), size_px=512)
        g = _Geometry(image.anatomy, image.rendering)
        positions[angle] = eye_position(g, image.acquisition, "L3")
    assert 0.35 <= positions[45.0] <= 0.65, positions  # near the middle of the body
    assert positions[20.0] < 0.35 < 0.65 < positions[70.0], positions  # towards opposite edges


def test_oblique_eye_sits_on_the_body_in_the_masks() -> None:
    image = render_case(ideal_acquisition("oblique", projection="LPO", obliquity_deg=45.0))
    masks = image.rendering.masks
    body = masks["body_L3"]
    rows = np.flatnonzero(body.any(axis=1))
    band = slice(rows[0], rows[-1] + 1)
    pedicle = masks["pedicle_left"][band] & body[band]
    cols = np.flatnonzero(body[band].any(axis=0))
    centre = column_centroid(pedicle)
    assert cols[0] + 0.3 * (cols[-1] - cols[0]) < centre < cols[0] + 0.7 * (cols[-1] - cols[0])


def test_obliquity_outside_band_fails_with_direction() -> None:
    under = render_case(ideal_acquisition("oblique", projection="LPO", obliquity_deg=20.0), size_px=512)
    over = render_case(ideal_acquisition("oblique", projection="RPO", obliquity_deg=65.0), size_px=512)
    good = render_case(ideal_acquisition("oblique", projection="LPO", obliquity_deg=40.0), size_px=512)
    assert under.entry["qc"]["items"]["obliquity"]["direction"] == "under"
    assert over.entry["qc"]["items"]["obliquity"]["direction"] == "over"
    assert "obliquity" in under.entry["qc"]["failed_items"] and "obliquity" in over.entry["qc"]["failed_items"]
    assert good.entry["qc"]["items"]["obliquity"]["outcome"] == "pass"
    assert good.entry["view_class"] == "oblique_left" and over.entry["view_class"] == "oblique_right"


def test_lateral_rotation_doubles_the_posterior_margin() -> None:
    straight = render_case(ideal_acquisition("lateral", projection="LAT"), size_px=512)
    rotated = render_case(ideal_acquisition("lateral", projection="LAT", rotation_deg=8.0), size_px=512)
    gap0 = straight.entry["qc"]["items"]["rotation_double_margins"]["value"]
    gap8 = rotated.entry["qc"]["items"]["rotation_double_margins"]["value"]
    assert gap0 < 1.0  # divergence alone separates the lobes a little off the central ray
    assert gap8 > 2.0
    assert "rotation_double_margins" in rotated.entry["qc"]["failed_items"]


def test_pa_is_displayed_like_ap() -> None:
    ap = render_case(ideal_acquisition("ap", projection="AP", rotation_deg=8.0), size_px=512)
    pa = render_case(ideal_acquisition("ap", projection="PA", rotation_deg=8.0), size_px=512)
    # the patient's left pedicles appear on the display's right in both
    for image in (ap, pa):
        lm = image.entry["landmarks_px"]
        assert lm["pedicle.L3.left.centre"][0] > lm["pedicle.L3.right.centre"][0]
        m = image.rendering.masks
        assert column_centroid(m["pedicle_left"]) > column_centroid(m["pedicle_right"])
