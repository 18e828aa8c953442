"""A memory of frames keyed by pose: when a chunk comes back to a place that has left the context window, the frame
generated there before is shown to the model again (WorldMem's frame bank, read by pose, without its training).

The paper's memory is Temp-LoRA: the video written into LoRA weights (Sec. 3.2). On Memory Maze, where the way back
is not a retrace, it does not help (docs/memory.md, "Memory Maze"); this is the baseline a memory has to beat
there: no gradient step, a dictionary of the episode's latents, and the poses of the frames to come.

The places are the revisit benchmark's (:func:`slowfast_vgen.datamodules.recorded.pose_revisits`, the same
:mod:`slowfast_vgen.poses` matching): frame ``j`` is at the place of an earlier frame ``k`` when their positions and
headings agree within the tolerances. When a frame ``j`` of the chunk being generated is at the place of a frame
that has left the context window, the chunk is sampled in two parts: the frames before ``j`` as usual, then ``j`` and
the rest from a context whose newest frame is the earliest such ``k`` as generated (the first visit). Splitting at
``j`` keeps the frames before it from being drawn after a view of a place they have not reached yet. The video's own
context (what the next chunk continues from, what Temp-LoRA trains on) is unchanged, and a chunk keeps its one
action text. Measured variants (docs/memory.md, "A frame bank"): the first visit shown for the whole chunk
whichever frame comes back (more reads on Memory Maze, 6.7 dB of damage on the built-in world), only where the
chunk's first frame comes back (few reads), every context frame replaced by its own first visit.
"""

from __future__ import annotations

import numpy as np
import torch

from slowfast_vgen.errors import UserInputError
from slowfast_vgen.poses import pose_distances, same_place


class PoseFrameBank:
    """The frames of one episode as generated, looked up by the poses of the frames to come.

    Args:
        positions: (T, k) every frame's position, frame 0 first (the given frames included).
        angles: (T,) headings in degrees, or None (position alone says the place, as in the built-in world).
        position_tolerance, angle_tolerance: one place within these (the data's own: Memory Maze 0.25 cell, 15
            degrees; the built-in world 0, its positions are exact).
    """

    def __init__(self, positions: np.ndarray, angles: np.ndarray | None, position_tolerance: float,
                 angle_tolerance: float = 180.0) -> None:
        positions = np.asarray(positions, dtype=np.float64)
        if positions.ndim != 2 or (angles is not None and np.shape(angles) != (len(positions),)):
            raise UserInputError(f"PoseFrameBank: positions must be (T, k) and angles (T,), got "
                                 f"{positions.shape} and {None if angles is None else np.shape(angles)}")
        if min(position_tolerance, angle_tolerance) < 0:
            raise UserInputError(f"PoseFrameBank: tolerances must be >= 0, got {position_tolerance} and "
                                 f"{angle_tolerance}")
        self.match = same_place(*pose_distances(positions, None if angles is None else np.asarray(angles, float)),
                                position_tolerance, angle_tolerance)  # (T, T)
        self.frames: dict[int, torch.Tensor] = {}  # frame index -> (B, C, h, w) latents as generated
        self.recalled: list[tuple[int, int]] = []  # (frame of the chunk at a known place, frame shown for it)

    def __len__(self) -> int:
        return len(self.match)

    def remember(self, start: int, latents: torch.Tensor) -> None:
        """Keep ``latents`` (B, C, f, h, w): frames ``start`` ... ``start + f - 1``."""
        if start + latents.shape[2] > len(self):
            raise UserInputError(f"PoseFrameBank: frames {start}..{start + latents.shape[2] - 1} but poses for "
                                 f"{len(self)} frames only")
        for k in range(latents.shape[2]):
            self.frames[start + k] = latents[:, :, k]

    def recall(self, start: int, n_frames: int, context: torch.Tensor) -> tuple[int, int | None]:
        """Where the frames ``start`` ... ``start + n_frames - 1``, sampled after ``context`` (B, C, f, h, w), come
        back to a place that has left the window: ``(d, k)``, frame ``start + d`` is at the place of the earlier
        frame ``k`` (the first visit); ``(n_frames, None)`` when none does."""
        before = max(0, start - context.shape[2])  # the first visit must have left the window (every earlier
        for j in range(start, min(start + n_frames, len(self))):  # frame is in the bank: remembered as generated)
            earlier = np.flatnonzero(self.match[j, :before])
            if len(earlier):
                return j - start, int(earlier[0])
        return n_frames, None

    def show(self, context: torch.Tensor, k: int, frame: int) -> torch.Tensor:
        """``context`` with its newest frame replaced by frame ``k`` as generated, to sample ``frame`` from."""
        shown = context.clone()
        shown[:, :, -1] = self.frames[k]
        self.recalled.append((frame, k))
        return shown
