"""The overlay: smooth outlines, a legend of exactly what is drawn, labels that read on bone, and each
failed item's marker on the structure it names (phantom images through the shipped model)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest
from numpy.typing import NDArray

from edge.imaging.preprocess import make_transform
from edge.imaging.radiograph import ExposureTags, Radiograph
from edge.pipeline import Pipeline, Result
from edge.qc.items.coverage import MIN_MOVE_MM, required_box
from edge.qc.judge import ItemResult
from edge.qc.measure import Spine
from edge.qc.overlay import (
    FAILED,
    STRUCTURE_COLOURS,
    Overlay,
    banner_font_px,
    banner_lines,
    render_overlay,
    upsampled,
)
from edge.qc.segmentation import THRESHOLD, Segmentation, field_box, fine_box
from edge.qc.structures import REQUIRED_STRUCTURES, STRUCTURES, View
from edge.qc.verdict import Verdict, ViewInfo
from tests.conftest import ideal_acquisition, render_case
from tests.qc.conftest import fault_case, judge_case

SIZE = 256  # network square
ITEM_ID = re.compile(r"\b[a-z]+_[a-z_]+\b")  # snake_case: an item or structure id


def radiograph(pixels: NDArray[np.float32]) -> Radiograph:
    return Radiograph(
        pixels=pixels,
        pixel_spacing_mm=(0.4, 0.4),
        spacing_source="PixelSpacing",
        stored=np.zeros((1, 1), dtype=np.uint16),
        stored_range=(0, 4095),
        view_position="AP",
        view_from_tags="ap",
        oblique_side_from_tags=None,
        faces_left=False,
        modality="DX",
        body_part="LSPINE",
        lumbar_examination=True,
        photometric="MONOCHROME2",
        exposure=ExposureTags(None, None, None),
        transfer_syntax="1.2.840.10008.1.2.1",
        sop_instance_uid="1.2.3",
        resampled_to_square=False,
    )


def segmentation(maps: dict[str, NDArray[np.float64]], image_side: int = 1024) -> Segmentation:
    probs = np.zeros((len(STRUCTURES), SIZE, SIZE), dtype=np.float32)
    for name, p in maps.items():
        probs[STRUCTURES.index(name)] = p
    return Segmentation(probs, np.zeros(4, dtype=np.float32), make_transform(image_side, image_side, SIZE), 1.6)


def verdict(items: dict[str, ItemResult] | None = None) -> Verdict:
    view = ViewInfo("ap", "ap", "ap", 0.99, True, None)
    return Verdict.judged(items=items or {}, view=view, image={}, versions={})


def failed(item: str, title: str, detail: dict[str, object] | None = None) -> ItemResult:
    return ItemResult(item, title, "fail", "fail", 1.0, "", [0.0], "wrong", "fix it", detail or {})


def soft(signed_distance: NDArray[np.float64]) -> NDArray[np.float64]:
    """A network's probability across an edge: about one pixel from 0.2 to 0.8 (positive inside)."""
    return np.asarray(1.0 / (1.0 + np.exp(-signed_distance / 0.6)))


def disc(cx: float, cy: float, r: float) -> NDArray[np.float64]:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    return soft(r - np.hypot(xx - cx, yy - cy))


def coverage_alpha(overlay: Overlay, colour: tuple[int, int, int], grey: int) -> NDArray[np.float64]:
    """How much of `colour` each pixel of the image area carries over the flat grey background."""
    x0, y0, x1, y1 = overlay.image_box
    rgb = np.asarray(overlay.image, dtype=np.float64)[y0:y1, x0:x1]
    channel = int(np.argmax(np.abs(np.asarray(colour) - grey)))
    return np.asarray((rgb[:, :, channel] - grey) / (colour[channel] - grey))


