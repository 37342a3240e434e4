"""The model's channels as 3D labels, derived from each CT's segmentation.

Channels labelled per CT (everything else is unlabelled, `labelled` False, never "known empty"):

| channel | totalseg | verse012 (held out) | chest |
|---|---|---|---|
| body_T12..body_L5 | T12-L5 | T12-L3 (L4, L5 outside the volume) | T12-L3 (L3 cut by the volume's end) |
| sacrum | ids 25 + 26 | - (outside the volume) | - (outside the volume) |
| pedicle_left/right, spinous_process | derived | derived | derived |
| disc | body file label 2, T12/L1..L5/S1 | derived between bodies, T12/L1..L2/L3 | derived, T12/L1..L2/L3 |
| iliac_crest, si_joint_left/right | from hips 77/78 and sacrum | - | - |
| transverse_process, foramen, articular_process | - | - | - |

A channel spanning several levels (pedicles, discs) is labelled when the CT holds some of its levels:
the field never shows rays through the region beyond the volume's data (`geometry.valid_rays`), so
within the field its mask is exact. Posterior-element channels cover T12-L5 only, as in the phantom.

Derivation, per vertebra (its whole-vertebra label V):
- the spinal canal is the hole V encloses in axial slices (largest hole of at least 40 mm2); its
  centre c, the local spine axis a (through the canal centres of the neighbouring vertebrae, in the
  sagittal plane) and the posterior direction w (perpendicular to a in the sagittal plane) give each
  voxel a depth d = (p - c) . w; the canal's anterior wall lies at depth d_aw (2nd percentile over the
  hole), its posterior wall at d_pw (98th), its half width hw (95th percentile of |x - c_x|).
- body: totalseg: its body label (1) within V; verse012 and chest: the part of V in front of the plane
  through the canal's anterior wall (d < d_aw), which matches totalseg's body label with Dice 0.95-0.98
  where both exist (tests check it).
- posterior elements = V minus body; spinous process = those behind the canal (d > d_pw + 2 mm)
  within 9 mm of the midline; pedicle = those beside the canal (hw * 0.7 <= |x - c_x| <= hw + 13 mm)
  from 3 mm behind the anterior wall to 2 mm past the canal's middle depth (largest piece); left is
  the patient's left (+x).
- disc (verse012, chest): the gap along z between consecutive derived bodies inside both footprints,
  when it is 2..20 mm high.
- iliac crest: the top 14 mm of each hip bone; SI joint: voxels within 5 mm of both the sacrum and
  that side's hip bone (a ~10 mm band along the joint, as the phantom's).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from edge.qc.structures import VERTEBRAL_LEVELS
from tools.ctdrr.volumes import Grid

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
Bool = NDArray[np.bool_]

# TotalSegmentator v2 'total' ids (totalseg and chest)
TS_VERTEBRAE: Final[dict[str, int]] = {
    "T9": 35,
    "T10": 34,
    "T11": 33,
    "T12": 32,
    "L1": 31,
    "L2": 30,
    "L3": 29,
    "L4": 28,
    "L5": 27,
}
TS_SACRUM: Final = (25, 26)
TS_HIP: Final[dict[str, int]] = {"left": 77, "right": 78}
VERSE_VERTEBRAE: Final[dict[str, int]] = {"T10": 17, "T11": 18, "T12": 19, "L1": 20, "L2": 21, "L3": 22}
SPINE_ORDER: Final = ("T9", "T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5")
CREST_MM: Final = 14.0
SI_NEAR_MM: Final = 5.0
MIN_CANAL_MM2: Final = 40.0
PEDICLE_START_MM: Final = 3.0
MIN_LEVEL_MM3: Final = 4000.0  # less of a vertebra than this in the volume: not present


@dataclass(frozen=True)
class Canal:
    """The spinal canal at one vertebra, in that vertebra's frame."""

    centre: F64
    posterior: F64  # unit vector w
    anterior_wall: float  # depth d_aw (mm, negative: in front of the centre)
    posterior_wall: float
    half_width: float
    slices: int


@dataclass
class Derived:
    masks: dict[str, Bool]
    labelled: frozenset[str]
    level_centres: dict[str, F64]
    canals: dict[str, Canal] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def _bbox(mask: Bool, pad: int = 1) -> tuple[slice, slice, slice]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - pad, 0)
    hi = np.minimum(idx.max(axis=0) + 1 + pad, np.array(mask.shape))
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))


