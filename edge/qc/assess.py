"""The pure tail of judging one image: segmentation -> view -> spacing -> measure -> judge -> Verdict.

No I/O and no model: the daemon's pipeline calls it after inference, and `edge-qc engine validate`
calls it on an engine's outputs, so what is validated is what judges patients' images.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from edge.imaging.preprocess import Transform
from edge.imaging.radiograph import Radiograph
from edge.qc.confidence import CHECK_NAMES, Calibration, Reading, reading
from edge.qc.item import Setting
from edge.qc.items import FIELD_ITEMS, ITEMS, measure_all
from edge.qc.items.exposure import exposure_of
from edge.qc.judge import judge
from edge.qc.measure import Context, Measurement, Spine, anatomy_mask
from edge.qc.segmentation import Segmentation, field_box
from edge.qc.standard import Standard
from edge.qc.structures import VIEW_CLASSES, VIEW_NAMES, View, view_of_class
from edge.qc.verdict import IndeterminateCode, Verdict, ViewInfo
from edge.qc.words import ENGLISH, N_, Phrase, Words, phrase, structures_phrase

# The model's view head decides the view when at least this sure; below it, the DICOM tags do.
VIEW_CONFIDENCE: Final = 0.8
# Without any pixel spacing, millimetres come from the anatomy: adult lumbar vertebrae repeat every
# ~35 mm (body 25-28 mm plus disc 8-11 mm), to within about 15 %.
LUMBAR_SEGMENT_MM: Final = 35.0
# What the radiographer reads when the masks cannot be trusted: act on it, do not second-guess it.
UNREADABLE: Final = N_("the spine could not be read reliably: check the image yourself")
MISREAD: Final = N_("{why}: not a lumbar spine, or one that could not be read reliably")
NOT_LUMBAR_EXAMINATION: Final = N_("not a lumbar spine examination (Body Part Examined {body_part})")
VIEW_UNKNOWN: Final = N_("view unknown: neither the DICOM tags nor the model identify it")
NO_FIELD: Final = N_("no exposed field found")
NOT_READ_RELIABLY: Final = N_("{structures} not read reliably")
UNREADABLE_BECAUSE: Final = N_("{unreadable} ({why})")
VIEWS_DISAGREE: Final = N_("the DICOM tags say {tags}, the image looks {model}")
RESAMPLED: Final = N_("non-square pixels were resampled to square before measuring")
SPACING_ESTIMATED: Final = N_("pixel spacing unknown: millimetres estimated from the vertebral spacing (~{mm:g} mm)")
SPACING_AT_DETECTOR: Final = N_("no calibrated Pixel Spacing: millimetres are at the detector (about 10-20 % larger)")
FIELD_CUTS_SPINE: Final = N_("{problem}: the field cuts the spine")
DEFAULT_CALIBRATION: Final = Calibration()
# Detector clipping is counted on image pixels this many times finer than the network grid per axis.
CLIPPING_SAMPLES_PER_NETWORK_PX: Final = 2


@dataclass(frozen=True)
class Assessment:
    """A verdict and what made it (for overlays and evaluation); `timings_ms` covers measure and judge."""

    verdict: Verdict
    segmentation: Segmentation
    measurements: Mapping[str, Measurement] | None
    timings_ms: Mapping[str, float]


def without_unreliable(
    measurements: dict[str, Measurement], read: Reading, words: Words = ENGLISH
) -> dict[str, Measurement]:
    """Items that rely on a structure the reading checks distrust become unmeasured (indeterminate),
    with the reason (in `words`' language, structures by name); the rest stand."""
    out = dict(measurements)
    for name, m in measurements.items():
        distrusted = sorted(ITEMS[name].dependencies & read.unreliable)
        if distrusted and m.value is not None:
            why = words.say(phrase(NOT_READ_RELIABLY, structures=structures_phrase(distrusted)))
            out[name] = Measurement(m.item, None, m.unit, dict(m.detail), reason=why)
    return out


def unreadable_reason(read: Reading, disagreement: str, said: Phrase | None, words: Words) -> str:
    """Why the masks cannot be trusted, in the radiographer's words: the view disagreement (`said`, for
    the reading's English `disagreement`), the misreading, and each failed check by what it means."""
    why: list[Phrase] = []
    for failed in read.failed:
        name, _, level = failed.partition(" ")
        if failed == disagreement and said is not None:
            why.append(said)
        elif name in CHECK_NAMES:
            why.append(phrase(CHECK_NAMES[name], level=level))
        else:
            why.append(Phrase(failed))
    if not why:
        return words.text(UNREADABLE)
    listed = "; ".join(words.say(p) for p in why)
    return words.say(phrase(UNREADABLE_BECAUSE, unreadable=Phrase(UNREADABLE), why=listed))


def clipped_fraction(radiograph: Radiograph, transform: Transform, anatomy: NDArray[np.bool_]) -> float | None:
    """Share of the anatomy's image pixels at the detector's limits, counted on image pixels sampled
    CLIPPING_SAMPLES_PER_NETWORK_PX times per network pixel along each axis inside the anatomy's
    bounding box (nearest network pixel): finer than the masks it is counted under, and a 2,500-pixel
    image costs a fraction of a millisecond instead of a pass over millions of pixels."""
    if not anatomy.any():
        return None
    rows, cols = np.flatnonzero(anatomy.any(axis=1)), np.flatnonzero(anatomy.any(axis=0))
    corners = transform.to_image(np.array([[cols[0] - 0.5, rows[0] - 0.5], [cols[-1] + 0.5, rows[-1] + 0.5]]))
    c0, r0 = (max(int(np.floor(v)), 0) for v in corners[0])
    c1 = min(int(np.ceil(corners[1][0])), radiograph.shape[1] - 1)
    r1 = min(int(np.ceil(corners[1][1])), radiograph.shape[0] - 1)
    step = max(1, int(1.0 / (CLIPPING_SAMPLES_PER_NETWORK_PX * max(transform.scale_x, transform.scale_y))))
    img_cols, img_rows = np.arange(c0, c1 + 1, step), np.arange(r0, r1 + 1, step)
    net_cols, net_rows = transform.network_pixels(img_cols, img_rows)
    inside = anatomy[np.ix_(net_rows, net_cols)]
    count = np.count_nonzero(inside)
    if count == 0:
        return None
    clipped = radiograph.clipped(slice(r0, r1 + 1, step), slice(c0, c1 + 1, step))
    return np.count_nonzero(clipped & inside) / count


def view_info(radiograph: Radiograph, view_probabilities: NDArray[np.float32]) -> ViewInfo:
    """The view judged: the model's when it is sure, else the tags'; and whether the two agree."""
    tag_view: View | None = radiograph.view_from_tags  # type: ignore[assignment]
    tag_side = radiograph.oblique_side_from_tags
    model_class = VIEW_CLASSES[int(np.argmax(view_probabilities))]
    confidence = float(np.max(view_probabilities))
    model_view = view_of_class(model_class)
    judged: View | None = model_view if confidence >= VIEW_CONFIDENCE else tag_view
    agree = None if tag_view is None else tag_view == model_view
    side = None
    if judged == "oblique":
        side = model_class.split("_")[1] if model_view == "oblique" else tag_side
    return ViewInfo(judged, tag_view, model_class, confidence, agree, side)


def spacing_from_anatomy(seg: Segmentation) -> Segmentation | None:
    """The segmentation with millimetres from the vertebral pitch; None with fewer than three levels."""
    spine = Spine(seg)
    levels = spine.lumbar_levels
    if len(levels) < 3:
        return None
    centres = np.stack([spine.centres[lv] for lv in levels])
    pitch_px = float(np.median(np.linalg.norm(np.diff(centres, axis=0), axis=1)))
    return Segmentation(seg.probabilities, seg.view_probabilities, seg.transform, LUMBAR_SEGMENT_MM / pitch_px)


def image_facts(radiograph: Radiograph) -> dict[str, object]:
    """What the verdict says about the image (no patient data: its UID, which the RIS matches on)."""
    return {
        "sop_instance_uid": radiograph.sop_instance_uid,
        "rows": radiograph.shape[0],
        "columns": radiograph.shape[1],
        "modality": radiograph.modality,
        "view_position": radiograph.view_position,
        "photometric": radiograph.photometric,
        "transfer_syntax": radiograph.transfer_syntax,
        "pixel_spacing_mm": None if radiograph.pixel_spacing_mm is None else radiograph.pixel_spacing_mm[0],
        "spacing_source": radiograph.spacing_source,
    }


def assess(
    radiograph: Radiograph,
    masks: NDArray[np.float32],
    view_probabilities: NDArray[np.float32],
    transform: Transform,
    standard: Standard,
    *,
    target_exposure_index: Mapping[str, float],
    versions: Mapping[str, str],
    notes: Iterable[str] = (),
    degraded: bool = False,
    calibration: Calibration = DEFAULT_CALIBRATION,
    words: Words = ENGLISH,
    exact_masks: bool = False,
) -> Assessment:
    """Judge one image from the model's outputs (probabilities on the network grid, mapped to the image
    by `transform`). Every way it can go wrong ends in a verdict with a reason, never an exception; what
    the radiographer reads is in `words`' language. `exact_masks`: the masks are a labelled image's
    truth (the evaluation tools' perfect model), so the reading gate, which guards against the model's
    misreadings, is not asked."""
    started = time.perf_counter()
    image = image_facts(radiograph)
    notes = list(notes)
    if radiograph.resampled_to_square:
        notes.append(words.text(RESAMPLED))
    spacing = radiograph.pixel_spacing_mm[0] if radiograph.pixel_spacing_mm else None
    seg = Segmentation(masks, view_probabilities, transform, (spacing or 1.0) / transform.scale_x)
    if spacing is None:
        estimated = spacing_from_anatomy(seg)
        if estimated is not None:
            seg = estimated
            notes.append(words.say(phrase(SPACING_ESTIMATED, mm=LUMBAR_SEGMENT_MM)))
        image["spacing_source"] = "anatomy (estimated)" if estimated is not None else "unknown"
    elif radiograph.spacing_source == "ImagerPixelSpacing":
        notes.append(words.text(SPACING_AT_DETECTOR))
    view = view_info(radiograph, view_probabilities)
    site_target = target_exposure_index.get(view.judged) if view.judged else None
    exposure, _ = exposure_of(radiograph.exposure, site_target)

    def indeterminate(reason: Phrase | str, code: IndeterminateCode, read: Reading | None = None) -> Assessment:
        """Read but not judged; `reason` a msgid or a phrase (said here in the site's language), or a
        sentence already said (it has no catalogue entry and passes unchanged)."""
        verdict = Verdict.indeterminate(
            reason=words.say(reason),
            code=code,
            view=view,
            image=image,
            versions=versions,
            notes=notes,
            degraded=degraded,
            reading=read,
            words=words,
            exposure=exposure,
            acquisition=radiograph.acquisition,
        )
        return Assessment(verdict, seg, None, {"measure": (time.perf_counter() - started) * 1000})

    if not radiograph.lumbar_examination:
        return indeterminate(phrase(NOT_LUMBAR_EXAMINATION, body_part=radiograph.body_part), "not_lumbar_spine")
    if view.judged is None:
        return indeterminate(VIEW_UNKNOWN, "view_unknown")
    disagreement, said = "", None
    if view.agree is False:  # one of the two is wrong, and nothing says which: not judged either way
        disagreement = f"view: the DICOM tags say {view.from_tags}, the image looks {view.from_model}"
        tags, model = (Phrase(VIEW_NAMES.get(str(v), str(v))) for v in (view.from_tags, view.from_model))
        said = phrase(VIEWS_DISAGREE, tags=tags, model=model)
        notes.append(f"{words.say(said)} ({view.model_confidence:.2f})")
    judged: View = view.judged  # type: ignore[assignment]
    field = field_box(seg)
    if field is None:
        return indeterminate(NO_FIELD, "not_lumbar_spine")
    spine = Spine(seg)
    problem = spine.implausible()
    cut = bool(problem) and any(seg.touches_field(f"body_{lv}") for lv in spine.lumbar_levels)
    if problem and not cut:
        return indeterminate(Phrase(problem), "not_lumbar_spine")
    read = Reading({}, ()) if exact_masks else reading(seg, spine, judged, calibration, disagreement)
    if not read.readable:
        if read.misread and not radiograph.body_part:  # nothing says a spine was meant: it may be none
            return indeterminate(phrase(MISREAD, why=Phrase(read.misread)), "not_lumbar_spine", read)
        return indeterminate(unreadable_reason(read, disagreement, said, words), "unreadable", read)
    anatomy = anatomy_mask(seg, judged, field)
    ctx = Context(
        view=judged,
        oblique_side=view.oblique_side or "",
        exposure=radiograph.exposure,
        clipped_fraction=clipped_fraction(radiograph, transform, anatomy),
        target_exposure_index=target_exposure_index.get(judged),
        image=radiograph.pixels,
        image_spacing_mm=seg.mm_per_px * transform.scale_x,
    )
    # a spine the field cuts down to a body or two: where the field lies is all that can be judged
    only = FIELD_ITEMS if cut else None
    measurements = without_unreliable(measure_all(seg, spine, standard, ctx, field, only), read, words)
    if cut:
        notes.append(words.say(phrase(FIELD_CUTS_SPINE, problem=Phrase(problem))))
    measured = time.perf_counter()
    results = judge(measurements, standard, Setting(judged, radiograph.to_detector), words)
    verdict = Verdict.judged(
        items=results,
        view=view,
        image=image,
        versions=versions,
        notes=notes,
        degraded=degraded,
        reading=read,
        words=words,
        exposure=exposure,
        acquisition=radiograph.acquisition,
    )
    timings = {"measure": (measured - started) * 1000, "judge": (time.perf_counter() - measured) * 1000}
    return Assessment(verdict, seg, measurements, timings)
