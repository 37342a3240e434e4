"""A parametric 3D lumbar spine, pelvis and trunk, randomised per patient.

Numbers come from docs/phantom-anatomy.md; each is sampled around its mean so that no
two patients share a skeleton. Everything is built in the patient frame (x left, y posterior,
z superior, millimetres) with the S1 upper endplate centre at the origin. Alongside the solids the
builder records named 3D landmarks (pedicle centres, endplate rims, facet joint planes...) from which
the truth module derives the expected QC outcome by exact projection.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from edge.qc.structures import VERTEBRAL_LEVELS
from tools.phantom import materials as mat
from tools.phantom.frames import frame_from_axis, rot_x, rot_y, rot_z
from tools.phantom.raycast import Plane, Primitive, Shape

F64 = NDArray[np.float64]
FORAMEN_HALF_MM = (4.0, 4.5, 8.0)  # lateral, AP, height semi-axes of an intervertebral foramen
SI_JOINT_BAND_MM = 10.0  # width of the SI joint structure across the joint line
SILHOUETTE = "_body"  # internal mask of the patient's outline (names starting "_" are never written)

# level: width, depth, height, pedicle width, pedicle height, pedicle medial angle, interpedicular
# distance, canal depth, spinous length, spinous height, transverse span (tip to tip)
LEVEL_TABLE: dict[str, tuple[float, ...]] = {
    "T11": (36, 29, 22.5, 7.0, 16, 4, 19, 17, 28, 18, 50),
    "T12": (38, 31, 23.5, 7.5, 16, 6, 20, 17, 30, 20, 57),
    "L1": (40, 34, 26, 8.3, 15, 11, 21, 17, 30, 20, 70),
    "L2": (42, 35, 26.5, 8.4, 15, 12, 22, 16, 32, 22, 80),
    "L3": (45, 36, 27, 9.6, 15, 14, 23, 15, 33, 23, 90),
    "L4": (47, 36, 26.5, 11.9, 15, 18, 24, 15, 32, 22, 85),
    "L5": (49, 36, 27, 15.5, 13.5, 30, 26, 15, 28, 17, 90),
}
SPINE_LEVELS = ("T11", *VERTEBRAL_LEVELS)  # T11 is drawn for realism; QC starts at T12
# disc below each level: anterior, posterior height (mm)
DISC_TABLE: dict[str, tuple[float, float]] = {
    "T11": (5.0, 4.0),
    "T12": (6.0, 4.5),
    "L1": (6.9, 5.5),
    "L2": (8.5, 6.3),
    "L3": (9.3, 7.0),
    "L4": (11.5, 8.1),
    "L5": (13.0, 6.9),
}
# standing segmental lordosis below each level (degrees), scaled to the sampled total
SEGMENT_LORDOSIS: dict[str, float] = {"T11": -4, "T12": -2, "L1": 1, "L2": 6, "L3": 9, "L4": 13, "L5": 22}
# facet joint angle to the mid-sagittal plane, joint below each level (Masharawi 2004 pattern)
FACET_ANGLE: dict[str, float] = {"T11": 20, "T12": 26, "L1": 30, "L2": 32, "L3": 44, "L4": 48, "L5": 52}


@dataclass(frozen=True)
class PatientParams:
    """Everything that makes one phantom patient; all of it goes into the truth record."""

    scale: float
    level_jitter: dict[str, float]
    lordosis_deg: float
    sacral_slope_deg: float
    scoliosis_deg: float
    bone_density: float
    disc_degeneration: float
    trunk_ap_mm: float
    trunk_lateral_mm: float
    fat_mm: float
    crest_offset_mm: float
    rib_t12_mm: float
    rib_t11_mm: float
    rib_slope_deg: float
    sex: str
    gas_seed: int
    implant: str
    facet_jitter: dict[str, float]

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def sample_patient(rng: np.random.Generator) -> PatientParams:
    habitus = float(np.clip(rng.normal(0, 1), -2.2, 3.0))
    implant = str(rng.choice(["none", "screws", "coin", "clips"], p=[0.82, 0.07, 0.06, 0.05]))
    sacral_slope = float(np.clip(rng.normal(35, 7), 18, 55))
    # lordosis follows the pelvis (LL ~ SS + 5-10 degrees; Hasegawa 2016, Mac-Thiong 2011)
    lordosis = float(np.clip(sacral_slope + rng.normal(5, 7), max(12.0, sacral_slope - 5), 70))
    return PatientParams(
        scale=float(np.clip(rng.normal(1.0, 0.07), 0.84, 1.18)),
        level_jitter={lv: float(np.clip(rng.normal(1.0, 0.03), 0.92, 1.08)) for lv in SPINE_LEVELS},
        lordosis_deg=lordosis,
        sacral_slope_deg=sacral_slope,
        scoliosis_deg=float(rng.normal(0, 2.0) if rng.random() > 0.1 else rng.uniform(-16, 16)),
        bone_density=float(np.clip(rng.normal(1.0, 0.12), 0.65, 1.3)),
        disc_degeneration=float(np.clip(rng.beta(1.2, 5.0), 0, 0.7)),
        trunk_ap_mm=float(np.clip(225 + 30 * habitus, 160, 330)),
        trunk_lateral_mm=float(np.clip(340 + 35 * habitus, 270, 440)),
        fat_mm=float(np.clip(22 + 9 * habitus + rng.normal(0, 3), 8, 60)),
        crest_offset_mm=float(rng.normal(0, 9)),
        rib_t12_mm=float(rng.uniform(70, 140)),
        rib_t11_mm=float(rng.uniform(130, 190)),
        rib_slope_deg=float(rng.uniform(28, 45)),
        sex=str(rng.choice(["F", "M"])),
        gas_seed=int(rng.integers(0, 2**31 - 1)),
        implant=implant,
        facet_jitter={lv: float(rng.normal(0, 3.0)) for lv in SPINE_LEVELS},
    )


@dataclass
class Anatomy:
    """Solids and landmarks in the patient frame. `pelvis` and points named 'pelvis.*' rotate together."""

    spine: list[Primitive] = field(default_factory=list)
    pelvis: list[Primitive] = field(default_factory=list)
    points: dict[str, F64] = field(default_factory=dict)
    trunk_centre: F64 = field(default_factory=lambda: np.zeros(3))
    trunk_half_mm: tuple[float, float] = (170.0, 112.0)
    isocentre: F64 = field(default_factory=lambda: np.zeros(3))
    pelvis_pivot: F64 = field(default_factory=lambda: np.zeros(3))
    back_y: float = 100.0

    def trunk_outline(self, n: int = 360) -> F64:
        """The trunk's cross-section (x, y) as a polygon: the ellipse below the flat back."""
        half_x, half_y = self.trunk_half_mm
        ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
        pts = np.stack([half_x * np.cos(ang), half_y * np.sin(ang)], axis=1) + self.trunk_centre[:2]
        inside = pts[pts[:, 1] <= self.back_y]
        dy = (self.back_y - self.trunk_centre[1]) / half_y
        if abs(dy) < 1:
            x = half_x * np.sqrt(1 - dy**2)
            inside = np.vstack([inside, [[-x, self.back_y], [x, self.back_y]]])
        return np.asarray(inside)


