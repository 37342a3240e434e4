"""From a CT and a pose to detector pixels and exact masks: the phantom's detector chain on real anatomy.

Attenuation from HU at one effective energy: mu = mu_water (1 + HU/1000) for soft tissue (air 0),
bone rising faster (x `bone_factor`, larger at lower kVp, as the photoelectric effect makes it);
the soft-tissue body model beyond cut faces adds its path. Then, as `tools.phantom.render`: inverse
square and heel effect, penumbra, scatter as a heavy blur of the primary scaled to the view's
scatter-to-primary ratio, dose from the Deviation Index, Poisson and electronic noise, detector blur;
the For Presentation image is the log with random range compression, two-scale edge enhancement and
tone curve, windowed to 12/14/16 bits, MONOCHROME1 in ~30 % (stored inverted). Outside the field:
the collimator's shadow (bright) or, in ~30 %, a black electronic shutter.

Masks are ray casts of each channel's 3D occupancy at the detector's full resolution, restricted to
the field (like the phantom's `visible()`); a channel the CT cannot label is absent, never empty.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Final, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage

from edge.dicom.decode import MIN_SIDE_PX
from edge.qc.structures import STRUCTURE_VIEWS, STRUCTURES, View
from tools.ctdrr.geometry import CtPose, choose_field, sample_pose, substituted_length
from tools.ctdrr.project import MASK_MIN_CHORD_MM, line_integrals, single_thread
from tools.ctdrr.volumes import CtVolume, load_ct
from tools.phantom.acquisition import DETECTOR_MM, TARGET_EI
from tools.phantom.raycast import Detector
from tools.phantom.render import (
    ELECTRONIC_NOISE_QUANTA,
    QUANTA_PER_UGY_MM2,
    Field,
    blur_large,
    field_weight,
    primary_beam,
    smooth,
    with_scatter_and_blur,
)

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
Bool = NDArray[np.bool_]

PENUMBRA_MM: Final = 1.2
FIELD_CROP_CHANCE: Final = 0.75  # share of images cropped to the collimated field (as DR systems do)
FIELD_CROP_MARGIN_MM: Final = (5.0, 60.0)
SOFT_TISSUE_MODEL: Final = 0.97  # water-relative attenuation of the substituted trunk (fat and muscle)
LINE_PITCH_MM: Final = 1.5  # detector pitch the attenuation is ray-cast at (CT voxels are 1-3 mm)


@dataclass(frozen=True)
class Exposure:
    """Beam, dose and processing of one image."""

    kvp: float
    mu_water_per_mm: float
    bone_factor: float
    scatter_to_primary: float
    deviation_index: float  # aimed at
    target_ei: float
    heel_effect: float
    range_compression: float
    compression_sigma_mm: float  # scale of the range compression's low-pass
    window_below: float  # window's reach below the spine's range, as a share of that range
    edge_fine: float
    edge_medium: float
    tone_contrast: float
    tone_gamma: float
    bits_stored: int
    photometric: Literal["MONOCHROME1", "MONOCHROME2"]
    shutter: Literal["collimator", "electronic"]


def sample_exposure(rng: np.random.Generator, view: View) -> Exposure:
    lateral = view == "lateral"
    kvp = float(rng.choice([85, 90, 95, 100] if lateral else [75, 80, 85, 90]))
    return Exposure(
        kvp=kvp,
        mu_water_per_mm=0.0206 + (95.0 - kvp) * 0.00012,
        # CT numbers are at ~70 keV; a radiograph's ~40-55 keV raises bone over water by 1.4-1.9x
        bone_factor=float(1.35 + (100.0 - kvp) / 50.0 + rng.uniform(-0.1, 0.1)),
        scatter_to_primary=float(rng.uniform(0.8, 1.5) if lateral else rng.uniform(0.4, 0.9)),
        deviation_index=float(np.clip(rng.normal(0.0, 0.6), -2.5, 2.5)),
        target_ei=TARGET_EI[view],
        heel_effect=float(rng.uniform(-0.08, 0.08)),
        range_compression=float(rng.uniform(0.55, 0.9)),
        compression_sigma_mm=float(rng.uniform(25.0, 60.0)),
        window_below=float(rng.uniform(0.6, 1.2)),
        edge_fine=float(rng.uniform(0.3, 1.5)),
        edge_medium=float(rng.uniform(0.3, 1.2)),
        tone_contrast=float(rng.uniform(1.4, 2.6)),
        tone_gamma=float(rng.uniform(0.8, 1.25)),
        bits_stored=int(rng.choice([12, 14, 16])),
        photometric="MONOCHROME1" if rng.random() < 0.3 else "MONOCHROME2",
        shutter="electronic" if rng.random() < 0.3 else "collimator",
    )


@dataclass
class CtRendering:
    """One exposure, before DICOM encoding; stored pixels and masks as displayed (mirrored if so)."""

    ct: str
    pose: CtPose
    field: Field
    exposure: Exposure
    detector: Detector
    stored: NDArray[np.uint16]
    max_value: int
    masks: dict[str, Bool]  # every labelled channel of this view (known empty included) and "field"
    labelled: Bool  # per STRUCTURES channel
    exposure_index: float
    deviation_index: float
    window_centre: float
    window_width: float
    seconds: float
    crop_offset: tuple[int, int] = (0, 0)  # (row, column) of the stored image on the whole detector

    @property
    def field_px(self) -> list[float]:
        """Field as displayed: column from, column to, row from, row to (continuous pixels)."""
        det = self.detector
        corners = det.to_pixel(np.array([[self.field.x0, self.field.y0], [self.field.x1, self.field.y1]]))
        cols = corners[:, 0] if not self.pose.mirrored else det.cols - 1 - corners[:, 0]
        r_off, c_off = self.crop_offset
        return [
            round(float(v), 2)
            for v in (cols.min() - c_off, cols.max() - c_off, corners[0, 1] - r_off, corners[1, 1] - r_off)
        ]

    @property
    def pixel_spacing_mm(self) -> float:
        return self.detector.pitch_mm / self.pose.magnification


def labelled_channels(ct: CtVolume, view: View) -> Bool:
    """Per STRUCTURES channel: its mask is known for this CT and the channel applies to the view."""
    return np.array(
        [name == "field" or (name in ct.labelled and view in STRUCTURE_VIEWS[name]) for name in STRUCTURES],
        dtype=bool,
    )


def _attenuation(ct: CtVolume, pose: CtPose, exposure: Exposure, det: Detector, crop: tuple[int, int, int, int]) -> F32:
    """Line integral of attenuation over the crop (rows r0:r1, cols c0:c1), ray-cast on a grid of
    about LINE_PITCH_MM and interpolated to the detector's pixels."""
    r0, r1, c0, c1 = crop
    f = max(1, round(LINE_PITCH_MM / det.pitch_mm))
    rr = r0 + f * np.arange(int(np.ceil((r1 - 1 - r0) / f)) + 1)
    cc = c0 + f * np.arange(int(np.ceil((c1 - 1 - c0) / f)) + 1)
    ys = (rr + 0.5) * det.pitch_mm - det.height_mm / 2
    xs = (cc + 0.5) * det.pitch_mm - det.width_mm / 2
    xx, yy = np.meshgrid(xs, ys)
    start, d = pose.rays(np.column_stack([xx.ravel(), yy.ravel()]))
    step = 0.8 * float(ct.grid.spacing.min())
    sums = line_integrals(ct.attenuation, ct.grid, start, d, step)
    extra = substituted_length(start, d, ct)
    mu = exposure.mu_water_per_mm * (sums[:, 0] + exposure.bone_factor * sums[:, 1] + SOFT_TISSUE_MODEL * extra)
    coarse = mu.reshape(len(rr), len(cc)).astype(np.float32)
    if f == 1:
        return coarse[: r1 - r0, : c1 - c0]
    gr, gc = np.meshgrid(np.arange(r1 - r0) / f, np.arange(c1 - c0) / f, indexing="ij")
    return np.asarray(ndimage.map_coordinates(coarse, [gr, gc], order=1, mode="nearest"), dtype=np.float32)


