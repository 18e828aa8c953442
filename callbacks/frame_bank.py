"""``FrameBank``: a memory of frames keyed by pose during ``trainer.predict`` (the baseline memory on Memory Maze).

Each episode (one predict batch) gets a fresh :class:`slowfast_vgen.generation.PoseFrameBank` built from the
episode's poses, which the module's :class:`~slowfast_vgen.generation.LongVideoGenerator` fills with its frames
as generated and reads when a chunk comes back to a place that has left the context window. Recorded episodes
(``poses``, ``pose_names`` and ``tolerance``, from :class:`~slowfast_vgen.datamodules.recorded.RecordedRevisitDataset`)
use the data's tolerances; the built-in world's (``positions``) its exact positions.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np

from slowfast_vgen.errors import UserInputError
from slowfast_vgen.generation import PoseFrameBank
from slowfast_vgen.poses import split_pose


def episode_bank(batch: dict[str, Any]) -> PoseFrameBank:
    """The frame bank of one episode batch (see the module docstring)."""
    if len(batch.get("poses", ())):
        tolerance = batch["tolerance"]
        positions, angles = split_pose(np.asarray(batch["poses"], dtype=np.float64), batch.get("pose_names"))
        return PoseFrameBank(positions, angles, tolerance["position"], tolerance["angle"])
    if "positions" in batch:  # the built-in world: a frame's view is where its camera is
        return PoseFrameBank(np.asarray(batch["positions"], dtype=np.float64).reshape(-1, 2), None, 0.0)
    raise UserInputError(f"FrameBank: episode {batch.get('episode', batch.get('seed'))!r} has no poses; a frame bank "
                         "reads by pose (recorded episodes with poses in their gt, or the built-in world's episodes)")


class FrameBank(L.Callback):
    """Pose-keyed frame memory during ``trainer.predict`` on episodes; no weights change."""

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not hasattr(pl_module, "generator"):
            raise UserInputError(f"FrameBank callback: {type(pl_module).__name__} has no `generator`; expected a "
                                 "SlowLearningSystem-like module")

    def on_predict_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                               batch_idx: int, dataloader_idx: int = 0) -> None:
        pl_module.generator.frame_bank = episode_bank(batch)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.generator.frame_bank = None
