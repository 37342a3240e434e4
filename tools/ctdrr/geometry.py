"""Where the CT patient lies, where the beam goes, and which field the CT's data can fill.

Lab frame as the phantom's (`tools.phantom.acquisition`): X image right, Y image down, Z from the
focal spot into the detector, the detector in Z = 0, the focal spot SID_MM in front of it. A CT has
anatomy only inside its volume, so the collimated field is confined to rays that cross real data
(`valid_rays`): none may leave the volume through its top or bottom within the body, none may graze a
side face where the data cut a bone (the cut would show as an edge), and a ray through the body must
cross at least 20 mm of data. Beyond a side face that cuts the body, an elliptic cylinder of soft
tissue stands in for the rest of the trunk (`substituted_length`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

from edge.qc.structures import View
from tools.ctdrr.volumes import CtVolume
from tools.phantom.acquisition import DETECTOR_MM, SID_MM
from tools.phantom.frames import rot_y, rot_z
from tools.phantom.render import Field

F64 = NDArray[np.float64]
Bool = NDArray[np.bool_]
Projection = Literal["AP", "LL", "RL", "LPO", "RPO"]

VIEW_OF: Final[dict[str, View]] = {"AP": "ap", "LL": "lateral", "RL": "lateral", "LPO": "oblique", "RPO": "oblique"}
VIEW_CLASS: Final[dict[str, str]] = {
    "AP": "ap",
    "LL": "lateral",
    "RL": "lateral",
    "LPO": "oblique_left",  # as tools.phantom.dataset.view_class: LPO/RAO -> left, RPO/LAO -> right
    "RPO": "oblique_right",
}
Z_MARGIN_MM: Final = 3.0
MIN_DATA_CHORD_MM: Final = 20.0
GRAZING_COS: Final = 0.5  # a ray closer than 60 degrees to a cut face's plane would show the cut
FIELD_PITCH_MM: Final = 2.0
MIN_FIELD_MM: Final = (60.0, 80.0)  # width, height on the detector

# patient frame (x left, y posterior, z superior) -> lab, before turning and tilting
_BASE: Final[dict[str, F64]] = {
    "AP": np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]),  # left -> +X, posterior -> detector
    "LL": np.array([[0, -1.0, 0], [0, 0, -1], [1, 0, 0]]),  # left side on the detector, anterior -> +X
    "RL": np.array([[0, 1.0, 0], [0, 0, -1], [-1, 0, 0]]),  # right side on the detector, anterior -> -X
}


@dataclass(frozen=True)
class CtPose:
    """One exposure's geometry: p_lab = rotation @ (p - isocentre) + translation."""

    projection: Projection
    facing: Literal["right", "left", ""]  # laterals: anterior towards the displayed image's right / left
    obliquity_deg: float
    rotation_deg: float  # axial rotation, + turns the patient's left side posterior
    tilt_deg: float  # about the AP axis
    tube_angle_deg: float  # cranio-caudal, + cephalic
    table_gap_mm: float  # skin to detector
    centring_x_mm: float
    centring_y_mm: float
    rotation: F64
    translation: F64
    isocentre: F64
    source: F64

    @property
    def view(self) -> View:
        return VIEW_OF[self.projection]

    @property
    def view_class(self) -> str:
        return VIEW_CLASS[self.projection]

    @property
    def mirrored(self) -> bool:
        """Stored mirrored: a lateral whose natural orientation (LL faces right, RL left) differs."""
        natural = {"LL": "right", "RL": "left"}.get(self.projection, "")
        return bool(self.facing) and self.facing != natural

    @property
    def patient_orientation(self) -> list[str]:
        if self.view == "lateral":
            return ["A", "F"] if self.facing == "right" else ["P", "F"]
        return ["L", "F"]

    @property
    def magnification(self) -> float:
        """Source-to-image over source-to-isocentre distance (the spine plane)."""
        return float((0.0 - self.source[2]) / (self.translation[2] - self.source[2]))

    def to_lab(self, points: F64) -> F64:
        return np.asarray((np.atleast_2d(points) - self.isocentre) @ self.rotation.T + self.translation)

    def to_patient(self, points: F64) -> F64:
        return np.asarray((np.atleast_2d(points) - self.translation) @ self.rotation + self.isocentre)

    def project(self, points: F64) -> F64:
        """Patient-frame points (N x 3) -> detector mm (N x 2), central projection from the source."""
        lab = self.to_lab(points)
        t = -self.source[2] / (lab[:, 2] - self.source[2])
        return np.asarray(self.source[:2] + t[:, None] * (lab[:, :2] - self.source[:2]), dtype=np.float64)

    def rays(self, xy: F64) -> tuple[F64, F64]:
        """Rays to detector points (N x 2 mm) in the patient frame: start S (3,), directions D (N x 3),
        the ray being S + t D for t in [0, 1] (|D| is the source-to-pixel distance)."""
        start = self.to_patient(self.source[None, :])[0]
        ends = np.column_stack([xy, np.zeros(len(xy))])
        return start, np.asarray((ends - self.translation) @ self.rotation + self.isocentre - start)

    def as_dict(self) -> dict[str, object]:
        return {
            "projection": self.projection,
            "facing": self.facing,
            "obliquity_deg": self.obliquity_deg,
            "rotation_deg": self.rotation_deg,
            "tilt_deg": self.tilt_deg,
            "tube_angle_deg": self.tube_angle_deg,
            "table_gap_mm": self.table_gap_mm,
            "centring_x_mm": self.centring_x_mm,
            "centring_y_mm": self.centring_y_mm,
            "magnification": self.magnification,
            "mirrored": self.mirrored,
        }


