"""Small rotation helpers. Patient frame: x to the patient's left, y posterior, z superior (mm)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]


def rot_x(deg: float) -> F64:
    """Rotation about x; positive tips +z towards -y (a vertebra's top towards anterior)."""
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(deg: float) -> F64:
    """Rotation about y (posterior); positive turns +z towards +x (towards the patient's left)."""
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(deg: float) -> F64:
    """Rotation about z (superior); positive turns +x towards +y (the left side goes posterior)."""
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def frame_from_axis(axis: F64, up: F64) -> F64:
    """Orthonormal axes (columns u, v, axis) with `axis` the third column and v as close to `up`."""
    a = axis / np.linalg.norm(axis)
    v = up - (up @ a) * a
    if np.linalg.norm(v) < 1e-9:
        v = np.array([1.0, 0.0, 0.0]) - a[0] * a
    v = v / np.linalg.norm(v)
    u = np.cross(v, a)
    return np.column_stack([u, v, a])