def _masks(
    ct: CtVolume, pose: CtPose, det: Detector, crop: tuple[int, int, int, int], field_mask: Bool, labelled: Bool
) -> dict[str, Bool]:
    """Each labelled channel's projection (chord > MASK_MIN_CHORD_MM) inside the field."""
    r0, r1, c0, c1 = crop
    out: dict[str, Bool] = {}
    for c, name in enumerate(STRUCTURES):
        if not labelled[c] or name == "field":
            continue
        mask = np.zeros((det.rows, det.cols), dtype=bool)
        out[name] = mask
        occ = ct.channels.get(name)
        if occ is None:
            continue
        g = occ.grid
        corners = np.array(
            [[x, y, z] for x in (g.lo[0], g.hi[0]) for y in (g.lo[1], g.hi[1]) for z in (g.lo[2], g.hi[2])]
        )
        px = det.to_pixel(pose.project(corners))
        b_c0 = max(int(np.floor(px[:, 0].min())), c0)
        b_c1 = min(int(np.ceil(px[:, 0].max())) + 1, c1)
        b_r0 = max(int(np.floor(px[:, 1].min())), r0)
        b_r1 = min(int(np.ceil(px[:, 1].max())) + 1, r1)
        if b_c0 >= b_c1 or b_r0 >= b_r1:
            continue
        xs = det.col_x()[b_c0:b_c1]
        ys = det.row_y()[b_r0:b_r1]
        xx, yy = np.meshgrid(xs, ys)
        start, d = pose.rays(np.column_stack([xx.ravel(), yy.ravel()]))
        chord = line_integrals(ct.tensors[name], g, start, d, 0.5 * float(g.spacing.min()))[:, 0]
        mask[b_r0:b_r1, b_c0:b_c1] = chord.reshape(len(ys), len(xs)) > MASK_MIN_CHORD_MM
        mask &= field_mask
    return out


