"""From anatomy and acquisition to detector pixels: projection, field, scatter, dose, noise, processing.

The physics follows docs/phantom-anatomy.md: Beer-Lambert line integrals under a
divergent beam, inverse square and heel effect, scatter as a heavy blur of the primary scaled to the
view's scatter-to-primary ratio, Poisson quanta at a dose set from the Deviation Index, detector blur,
saturation, then a For Presentation log image with range compression and edge enhancement as a
modality applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from edge.qc.structures import REQUIRED_STRUCTURES, STRUCTURE_VIEWS, STRUCTURES
from tools.phantom import materials as mat
from tools.phantom.acquisition import (
    DETECTOR_MM,
    SID_MM,
    Acquisition,
    Extent,
    Pose,
    displaced,
    make_pose,
    posed_primitives,
    structure_extent,
)
from tools.phantom.anatomy import SILHOUETTE, Anatomy
from tools.phantom.raycast import Detector, Primitive, project, project_points

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
Bool = NDArray[np.bool_]

QUANTA_PER_UGY_MM2: Final = 28_500.0  # ~1,500 quanta per 0.145 mm pixel at 2.5 uGy
DETECTOR_MTF50_MM: Final = 0.107  # Gaussian sigma giving MTF 50 % at ~1.75 cycles/mm
ELECTRONIC_NOISE_QUANTA: Final = 3.0
MIN_FIELD_MM: Final = 50.0


@dataclass(frozen=True)
class Field:
    """Collimated field on the detector plane (mm, lab X/Y)."""

    x0: float
    x1: float
    y0: float
    y1: float

    @property
    def area_mm2(self) -> float:
        return (self.x1 - self.x0) * (self.y1 - self.y0)

    def mask(self, det: Detector) -> Bool:
        xs, ys = det.col_x(), det.row_y()
        return np.asarray(((ys >= self.y0) & (ys <= self.y1))[:, None] & ((xs >= self.x0) & (xs <= self.x1))[None, :])

    def as_dict(self) -> dict[str, float]:
        return {"x0_mm": self.x0, "x1_mm": self.x1, "y0_mm": self.y0, "y1_mm": self.y1}


@dataclass
class Rendering:
    """Everything one exposure produced, before DICOM encoding."""

    stored: NDArray[np.uint16]  # stored pixel values, already in the file's photometric interpretation
    max_value: int
    masks: dict[str, Bool]  # visible (clipped to the field), structures applicable to the view
    unclipped: dict[str, Bool]  # full projections in the detector's own orientation, for truth
    display_flipped: bool  # PA-type views are mirrored for display; stored and masks are mirrored
    field: Field
    pose: Pose
    detector: Detector
    exposure_index: float
    deviation_index: float
    clipped_fraction: float
    window_centre: float
    window_width: float


def choose_field(anatomy: Anatomy, acq: Acquisition) -> tuple[Field, Pose, list[Primitive]]:
    """The field a radiographer would set on a well-centred patient, then the injected field faults;
    with the patient's actual pose and posed solids."""
    nominal = make_pose(anatomy, acq)
    actual = displaced(nominal, acq)
    nominal_prims = posed_primitives(anatomy, nominal)
    actual_prims = posed_primitives(anatomy, actual)

    def extent(*structures: str, pose: Pose = actual) -> Extent:
        prims = actual_prims if pose is actual else nominal_prims
        ext = structure_extent(prims, pose.source, structures)
        if ext is None:
            raise ValueError(f"phantom: {structures} not projected for {acq.projection}")
        return ext

    # the field set for where the anatomy should be; a cut-off fault sets one edge into where it is
    x0, x1, y0, y1 = extent(*REQUIRED_STRUCTURES[acq.view], pose=nominal)
    m = acq.field_margin_mm
    # collimator blades are symmetric about the central ray, which is aimed at the anatomy's middle
    half_x = max(-x0, x1) + m
    half_y = max(-y0, y1) + m
    x0, x1, y0, y1 = -half_x, half_x, -half_y, half_y
    values = acq.fault_values
    if "over_collimation" in values:
        grow = float(np.sqrt(values["over_collimation"]))
        x0, x1, y0, y1 = x0 * grow, x1 * grow, y0 * grow, y1 * grow
    if "cut_top" in values:
        top = {"ap": "body_T12", "lateral": "body_L1", "oblique": "body_L1"}[acq.view]
        y0 = extent(top)[2] + values["cut_top"]
    if "cut_bottom" in values:
        if acq.view == "ap":
            y1 = extent("si_joint_left", "si_joint_right")[3] - values["cut_bottom"]
        elif acq.view == "lateral":
            rims = np.concatenate([actual.to_lab(anatomy.points[f"disc.L5-S1.{r}_rim"]) for r in ("upper", "lower")])
            y1 = float(project_points(rims, actual.source)[:, 1].max()) - values["cut_bottom"]
        else:
            y1 = extent("body_L5")[3] - values["cut_bottom"]
    if "cut_lateral" in values:
        if acq.view == "ap":
            x0 = extent("transverse_process")[0] + values["cut_lateral"]
            x1 = -x0
        else:  # spinous processes lie towards -X on a left lateral
            x0 = extent("spinous_process")[0] + values["cut_lateral"]
    # however the edges were pushed, a collimator still opens at least MIN_FIELD_MM each way
    for lo_edge, hi_edge in ((0, 1), (2, 3)):
        edges = [x0, x1, y0, y1]
        if edges[hi_edge] - edges[lo_edge] < MIN_FIELD_MM:
            middle = 0.5 * (edges[lo_edge] + edges[hi_edge])
            edges[lo_edge], edges[hi_edge] = middle - MIN_FIELD_MM / 2, middle + MIN_FIELD_MM / 2
        x0, x1, y0, y1 = edges
    lim = DETECTOR_MM / 2 - 2.0
    return Field(max(x0, -lim), min(x1, lim), max(y0, -lim), min(y1, lim)), actual, actual_prims