def make_pose(
    ct: CtVolume,
    projection: Projection,
    facing: Literal["right", "left", ""] = "",
    obliquity_deg: float = 0.0,
    rotation_deg: float = 0.0,
    tilt_deg: float = 0.0,
    tube_angle_deg: float = 0.0,
    table_gap_mm: float = 55.0,
    centring_x_mm: float = 0.0,
    centring_y_mm: float = 0.0,
) -> CtPose:
    """The patient placed with the lumbar bodies' middle on the central ray (plus the centring
    offsets) and the skin nearest the detector `table_gap_mm` from it."""
    base = _BASE["AP" if projection in ("LPO", "RPO") else projection]
    turn = {"LPO": obliquity_deg, "RPO": -obliquity_deg}.get(projection, 0.0)
    rotation = np.asarray(base @ rot_z(turn + rotation_deg) @ rot_y(tilt_deg))
    toward_detector = rotation.T @ np.array([0.0, 0.0, 1.0])
    b = ct.body
    wx, wy = toward_detector[0], toward_detector[1]
    support = (b.cx - ct.aim[0]) * wx + (b.cy - ct.aim[1]) * wy + np.sqrt((b.ax * wx) ** 2 + (b.ay * wy) ** 2)
    z_iso = -table_gap_mm - float(support)
    a = np.radians(tube_angle_deg)
    return CtPose(
        projection=projection,
        facing=facing,
        obliquity_deg=obliquity_deg,
        rotation_deg=rotation_deg,
        tilt_deg=tilt_deg,
        tube_angle_deg=tube_angle_deg,
        table_gap_mm=table_gap_mm,
        centring_x_mm=centring_x_mm,
        centring_y_mm=centring_y_mm,
        rotation=rotation,
        translation=np.array([centring_x_mm, centring_y_mm, z_iso]),
        isocentre=ct.aim.copy(),
        source=np.array([0.0, SID_MM * np.sin(a), -SID_MM * np.cos(a)]),
    )


def sample_pose(rng: np.random.Generator, ct: CtVolume, view: View) -> CtPose:
    """A routine exposure of `view`: small random rotation, tilt, tube angle, centring, table gap."""
    facing: Literal["right", "left", ""] = ""
    obliquity = 0.0
    if view == "ap":
        projection: Projection = "AP"
    elif view == "lateral":
        projection = "LL" if rng.random() < 0.5 else "RL"
        facing = "right" if rng.random() < 0.5 else "left"
    else:
        projection = "LPO" if rng.random() < 0.5 else "RPO"
        obliquity = float(rng.uniform(30.0, 60.0))
    return make_pose(
        ct,
        projection,
        facing=facing,
        obliquity_deg=obliquity,
        rotation_deg=float(np.clip(rng.normal(0.0, 2.0), -5.0, 5.0)),
        tilt_deg=float(np.clip(rng.normal(0.0, 1.5), -4.0, 4.0)),
        tube_angle_deg=float(np.clip(rng.normal(0.0, 1.5), -4.0, 4.0)),
        table_gap_mm=float(rng.uniform(35.0, 90.0)),
        centring_x_mm=float(np.clip(rng.normal(0.0, 6.0), -15.0, 15.0)),
        centring_y_mm=float(np.clip(rng.normal(0.0, 10.0), -25.0, 25.0)),
    )