def _axes(centres: dict[str, F64]) -> dict[str, F64]:
    """Local spine axis (superior, unit, in the sagittal y-z plane) at each level, through the
    centroids of its neighbours (SPINE_ORDER runs superior to inferior)."""
    order = [lv for lv in SPINE_ORDER if lv in centres]
    out: dict[str, F64] = {}
    for i, lv in enumerate(order):
        above = centres[order[i - 1]] if i > 0 else centres[lv]
        below = centres[order[i + 1]] if i + 1 < len(order) else centres[lv]
        a = np.array(above - below, dtype=np.float64)
        a[0] = 0.0
        out[lv] = a / np.linalg.norm(a) if np.linalg.norm(a) > 1e-6 else np.array([0.0, 0.0, 1.0])
    return out


RASTER_MM: Final = 1.0


def canal_in_projection(points: F64, centre: F64, axis: F64, spacing: F64) -> Canal | None:
    """The canal as the largest hole in the vertebra's projection along its own axis: body in front,
    pedicles beside, laminae behind always enclose it, even where no single axial slice does."""
    w = np.array([0.0, axis[2], -axis[1]])
    if w[1] < 0:
        w = -w
    u = points[:, 0] - centre[0]
    d = (points - centre) @ w
    pad = 6.0
    u0, d0 = u.min() - pad, d.min() - pad
    shape = (int((u.max() + pad - u0) / RASTER_MM) + 1, int((d.max() + pad - d0) / RASTER_MM) + 1)
    image = np.zeros(shape, dtype=bool)
    image[((u - u0) / RASTER_MM).astype(int), ((d - d0) / RASTER_MM).astype(int)] = True
    grow = max(1, int(np.ceil(0.5 * float(max(spacing[0], np.abs(w) @ spacing)) / RASTER_MM)))
    solid = ndimage.binary_dilation(image, iterations=grow)
    hole = ndimage.binary_fill_holes(solid) & ~solid
    lab, n = ndimage.label(hole)
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    best = int(np.argmax(sizes))
    if sizes[best] * RASTER_MM**2 < MIN_CANAL_MM2 * 0.5:
        return None
    canal = ndimage.binary_dilation(lab == best, iterations=grow)  # undo the dilation's shrinking
    cells = np.argwhere(canal)
    cu = cells[:, 0] * RASTER_MM + u0
    cd = cells[:, 1] * RASTER_MM + d0
    uc, dc = float(cu.mean()), float(cd.mean())
    c3 = centre + np.array([uc, 0.0, 0.0]) + dc * w
    return Canal(
        centre=c3,
        posterior=w,
        anterior_wall=float(np.percentile(cd, 2)) - dc,
        posterior_wall=float(np.percentile(cd, 98)) - dc,
        half_width=float(np.percentile(np.abs(cu - uc), 95)),
        slices=int(sizes[best]),
    )


def find_canals(vertebrae: dict[str, Bool], grid: Grid) -> dict[str, Canal]:
    """The canal of every vertebra whose projection along the spine encloses one."""
    points = {lv: grid.centres(np.argwhere(m)) for lv, m in vertebrae.items()}
    centres = {lv: p.mean(axis=0) for lv, p in points.items()}
    if len(centres) < 2:
        return {}
    axes = _axes(centres)
    canals = {}
    for lv, pts in points.items():
        canal = canal_in_projection(pts, centres[lv], axes[lv], grid.spacing)
        if canal is not None:
            canals[lv] = canal
    return canals


def _depth_and_offset(mask: Bool, grid: Grid, canal: Canal) -> tuple[tuple[slice, slice, slice], F64, F64]:
    """For the voxels of `mask`'s bounding box: depth along the canal's posterior axis and x offset."""
    box = _bbox(mask, pad=0)
    ii, jj, kk = np.meshgrid(
        np.arange(box[0].start, box[0].stop),
        np.arange(box[1].start, box[1].stop),
        np.arange(box[2].start, box[2].stop),
        indexing="ij",
    )
    p = grid.origin + np.stack([ii, jj, kk], axis=-1) * grid.spacing
    depth = (p - canal.centre) @ canal.posterior
    return box, np.asarray(depth), np.asarray(p[..., 0] - canal.centre[0])


