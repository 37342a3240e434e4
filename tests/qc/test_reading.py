"""The reading gate: masks that cannot be trusted give "indeterminate: check the image yourself", and a
structure the model missed takes only the items that rely on it with it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from edge.config import Config
from edge.dicom.decode import decode_file
from edge.imaging.preprocess import Transform, preprocess
from edge.imaging.radiograph import Radiograph
from edge.pipeline import Pipeline
from edge.qc.assess import Assessment, assess
from edge.qc.confidence import Calibration
from edge.qc.structures import STRUCTURES
from edge.qc.verdict import schema
from tests.conftest import ideal_acquisition, render_case
from tests.qc.conftest import write_case

Case = tuple[Radiograph, np.ndarray, np.ndarray, Transform]


def _ideal_case(pipeline: Pipeline, folder: Path, view: str, projection: str) -> Case:
    """An ideal image of the view, decoded, with the model's masks."""
    radiograph = decode_file(write_case(render_case(ideal_acquisition(view, projection=projection)), folder))
    net_input, transform = preprocess(radiograph.pixels, pipeline.manifest.input_size)
    outputs = pipeline.backend.infer(net_input)
    return radiograph, np.array(outputs.masks), np.array(outputs.view), transform


@pytest.fixture(scope="module")
def ap_case(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Case:
    return _ideal_case(pipeline, tmp_path_factory.mktemp("reading"), "ap", "AP")


@pytest.fixture(scope="module")
def lpo_case(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Case:
    return _ideal_case(pipeline, tmp_path_factory.mktemp("oblique"), "oblique", "LPO")


def _assess(pipeline: Pipeline, case: Case, masks: np.ndarray) -> Assessment:
    radiograph, _, view, transform = case
    return assess(
        radiograph,
        masks,
        view,
        transform,
        pipeline.standard,
        target_exposure_index={},
        versions=pipeline.versions,
        calibration=pipeline.manifest.reading_confidence,
    )


def _channel(name: str) -> int:
    return STRUCTURES.index(name)


def test_the_ideal_ap_is_read_and_judged(pipeline: Pipeline, ap_case: Case) -> None:
    verdict = _assess(pipeline, ap_case, ap_case[1]).verdict
    assert verdict.reading is not None and verdict.reading.readable, verdict.reading
    assert verdict.verdict in ("pass", "fail") and verdict.reason_code == ""
    payload = verdict.as_dict()
    jsonschema.validate(payload, schema())
    assert payload["reading"]["readable"] is True
    assert set(payload["reading"]["checks"]) >= {"body_fill", "body_probability", "level_ambiguity"}


def test_swapped_levels_are_unreadable_not_another_anatomy(
    pipeline: Pipeline, ap_case: Case
) -> None:
    masks = ap_case[1].copy()
    masks[[_channel("body_L2"), _channel("body_L4")]] = masks[[_channel("body_L4"), _channel("body_L2")]]
    verdict = _assess(pipeline, ap_case, masks).verdict
    assert verdict.verdict == "indeterminate" and verdict.reason_code == "unreadable"
    assert "check the image yourself" in verdict.reason and "out of order" in verdict.reason
    assert not verdict.items  # no item is judged on a misread spine
    jsonschema.validate(verdict.as_dict(), schema())


def test_fragmented_bodies_are_unreadable(pipeline: Pipeline, ap_case: Case) -> None:
    masks = ap_case[1].copy()
    yy, xx = np.mgrid[0 : masks.shape[-2], 0 : masks.shape[-1]]
    holes = (yy % 3 != 0) | (xx % 3 != 0)  # eight pixels of every nine gone: specks
    for level in ("L2", "L3"):
        masks[_channel(f"body_{level}")][holes] = 0.0
    verdict = _assess(pipeline, ap_case, masks).verdict
    assert verdict.verdict == "indeterminate" and verdict.reason_code == "unreadable"
    assert verdict.reading is not None and any(f.startswith("body_fill") for f in verdict.reading.failed)


def test_unsure_bodies_are_unreadable_by_the_manifest_limits(
    pipeline: Pipeline, ap_case: Case
) -> None:
    masks = ap_case[1].copy()
    body = _channel("body_L3")
    masks[body] = np.where(masks[body] > 0.5, 0.55, masks[body])  # found, but the model is not sure
    limits = pipeline.manifest.reading_confidence
    assert limits.min_body_probability > 0.55
    verdict = _assess(pipeline, ap_case, masks).verdict
    assert verdict.reason_code == "unreadable" and "vertebral body L3 found with too little certainty" in verdict.reason
    assert verdict.reading is not None and "body_probability L3" in verdict.reading.failed
    lenient = Calibration(min_body_probability=0.5)
    radiograph, _, view, transform = ap_case
    standard = pipeline.standard
    again = assess(
        radiograph, masks, view, transform, standard, target_exposure_index={}, versions={}, calibration=lenient
    ).verdict
    assert again.reason_code != "unreadable"


def test_missed_si_joints_leave_only_pelvis_rotation_indeterminate(
    pipeline: Pipeline, ap_case: Case
) -> None:
    whole = _assess(pipeline, ap_case, ap_case[1]).verdict
    for removed in (("si_joint_left", "si_joint_right"), ("si_joint_right",)):
        masks = ap_case[1].copy()
        for name in removed:
            masks[_channel(name)] = 0.0
        verdict = _assess(pipeline, ap_case, masks).verdict
        undecided = {name for name, r in verdict.items.items() if r.outcome == "indeterminate"}
        assert undecided == {"pelvis_rotation"}, (removed, verdict.summary())
        assert verdict.items["lower_coverage"].outcome == whole.items["lower_coverage"].outcome == "pass"
        others = {n: r.outcome for n, r in verdict.items.items() if n != "pelvis_rotation"}
        assert others == {n: r.outcome for n, r in whole.items.items() if n != "pelvis_rotation"}
        assert verdict.verdict == "indeterminate" and verdict.reason_code == "items_unmeasurable"


def test_levels_with_nothing_to_count_from_are_unreadable(pipeline: Pipeline, ap_case: Case) -> None:
    """Without the sacrum and the iliac crests the bodies' names are the model's guess (held-out CT
    DRRs of T10-L3 were read as L1-L5 and failed on that reading): indeterminate; either anchor alone
    is enough."""
    for removed, readable in ((("sacrum", "iliac_crest"), False), (("sacrum",), True), (("iliac_crest",), True)):
        masks = ap_case[1].copy()
        for name in removed:
            masks[_channel(name)] = 0.0
        verdict = _assess(pipeline, ap_case, masks).verdict
        assert verdict.reading is not None and verdict.reading.readable is readable, (removed, verdict.reading)
        if not readable:
            assert verdict.verdict == "indeterminate" and verdict.reason_code == "unreadable"
            assert "neither the sacrum nor the iliac crests found" in verdict.reason and not verdict.items


def test_a_model_manifest_carries_its_reading_limits(tmp_path: Path) -> None:
    import json
    import shutil

    from edge.config import DEFAULT_MODEL
    from edge.engines.manifest import ManifestError, load_manifest

    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["reading_confidence"] = {"min_body_fill": 0.5, "source": "a test"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    limits = load_manifest(folder).reading_confidence
    assert limits.min_body_fill == 0.5 and limits.source == "a test"
    assert limits.max_level_ambiguity == Calibration().max_level_ambiguity
    manifest["reading_confidence"] = {"min_body_fil": 0.5}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="min_body_fil"):
        load_manifest(folder)
    assert Config().model.path == DEFAULT_MODEL


def test_a_field_that_cuts_l1_fails_upper_coverage_with_a_correction(pipeline: Pipeline, tmp_path: Path) -> None:
    from dataclasses import replace

    acq = replace(ideal_acquisition("ap", projection="AP"), faults=("cut_top",), fault_values={"cut_top": 60.0})
    image = render_case(acq)
    field = image.rendering.masks["field"]
    l1 = image.rendering.unclipped["body_L1"]
    assert 0.3 < (l1 & field).sum() / l1.sum() < 0.7  # the field edge runs through the middle of L1
    verdict = pipeline.process(write_case(image, tmp_path)).verdict
    assert verdict.verdict == "fail" and verdict.reason_code == "", verdict.summary()
    upper = verdict.items["upper_coverage"]
    assert upper.outcome == "fail" and "field" in upper.correction and "up" in upper.correction, upper.correction


def test_a_view_the_tags_and_the_model_disagree_on_is_not_judged(pipeline: Pipeline, ap_case: Case) -> None:
    """An AP whose tags say lateral: one of the two is wrong and nothing says which, so no item is
    judged under either standard (a confident wrong view was a source of wrong verdicts on CT DRRs)."""
    from dataclasses import replace

    radiograph, masks, view, transform = ap_case
    mistagged = replace(radiograph, view_from_tags="lateral")
    verdict = _assess(pipeline, (mistagged, masks, view, transform), masks).verdict
    assert verdict.verdict == "indeterminate" and verdict.reason_code == "unreadable"
    assert "the DICOM tags say lateral" in verdict.reason and not verdict.items
    assert verdict.view is not None and verdict.view.agree is False


def test_obliquity_without_articular_processes_takes_the_spinous_side(pipeline: Pipeline, lpo_case: Case) -> None:
    """The articular processes say which side is posterior; where the model (or a CT's labels) has
    none, the spinous process does, and the angle is the same within a degree."""
    case = lpo_case
    full = _assess(pipeline, case, case[1]).verdict.items["obliquity"]
    masks = case[1].copy()
    masks[_channel("articular_process")] = 0.0
    without = _assess(pipeline, case, masks).verdict.items["obliquity"]
    assert full.value is not None and without.value is not None
    assert abs(without.value - full.value) < 1.0


@pytest.mark.parametrize("kind", ["uniform", "gaussian", "smooth"])
def test_random_noise_gets_no_confident_verdict(pipeline: Pipeline, tmp_path: Path, kind: str) -> None:
    """Noise where a radiograph should be (a broken detector, a hostile sender) is never given a
    pass or a fail with positioning corrections (issue 15)."""
    import pydicom
    from scipy.ndimage import gaussian_filter

    ds = pydicom.dcmread(write_case(render_case(ideal_acquisition("ap", projection="AP")), tmp_path))
    rng = np.random.default_rng(15)
    shape = (int(ds.Rows), int(ds.Columns))
    if kind == "uniform":
        noise = rng.uniform(0, 4095, shape)
    elif kind == "gaussian":
        noise = np.clip(rng.normal(2000, 600, shape), 0, 4095)
    else:
        blobs = gaussian_filter(rng.normal(0, 1, shape), 8)
        noise = (blobs - blobs.min()) / (blobs.max() - blobs.min()) * 4095
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = noise.astype(np.uint16).tobytes()
    verdict = pipeline.process(ds).verdict
    assert verdict.verdict in ("indeterminate", "rejected"), (verdict.verdict, verdict.reason_code)


def _per_level(detail: Mapping[str, object], key: str) -> dict[str, object]:
    value = detail[key]
    assert isinstance(value, dict), detail
    return value


def test_obliquity_leaves_out_a_body_the_field_cuts(pipeline: Pipeline, lpo_case: Case) -> None:
    """A body the field cuts has the field's extent, not its own: the pedicles are placed across the
    whole bodies only, and the turn is the median of those levels' angles."""
    case = lpo_case
    full = _assess(pipeline, case, case[1]).verdict.items["obliquity"]
    assert set(_per_level(full.detail, "pedicles")) == {"L2", "L3", "L4"} and full.detail["method"] == "both pedicles"
    masks = case[1].copy()
    rows = np.flatnonzero((masks[_channel("body_L4")] > 0.5).any(axis=1))
    masks[_channel("field"), int(rows.mean()) :, :] = 0.0  # the field's lower edge through L4
    cut = _assess(pipeline, case, masks).verdict.items["obliquity"]
    assert set(_per_level(cut.detail, "pedicles")) == {"L2", "L3"}
    kept = {lv: a for lv, a in _per_level(full.detail, "per_level_deg").items() if lv != "L4"}
    assert _per_level(cut.detail, "per_level_deg") == kept
    angles = [float(a) for a in kept.values()]  # type: ignore[arg-type]
    assert cut.value == pytest.approx(float(np.median(angles)), abs=0.06)  # the kept angles are rounded