def _marker(det: Detector, field: Field, letter: str, mirrored: bool) -> F32:
    """A lead side marker on the detector inside the field's upper corner (5 x 7 dot font). On views
    displayed mirrored it is drawn mirrored, so that it reads correctly on the displayed image."""
    glyphs = {
        "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
        "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
    }
    out = np.zeros((det.rows, det.cols), dtype=np.float32)
    cell = 2.6  # mm per dot
    on_right = (letter == "L") != mirrored  # patient's left is shown on the display's right
    x_left = field.x1 - 8 - 5 * cell if on_right else field.x0 + 8
    y_top = field.y0 + 8
    for r, row in enumerate(glyphs[letter]):
        for c, bit in enumerate(row[::-1] if mirrored else row):
            if bit == "1":
                px = det.to_pixel(
                    np.array([[x_left + c * cell, y_top + r * cell], [x_left + (c + 1) * cell, y_top + (r + 1) * cell]])
                )
                c0, r0 = int(np.ceil(px[0, 0])), int(np.ceil(px[0, 1]))
                c1, r1 = int(np.ceil(px[1, 0])), int(np.ceil(px[1, 1]))
                out[r0:r1, c0:c1] = mat.LEAD * 1.5
    return out


def smooth(image: F32, sigma_px: float) -> F32:
    """Gaussian-like blur in O(1) per pixel: three box filters of matching variance."""
    if sigma_px < 0.3:
        return image
    if sigma_px < 2.0:
        return np.asarray(ndimage.gaussian_filter(image, sigma_px, mode="nearest"), dtype=np.float32)
    width = max(3, round(np.sqrt(4 * sigma_px**2 + 1)) | 1)
    out = image
    for _ in range(3):
        out = ndimage.uniform_filter(out, width, mode="nearest")
    return np.asarray(out, dtype=np.float32)


def _bone_texture(bone: F32, pitch_mm: float, rng: np.random.Generator) -> F32:
    """Trabecular texture: band-passed noise (about 1-3 mm) to add to the line integral over bone,
    weighted by `bone` (0 where there is none)."""
    if not bone.any():
        return np.zeros(bone.shape, dtype=np.float32)
    noise = rng.standard_normal(bone.shape, dtype=np.float32)
    band = smooth(noise, max(0.5 / pitch_mm, 0.4)) - smooth(noise, max(2.0 / pitch_mm, 0.8))
    band *= np.float32(0.02 / max(float(band.std()), 1e-6))
    return np.asarray(band * bone, dtype=np.float32)