def body_by_canal(vertebra: Bool, grid: Grid, canal: Canal) -> Bool:
    """The part of the vertebra in front of the plane of the canal's anterior wall."""
    box, depth, _ = _depth_and_offset(vertebra, grid, canal)
    out = np.zeros_like(vertebra)
    out[box] = vertebra[box] & (depth < canal.anterior_wall)
    # keep the main piece (a stray voxel of the arch in front of the plane is not body)
    lab, n = ndimage.label(out)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        out = lab == int(np.argmax(sizes))
    return np.asarray(out)


def posterior_parts(posterior: Bool, grid: Grid, canal: Canal) -> dict[str, Bool]:
    """Spinous process and pedicles from the posterior elements of one vertebra."""
    out = {name: np.zeros_like(posterior) for name in ("spinous_process", "pedicle_left", "pedicle_right")}
    if not posterior.any():
        return out
    box, depth, dx = _depth_and_offset(posterior, grid, canal)
    pe = posterior[box]
    out["spinous_process"][box] = pe & (depth > canal.posterior_wall + 2.0) & (np.abs(dx) <= 9.0)
    middle = 0.5 * (canal.anterior_wall + canal.posterior_wall)
    # from 3 mm behind the anterior wall (the body's posterolateral rim runs the body's whole height
    # just behind it) to 2 mm past the canal's middle; the largest piece on each side
    band = (depth >= canal.anterior_wall + PEDICLE_START_MM) & (depth <= middle + 2.0)
    beside = (np.abs(dx) >= 0.7 * canal.half_width) & (np.abs(dx) <= canal.half_width + 13.0)
    for name, side in (("pedicle_left", dx > 0), ("pedicle_right", dx < 0)):
        piece = pe & band & beside & side
        lab, n = ndimage.label(piece)
        if n > 1:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            piece = lab == int(np.argmax(sizes))
        out[name][box] = piece
    return out


def discs_between(bodies: dict[str, Bool], grid: Grid) -> tuple[Bool, list[str]]:
    """Intervertebral discs as the gap along z between consecutive bodies within both footprints;
    returns the union and the pairs found (e.g. "L1/L2")."""
    shape = next(iter(bodies.values())).shape
    out = np.zeros(shape, dtype=bool)
    found = []
    levels = [lv for lv in VERTEBRAL_LEVELS if lv in bodies]
    kk = np.arange(shape[2])
    for upper, lower in itertools.pairwise(levels):
        if VERTEBRAL_LEVELS.index(lower) != VERTEBRAL_LEVELS.index(upper) + 1:
            continue
        up, lo = bodies[upper], bodies[lower]
        foot = ndimage.binary_erosion(up.any(axis=2) & lo.any(axis=2), iterations=1)
        if foot.sum() * grid.spacing[0] * grid.spacing[1] < 300.0:
            continue
        bottom_up = np.where(up.any(axis=2), np.argmax(up, axis=2), shape[2])  # lowest voxel of the upper body
        top_lo = np.where(lo.any(axis=2), shape[2] - 1 - np.argmax(lo[:, :, ::-1], axis=2), -1)
        gap = (bottom_up - top_lo - 1) * grid.spacing[2]
        ok = foot & (gap >= 2.0) & (gap <= 20.0)
        if ok.sum() < 0.6 * foot.sum():
            continue
        disc = ok[:, :, None] & (kk[None, None, :] > top_lo[:, :, None]) & (kk[None, None, :] < bottom_up[:, :, None])
        out |= disc
        found.append(f"{upper}/{lower}")
    return out, found


def _present(mask: Bool, grid: Grid) -> bool:
    return bool(mask.sum() * float(np.prod(grid.spacing)) >= MIN_LEVEL_MM3)