def test_an_outline_follows_a_slanted_edge_without_staircase() -> None:
    """A straight edge at 17 degrees on the 256-px map, drawn at 1024 px (4 x): every outline pixel
    within 1.5 px of the true line, and the outline's position moves row by row with the line's slope,
    never by the enlargement factor (enlarged masks step 4 px every 13 rows)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    slope, x_at_128 = 0.3, 100.0
    across = np.hypot(1.0, slope)
    inside = np.minimum.reduce([(x_at_128 + slope * (yy - 128) - xx) / across, xx - 40, yy - 60, 200 - yy])
    seg = segmentation({"sacrum": soft(inside)})
    grey = 128
    overlay = render_overlay(radiograph(np.full((1024, 1024), grey / 255, dtype=np.float32)), seg, verdict())
    alpha = coverage_alpha(overlay, STRUCTURE_COLOURS["sacrum"], grey)
    # the slanted edge in overlay pixels (network px = (overlay px + 0.5) / 4 - 0.5 on both axes)
    rows = np.arange(400, 640)
    net_y = (rows + 0.5) / 4 - 0.5
    line_x = (x_at_128 + slope * (net_y - 128) + 0.5) * 4 - 0.5
    centres = []
    for row, x in zip(rows, line_x, strict=True):
        cols = np.arange(int(x) - 8, int(x) + 9)
        a = alpha[row, cols]
        drawn = cols[a >= 0.5]
        assert len(drawn) >= 1, row
        # distance across the line (slope in overlay px equals slope in network px)
        assert np.max(np.abs(drawn - x)) / across < 1.5, (row, drawn, x)
        centres.append(float((cols * a).sum() / a.sum()))
    steps = np.diff(centres)
    assert np.max(np.abs(steps - slope)) < 0.5, steps  # no jump by the enlargement factor (4 px)
    assert np.max(np.abs(np.array(centres) - line_x)) < 0.75


def test_the_legend_lists_every_drawn_structure_and_nothing_else() -> None:
    seg = segmentation(
        {
            "body_L3": disc(100, 100, 12),
            "body_L4": disc(100, 140, 12),
            "sacrum": disc(100, 200, 20),
            "pedicle_left": disc(60, 100, 5),
        }
    )
    result = failed("rotation_pedicles", "Rotation (pedicles)")
    grey = 128
    overlay = render_overlay(
        radiograph(np.full((1024, 1024), grey / 255, dtype=np.float32)), seg, verdict({"rotation_pedicles": result})
    )
    labels = {e.label: e for e in overlay.legend}
    assert set(labels) == {"vertebral bodies", "sacrum", "Rotation (pedicles): left pedicle", "spine axis"}
    assert labels["vertebral bodies"].structures == ("body_L3", "body_L4")
    assert labels["Rotation (pedicles): left pedicle"].colour == FAILED  # the failed item's structure, in red
    assert not any(ITEM_ID.search(label) for label in labels)
    x0, y0, x1, y1 = overlay.image_box
    rgb = np.asarray(overlay.image)
    image_colours = {tuple(int(v) for v in c) for c in rgb[y0:y1, x0:x1].reshape(-1, 3)}
    panel_colours = {tuple(int(v) for v in c) for c in rgb[y0:, x1:].reshape(-1, 3)}
    palette = {*STRUCTURE_COLOURS.values(), FAILED, (255, 255, 0), (0, 255, 255)}
    drawn = image_colours & palette
    assert drawn == {e.colour for e in overlay.legend}  # every colour drawn has its entry; every entry is drawn
    assert drawn <= panel_colours  # each entry's swatch is in the panel
    # the pedicle is red, not its own colour
    assert STRUCTURE_COLOURS["pedicle_left"] not in image_colours


def test_level_labels_have_a_dark_outline_on_white_bone() -> None:
    seg = segmentation({"body_L3": disc(100, 100, 14), "body_L4": disc(100, 140, 14)})
    overlay = render_overlay(radiograph(np.ones((1024, 1024), dtype=np.float32)), seg, verdict())
    x0, y0, _, _ = overlay.image_box
    rgb = np.asarray(overlay.image, dtype=np.int32)
    # the label starts right of the body's centre (network 100, 100 -> overlay 401.5, 401.5)
    window = rgb[y0 + 385 : y0 + 420, x0 + 405 : x0 + 460]
    brightness = window.sum(axis=2) / 3
    assert (brightness < 60).sum() > 40  # the dark outline
    assert (brightness > 250).sum() > 40  # the white glyphs (and the white bone around)


def test_banner_reads_on_a_1080p_screen_and_names_no_item_ids() -> None:
    assert banner_font_px(1024) >= 18 and banner_font_px(1024) == round(1024 / 40)
    assert banner_font_px(2048) == round(2048 / 40)
    result = failed("rotation_pedicles", "Rotation (pedicles)")
    lines = [text for text, _ in banner_lines(verdict({"rotation_pedicles": result}))]
    assert lines[0].startswith("FAIL AP")
    assert "Rotation (pedicles): fix it" in lines
    assert not any(ITEM_ID.search(line) for line in lines)


# --- markers on phantom images (the shipped model) ----------------------------------------------


@dataclass(frozen=True)
class Case:
    result: Result

    @property
    def seg(self) -> Segmentation:
        assert self.result.segmentation is not None
        return self.result.segmentation

    def item(self, name: str) -> ItemResult:
        item = self.result.verdict.items[name]
        assert item.outcome == "fail", item
        return item

    def points(self, name: str, kind: str) -> NDArray[np.float64]:
        marker = self.item(name).detail["marker"]
        assert isinstance(marker, dict) and marker["kind"] == kind
        return np.asarray(marker["points"], dtype=np.float64)

    def to_image(self, xy: object) -> NDArray[np.float64]:
        return np.asarray(self.seg.transform.to_image(np.asarray(xy, dtype=np.float64)))

    @property
    def spacing(self) -> float:
        assert self.result.radiograph is not None and self.result.radiograph.pixel_spacing_mm is not None
        return self.result.radiograph.pixel_spacing_mm[0]


@pytest.fixture(scope="module")
def cases(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    folder = tmp_path_factory.mktemp("overlay")
    images = {
        "tilt": render_case(ideal_acquisition("lateral", projection="LAT", tilt_deg=8.0)),
        "collimation": fault_case("ap", "over_collimation", 61),
        "centring": fault_case("ap", "off_centre", 63),
        "cut_top": fault_case("ap", "cut_top", 61),
    }
    return {name: Case(judge_case(pipeline, image, folder)) for name, image in images.items()}


def edge_distance(seg: Segmentation, name: str, x: float, y: float, reach: int = 40) -> float:
    """Image pixels from (x, y) to the edge of the structure's mask (upsampled probabilities over the
    threshold): positive inside, negative outside."""
    t = seg.transform
    xs, ys = x + np.arange(-reach, reach + 1.0), y + np.arange(-reach, reach + 1.0)
    net_x = t.to_network(np.stack([xs, np.zeros_like(xs)], axis=-1))[:, 0]
    net_y = t.to_network(np.stack([np.zeros_like(ys), ys], axis=-1))[:, 1]
    inside = upsampled(seg.prob(name), net_x, net_y) > THRESHOLD
    centre = bool(inside[reach, reach])
    yy, xx = np.nonzero(inside != centre)
    assert len(xx), f"no edge of {name} within {reach} px of ({x}, {y})"
    return (1.0 if centre else -1.0) * float(np.hypot(xx - reach, yy - reach).min())


def test_tilt_marks_the_endplate_pair_at_the_level_it_measured(cases: dict[str, Case]) -> None:
    """The two contours of the doubled top endplate: the bright rim inside the body, the drop beyond
    the mask's edge; the mask's edge lies between them, each within the measured gap of it."""
    case = cases["tilt"]
    item = case.item("tilt_double_endplates")
    rim_a, rim_b, drop_a, drop_b = case.points("tilt_double_endplates", "segments")
    body = f"body_{item.detail['level']}"
    gap_px = (item.value or 0.0) / case.spacing
    for point in (rim_a, rim_b):
        assert 0 < edge_distance(case.seg, body, *point) <= gap_px + 3
    for point in (drop_a, drop_b):
        assert -gap_px - 3 <= edge_distance(case.seg, body, *point) < 0
    # the top endplate: above the body's centre, and the drop above the rim
    centre = case.to_image(Spine(case.seg).centres[str(item.detail["level"])])
    assert max(rim_a[1], rim_b[1]) < centre[1]
    assert drop_a[1] < rim_a[1] and drop_b[1] < rim_b[1]


def test_collimation_marks_the_suggested_field_around_the_required_anatomy(
    cases: dict[str, Case], pipeline: Pipeline
) -> None:
    case = cases["collimation"]
    (x0, y0), (x1, y1) = case.points("collimation", "box")
    view: View = "ap"
    anatomy = case.seg.union(list(REQUIRED_STRUCTURES[view])) > THRESHOLD
    rows, cols = np.nonzero(anatomy)
    xy = case.to_image(np.stack([cols, rows], axis=-1).astype(np.float64))
    assert (xy[:, 0] > x0).all() and (xy[:, 0] < x1).all() and (xy[:, 1] > y0).all() and (xy[:, 1] < y1).all()
    # by the standard's margin and no more: the tight box of the anatomy plus margin_mm on each side
    margin_px = pipeline.standard.rule(view, "collimation").number("margin_mm") / case.spacing
    tight = required_box(case.seg, view)
    assert tight is not None
    (tx0, ty0), (tx1, ty1) = case.to_image([[tight.x0, tight.y0], [tight.x1, tight.y1]])
    assert np.allclose([x0, y0, x1, y1], [tx0 - margin_px, ty0 - margin_px, tx1 + margin_px, ty1 + margin_px], atol=2)
    field = field_box(case.seg)
    assert field is not None and (x1 - x0) * (y1 - y0) < field.width * field.height / case.seg.transform.scale_x**2


def test_centring_arrow_runs_from_the_field_centre_to_the_anatomy(cases: dict[str, Case]) -> None:
    case = cases["centring"]
    tail, head = case.points("centring", "arrow")
    field = field_box(case.seg)
    anatomy = required_box(case.seg, "ap")
    assert field is not None and anatomy is not None
    assert np.allclose(tail, case.to_image(field.centre), atol=0.2)
    assert np.allclose(head, case.to_image(anatomy.centre), atol=0.2)
    # on the spine: within the column of the lumbar bodies, between L1's top and L5's bottom
    spine = Spine(case.seg)
    column = case.seg.union_box([f"body_{lv}" for lv in spine.lumbar_levels])
    assert column is not None
    (cx0, cy0), (cx1, cy1) = case.to_image([[column.x0, column.y0], [column.x1, column.y1]])
    assert cx0 < head[0] < cx1 and cy0 < head[1] < cy1
    assert not (cx0 < tail[0] < cx1)  # this field is off the spine by more than half a body's width
    offset = case.item("centring").detail
    assert np.sign(head[0] - tail[0]) == np.sign(float(offset["offset_x_mm"]))  # type: ignore[arg-type]
    assert np.sign(head[1] - tail[1]) == np.sign(float(offset["offset_y_mm"]))  # type: ignore[arg-type]


def test_coverage_arrow_points_the_way_to_move_the_field(cases: dict[str, Case]) -> None:
    """Upper coverage fails on a field cut at the top: the arrow starts on the top edge of the
    structure the field cut and points up by at least the correction's least move."""
    case = cases["cut_top"]
    item = case.item("upper_coverage")
    assert item.detail["nearest_edge"] == "top"
    tail, head = case.points("upper_coverage", "arrow")
    structures = item.detail["structures"]
    assert isinstance(structures, list)
    box = fine_box(case.seg.prob(str(structures[0])))
    assert box is not None
    (bx0, by0), (bx1, _) = case.to_image([[box.x0, box.y0], [box.x1, box.y1]])
    assert bx0 < tail[0] < bx1 and abs(tail[1] - by0) < 1.0
    assert abs(edge_distance(case.seg, str(structures[0]), *tail)) <= 2.0  # on the structure's edge
    assert head[0] == pytest.approx(tail[0], abs=0.2) and head[1] < tail[1]
    assert (tail[1] - head[1]) * case.spacing >= MIN_MOVE_MM - 0.5