def render(
    ct: CtVolume, pose: CtPose, field: Field, exposure: Exposure, size_px: int, rng: np.random.Generator
) -> CtRendering:
    """One radiograph of `ct` (see the module doc); the field must come from `choose_field`."""
    began = time.perf_counter()
    threads = single_thread()
    try:
        return _render(ct, pose, field, exposure, size_px, rng, began)
    finally:
        torch.set_num_threads(threads)


def _render(
    ct: CtVolume, pose: CtPose, field: Field, exposure: Exposure, size_px: int, rng: np.random.Generator, began: float
) -> CtRendering:
    det = Detector(rows=size_px, cols=size_px, pitch_mm=DETECTOR_MM / size_px)
    margin = 4 * PENUMBRA_MM
    corner = det.to_pixel(np.array([[field.x0 - margin, field.y0 - margin], [field.x1 + margin, field.y1 + margin]]))
    r0 = max(int(np.floor(corner[0, 1])), 0)
    r1 = min(int(np.ceil(corner[1, 1])) + 1, det.rows)
    c0 = max(int(np.floor(corner[0, 0])), 0)
    c1 = min(int(np.ceil(corner[1, 0])) + 1, det.cols)
    crop = (r0, r1, c0, c1)
    cs = (slice(r0, r1), slice(c0, c1))
    xs, ys = det.col_x()[c0:c1], det.row_y()[r0:r1]
    field_mask = field.mask(det)
    in_field = field_mask[cs]
    labelled = labelled_channels(ct, pose.view)
    masks = _masks(ct, pose, det, (r0, r1, c0, c1), field_mask, labelled)
    line = _attenuation(ct, pose, exposure, det, crop)

    weight = field_weight(xs, ys, field, PENUMBRA_MM)
    primary = primary_beam(line, xs, ys, pose.source, exposure.heel_effect, weight)

    spine = np.zeros(in_field.shape, dtype=bool)
    for name, m in masks.items():
        if name.startswith("body_"):
            spine |= m[cs]
    spine &= in_field
    if spine.sum() < 20:
        spine = in_field & (np.abs(xs[None, :] - 0.5 * (field.x0 + field.x1)) < 25.0)
    transmitted = with_scatter_and_blur(primary, spine, exposure.scatter_to_primary, det.pitch_mm)

    quanta_per_ugy = QUANTA_PER_UGY_MM2 * det.pitch_mm**2
    target_ei = exposure.target_ei * 10 ** (exposure.deviation_index / 10)
    i0 = (target_ei / 100.0) * quanta_per_ugy / max(float(np.median(transmitted[spine])), 1e-30)
    expected = transmitted * np.float32(i0)
    exposure_index = 100.0 * float(np.median(expected[spine])) / quanta_per_ugy
    deviation_index = 10 * np.log10(exposure_index / exposure.target_ei)

    noisy = expected + np.sqrt(expected) * rng.standard_normal(expected.shape, dtype=np.float32)
    low = expected < 50
    noisy[low] = rng.poisson(expected[low]).astype(np.float32)
    noisy += rng.standard_normal(noisy.shape, dtype=np.float32) * np.float32(ELECTRONIC_NOISE_QUANTA)
    np.clip(noisy, 1.0, None, out=noisy)

    log_image = np.log(np.float32(i0) / noisy)
    coarse = blur_large(log_image, exposure.compression_sigma_mm / det.pitch_mm)
    medium = smooth(log_image, max(4.0 / det.pitch_mm, 0.8))
    fine = smooth(log_image, max(1.2 / det.pitch_mm, 0.5))
    processed = (
        coarse * np.float32(1 - exposure.range_compression)
        + (log_image - coarse)
        + np.float32(exposure.edge_fine) * (log_image - fine)
        + np.float32(exposure.edge_medium) * (fine - medium)
    )
    # window from the anatomy of interest (the spine), as a modality's histogram analysis does, with
    # room below for the soft tissue beside it; the tone curve's shoulders keep the rest
    s_lo, s_hi = (float(v) for v in np.percentile(processed[spine], [1.0, 99.5]))
    spread = max(s_hi - s_lo, 1e-3)
    lo = s_lo - exposure.window_below * spread
    hi = s_hi + 0.1 * spread
    max_value = (1 << exposure.bits_stored) - 1
    unit = np.clip((processed - np.float32(lo)) * np.float32(1.0 / (hi - lo)), -0.5, 1.5)
    k = exposure.tone_contrast
    curve = 0.5 + 0.5 * np.tanh((unit - 0.5) * k) / np.float32(np.tanh(0.5 * k))
    curve = np.clip(curve, 0.0, 1.0) ** np.float32(exposure.tone_gamma)
    scaled = curve * np.float32(0.86 * max_value) + np.float32(0.06 * max_value)
    outside = weight < 0.02
    stored = np.full((det.rows, det.cols), max_value, dtype=np.uint16)
    if exposure.shutter == "electronic":  # black on display: stored 0 before any MONOCHROME1 inversion
        stored[:] = 0
        scaled[outside] = 0
    else:
        scaled[outside] = max_value
    stored[cs] = np.clip(np.rint(scaled), 0, max_value).astype(np.uint16)
    centre, width = 0.49 * max_value, 0.86 * max_value
    if exposure.photometric == "MONOCHROME1":
        stored = (max_value - stored).astype(np.uint16)
        centre = max_value - centre
    masks["field"] = field_mask
    if pose.mirrored:
        stored = stored[:, ::-1].copy()
        masks = {k2: v[:, ::-1].copy() for k2, v in masks.items()}
    return CtRendering(
        ct=ct.name,
        pose=pose,
        field=field,
        exposure=exposure,
        detector=det,
        stored=stored,
        max_value=max_value,
        masks=masks,
        labelled=labelled,
        exposure_index=exposure_index,
        deviation_index=float(deviation_index),
        window_centre=float(centre),
        window_width=float(width),
        seconds=time.perf_counter() - began,
    )