def _slab(start: F64, d: F64, lo: F64, hi: F64, axes: tuple[int, ...]) -> tuple[F64, F64]:
    """Ray parameter interval inside lo <= p <= hi along `axes` (clipped to [0, 1])."""
    t0 = np.zeros(len(d))
    t1 = np.ones(len(d))
    for k in axes:
        dk = np.where(np.abs(d[:, k]) < 1e-9, 1e-9, d[:, k])
        a = (lo[k] - start[k]) / dk
        b = (hi[k] - start[k]) / dk
        t0 = np.maximum(t0, np.minimum(a, b))
        t1 = np.minimum(t1, np.maximum(a, b))
    return t0, t1


def _ellipse(start: F64, d: F64, ct: CtVolume) -> tuple[F64, F64]:
    """Ray parameter interval inside the body model's elliptic cylinder (empty: t0 >= t1)."""
    b = ct.body
    ox, oy = (start[0] - b.cx) / b.ax, (start[1] - b.cy) / b.ay
    dx, dy = d[:, 0] / b.ax, d[:, 1] / b.ay
    qa = dx * dx + dy * dy
    qb = 2 * (ox * dx + oy * dy)
    qc = ox * ox + oy * oy - 1.0
    disc = qb * qb - 4 * qa * qc
    root = np.sqrt(np.maximum(disc, 0.0))
    t0 = np.where(disc > 0, (-qb - root) / (2 * qa), 1.0)
    t1 = np.where(disc > 0, (-qb + root) / (2 * qa), 0.0)
    return np.clip(t0, 0.0, 1.0), np.clip(t1, 0.0, 1.0)


def substituted_length(start: F64, d: F64, ct: CtVolume) -> F64:
    """Path (mm) through the body model beyond the cut side faces, where the CT has no data."""
    lo, hi = ct.data_grid.lo, ct.data_grid.hi
    e0, e1 = _ellipse(start, d, ct)
    b0, b1 = _slab(start, d, lo, hi, (0, 1))
    length = np.linalg.norm(d, axis=1)
    total = np.zeros(len(d))
    inside_box = b1 > b0
    # the parts of the ellipse chord before the box entry and after its exit (or all of it when the
    # ray misses the box), counted where the side the ray passes through is a cut face
    before_end = np.where(inside_box, b0, e1)
    after_start = np.where(inside_box, b1, e1)
    for seg0, seg1, at in ((e0, np.minimum(e1, before_end), b0), (np.maximum(e0, after_start), e1, b1)):
        seg = np.maximum(seg1 - seg0, 0.0)
        if not seg.any():
            continue
        p = start + at[:, None] * d
        cut = np.zeros(len(d), dtype=bool)
        for face, (k, bound) in {"x-": (0, lo[0]), "x+": (0, hi[0]), "y-": (1, lo[1]), "y+": (1, hi[1])}.items():
            if face in ct.cut_faces:
                cut |= np.abs(p[:, k] - bound) < 1e-3 * max(1.0, abs(bound)) + 0.5
        cut |= ~inside_box & bool(ct.cut_faces)
        total += np.where(cut, seg, 0.0) * length
    return total


def valid_rays(ct: CtVolume, pose: CtPose, xy: F64) -> Bool:
    """Which detector points (N x 2 mm) receive rays that cross only real data (see module doc)."""
    start, d = pose.rays(xy)
    lo, hi = ct.data_grid.lo, ct.data_grid.hi
    b = ct.body
    rect_lo = np.array([min(lo[0], b.cx - b.ax), min(lo[1], b.cy - b.ay), lo[2]])
    rect_hi = np.array([max(hi[0], b.cx + b.ax), max(hi[1], b.cy + b.ay), hi[2]])
    t0, t1 = _slab(start, d, rect_lo, rect_hi, (0, 1))
    hits = t1 > t0
    z0 = start[2] + t0 * d[:, 2]
    z1 = start[2] + t1 * d[:, 2]
    z_lo, z_hi = ct.z_range[0] + Z_MARGIN_MM, ct.z_range[1] - Z_MARGIN_MM
    ok = ~hits | ((np.minimum(z0, z1) >= z_lo) & (np.maximum(z0, z1) <= z_hi))
    length = np.linalg.norm(d, axis=1)
    d0, d1 = _slab(start, d, lo, hi, (0, 1, 2))
    data_chord = np.maximum(d1 - d0, 0.0) * length
    e0, e1 = _ellipse(start, d, ct)
    through_body = e1 > e0
    ok &= ~through_body | (data_chord >= MIN_DATA_CHORD_MM)
    spacing = ct.data_grid.spacing
    for face, bone in ct.cut_faces.items():
        k = 0 if face[0] == "x" else 1
        bound = lo[k] if face[1] == "-" else hi[k]
        dk = np.where(np.abs(d[:, k]) < 1e-9, 1e-9, d[:, k])
        t = (bound - start[k]) / dk
        p = start + t[:, None] * d
        other = 1 - k
        iu = np.rint((p[:, other] - lo[other]) / spacing[other]).astype(int)
        iz = np.rint((p[:, 2] - lo[2]) / spacing[2]).astype(int)
        on_face = (t > 0) & (t < 1) & (iu >= 0) & (iu < bone.shape[0]) & (iz >= 0) & (iz < bone.shape[1])
        grazing = np.abs(d[:, k]) / length < GRAZING_COS
        hit_bone = np.zeros(len(d), dtype=bool)
        hit_bone[on_face] = bone[iu[on_face], iz[on_face]]
        ok &= ~(on_face & grazing & hit_bone)
    return np.asarray(ok)