class _Builder:
    """Adds primitives in a local frame (origin, axes) to one of the anatomy's groups."""

    def __init__(self, out: list[Primitive], density: float) -> None:
        self.out = out
        self.density = density

    def bone(self, mu: float) -> float:
        """Attenuation of bone over the soft tissue it displaces."""
        return mu * self.density - mat.SOFT

    def add(
        self,
        shape: Shape,
        centre: F64,
        axes: F64,
        half: tuple[float, float, float] | F64,
        mu: float,
        structure: str | None = None,
        local_bounds: tuple[tuple[float, float], tuple[float, float], tuple[float, float]] | None = None,
        planes: tuple[Plane, ...] = (),
    ) -> Primitive:
        prim = Primitive(
            shape=shape,
            centre=np.asarray(centre, dtype=np.float64),
            axes=np.asarray(axes, dtype=np.float64),
            half_mm=np.asarray(half, dtype=np.float64),
            mu_per_mm=float(mu),
            structure=structure,
            local_bounds=local_bounds,
            planes=planes,
        )
        self.out.append(prim)
        return prim

    def shelled(
        self,
        shape: Shape,
        centre: F64,
        axes: F64,
        half: tuple[float, float, float],
        shell: tuple[float, float, float],
        structure: str | None,
        cortical: float = mat.CORTICAL,
        core: float = mat.CANCELLOUS,
        local_bounds: tuple[tuple[float, float], tuple[float, float], tuple[float, float]] | None = None,
    ) -> None:
        """Cortical shell around a cancellous core: outer solid plus a (negative) core correction."""
        self.add(shape, centre, axes, half, self.bone(cortical), structure, local_bounds)
        inner = np.maximum(np.asarray(half) - np.asarray(shell), 0.3)
        self.add(shape, centre, axes, inner, (core - cortical) * self.density, None, local_bounds)


def _ellipse_ring(centre: F64, axes: F64, a: float, b: float, n: int = 48) -> F64:
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    local = np.stack([a * np.cos(ang), b * np.sin(ang), np.zeros(n)], axis=1)
    return np.asarray(centre + local @ axes.T)


def _cylinder_surface(centre: F64, axes: F64, half: F64, n_ring: int = 24, n_len: int = 5) -> F64:
    ang = np.linspace(0, 2 * np.pi, n_ring, endpoint=False)
    pts = []
    for zq in np.linspace(-1, 1, n_len):
        local = np.stack([np.cos(ang), np.sin(ang), np.full(n_ring, zq)], axis=1) * half
        pts.append(centre + local @ axes.T)
    return np.concatenate(pts)