def sample_geometry(rng: np.random.Generator, ct: CtVolume, view: View, tries: int = 60) -> tuple[CtPose, Field]:
    """A pose and a field the CT's data fills (redrawing the pose until one fits)."""
    for _ in range(tries):
        pose = sample_pose(rng, ct, view)
        field = choose_field(rng, ct, pose)
        if field is not None:
            return pose, field
    raise RuntimeError(f"ctdrr: no valid field found for {ct.name} {view} in {tries} poses")


def _span(lo: int, hi: int, size: int) -> tuple[int, int]:
    """[lo, hi) within [0, size), widened about its centre to the smallest side a radiograph may have."""
    grow = max(0, min(MIN_SIDE_PX, size) - (hi - lo))
    lo, hi = lo - grow // 2, hi + grow - grow // 2
    shift = max(0, -lo) - max(0, hi - size)
    return max(0, lo + shift), min(size, hi + shift)


def cropped_to_field(r: CtRendering, margin_mm: float) -> CtRendering:
    """The image as a DR system that crops to the collimation sends it: the field and a margin.
    A CT holds only part of a trunk, so its fields are small; on the whole 43 cm detector the spine
    would fill a few network pixels, as it never does on a lumbar film."""
    rows, cols = np.nonzero(r.masks["field"])
    if rows.size == 0:
        return r
    m = round(margin_mm / r.detector.pitch_mm)
    r0, r1 = _span(int(rows.min()) - m, int(rows.max()) + m + 1, r.stored.shape[0])
    c0, c1 = _span(int(cols.min()) - m, int(cols.max()) + m + 1, r.stored.shape[1])
    return replace(
        r,
        stored=np.ascontiguousarray(r.stored[r0:r1, c0:c1]),
        masks={k: np.ascontiguousarray(v[r0:r1, c0:c1]) for k, v in r.masks.items()},
        crop_offset=(r.crop_offset[0] + r0, r.crop_offset[1] + c0),
    )


def render_random(ct_name: str, view: View, size_px: int, rng: np.random.Generator) -> CtRendering:
    """A random exposure of `view` of the CT `ct_name` (geometry, then beam and processing). Most are
    cropped to the field (rendered on a detector twice as fine, so that the crop keeps its detail)."""
    ct = load_ct(ct_name)
    pose, field = sample_geometry(rng, ct, view)
    exposure = sample_exposure(rng, view)
    crop = rng.random() < FIELD_CROP_CHANCE
    margin_mm = float(rng.uniform(*FIELD_CROP_MARGIN_MM))
    rendering = render(ct, pose, field, exposure, 2 * size_px if crop else size_px, rng)
    return cropped_to_field(rendering, margin_mm) if crop else rendering


def exposure_dict(exposure: Exposure) -> dict[str, object]:
    return asdict(exposure)
