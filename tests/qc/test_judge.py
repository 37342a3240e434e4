"""Judging is pure: measurements and the standard in, outcomes and corrections out."""

from __future__ import annotations

from edge.qc.item import Setting
from edge.qc.judge import judge_item, overall
from edge.qc.measure import Measurement
from edge.qc.standard import load_standard

STANDARD = load_standard()


def result(view: str, item: str, value: float | None, **detail: object):  # type: ignore[no-untyped-def]
    measurement = Measurement(item, value, "", dict(detail), cut=bool(detail.get("cut", False)))
    return judge_item(measurement, STANDARD.rule(view, item), Setting(view, 1.0))  # type: ignore[arg-type]


def test_coverage_fails_when_the_structure_touches_the_field_edge() -> None:
    assert result("ap", "upper_coverage", 12.0, cut=False, nearest_edge="top").outcome == "pass"
    assert result("ap", "upper_coverage", 4.0, cut=False, nearest_edge="top").outcome == "fail"
    assert result("ap", "upper_coverage", 12.0, cut=True, nearest_edge="top").outcome == "fail"  # ends on the edge
    touching = result("ap", "lower_coverage", 0.3, cut=True, nearest_edge="bottom")
    assert touching.outcome == "fail" and "move the field down" in touching.correction
    missing = result("ap", "lower_coverage", float("-inf"), cut=True, missing=["si_joint_left"])
    assert missing.outcome == "fail" and "left SI joint not in the field" in missing.correction


def test_ranges_and_exposure_bands() -> None:
    assert result("ap", "rotation_pedicles", 1.0).outcome == "pass"
    assert result("ap", "rotation_pedicles", 1.3).outcome == "fail"
    assert result("ap", "rotation_pedicles", 0.7).outcome == "fail"
    assert result("ap", "exposure_index", 0.5).outcome == "pass"
    assert result("ap", "exposure_index", 1.5).outcome == "warn"
    over = result("ap", "exposure_index", 3.5)
    under = result("ap", "exposure_index", -3.5)
    assert over.outcome == under.outcome == "fail"
    assert "reduce the mAs" in over.correction and "increase the mAs" in under.correction
    assert result("ap", "axis_tilt", -6.0).outcome == "fail"  # either direction


def test_corrections_follow_the_measured_direction() -> None:
    under = result("oblique", "obliquity", 22.0)
    over = result("oblique", "obliquity", 60.0)
    assert "further, by about 23 degrees" in under.correction
    assert "back, by about 15 degrees" in over.correction
    left = result("ap", "rotation_spinous", 0.3, rotation_deg=9.0)
    right = result("ap", "rotation_spinous", 0.3, rotation_deg=-9.0)
    assert "about 9 degrees (the left side turned back)" in left.correction
    assert "the right side turned back" in right.correction
    centring = result("ap", "centring", 0.2, offset_x_mm=40.0, offset_y_mm=-12.0)
    assert centring.correction == "move the central ray 4 cm towards the image's right and 1 cm up at the detector"


def test_unmeasured_items_make_the_image_indeterminate_unless_something_failed() -> None:
    unmeasured = result("ap", "pelvis_rotation", None)
    assert unmeasured.outcome == "indeterminate"
    passed = result("ap", "axis_tilt", 1.0)
    failed = result("ap", "axis_tilt", 9.0)
    assert overall({"a": passed, "b": unmeasured}) == "indeterminate"
    assert overall({"a": failed, "b": unmeasured}) == "fail"
    assert overall({"a": passed}) == "pass"


def test_warn_severity_never_fails_the_image() -> None:
    from dataclasses import replace

    rule = replace(STANDARD.rule("ap", "collimation"), severity="warn")
    r = judge_item(Measurement("collimation", 2.0, "ratio", {"minimal_field_mm": [200, 300]}), rule, Setting("ap"))
    assert r.outcome == "warn" and overall({"collimation": r}) == "pass"
    assert r.correction == "collimate to about 23 x 34 cm at the detector"  # the typical 1.15 magnification


def test_collimation_and_centring_are_whole_centimetres_at_the_detector() -> None:
    """Spine-plane millimetres times the magnification the image records (Imager over Pixel Spacing),
    rounded to whole centimetres: 116 x 233 mm at 1.2 is 13.9 x 28.0 cm."""
    field = Measurement("collimation", 2.0, "ratio", {"minimal_field_mm": [116, 233]})
    r = judge_item(field, STANDARD.rule("ap", "collimation"), Setting("ap", 1.2))
    assert r.correction == "collimate to about 14 x 28 cm at the detector"
    at_detector = judge_item(field, STANDARD.rule("ap", "collimation"), Setting("ap", 1.0))
    assert at_detector.correction == "collimate to about 12 x 23 cm at the detector"
    centring = Measurement("centring", 0.2, "fraction", {"offset_x_mm": -60.0, "offset_y_mm": 2.0})
    moved = judge_item(centring, STANDARD.rule("ap", "centring"), Setting("ap", 1.25))
    assert moved.correction == "move the central ray 8 cm towards the image's left at the detector"