def build_anatomy(p: PatientParams, lordosis_factor: float = 1.0) -> Anatomy:
    """Build the patient; `lordosis_factor` < 1 flattens the lumbar curve and the sacral slope
    together, as flexed hips and knees do on the table for AP and oblique views."""
    anatomy = Anatomy()
    spine = _Builder(anatomy.spine, p.bone_density)
    pelvis = _Builder(anatomy.pelvis, p.bone_density)
    pts = anatomy.points
    rng = np.random.default_rng(p.gas_seed)
    mixed_bone = 0.55 * mat.CORTICAL + 0.45 * mat.CANCELLOUS

    # ---- the spinal column, from the S1 endplate upwards -------------------------------------
    # flexed hips tilt the pelvis back: the sacral slope falls with the lordosis
    sacral_slope = max(p.sacral_slope_deg - (1.0 - lordosis_factor) * 25.0, 5.0)
    beta = sacral_slope  # tilt of the current lower endplate (positive: faces anteriorly)
    total_std = sum(SEGMENT_LORDOSIS[lv] for lv in ("L1", "L2", "L3", "L4", "L5"))
    top_centre = np.zeros(3)  # the lower endplate we stack on (S1 upper endplate first)
    lower_beta = beta
    lower_dims: tuple[float, float] = (46.0 * p.scale, 34.0 * p.scale)
    lower_frame = rot_x(beta)
    lower_name = "S1"
    frames: dict[str, tuple[F64, F64, tuple[float, ...]]] = {}
    for index, level in enumerate(reversed(SPINE_LEVELS)):  # L5, L4, ..., T11
        k = p.scale * p.level_jitter[level]
        width, depth, height, ped_w, ped_h, ped_med, interped, canal, sp_len, sp_h, tp_span = (
            v * (k if i not in (5,) else 1.0) for i, v in enumerate(LEVEL_TABLE[level])
        )
        seg = SEGMENT_LORDOSIS[level]
        if level.startswith("L"):
            seg = seg * p.lordosis_deg * lordosis_factor / total_std
        scol = p.scoliosis_deg * np.sin(np.pi * (index + 0.5) / len(SPINE_LEVELS)) / 3.0
        upper_beta = lower_beta - seg
        ant, post = DISC_TABLE[level]
        degeneration = p.disc_degeneration * (1.0 if level in ("L4", "L5") else 0.4)
        disc_h = 0.5 * (ant + post) * k * (1.0 - degeneration)
        mean_frame = rot_x(0.5 * (lower_beta + upper_beta))
        frame = rot_x(upper_beta) @ rot_y(scol)
        bottom = top_centre + disc_h * mean_frame[:, 2]
        centre = bottom + 0.5 * height * frame[:, 2]
        top_centre_next = centre + 0.5 * height * frame[:, 2]

        # disc: an elliptic cylinder cut by the two endplate planes (a wedge, no overlap with bodies)
        dw, dd = 0.5 * (width + lower_dims[0]) * 0.49, 0.5 * (depth + lower_dims[1]) * 0.49
        spine.add(
            "cylinder",
            0.5 * (top_centre + bottom),
            mean_frame,
            (dw, dd, disc_h + 20),
            mat.DISC - mat.SOFT,
            "disc" if level != "T11" else None,
            planes=(
                Plane(top_centre.copy(), -lower_frame[:, 2]),
                Plane(bottom.copy(), frame[:, 2].copy()),
            ),
        )
        pts[f"disc.{level}-{lower_name}.upper_rim"] = _ellipse_ring(bottom, frame, width / 2, depth / 2)
        pts[f"disc.{level}-{lower_name}.lower_rim"] = _ellipse_ring(
            top_centre, lower_frame, *lower_dims_half(lower_dims)
        )
        frames[level] = (centre, frame, (width, depth, height, ped_w, ped_h, ped_med, interped, canal))
        _vertebra(
            spine,
            pts,
            level,
            centre,
            frame,
            height,
            width,
            depth,
            ped_w,
            ped_h,
            ped_med,
            interped,
            canal,
            sp_len,
            sp_h,
            tp_span,
            mixed_bone,
            rng,
        )
        top_centre = top_centre_next
        lower_beta = upper_beta
        lower_dims = (width, depth)
        lower_frame = frame
        lower_name = level

    # facet joints and foramina between each level and the one below (S1 for L5)
    sacrum_frame = rot_x(sacral_slope)
    s1_height = 28.0 * p.scale
    s1_centre = -0.5 * s1_height * sacrum_frame[:, 2]
    levels_down = list(SPINE_LEVELS)
    for i, level in enumerate(levels_down):
        upper_c, upper_f, upper_dims = frames[level]
        if i + 1 < len(levels_down):
            lower_c, lower_f, lower_d = frames[levels_down[i + 1]]
            lower_name = levels_down[i + 1]
        else:
            lower_c, lower_f, lower_d = (
                s1_centre,
                sacrum_frame,
                (46 * p.scale, 34 * p.scale, s1_height, 15, 13, 30, 28, 15),
            )
            lower_name = "S1"
        _facets_and_foramina(
            spine,
            pts,
            level,
            lower_name,
            upper_c,
            upper_f,
            upper_dims,
            lower_c,
            lower_f,
            lower_d,
            FACET_ANGLE[level] + p.facet_jitter[level],
            mixed_bone,
        )

    # ---- ribs (T11, T12) ---------------------------------------------------------------------
    for level, length in (("T11", p.rib_t11_mm), ("T12", p.rib_t12_mm)):
        centre, frame, dims = frames[level]
        width, depth = dims[0], dims[1]
        for side in (1.0, -1.0):
            start = centre + frame @ np.array([side * (width / 2 + 14), depth / 2 + 16, dims[2] * 0.1])
            slope = np.radians(p.rib_slope_deg + (4 if level == "T12" else 0))
            n_seg = 7
            path = []
            for u in np.linspace(0, 1, n_seg + 1):
                s = u * length
                path.append(
                    start + np.array([side * s * np.cos(slope) * 0.85, -55 * u**1.6 * length / 150, -s * np.sin(slope)])
                )
            for a, b in itertools.pairwise(path):
                axis = b - a
                seg_len = float(np.linalg.norm(axis))
                spine.add(
                    "cylinder",
                    0.5 * (a + b),
                    frame_from_axis(axis, np.array([0, 0, 1.0])),
                    (3.2, 5.0, seg_len / 2 + 0.8),
                    spine.bone(0.8 * mat.CORTICAL),
                )

    # ---- sacrum and pelvis ---------------------------------------------------------------------
    _sacrum_and_pelvis(pelvis, pts, p, sacrum_frame, s1_centre, s1_height, frames, mixed_bone)
    # the pelvis turns on the table about a vertical axis between the hip joints
    anatomy.pelvis_pivot = np.array([0.0, float(pts["pelvis.hip.left.centre"][0, 1]), float(s1_centre[2])])

    # ---- soft tissue ----------------------------------------------------------------------------
    l3_centre = frames["L3"][0]
    spinous_tip_y = float(pts["spinous.L3.tip"][0, 1])
    back_y = spinous_tip_y + 18 + p.fat_mm * 0.8
    half_ap, half_lat = p.trunk_ap_mm / 2, p.trunk_lateral_mm / 2
    # the trunk: an ellipse deeper than the body, cut flat at the back (lying on the table)
    ellipse_ap = 1.35 * half_ap
    trunk_c = np.array([0.0, back_y - 2 * half_ap + ellipse_ap, l3_centre[2]])
    anatomy.trunk_centre = trunk_c
    anatomy.trunk_half_mm = (half_lat, ellipse_ap)
    anatomy.back_y = back_y
    eye = np.eye(3)
    back = Plane(np.array([0.0, back_y, 0.0]), np.array([0.0, 1.0, 0.0]))
    inner_back = Plane(np.array([0.0, back_y - 0.6 * p.fat_mm, 0.0]), np.array([0.0, 1.0, 0.0]))
    spine.add("cylinder", trunk_c, eye, (half_lat, ellipse_ap, 520), mat.FAT, SILHOUETTE, planes=(back,))
    spine.add(
        "cylinder",
        trunk_c,
        eye,
        (half_lat - p.fat_mm, ellipse_ap - p.fat_mm * 0.8, 520),
        mat.SOFT - mat.FAT,
        planes=(inner_back,),
    )
    # psoas with the retroperitoneal fat that makes its shadow, and the kidneys in their fat
    for side in (1.0, -1.0):
        c = np.array([side * (frames["L3"][2][0] / 2 + 16), 2.0, l3_centre[2] - 25])
        axes_psoas = rot_z(side * 4) @ rot_y(-side * 12)
        spine.add("ellipsoid", c, axes_psoas, (27, 24, 145), mat.FAT - mat.SOFT)
        spine.add("ellipsoid", c, axes_psoas, (23, 20, 140), mat.SOFT - mat.FAT + 0.0008)
        kc = np.array([side * 62, 15.0, float(frames["L1"][0][2]) - 5 * side])
        spine.add("ellipsoid", kc, rot_z(side * 20), (36, 30, 60), mat.FAT - mat.SOFT)
        spine.add("ellipsoid", kc, rot_z(side * 20), (27, 22, 52), mat.SOFT - mat.FAT + 0.0005)
    # bowel gas: bubbles and colon segments in front of the spine
    n_gas = int(rng.integers(3, 25))
    z_lo, z_hi = float(frames["L5"][0][2]) - 40, float(frames["L1"][0][2]) + 20
    for _ in range(n_gas):
        c = np.array(
            [rng.uniform(-0.6, 0.6) * half_lat, trunk_c[1] + rng.uniform(-0.75, 0.1) * half_ap, rng.uniform(z_lo, z_hi)]
        )
        if rng.random() < 0.3:
            axis = rng.normal(size=3) * np.array([1, 0.3, 1])
            spine.add(
                "cylinder",
                c,
                frame_from_axis(axis, np.array([0, 1.0, 0])),
                (rng.uniform(6, 14), rng.uniform(5, 10), rng.uniform(15, 45)),
                -0.7 * mat.SOFT,
            )
        else:
            r = rng.uniform(3, 14)
            spine.add(
                "ellipsoid",
                c,
                rot_z(rng.uniform(0, 180)),
                (r, r * rng.uniform(0.5, 1), r * rng.uniform(0.5, 1.2)),
                -0.7 * mat.SOFT,
            )
    _implant(spine, p, frames, trunk_c, half_ap, rng)

    anatomy.isocentre = 0.5 * (frames["L1"][0] + frames["L5"][0])
    return anatomy


