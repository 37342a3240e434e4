"""What a DRR of a real CT should measure, from the CT's labels and the exposure's geometry.

Double endplates on a lateral: the top endplate's rim is seen as an ellipse whenever the rays cross its
plane at an angle, which comes from the pose's tilt and tube angle, from the beam's divergence at a
level off the central ray, and from the spine's own tilt in the CT. The rim is taken as the body's
outline at its top, lifted onto the plane fitted to the top surface (the central concavity and the
rounded edges left out), projected as the exposure projects it; the doubling is the projected ring's
thickness across its long axis, at the spine's plane (divided by the magnification), as the phantom's
truth measures its own rims (`tools.phantom.truth`).
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from tools.ctdrr.geometry import CtPose, make_pose
from tools.ctdrr.volumes import CtVolume, Occupancy

F64 = NDArray[np.float64]

INSIDE_MM: Final = 3.0  # the top surface is fitted this far inside the body's outline
CONCAVITY_SHARE: Final = 30.0  # percent of the top surface furthest below the plane, left out of the fit


def pose_of(ct: CtVolume, pose: dict[str, Any]) -> CtPose:
    """The exposure's geometry again, from a manifest entry's `pose`."""
    return make_pose(
        ct,
        pose["projection"],
        facing=pose["facing"],
        obliquity_deg=float(pose["obliquity_deg"]),
        rotation_deg=float(pose["rotation_deg"]),
        tilt_deg=float(pose["tilt_deg"]),
        tube_angle_deg=float(pose["tube_angle_deg"]),
        table_gap_mm=float(pose["table_gap_mm"]),
        centring_x_mm=float(pose["centring_x_mm"]),
        centring_y_mm=float(pose["centring_y_mm"]),
    )


def top_rim(body: Occupancy) -> F64:
    """The top endplate's rim (N x 3, patient mm): the body's outline seen from above, on the plane
    fitted to its top surface."""
    inside = body.values > 0.5
    grid = body.grid
    columns = inside.any(axis=2)
    top = grid.origin[2] + (inside.shape[2] - 1 - np.argmax(inside[:, :, ::-1], axis=2)) * grid.spacing[2]
    reach = (max(1, round(INSIDE_MM / grid.spacing[0])), max(1, round(INSIDE_MM / grid.spacing[1])))
    core = ndimage.binary_erosion(columns, structure=np.ones((2 * reach[0] + 1, 2 * reach[1] + 1)))
    i, j = np.nonzero(core)
    if len(i) < 6:
        raise ValueError("body too small for an endplate plane")
    x, y, z = grid.origin[0] + i * grid.spacing[0], grid.origin[1] + j * grid.spacing[1], top[i, j]
    design = np.column_stack([np.ones_like(x), x, y])
    coef = np.linalg.lstsq(design, z, rcond=None)[0]
    for _ in range(3):  # the concavity and the sloping edges lie below the rim's plane
        residual = z - design @ coef
        keep = residual > np.percentile(residual, CONCAVITY_SHARE)
        coef = np.linalg.lstsq(design[keep], z[keep], rcond=None)[0]
    outline = columns & ~ndimage.binary_erosion(columns, structure=np.ones((3, 3)))
    i, j = np.nonzero(outline)
    x, y = grid.origin[0] + i * grid.spacing[0], grid.origin[1] + j * grid.spacing[1]
    return np.column_stack([x, y, coef[0] + coef[1] * x + coef[2] * y])


def ring_thickness_mm(ring: F64, pose: CtPose) -> float:
    """Thickness of a ring's projection across its long axis, at the spine's plane (mm)."""
    projected = pose.project(ring)
    centred = projected - projected.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    return float(np.ptp(centred @ axes[1])) / pose.magnification


def endplate_doubling_mm(ct: CtVolume, pose: CtPose, level: str) -> float:
    """How far apart the top endplate's near and far rims are on this exposure (mm, spine plane)."""
    return ring_thickness_mm(top_rim(ct.channels[f"body_{level}"]), pose)
