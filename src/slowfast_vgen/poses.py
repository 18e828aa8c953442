"""Poses of recorded frames: which fields are the position and the heading, and which frames show one place.

Shared by the revisit benchmark (:mod:`slowfast_vgen.datamodules.recorded`, which frames need memory) and the
frame memory keyed by pose (:mod:`slowfast_vgen.generation.frame_bank`, which earlier frame to show the model), so
that both count the same frames as one place.
"""

from __future__ import annotations

import numpy as np

from slowfast_vgen.errors import UserInputError

POSITION_NAMES = ("x", "y", "z")
ANGLE_NAMES = ("angle", "yaw")


def split_pose(poses: np.ndarray, names: list[str] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(T, P) poses -> positions (T, k) from the fields named x, y, z and the angle (T,) in degrees from the field
    named angle or yaw (None if there is none). Without names: the recorder's (x, y, z, angle)."""
    names = list(names) if names else ["x", "y", "z", "angle"][: poses.shape[1]]
    if len(names) != poses.shape[1]:
        raise UserInputError(f"{poses.shape[1]} pose fields but {len(names)} pose_names {names}")
    pos = [i for i, n in enumerate(names) if n.lower() in POSITION_NAMES]
    ang = [i for i, n in enumerate(names) if n.lower() in ANGLE_NAMES]
    if not pos:
        raise UserInputError(f"pose_names {names}: the revisit benchmark needs position fields named x, y (and z)")
    return poses[:, pos].astype(np.float64), (poses[:, ang[0]].astype(np.float64) if ang else None)


def pose_distances(positions: np.ndarray, angles: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(T, T) distances between the frames' positions and (T, T) turns between their headings in degrees
    (0-180; None without angles)."""
    dist = np.sqrt(((positions[:, None, :] - positions[None, :, :]) ** 2).sum(-1))
    turn = None if angles is None else np.abs((angles[:, None] - angles[None, :] + 180.0) % 360.0 - 180.0)
    return dist, turn


def same_place(dist: np.ndarray, turn: np.ndarray | None, position_tolerance: float,
               angle_tolerance: float) -> np.ndarray:
    """(T, T) bool: the two frames' positions within ``position_tolerance`` and headings within ``angle_tolerance``
    degrees (from :func:`pose_distances`)."""
    match = dist <= position_tolerance
    if turn is not None:
        match &= turn <= angle_tolerance
    return match