def lower_dims_half(dims: tuple[float, float]) -> tuple[float, float]:
    return dims[0] / 2, dims[1] / 2


def _vertebra(
    b: _Builder,
    pts: dict[str, F64],
    level: str,
    centre: F64,
    frame: F64,
    height: float,
    width: float,
    depth: float,
    ped_w: float,
    ped_h: float,
    ped_med: float,
    interped: float,
    canal: float,
    sp_len: float,
    sp_h: float,
    tp_span: float,
    mixed_bone: float,
    rng: np.random.Generator,
) -> None:
    """Body (with a concave posterior wall), pedicles, laminae, spinous and transverse processes."""

    def world(local: F64 | list[float]) -> F64:
        return np.asarray(centre + frame @ np.asarray(local, dtype=np.float64))

    cortex = float(rng.uniform(0.5, 0.9))
    labelled = level != "T11"  # T11 is drawn for realism only; QC and the model start at T12
    b.shelled(
        "cylinder",
        centre,
        frame,
        (width / 2, depth / 2, height / 2),
        (cortex, cortex, 0.6),
        f"body_{level}" if labelled else None,
    )
    # the posterior wall is concave: the lateral lobes make the double contour of a rotated lateral
    notch_r = 0.22 * width
    b.add(
        "cylinder",
        world([0, depth / 2 + notch_r - 1.8, 0]),
        frame,
        (notch_r, notch_r, height / 2),
        -(mat.CANCELLOUS * b.density - mat.SOFT),
        None,
        planes=(Plane(world([0, depth / 2, 0]), frame[:, 1].copy()),),
    )
    pts[f"body.{level}.centre"] = centre[None, :].copy()
    pts[f"body.{level}.top_rim"] = _ellipse_ring(world([0, 0, height / 2]), frame, width / 2, depth / 2)
    pts[f"body.{level}.bottom_rim"] = _ellipse_ring(world([0, 0, -height / 2]), frame, width / 2, depth / 2)
    lobe_x = notch_r + 0.25 * (width / 2 - notch_r)
    lobe_y = depth / 2 * np.sqrt(1 - (lobe_x / (width / 2)) ** 2)
    pts[f"body.{level}.posterior_lobes"] = np.stack([world([lobe_x, lobe_y, 0]), world([-lobe_x, lobe_y, 0])])
    pts[f"body.{level}.anterior"] = world([0, -depth / 2, 0])[None, :]

    ped_len = 13.0 + 0.15 * depth
    z_ped = 0.14 * height
    p_centre_x = interped / 2 + ped_w / 2
    for side, name in ((1.0, "left"), (-1.0, "right")):
        m = np.radians(ped_med)
        axis = np.array([side * np.sin(m), np.cos(m), 0.0])
        u = np.array([-np.cos(m), side * np.sin(m), 0.0])
        local_axes = np.column_stack([u, [0, 0, 1.0], axis])
        c_local = np.array([side * p_centre_x, depth / 2 + ped_len / 2 - 4.0, z_ped])
        c = world(c_local)
        axes = frame @ local_axes
        half = np.array([ped_w / 2, ped_h / 2, ped_len / 2])
        b.shelled(
            "cylinder",
            c,
            axes,
            (ped_w / 2, ped_h / 2, ped_len / 2),
            (1.4, 1.4, 0.0),
            f"pedicle_{name}" if labelled else None,
        )
        pts[f"pedicle.{level}.{name}.centre"] = c[None, :]
        pts[f"pedicle.{level}.{name}.surface"] = _cylinder_surface(c, axes, half)
        # body outline at the pedicle's height, for the pedicle-to-body-edge distance
        pts[f"body.{level}.ring_at_pedicles"] = _ellipse_ring(world([0, 0, z_ped]), frame, width / 2, depth / 2, 96)
        end = c + axes[:, 2] * ped_len / 2
        mid = world([0, depth / 2 + canal + 3.0, z_ped - 4.0])
        lam_axis = mid - end
        b.add(
            "box",
            0.5 * (end + mid),
            frame_from_axis(lam_axis, frame[:, 2]),
            (2.8, 9.0, float(np.linalg.norm(lam_axis)) / 2 + 2.0),
            b.bone(mixed_bone),
        )
        # transverse process: from the pedicle-lamina junction, laterally and slightly backwards
        tau = np.radians(14.0)
        base = world([side * (p_centre_x + 2.0), depth / 2 + 9.0, z_ped])
        tp_axis = frame @ np.array([side * np.cos(tau), np.sin(tau), 0.0])
        tp_len = max(tp_span / 2 - (p_centre_x + 2.0), 6.0)
        thick = 6.0 if level == "L5" else 4.0 if level in ("T11", "T12") else 4.5
        tp_c = base + tp_axis * tp_len / 2
        b.add(
            "cylinder",
            tp_c,
            frame_from_axis(tp_axis, frame[:, 2]),
            (thick * 0.75, thick, tp_len / 2),
            b.bone(0.5 * (mixed_bone + mat.CANCELLOUS)),
            "transverse_process" if labelled else None,
        )
        pts[f"transverse.{level}.{name}.tip"] = (base + tp_axis * tp_len)[None, :]
    # spinous process: backwards and downwards, a rounded blade seen end-on in AP as a teardrop
    sigma = np.radians(18.0 if level.startswith("L") else 35.0)
    sp_axis = frame @ np.array([0.0, np.cos(sigma), -np.sin(sigma)])
    base = world([0, depth / 2 + canal + 1.0, z_ped - 4.0])
    sp_c = base + sp_axis * sp_len / 2
    b.add(
        "cylinder",
        sp_c,
        frame_from_axis(sp_axis, frame[:, 2]),
        (3.8 if level != "L5" else 4.5, sp_h / 2, sp_len / 2),
        b.bone(0.5 * (mixed_bone + mat.CANCELLOUS)),
        "spinous_process" if labelled else None,
    )
    pts[f"spinous.{level}.centre"] = sp_c[None, :]
    pts[f"spinous.{level}.tip"] = (base + sp_axis * sp_len)[None, :]


