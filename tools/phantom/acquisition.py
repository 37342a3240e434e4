"""Acquisition variables: view, positioning, beam, field, exposure and the faults QC must catch.

Every variable sampled here is recorded as truth. Faults are injected by pushing one variable past
its QC threshold; whether an item really fails is decided afterwards by exact projection (truth.py),
not by the label of the injected fault.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

from edge.qc.structures import REQUIRED_STRUCTURES, View
from tools.phantom.anatomy import Anatomy
from tools.phantom.frames import rot_y, rot_z
from tools.phantom.raycast import Detector, Primitive, project

F64 = NDArray[np.float64]
Projection = Literal["AP", "PA", "LAT", "LPO", "RPO", "LAO", "RAO"]

# Which side an oblique demonstrates: posterior obliques the side nearer the detector, anterior
# obliques the side farther from it. The model's view head predicts ap / lateral / oblique_<side>.
OBLIQUE_SIDE: Final[dict[str, str]] = {"LPO": "left", "RAO": "left", "RPO": "right", "LAO": "right"}
VIEW_OF: Final[dict[str, View]] = {
    "AP": "ap",
    "PA": "ap",
    "LAT": "lateral",
    "LPO": "oblique",
    "RPO": "oblique",
    "LAO": "oblique",
    "RAO": "oblique",
}
_FIELD_AND_EXPOSURE_FAULTS = (
    "cut_top",
    "cut_bottom",
    "off_centre",
    "over_collimation",
    "over_exposure",
    "under_exposure",
    "saturation",
)
FAULTS: Final[dict[View, tuple[str, ...]]] = {
    "ap": ("rotation", "tilt", "pelvis_rotation", "tube_angle", "cut_lateral", *_FIELD_AND_EXPOSURE_FAULTS),
    "lateral": ("rotation", "tilt", "cut_lateral", *_FIELD_AND_EXPOSURE_FAULTS),
    "oblique": ("under_rotated", "over_rotated", *_FIELD_AND_EXPOSURE_FAULTS),
}
TARGET_EI: Final[dict[View, float]] = {"ap": 300.0, "lateral": 400.0, "oblique": 300.0}
SID_MM: Final = 1100.0
DETECTOR_MM: Final = 430.0  # 43 x 43 cm flat panel
TABLE_GAP_MM: Final = 55.0  # detector surface to the patient's skin on the detector side


@dataclass(frozen=True)
class Acquisition:
    projection: Projection
    obliquity_deg: float  # patient turned about the long axis for an oblique (0 otherwise)
    rotation_deg: float  # unintended axial rotation, + turns the patient's left side posterior
    tilt_deg: float  # rotation about the AP axis: coronal tilt on AP, double endplates on lateral
    pelvis_rotation_deg: float  # pelvis relative to the spine
    tube_angle_deg: float  # cranio-caudal angulation, + cephalic
    lordosis_factor: float  # posture on the table: flexed knees flatten the lumbar curve
    centring_x_mm: float  # patient offset from the central ray, in the isocentre plane
    centring_y_mm: float
    field_margin_mm: float  # margin around the required anatomy when the field is set well
    deviation_index: float  # DI aimed for (EI is computed from the image, then DI from EI)
    target_ei: float
    kvp: float
    saturation_fraction: float  # share of body pixels pushed past the detector's maximum
    scatter_to_primary: float
    heel_effect: float
    edge_enhancement: float
    range_compression: float
    bits_stored: int
    photometric: Literal["MONOCHROME1", "MONOCHROME2"]
    marker: Literal["L", "R", ""]
    faults: tuple[str, ...]
    fault_values: dict[str, float]

    @property
    def view(self) -> View:
        return VIEW_OF[self.projection]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _signed(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi) * rng.choice([-1.0, 1.0]))


def sample_acquisition(
    rng: np.random.Generator, view: View, fault_rate: float, force_faults: tuple[str, ...] | None = None
) -> Acquisition:
    """Sample one exposure of `view`; with probability `fault_rate` inject one fault (sometimes two),
    or exactly `force_faults` when given."""
    if view == "ap":
        projection: Projection = "AP" if rng.random() < 0.85 else "PA"
    elif view == "lateral":
        projection = "LAT"
    else:
        projection = str(rng.choice(["LPO", "RPO", "LAO", "RAO"], p=[0.4, 0.4, 0.1, 0.1]))  # type: ignore[assignment]
    faults: list[str] = []
    if rng.random() < fault_rate:
        choices = FAULTS[view]
        faults.append(str(rng.choice(choices)))
        if rng.random() < 0.15:
            second = str(rng.choice(choices))
            if second not in faults and {second, faults[0]} != {"over_exposure", "under_exposure"}:
                faults.append(second)
    if force_faults is not None:
        unknown = [f for f in force_faults if f not in FAULTS[view]]
        if unknown:
            raise ValueError(f"faults {unknown} do not apply to {view} (use {', '.join(FAULTS[view])})")
        faults = list(force_faults)
    lateral = view == "lateral"
    acq = Acquisition(
        projection=projection,
        obliquity_deg=float(rng.uniform(35, 45)) if view == "oblique" else 0.0,
        rotation_deg=float(np.clip(rng.normal(0, 1.2 if lateral else 1.5), -2.5, 2.5)) if view != "oblique" else 0.0,
        tilt_deg=float(np.clip(rng.normal(0, 0.6 if lateral else 1.2), -1.2 if lateral else -3, 1.2 if lateral else 3)),
        pelvis_rotation_deg=float(np.clip(rng.normal(0, 1.0), -2, 2)),
        tube_angle_deg=float(np.clip(rng.normal(0, 0.6), -1.2, 1.2) if lateral else np.clip(rng.normal(0, 2.0), -5, 5)),
        lordosis_factor=float(rng.uniform(0.85, 1.0) if lateral else rng.uniform(0.45, 0.75)),
        centring_x_mm=float(np.clip(rng.normal(0, 4), -8, 8)),
        centring_y_mm=float(np.clip(rng.normal(0, 8), -20, 20)),
        field_margin_mm=float(rng.uniform(15, 35)),
        deviation_index=float(np.clip(rng.normal(0, 0.45), -2.2, 2.2)),
        target_ei=TARGET_EI[view],
        kvp=float(rng.choice([75, 80, 85, 90] if not lateral else [85, 90, 95, 100])),
        saturation_fraction=0.0,
        scatter_to_primary=float(rng.uniform(0.8, 1.5) if lateral else rng.uniform(0.4, 0.8)),
        heel_effect=float(rng.uniform(-0.08, 0.08)),
        edge_enhancement=float(rng.uniform(0.5, 1.5)),
        range_compression=float(rng.uniform(0.5, 0.8)),
        bits_stored=int(rng.choice([12, 14, 16])),
        photometric="MONOCHROME1" if rng.random() < 0.3 else "MONOCHROME2",
        marker=str(rng.choice(["L", "R", ""], p=[0.45, 0.45, 0.1])),  # type: ignore[arg-type]
        faults=tuple(faults),
        fault_values={},
    )
    values: dict[str, float] = {}
    for fault in faults:
        if fault == "rotation":
            acq = replace(acq, rotation_deg=_signed(rng, 5, 14) if lateral else _signed(rng, 6, 20))
        elif fault == "tilt":
            acq = replace(acq, tilt_deg=_signed(rng, 4, 10) if lateral else _signed(rng, 7, 15))
        elif fault == "pelvis_rotation":
            acq = replace(acq, pelvis_rotation_deg=_signed(rng, 7, 15))
        elif fault == "tube_angle":
            acq = replace(acq, tube_angle_deg=_signed(rng, 18, 30))
        elif fault == "under_rotated":
            acq = replace(acq, obliquity_deg=float(rng.uniform(10, 26)))
        elif fault == "over_rotated":
            acq = replace(acq, obliquity_deg=float(rng.uniform(54, 72)))
        elif fault == "off_centre":
            if rng.random() < 0.5:
                acq = replace(acq, centring_x_mm=_signed(rng, 35, 60))
            else:
                acq = replace(acq, centring_y_mm=_signed(rng, 45, 80))
        elif fault == "over_exposure":
            acq = replace(acq, deviation_index=float(rng.uniform(3.3, 6.0)))
        elif fault == "under_exposure":
            acq = replace(acq, deviation_index=float(rng.uniform(-6.0, -3.3)))
        elif fault == "saturation":
            acq = replace(acq, saturation_fraction=float(rng.uniform(0.03, 0.2)))
        elif fault in ("cut_top", "cut_bottom", "cut_lateral"):
            values[fault] = float(rng.uniform(10, 30))  # how far the field edge cuts in (mm)
        elif fault == "over_collimation":
            values[fault] = float(rng.uniform(1.75, 2.8))  # target field area / minimal field
    return replace(acq, fault_values=values)


def pose_rotation(acq: Acquisition) -> F64:
    """Patient frame -> lab frame (X image right, Y image down, Z from the source into the detector)."""
    ap = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # left -> +X, posterior -> +Z, superior -> -Y
    pa = np.array([[-1.0, 0, 0], [0, 0, -1], [0, -1, 0]])  # seen from behind
    lat = np.array([[0, -1.0, 0], [0, 0, -1], [1, 0, 0]])  # left side on the detector, anterior -> +X
    turn = {
        "AP": 0.0,
        "PA": 0.0,
        "LAT": 0.0,
        "LPO": acq.obliquity_deg,
        "RPO": -acq.obliquity_deg,
        "LAO": -acq.obliquity_deg,
        "RAO": acq.obliquity_deg,
    }[acq.projection]
    base = {"AP": ap, "LPO": ap, "RPO": ap, "PA": pa, "LAO": pa, "RAO": pa, "LAT": lat}[acq.projection]
    return np.asarray(base @ rot_z(turn + acq.rotation_deg) @ rot_y(acq.tilt_deg))


def source_position(acq: Acquisition) -> F64:
    a = np.radians(acq.tube_angle_deg)
    return np.array([0.0, SID_MM * np.sin(a), -SID_MM * np.cos(a)])


def isocentre_depth(anatomy: Anatomy, rotation: F64) -> float:
    """Lab Z of the isocentre such that the skin nearest the detector lies TABLE_GAP_MM above it."""
    toward_detector = rotation.T @ np.array([0.0, 0.0, 1.0])
    outline = anatomy.trunk_outline() - anatomy.isocentre[:2]
    support = float((outline @ toward_detector[:2]).max())
    return float(-TABLE_GAP_MM - support)


@dataclass(frozen=True)
class Pose:
    """Where the patient lies: p_lab = rotation @ (p - isocentre) + translation; pelvis turned first."""

    rotation: F64
    translation: F64
    source: F64
    pelvis_rotation: F64
    pelvis_pivot: F64
    isocentre: F64

    @property
    def magnification(self) -> float:
        """Source-to-image over source-to-isocentre distance (the spine plane)."""
        return float((0.0 - self.source[2]) / (self.translation[2] - self.source[2]))

    def to_lab(self, points: F64, pelvis: bool = False) -> F64:
        pts = np.atleast_2d(points)
        if pelvis:
            pts = (pts - self.pelvis_pivot) @ self.pelvis_rotation.T + self.pelvis_pivot
        return np.asarray((pts - self.isocentre) @ self.rotation.T + self.translation)


def posed_primitives(anatomy: Anatomy, pose: Pose) -> list[Primitive]:
    """All solids in the lab frame; the pelvis turned about its pivot first."""
    translation = pose.translation - pose.rotation @ pose.isocentre
    spine = [p.transformed(pose.rotation, translation) for p in anatomy.spine]
    pelvis_rot = pose.rotation @ pose.pelvis_rotation
    pelvis_shift = translation + pose.rotation @ (pose.pelvis_pivot - pose.pelvis_rotation @ pose.pelvis_pivot)
    pelvis = [p.transformed(pelvis_rot, pelvis_shift) for p in anatomy.pelvis]
    return [*spine, *pelvis]


Extent = tuple[float, float, float, float]


def structure_extent(
    prims: list[Primitive], source: F64, structures: tuple[str, ...], pitch_mm: float = 2.0
) -> Extent | None:
    """Bounding box (x0, x1, y0, y1; detector mm) of the projected structures, on a coarse grid."""
    chosen = [p for p in prims if p.structure in structures]
    n = int(DETECTOR_MM * 1.5 / pitch_mm)
    det = Detector(rows=n, cols=n, pitch_mm=pitch_mm)
    _, masks = project(chosen, det, source)
    if not masks:
        return None
    union = np.logical_or.reduce(list(masks.values()))
    if not union.any():
        return None
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    xs, ys, half = det.col_x(), det.row_y(), pitch_mm / 2
    return float(xs[cols[0]] - half), float(xs[cols[-1]] + half), float(ys[rows[0]] - half), float(ys[rows[-1]] + half)


def make_pose(anatomy: Anatomy, acq: Acquisition) -> Pose:
    """Where the radiographer means the patient to be: the central ray aimed at the middle of the
    anatomy the view must show (see `displaced` for where the patient really is)."""
    rotation = pose_rotation(acq)
    z_iso = isocentre_depth(anatomy, rotation)
    pose = Pose(
        rotation=rotation,
        translation=np.array([0.0, 0.0, z_iso]),
        source=source_position(acq),
        pelvis_rotation=rot_z(acq.pelvis_rotation_deg),
        pelvis_pivot=anatomy.pelvis_pivot,
        isocentre=anatomy.isocentre,
    )
    extent = structure_extent(posed_primitives(anatomy, pose), pose.source, REQUIRED_STRUCTURES[acq.view])
    aim = (
        np.zeros(2)
        if extent is None
        else np.array([extent[0] + extent[1], extent[2] + extent[3]]) / (2 * pose.magnification)
    )
    return replace(pose, translation=np.array([-aim[0], -aim[1], z_iso]))


def displaced(aimed: Pose, acq: Acquisition) -> Pose:
    """The aimed pose moved by the acquisition's centring errors."""
    return replace(aimed, translation=aimed.translation + np.array([acq.centring_x_mm, acq.centring_y_mm, 0.0]))
