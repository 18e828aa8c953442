"""A callback for subprocess tests (``class_path: killat.KillAt``, with tests/ on PYTHONPATH)."""

from __future__ import annotations

import os
import signal

import lightning as L


class KillAt(L.Callback):
    """SIGKILLs its own process after ``step`` optimizer steps: a kill -9 at a known point, after the
    checkpoints before it are complete."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