def blur_large(image: F32, sigma_px: float) -> F32:
    """Gaussian blur with a large sigma, done on a reduced grid (the result is smooth anyway)."""
    factor = max(1, int(sigma_px // 4))
    if factor == 1:
        return np.asarray(ndimage.gaussian_filter(image, sigma_px, mode="nearest"), dtype=np.float32)
    rows, cols = image.shape
    pr, pc = (-rows) % factor, (-cols) % factor
    padded = np.pad(image, ((0, pr), (0, pc)), mode="edge")
    small = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).mean(axis=(1, 3))
    small = ndimage.gaussian_filter(small, sigma_px / factor, mode="nearest")
    big = ndimage.zoom(small, factor, order=1, mode="nearest", grid_mode=True)
    return np.asarray(big[:rows, :cols], dtype=np.float32)


def edge_profile(coords: F64, lo: float, hi: float, width_mm: float) -> F32:
    """1-D field profile with a penumbra: ~1 inside [lo, hi], falling off as an error function."""
    from scipy.special import erf

    if width_mm <= 0:
        return ((coords >= lo) & (coords <= hi)).astype(np.float32)
    k = 1.0 / (np.sqrt(2.0) * width_mm)
    return np.asarray(0.25 * (1 + erf((coords - lo) * k)) * (1 + erf((hi - coords) * k)), dtype=np.float32)


def field_weight(xs: F64, ys: F64, field: Field, penumbra_mm: float) -> F32:
    """The collimated field with its penumbra: 1 inside, 0 in the collimator's shadow."""
    return np.asarray(
        edge_profile(ys, field.y0, field.y1, penumbra_mm)[:, None]
        * edge_profile(xs, field.x0, field.x1, penumbra_mm)[None, :]
    )


def primary_beam(line_integral: F32, xs: F64, ys: F64, source: F64, heel_effect: float, weight: F32) -> F32:
    """Primary fluence: Beer-Lambert through the line integrals, inverse square with obliquity (cos^3),
    the anode heel effect and the field weight (shared by the phantom and the CT DRRs)."""
    dx, dy = xs[None, :] - source[0], ys[:, None] - source[1]
    ray_len = np.sqrt(dx * dx + dy * dy + source[2] ** 2)
    falloff = ((SID_MM / ray_len) ** 3 * (1.0 + heel_effect * ys[:, None] / 200.0)).astype(np.float32)
    return np.asarray(np.exp(-line_integral) * falloff * weight)


def with_scatter_and_blur(primary: F32, spine: Bool, scatter_to_primary: float, pitch_mm: float) -> F32:
    """Detected signal: scatter as a low-frequency copy of the primary, scaled to the view's
    scatter-to-primary ratio over the spine, then the detector's blur."""
    scatter = blur_large(primary, 40.0 / pitch_mm)
    ratio = float(primary[spine].mean() / max(float(scatter[spine].mean()), 1e-12))
    transmitted = primary + scatter * np.float32(scatter_to_primary * ratio)
    return smooth(transmitted, DETECTOR_MTF50_MM / pitch_mm)


def render(anatomy: Anatomy, acq: Acquisition, size_px: int, rng: np.random.Generator) -> Rendering:
    det = Detector(rows=size_px, cols=size_px, pitch_mm=DETECTOR_MM / size_px)
    field, pose, prims = choose_field(anatomy, acq)
    mirrored = acq.projection in ("PA", "LAO", "RAO")

    # Everything the detector records happens inside the exposed field plus its penumbra: compute
    # the physics there (the roi) and leave the collimator's shadow unexposed.
    penumbra_mm = 1.2
    margin = 4 * penumbra_mm
    corner = det.to_pixel(np.array([[field.x0 - margin, field.y0 - margin], [field.x1 + margin, field.y1 + margin]]))
    roi = (
        max(int(np.floor(corner[0, 1])), 0),
        min(int(np.ceil(corner[1, 1])) + 1, det.rows),
        max(int(np.floor(corner[0, 0])), 0),
        min(int(np.ceil(corner[1, 0])) + 1, det.cols),
    )
    r0, r1, c0, c1 = roi
    line_full, unclipped = project(prims, det, pose.source, roi=roi, full_frame=frozenset(STRUCTURES))
    field_mask = field.mask(det)
    for name in (*STRUCTURES, SILHOUETTE):  # a structure can miss the detector altogether
        unclipped.setdefault(name, np.zeros((det.rows, det.cols), dtype=bool))
    unclipped["field"] = field_mask
    crop = (slice(r0, r1), slice(c0, c1))
    xs, ys = det.col_x()[c0:c1], det.row_y()[r0:r1]
    in_field = field_mask[crop]
    body = unclipped[SILHOUETTE][crop] & in_field

    bone = np.zeros(in_field.shape, dtype=np.float32)  # where trabecular texture shows, and how much
    for name, mask in unclipped.items():
        if name.startswith(("body_", "pedicle_")):
            bone[mask[crop]] = 1.0
        elif name == "sacrum":
            bone[mask[crop] & (bone == 0)] = 0.4
    line_integral = line_full[crop]
    if bone.any():  # texture only over the bones' bounding box: it is most of the cost
        rows, cols = np.flatnonzero(bone.any(axis=1)), np.flatnonzero(bone.any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        line_integral[box] += _bone_texture(bone[box], det.pitch_mm, rng)
    if acq.marker:
        line_integral += _marker(det, field, acq.marker, mirrored)[crop]

    weight = field_weight(xs, ys, field, penumbra_mm)
    primary = primary_beam(line_integral, xs, ys, pose.source, acq.heel_effect, weight)

    spine_region = np.zeros(in_field.shape, dtype=bool)
    for level in ("L1", "L2", "L3", "L4", "L5"):
        spine_region |= unclipped[f"body_{level}"][crop]
    spine_region &= in_field
    if spine_region.sum() < 20:
        spine_region = body if body.sum() >= 20 else in_field

    transmitted = with_scatter_and_blur(primary, spine_region, acq.scatter_to_primary, det.pitch_mm)

    # dose: EI = 100 x detector air kerma (uGy) in the spine region (IEC 62494-1), set from the DI
    quanta_per_ugy = QUANTA_PER_UGY_MM2 * det.pitch_mm**2
    target_ei = acq.target_ei * 10 ** (acq.deviation_index / 10)
    median_t = float(np.median(transmitted[spine_region]))
    i0 = (target_ei / 100.0) * quanta_per_ugy / max(median_t, 1e-30)
    expected = transmitted * np.float32(i0)
    exposure_index = 100.0 * float(np.median(expected[spine_region])) / quanta_per_ugy
    deviation_index = 10 * np.log10(exposure_index / acq.target_ei)

    full_scale = quanta_per_ugy * 2000.0
    # the anatomy the view must show: where clipping would hide what QC and the reader need
    anatomy_region = np.zeros(in_field.shape, dtype=bool)
    for name in REQUIRED_STRUCTURES[acq.view]:
        anatomy_region |= unclipped[name][crop]
    anatomy_region &= in_field
    if acq.saturation_fraction > 0 and anatomy_region.any():
        full_scale = float(np.quantile(expected[anatomy_region], 1.0 - acq.saturation_fraction))

    # quantum noise: Poisson (normal approximation where the count is large) plus electronic noise
    noisy = expected + np.sqrt(expected) * rng.standard_normal(expected.shape, dtype=np.float32)
    low = expected < 50
    noisy[low] = rng.poisson(expected[low]).astype(np.float32)
    noisy += rng.standard_normal(noisy.shape, dtype=np.float32) * np.float32(ELECTRONIC_NOISE_QUANTA)
    saturated = noisy >= full_scale
    starved = noisy <= 1.0
    np.clip(noisy, 1.0, full_scale, out=noisy)
    clipped_fraction = float((saturated | starved)[anatomy_region].mean()) if anatomy_region.any() else 0.0

    # For Presentation: log, range compression, edge enhancement, window to the stored bit depth
    log_image = np.log(np.float32(i0) / noisy)
    coarse = blur_large(log_image, 60.0 / det.pitch_mm)
    fine = smooth(log_image, max(1.5 / det.pitch_mm, 0.5))
    processed = (
        coarse * np.float32(1 - acq.range_compression)
        + (log_image - coarse)
        + np.float32(acq.edge_enhancement) * (log_image - fine)
    )
    # window as the modality's auto-ranging does: from the soft tissue to the brightest spine
    inside = processed[body] if body.any() else processed[in_field] if in_field.any() else processed
    lo = float(np.percentile(inside, 1.0))
    hi = float(np.percentile(processed[spine_region], 97.5))
    hi = max(hi, lo + 1e-3)
    max_value = (1 << acq.bits_stored) - 1
    # a filmic tone curve: linear in the middle, soft shoulders keep detail in bone and soft tissue
    unit = (processed - np.float32(lo)) * np.float32(1.0 / max(hi - lo, 1e-6))
    scaled = (0.5 + 0.5 * np.tanh((unit - 0.5) * 2.0) / np.float32(np.tanh(1.0))) * np.float32(
        0.86 * max_value
    ) + np.float32(0.06 * max_value)
    scaled[weight < 0.02] = max_value  # unexposed: the collimator's shadow
    scaled[saturated] = 0
    scaled[starved] = max_value
    stored = np.full((det.rows, det.cols), max_value, dtype=np.uint16)
    stored[crop] = np.clip(np.rint(scaled), 0, max_value).astype(np.uint16)
    centre, width = 0.06 * max_value + 0.43 * max_value, 0.86 * max_value
    if acq.photometric == "MONOCHROME1":
        stored = (max_value - stored).astype(np.uint16)
        centre = max_value - centre

    def visible(mask: Bool) -> Bool:
        """The part of a mask inside the exposed field (a rectangle inside the roi)."""
        out = np.zeros_like(mask)
        out[crop] = mask[crop] & in_field
        return out

    masks = {
        name: visible(m)
        for name, m in unclipped.items()
        if not name.startswith("_") and acq.view in STRUCTURE_VIEWS.get(name, frozenset())
    }
    masks["field"] = field_mask
    if mirrored:  # displayed like an AP: the patient's left on the viewer's right
        stored = stored[:, ::-1].copy()
        masks = {k: v[:, ::-1].copy() for k, v in masks.items()}
    return Rendering(
        stored=stored,
        max_value=max_value,
        masks=masks,
        unclipped=unclipped,
        display_flipped=mirrored,
        field=field,
        pose=pose,
        detector=det,
        exposure_index=exposure_index,
        deviation_index=float(deviation_index),
        clipped_fraction=clipped_fraction,
        window_centre=float(centre),
        window_width=float(width),
    )