def _facets_and_foramina(
    b: _Builder,
    pts: dict[str, F64],
    upper: str,
    lower: str,
    upper_c: F64,
    upper_f: F64,
    upper_d: tuple[float, ...],
    lower_c: F64,
    lower_f: F64,
    lower_d: tuple[float, ...],
    angle_deg: float,
    mixed_bone: float,
) -> None:
    """Facet joints (superior process of the lower vertebra lateral/anterior to the inferior process
    of the upper one, the joint plane at `angle_deg` to the mid-sagittal plane) and the foramina."""
    joint = f"{upper}-{lower}"
    _width, depth, height = lower_d[0], lower_d[1], lower_d[2]
    up_height = upper_d[2]
    interped, ped_w = lower_d[6], lower_d[3]
    p_x = interped / 2 + ped_w / 2
    z_mid = 0.5 * (upper_c + lower_c)
    frame = rot_x(0.5 * (_beta(upper_f) + _beta(lower_f)))
    a = np.radians(angle_deg)
    for side, name in ((1.0, "left"), (-1.0, "right")):
        j = z_mid + frame @ np.array(
            [side * (p_x + 1.0), 0.5 * (depth + upper_d[1]) / 2 + 15.0, 0.25 * (height - up_height) + 4.0]
        )
        normal = frame @ np.array([side * np.cos(a), -np.sin(a), 0.0])
        line = frame @ np.array([side * np.sin(a), np.cos(a), 0.0])
        axes = np.column_stack([normal, line, np.cross(normal, line)])
        if axes[2, 2] < 0:
            axes[:, 2] *= -1
            axes[:, 0] *= -1
            normal = axes[:, 0]
        gap, t = 1.6, 3.2
        b.add(
            "box",
            j + normal * (gap / 2 + t) - axes[:, 2] * 4.0,
            axes,
            (t, 7.5, 10.0),
            b.bone(mixed_bone),
            "articular_process" if upper != "T11" else None,
        )
        b.add(
            "box",
            j - normal * (gap / 2 + t) + axes[:, 2] * 3.0,
            axes,
            (t, 6.5, 9.0),
            b.bone(mixed_bone),
            "articular_process" if upper != "T11" else None,
        )
        pts[f"facet.{joint}.{name}.centre"] = j[None, :]
        pts[f"facet.{joint}.{name}.normal"] = axes[:, 0][None, :]
        # foramen: between the pedicles of the two levels, behind the disc (a mask, not a solid)
        f_c = z_mid + frame @ np.array([side * p_x * 0.9, 0.5 * (depth + upper_d[1]) / 2 + 3.0, 2.0])
        b.add("ellipsoid", f_c, frame, FORAMEN_HALF_MM, 0.0, "foramen" if upper != "T11" else None)
        pts[f"foramen.{joint}.{name}.centre"] = f_c[None, :]
    pts[f"foramen.{joint}.half_mm"] = np.array([FORAMEN_HALF_MM])


