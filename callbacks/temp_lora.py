"""``TempLoRA``: the Lightning face of fast learning (paper Sec. 3.2, Algorithm 1a).

During ``trainer.predict`` on episodes, it injects a Temp-LoRA into the module's UNet, resets it at the
start of every episode (one predict batch), lets the module's :class:`LongVideoGenerator` update it after
every chunk, optionally saves each episode's memory (safetensors), and removes it at the end so that the
module is the base model again. The learning itself lives in :class:`slowfast_vgen.lora.TempLoRA`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from slowfast_vgen.errors import UserInputError
from slowfast_vgen.lora import DEFAULT_TARGETS
from slowfast_vgen.lora import TempLoRA as TempLoRALearner


class TempLoRA(L.Callback):
    """Inference-time Temp-LoRA updates during ``trainer.predict`` (args as :class:`slowfast_vgen.lora.TempLoRA`).

    ``save_dir``: if set, each episode's memory is written to ``save_dir/episode_{index}.safetensors``.
    """

    def __init__(
        self,
        rank: int = 32,
        alpha: float | None = None,
        target_modules: list[str] | str = list(DEFAULT_TARGETS),
        lr: float = 1e-4,
        steps_per_chunk: int = 1,
        variant: str = "temp-lora",
        explode_factor: float = 20.0,
        seed: int = 0,
        save_dir: str | None = None,
        draws: int = 1,
        replay: bool = False,
        reverse: bool = False,
        clean_context: int = 0,
        timestep_range: list[int] | None = None,
        loss_guard: float = 0.0,
        text_condition: str = "none",
        reverse_actions: dict[str, str] | None = None,
        novelty_gate: float = 0.0,
        lr_decay: float = 0.0,
        update_frames: int = 0,
        checkpointing: bool = False,
    ) -> None:
        targets = target_modules if isinstance(target_modules, str) else tuple(target_modules)  # str: a regex
        self.kwargs = dict(rank=rank, alpha=alpha, target_modules=targets, lr=lr,
                           steps_per_chunk=steps_per_chunk, variant=variant, explode_factor=explode_factor, seed=seed,
                           draws=draws, replay=replay, reverse=reverse, clean_context=clean_context,
                           timestep_range=timestep_range, loss_guard=loss_guard, text_condition=text_condition,
                           reverse_actions=reverse_actions, novelty_gate=novelty_gate, lr_decay=lr_decay,
                           update_frames=update_frames, checkpointing=checkpointing)
        self.save_dir = save_dir
        self.learner: TempLoRALearner | None = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not all(hasattr(pl_module, name) for name in ("generator", "unet", "diffusion")):
            raise UserInputError(
                f"TempLoRA callback: {type(pl_module).__name__} has no `unet`, `diffusion` and `generator`; expected "
                "a SlowLearningSystem-like module (the learner trains with the model's own diffusion)"
            )
        self.learner = TempLoRALearner(pl_module.unet, pl_module.diffusion, **self.kwargs)
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
