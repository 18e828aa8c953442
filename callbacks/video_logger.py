"""``VideoLogger``: sample clips during fit, written as mp4 + GIF and logged to TensorBoard as frame strips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from slowfast_vgen.io import write_video


class VideoLogger(L.Callback):
    """After each validation run, generate one chunk for the first ``num_samples`` validation clips.

    The clip's own context frames condition the model; the output is shown next to the real frames
    (``real | generated``). Files go to ``<log_dir>/samples/step_<N>.mp4|gif``.
    """

    def __init__(self, num_samples: int = 2, fps: int = 4, upscale: int = 4) -> None:
        self.num_samples, self.fps, self.upscale = num_samples, fps, upscale
        self.batch: dict[str, Any] | None = None

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and dataloader_idx == 0:
            self.batch = batch

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.batch is None or trainer.sanity_checking or not hasattr(pl_module, "generate_chunk"):
            return
        video = self.batch["video"][: self.num_samples]  # (N, T, C, H, W)
        n_ctx = int(self.batch["n_context"][: self.num_samples].min())
        actions = list(self.batch["action"][: self.num_samples])
        fake = pl_module.generate_chunk(video[:, :n_ctx], actions, video.shape[1] - n_ctx, seed=0).cpu()
        side = torch.cat([video.cpu(), fake], dim=4)  # (N, T, C, H, 2W): real | generated
        strip = torch.cat(list(side), dim=2)  # (T, C, N*H, 2W): samples stacked vertically
        folder = Path(trainer.log_dir or trainer.default_root_dir) / "samples"
        write_video(folder / f"step_{trainer.global_step:07d}", strip, fps=self.fps, upscale=self.upscale)
        logger = trainer.logger
        if logger is not None and hasattr(logger.experiment, "add_image"):
            frames = torch.cat(list(strip), dim=2)  # (C, N*H, T*2W): time left to right
            logger.experiment.add_image("val/samples real|generated", frames.clamp(0, 1), trainer.global_step)