def _beta(frame: F64) -> float:
    """Sagittal tilt (degrees) of a vertebra frame, the inverse of rot_x for its z axis."""
    z = frame[:, 2]
    return float(np.degrees(np.arctan2(-z[1], z[2])))


def _sacrum_and_pelvis(
    b: _Builder,
    pts: dict[str, F64],
    p: PatientParams,
    s_frame: F64,
    s1_centre: F64,
    s1_height: float,
    frames: dict[str, tuple[F64, F64, tuple[float, ...]]],
    mixed_bone: float,
) -> None:
    k = p.scale
    w, d = 46.0 * k, 34.0 * k
    b.shelled("cylinder", s1_centre, s_frame, (w / 2, d / 2, s1_height / 2), (0.8, 0.8, 1.0), "sacrum")
    pts["pelvis.s1.top_rim"] = _ellipse_ring(np.zeros(3), s_frame, w / 2, d / 2)
    pts["pelvis.s1.centre"] = s1_centre[None, :]
    # S2..S5 curving backwards
    c = s1_centre.copy()
    axis = -s_frame[:, 2]
    seg_dims = [(40, 28, 22), (32, 23, 18), (24, 18, 15), (16, 12, 12)]
    prev_half = s1_height / 2
    for wd, dp, h in seg_dims:
        c = c + axis * (prev_half + h * k / 2 + 1.0)
        x_axis = np.array([1.0, 0.0, 0.0])
        axes = np.column_stack([x_axis, np.cross(-axis, x_axis), -axis])
        b.shelled("ellipsoid", c, axes, (wd * k / 2, dp * k / 2, h * k * 0.65), (1.0, 1.0, 1.0), "sacrum")
        prev_half = h * k / 2
        axis = rot_x(-14.0) @ axis  # sacral kyphosis: each segment turns posteriorly
    # SI joints: thin planes converging posteriorly, between sacral lateral mass and ilium
    gamma = np.radians(25.0)
    for side, name in ((1.0, "left"), (-1.0, "right")):
        lateral_mass_c = s1_centre + s_frame @ np.array([side * (w / 2 + 6), 4.0, -18.0 * k])
        j_c = s1_centre + np.array([side * (w / 2 + 18 * k), 10.0, -34.0 * k])
        line = np.array([-side * np.sin(gamma), np.cos(gamma), 0.0])
        normal = np.array([side * np.cos(gamma), np.sin(gamma), 0.0])
        axes = np.column_stack([normal, line, np.cross(normal, line)])
        if axes[2, 2] < 0:
            axes[:, 2] *= -1
        half_j = (1.3, 17.0 * k, 30.0 * k)  # the joint space itself (no bone: it shows as a dark line)
        # the SI joint structure is the joint with its subchondral margins, a band a reader (and a
        # 512-pixel network) can locate; the joint line runs down its middle
        b.add("box", j_c, axes, (SI_JOINT_BAND_MM / 2, half_j[1], half_j[2]), 0.0, f"si_joint_{name}")
        pts[f"pelvis.si_joint.{name}.centre"] = j_c[None, :]
        pts[f"pelvis.si_joint.{name}.corners"] = np.asarray(
            [j_c + axes @ (np.array([0, sl, sz]) * half_j) for sl in (-1, 1) for sz in (-1, 1)]
        )
        # sacral ala / lateral mass up to the joint
        b.add(
            "ellipsoid",
            lateral_mass_c,
            s_frame,
            (24 * k, 18 * k, 38 * k),
            b.bone(0.5 * (mat.CANCELLOUS + mixed_bone)),
            "sacrum",
            planes=(Plane(j_c - normal * 1.3, normal.copy()),),
        )
        # ilium: auricular part lateral to the joint, the wing with its crest, the body to the hip
        aur_c = j_c + normal * (1.3 + 9.0)
        b.add("ellipsoid", aur_c, axes, (10.0, 18.0 * k, 32.0 * k), b.bone(0.5 * (mat.CANCELLOUS + mixed_bone)))
        crest_z = (
            float(frames["L4"][0][2])
            - 0.5 * float(frames["L4"][2][2])
            - 6.0
            + p.crest_offset_mm
            + (-8.0 if p.sex == "M" else 0.0)
        )
        psi = np.radians(32.0)
        horiz = np.array([side * np.cos(psi), -np.sin(psi), 0.0])
        wing_axes = np.column_stack([horiz, np.cross(np.array([0, 0, 1.0]), horiz), np.array([0, 0, 1.0])])
        wing_axes = wing_axes @ rot_x(side * 14.0)  # the wing leans a little out of the coronal plane
        wa, wt, wh = 78.0 * k, 7.0, 62.0 * k
        wing_c = np.array([side * (w / 2 + 40 * k), 18.0, crest_z - wh]) + horiz * 28 * k
        bounds = ((-1.0, 1.0), (-1.0, 1.0), (-0.25, 1.0))
        b.shelled("ellipsoid", wing_c, wing_axes, (wa, wt, wh), (1.6, 2.2, 1.6), None, local_bounds=bounds)
        b.add(
            "ellipsoid",
            wing_c,
            wing_axes,
            (wa, wt, wh),
            0.0,
            "iliac_crest",
            local_bounds=((-1.0, 1.0), (-1.0, 1.0), (1.0 - 14.0 / wh, 1.0)),
        )
        pts[f"pelvis.iliac_crest.{name}.top"] = (wing_c + wing_axes @ np.array([0, 0, wh]))[None, :]
        hip = np.array([side * (w / 2 + 75 * k), -38.0 * k, -105.0 * k])
        pts[f"pelvis.hip.{name}.centre"] = hip[None, :]
        body_c = 0.5 * (hip + wing_c) + np.array([0, 0, -10.0])
        b.shelled(
            "ellipsoid",
            body_c,
            frame_from_axis(wing_c - hip, np.array([0, 1.0, 0])),
            (22 * k, 17 * k, float(np.linalg.norm(wing_c - hip)) / 2),
            (1.5, 1.5, 1.5),
            None,
        )
        b.shelled("ellipsoid", hip, np.eye(3), (24 * k, 24 * k, 24 * k), (1.2, 1.2, 1.2), None)
        neck_end = hip + np.array([side * 45 * k, 4.0, -42 * k])
        b.shelled(
            "cylinder",
            0.5 * (hip + neck_end),
            frame_from_axis(neck_end - hip, np.array([0, 1.0, 0])),
            (15 * k, 15 * k, float(np.linalg.norm(neck_end - hip)) / 2),
            (2.0, 2.0, 0.5),
            None,
        )
        shaft_top = neck_end + np.array([side * 8, 0, 0])
        b.shelled(
            "cylinder",
            shaft_top + np.array([-side * 6, 0, -110.0]),
            rot_y(side * 8.0),
            (15 * k, 15 * k, 115.0),
            (4.5, 4.5, 0.0),
            None,
            core=mat.FAT + mat.SOFT * 0.1,
        )
        b.add(
            "ellipsoid",
            shaft_top + np.array([side * 8, 6, 5]),
            np.eye(3),
            (16 * k, 14 * k, 22 * k),
            b.bone(mat.CANCELLOUS * 1.2),
        )
        sym = np.array([0.0, -80 * k, -140.0 * k])
        ramus_a = hip + np.array([-side * 20 * k, -20 * k, -10 * k])
        b.shelled(
            "cylinder",
            0.5 * (ramus_a + sym),
            frame_from_axis(sym - ramus_a, np.array([0, 0, 1.0])),
            (9 * k, 8 * k, float(np.linalg.norm(sym - ramus_a)) / 2),
            (1.5, 1.5, 0.0),
            None,
        )