def derive_channels(name: str, hu: F32, label_maps: list[NDArray[np.int32]], grid: Grid) -> Derived:
    """Every channel `name`'s labels support, as 3D masks on the CT grid, and which are labelled."""
    seg = label_maps[0]
    ids = VERSE_VERTEBRAE if name == "verse012" else TS_VERTEBRAE
    vertebrae = {lv: seg == i for lv, i in ids.items()}
    vertebrae = {lv: m for lv, m in vertebrae.items() if _present(m, grid)}
    canals = find_canals(vertebrae, grid)
    masks: dict[str, Bool] = {}
    labelled: set[str] = set()
    notes: dict[str, str] = {}
    level_centres: dict[str, F64] = {}
    spine_levels = [lv for lv in VERTEBRAL_LEVELS if lv in vertebrae]

    bodies: dict[str, Bool] = {}
    for lv in spine_levels:
        if name == "totalseg":
            bodies[lv] = vertebrae[lv] & (label_maps[1] == 1)
            notes[f"body_{lv}"] = "body label (1) within the vertebra label"
        elif lv in canals:
            bodies[lv] = body_by_canal(vertebrae[lv], grid, canals[lv])
            notes[f"body_{lv}"] = "vertebra in front of the canal's anterior wall"
        else:
            continue
        if bodies[lv].any():
            masks[f"body_{lv}"] = bodies[lv]
            labelled.add(f"body_{lv}")
            level_centres[lv] = grid.centres(np.argwhere(bodies[lv])).mean(axis=0)

    # posterior elements: need a canal at every level present, else the channel stays unlabelled
    parts = {k: np.zeros(seg.shape, dtype=bool) for k in ("spinous_process", "pedicle_left", "pedicle_right")}
    if spine_levels and all(lv in canals and lv in bodies for lv in spine_levels):
        for lv in spine_levels:
            for k, m in posterior_parts(vertebrae[lv] & ~bodies[lv], grid, canals[lv]).items():
                parts[k] |= m
        for k, m in parts.items():
            masks[k] = m
            labelled.add(k)
            notes[k] = "posterior elements (vertebra minus body) placed against the spinal canal"

    if name == "totalseg":
        disc_all = label_maps[1] == 2
        lab, _ = ndimage.label(disc_all)
        keep = np.zeros_like(disc_all)
        top = level_centres.get("T12")
        for comp, sl in enumerate(ndimage.find_objects(lab), start=1):
            if sl is None:
                continue
            piece = lab[sl] == comp
            centre = grid.centres(np.argwhere(piece) + np.array([s.start for s in sl])).mean(axis=0)
            if top is None or centre[2] < top[2]:  # below T12's centre: T12/L1 and lower, not T11/T12
                keep[sl] |= piece
        masks["disc"] = keep
        labelled.add("disc")
        notes["disc"] = "disc label (2) below the T12 body's centre"
        sacrum = np.isin(seg, TS_SACRUM)
        masks["sacrum"] = sacrum
        labelled.add("sacrum")
        notes["sacrum"] = "sacrum (25) and S1 (26)"
        voxel = grid.spacing
        d_sacrum = ndimage.distance_transform_edt(~sacrum, sampling=voxel)
        for side, hid in TS_HIP.items():
            hip = seg == hid
            if not _present(hip, grid):
                break
            z_top = float(grid.centres(np.argwhere(hip))[:, 2].max())
            kz = grid.origin[2] + np.arange(seg.shape[2]) * grid.spacing[2]
            crest = hip & (kz[None, None, :] >= z_top - CREST_MM + 0.5 * grid.spacing[2])
            masks["iliac_crest"] = masks.get("iliac_crest", np.zeros_like(hip)) | crest
            d_hip = ndimage.distance_transform_edt(~hip, sampling=voxel)
            masks[f"si_joint_{side}"] = (d_sacrum <= SI_NEAR_MM) & (d_hip <= SI_NEAR_MM)
        else:
            labelled.update({"iliac_crest", "si_joint_left", "si_joint_right"})
            notes["iliac_crest"] = "top 14 mm of each hip bone (77, 78)"
            notes["si_joint_left"] = notes["si_joint_right"] = "within 5 mm of both the sacrum and the hip bone"
    elif len(bodies) >= 2:
        disc, pairs = discs_between(bodies, grid)
        expected = [f"{u}/{lo}" for u, lo in itertools.pairwise(spine_levels)]
        if pairs == expected:
            masks["disc"] = disc
            labelled.add("disc")
            notes["disc"] = f"gap between consecutive derived bodies: {', '.join(pairs)}"
    return Derived(masks, frozenset(labelled), level_centres, canals, notes)