def valid_map(ct: CtVolume, pose: CtPose, pitch_mm: float = FIELD_PITCH_MM) -> tuple[F64, Bool]:
    """Validity on a coarse detector grid: the grid's coordinates (n) and the map (n x n, rows = Y)."""
    n = int(DETECTOR_MM / pitch_mm)
    coords = (np.arange(n) + 0.5) * pitch_mm - DETECTOR_MM / 2
    xx, yy = np.meshgrid(coords, coords)
    ok = valid_rays(ct, pose, np.column_stack([xx.ravel(), yy.ravel()])).reshape(n, n)
    return np.asarray(coords, dtype=np.float64), np.asarray(ok)


def choose_field(rng: np.random.Generator, ct: CtVolume, pose: CtPose) -> Field | None:
    """A random field (tight to wide) about the central ray, shrunk side by side until every ray in it
    is valid; None when what is left is too small or misses the lumbar middle."""
    coords, ok = valid_map(ct, pose)
    n = len(coords)
    pitch = coords[1] - coords[0]
    half_w = float(rng.uniform(50.0, 125.0))
    half_h = float(rng.uniform(85.0, 200.0))
    centre = np.array([rng.normal(0.0, 5.0), rng.normal(0.0, 8.0)])

    def to_index(v: float) -> int:
        return int(np.clip(np.rint((v + DETECTOR_MM / 2) / pitch - 0.5), 0, n - 1))

    c0, c1 = to_index(centre[0] - half_w), to_index(centre[0] + half_w)
    r0, r1 = to_index(centre[1] - half_h), to_index(centre[1] + half_h)
    bad = np.pad(np.cumsum(np.cumsum(~ok, axis=0), axis=1), ((1, 0), (1, 0)))

    def count(ra: int, rb: int, ca: int, cb: int) -> int:
        """Invalid cells in rows ra..rb, columns ca..cb (inclusive)."""
        if ra > rb or ca > cb:
            return 0
        return int(bad[rb + 1, cb + 1] - bad[ra, cb + 1] - bad[rb + 1, ca] + bad[ra, ca])

    while r0 < r1 and c0 < c1 and count(r0, r1, c0, c1) > 0:
        gains = [count(r0, r0, c0, c1), count(r1, r1, c0, c1), count(r0, r1, c0, c0), count(r0, r1, c1, c1)]
        side = int(np.argmax(gains))
        if side == 0:
            r0 += 1
        elif side == 1:
            r1 -= 1
        elif side == 2:
            c0 += 1
        else:
            c1 -= 1
    if r0 >= r1 or c0 >= c1:
        return None
    field = Field(
        float(coords[c0] - pitch / 2), float(coords[c1] + pitch / 2), float(coords[r0] - pitch / 2),
        float(coords[r1] + pitch / 2),
    )  # fmt: skip
    # the cells are 2 mm: pull each edge in by a cell's half so no sub-cell ray strays out of the data
    field = Field(field.x0 + pitch / 2, field.x1 - pitch / 2, field.y0 + pitch / 2, field.y1 - pitch / 2)
    if field.x1 - field.x0 < MIN_FIELD_MM[0] or field.y1 - field.y0 < MIN_FIELD_MM[1]:
        return None
    aim = pose.project(ct.aim[None, :])[0]
    if not (field.x0 + 10 < aim[0] < field.x1 - 10 and field.y0 + 10 < aim[1] < field.y1 - 10):
        return None
    return field