def _implant(
    b: _Builder,
    p: PatientParams,
    frames: dict[str, tuple[F64, F64, tuple[float, ...]]],
    trunk_c: F64,
    half_ap: float,
    rng: np.random.Generator,
) -> None:
    """Metal a radiographer meets: pedicle screws with rods, a coin or button, surgical clips."""
    if p.implant == "screws":
        heads = []
        for level in ("L4", "L5"):
            centre, frame, dims = frames[level]
            for side in (1.0, -1.0):
                m = np.radians(18.0)
                axis = frame @ np.array([side * np.sin(m), np.cos(m), 0.0])
                entry = centre + frame @ np.array(
                    [side * (dims[6] / 2 + dims[3] / 2), dims[1] / 2 + 14, dims[2] * 0.14]
                )
                b.add(
                    "cylinder",
                    entry - axis * 22,
                    frame_from_axis(axis, frame[:, 2]),
                    (3.2, 3.2, 22.0),
                    mat.TITANIUM - mat.SOFT,
                )
                b.add(
                    "ellipsoid",
                    entry + axis * 4,
                    frame_from_axis(axis, frame[:, 2]),
                    (6.0, 6.0, 6.0),
                    mat.TITANIUM - mat.SOFT,
                )
                heads.append(entry + axis * 4)
        for side_heads in (heads[0::2], heads[1::2]):
            a, c = side_heads[0], side_heads[1]
            b.add(
                "cylinder",
                0.5 * (a + c),
                frame_from_axis(c - a, np.array([1.0, 0, 0])),
                (2.75, 2.75, float(np.linalg.norm(c - a)) / 2 + 8),
                mat.TITANIUM - mat.SOFT,
            )
    elif p.implant == "coin":
        c = np.array([rng.uniform(-60, 60), trunk_c[1] - half_ap + 2, float(frames["L3"][0][2]) + rng.uniform(-60, 40)])
        b.add("cylinder", c, rot_x(90.0), (11.0, 11.0, 0.9), mat.STEEL - mat.FAT)
    elif p.implant == "clips":
        base = np.array([rng.uniform(30, 90), trunk_c[1] - rng.uniform(0, 40), float(frames["L1"][0][2]) + 10])
        for _ in range(int(rng.integers(2, 6))):
            c = base + rng.normal(0, 12, size=3)
            b.add(
                "box", c, rot_z(rng.uniform(0, 180)) @ rot_x(rng.uniform(0, 90)), (4.5, 1.0, 0.6), mat.STEEL - mat.SOFT
            )