def test_phantom_overlay_legend_matches_what_is_drawn(cases: dict[str, Case]) -> None:
    """On a real reading: each colour drawn on the image has its legend entry and each entry is drawn;
    the failed item's title is there; no id anywhere a radiographer reads."""
    case = cases["cut_top"]
    assert case.result.radiograph is not None
    overlay = render_overlay(case.result.radiograph, case.seg, case.result.verdict)
    x0, y0, x1, y1 = overlay.image_box
    assert max(x1 - x0, y1 - y0) == 1024 and y0 > 0 and x1 < overlay.image.width
    rgb = np.asarray(overlay.image)
    image_colours = {tuple(int(v) for v in c) for c in np.unique(rgb[y0:y1, x0:x1].reshape(-1, 3), axis=0)}
    palette = {*STRUCTURE_COLOURS.values(), FAILED, (255, 255, 0), (0, 255, 255)}
    assert image_colours & palette == {e.colour for e in overlay.legend}
    labels = [e.label for e in overlay.legend]
    assert any(label.startswith(case.item("upper_coverage").title) for label in labels)
    assert not any(ITEM_ID.search(text) for text in [*labels, *(t for t, _ in banner_lines(case.result.verdict))])
    drawn = {s for e in overlay.legend for s in e.structures}
    assert drawn == {s for s in STRUCTURES[1:] if case.seg.present(s)}
