"""``TempLoRA``: the Lightning face of fast learning (paper Sec. 3.2, Algorithm 1a).

During ``trainer.predict`` on episodes, it injects a Temp-LoRA into the module's UNet, resets it at the
start of every episode (one predict batch), lets the module's :class:`LongVideoGenerator` update it after
every chunk, optionally saves each episode's memory (safetensors), and removes it at the end so that the
module is the base model again. The learning itself lives in :class:`slowfast_vgen.temp_lora.TempLoRA`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from slowfast_vgen.errors import UserInputError
from slowfast_vgen.temp_lora import TempLoRA as TempLoRALearner
from slowfast_vgen.temp_lora import TempLoRASettings


class TempLoRA(L.Callback):
    """Inference-time Temp-LoRA updates during ``trainer.predict``. ``settings`` (a
    :class:`slowfast_vgen.temp_lora.TempLoRASettings`, or a dict such as ``{preset: episodic-fast}`` or
    ``{rank: 32, lr: 1e-4}`` in a YAML) and keyword ``options`` over it (``TempLoRA(preset="paper", lr=1e-3)``):
    the learner's settings, declared once there.

    ``save_dir``: if set, each episode's memory is written to ``save_dir/episode_{index}.safetensors``.
    """

    def __init__(self, settings: TempLoRASettings | dict | None = None, save_dir: str | None = None,
                 **options: Any) -> None:
        self.settings = TempLoRASettings.build(settings, **options)  # checked now, not at predict time
        self.save_dir = save_dir
        self.learner: TempLoRALearner | None = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not all(hasattr(pl_module, name) for name in ("generator", "unet", "diffusion")):
            raise UserInputError(
                f"TempLoRA callback: {type(pl_module).__name__} has no `unet`, `diffusion` and `generator`; expected "
                "a SlowLearningSystem-like module (the learner trains with the model's own diffusion)"
            )
        self.learner = TempLoRALearner(pl_module.unet, pl_module.diffusion, self.settings)
        pl_module.generator.temp_lora = self.learner

    def on_predict_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                               batch_idx: int, dataloader_idx: int = 0) -> None:
        self.learner.reset()  # a new episode: Theta_0, Phi + Theta_0 == Phi

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.save_dir:
            self.learner.save(Path(self.save_dir) / f"episode_{batch_idx:05d}.safetensors")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.generator.temp_lora = None
        self.learner.remove()
