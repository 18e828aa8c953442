"""Temp-LoRA, the fast learner (paper Sec. 3.2, Eq. 3, Algorithm 1a l.11-14): plain PyTorch.

After every generated chunk, Adam steps on Theta only (Phi untouched), each on a batch its write policy builds:

    z0' = X_i (+) Y_i                                   # Alg. 1a l.11: input and output latents along frames
    t ~ U{0..T-1}, eps ~ N(0, I)                        # Alg. 1a l.12: one timestep per clip, the WHOLE clip noised
    L = || eps - eps_{Phi+Theta}(z_t', t, "") ||^2      # Alg. 1a l.13 / Eq. 3: no text (or v / z_0 as the model)
    Theta <- Theta - alpha grad_Theta L                 # Alg. 1a l.14 (Adam)

An update whose loss or gradient is non-finite or explodes (the instability of App. D.5), or, with ``loss_guard``,
that makes its own batch's loss worse, is rolled back to the last good Theta and logged; generation continues.
The read policy says whether generation applies Theta to the next chunk (:meth:`TempLoRA.reads`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slowfast_vgen.diffusion.masked import MaskedDiffusion, masked_mse
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.models.unet import unet_output
from slowfast_vgen.seeds import stable_seed
from slowfast_vgen.temp_lora.adapter import LoRAAdapter, checkpointed_layers
from slowfast_vgen.temp_lora.read import ReadAlways, ReadWhereRecognised
from slowfast_vgen.temp_lora.settings import TempLoRASettings
from slowfast_vgen.temp_lora.storage import load_memory, save_memory
from slowfast_vgen.temp_lora.write import ChunkWrite, Episode, RehearsalWrite, Waiting

log = logging.getLogger(__name__)


@dataclass
class UpdateRecord:
    """What one fast-learning update did (for logs, tests and the guards)."""

    chunk: int
    loss: float
    grad_norm: float
    rolled_back: bool = False
    reason: str = ""
    timesteps: list[int] = field(default_factory=list)
    loss_before: float = math.nan  # the first step's loss on its batch
    loss_after: float = math.nan  # the same batch after the update (only measured with ``loss_guard``)
    read: bool = True  # generation applied Theta to this chunk (the read policy may withhold it)
    written: bool = True  # the update ran (``write_where="new-ground"`` skips a chunk the memory recognised)
    recognition: float = math.nan  # ``read_gate``: the chunk's recognition ratio
    clip_passes: int = 0  # clips passed forward + backward through the UNet by the write (its cost)


class TempLoRA:
    """The fast learner: the LoRA on ``unet`` (:class:`LoRAAdapter`), its Adam optimizer, its write and read policies.

    Args:
        unet: the UNet3D to adapt (LoRA layers are injected in place).
        diffusion: the model's own noise process (timesteps, ``add_noise``, the prediction target).
        settings: a :class:`TempLoRASettings` (or a dict, which may name a ``preset``); ``options`` over it.
    """

    def __init__(self, unet: nn.Module, diffusion: MaskedDiffusion, settings: TempLoRASettings | dict | None = None,
                 **options: Any) -> None:
        if diffusion is None:
            raise UserInputError(
                "Temp-LoRA: `diffusion` is required: pass the model's own MaskedDiffusion (its noise schedule and "
                "prediction type), e.g. TempLoRA(system.unet, system.diffusion); a default would train epsilon "
                "prediction on a model that may predict v or z_0")
        s = self.settings = TempLoRASettings.build(settings, **options)
        self.unet, self.diffusion = unet, diffusion
        self.lora = LoRAAdapter(unet, s.rank, float(s.alpha if s.alpha is not None else s.rank), s.target_modules)
        self.params = self.lora.params
        if s.write == "rehearsal":
            self.write = RehearsalWrite(s.draws, s.reverse, s.turns, s.clean_context)
        else:
            self.write = ChunkWrite(s.variant, s.clean_context)
        self.read = (ReadWhereRecognised(s.read_gate, s.read_text_match, self.write, s.text_condition == "action")
                     if s.read_gate > 0 else ReadAlways())
        if s.turn_back_note():
            log.warning("Temp-LoRA: %s", s.turn_back_note())
        self.reset()

    # -- the LoRA (adapter.py) --------------------------------------------------------------------------
    def set_enabled(self, enabled: bool) -> None:
        self.lora.set_enabled(enabled)

    def lora_layers(self) -> list:
        return self.lora.layers()

    @property
    def sharded(self) -> bool:
        return self.lora.sharded

    def merged(self) -> contextlib.AbstractContextManager:
        return self.lora.merged()

    def per_sample(self, thetas: list[dict[str, torch.Tensor]]) -> contextlib.AbstractContextManager:
        return self.lora.per_sample(thetas)

    def remove(self) -> None:
        self.lora.remove()
        self.params = []

    # -- an episode --------------------------------------------------------------------------------------
    def reset(self) -> None:
        """New episode (Alg. 1a l.3): Theta_0 (B = 0, so Phi + Theta_0 == Phi), fresh Adam, an empty episode."""
        s = self.settings
        self.lora.reset(s.seed)
        self.optimizer = self._optimizer()
        self.history: list[UpdateRecord] = []
        self.chunks_seen = 0
        self.episode = Episode()
        self.waiting: Waiting | None = None  # write_every: the chunks not written yet
        self.caught_up: UpdateRecord | None = None  # the write :meth:`reads` made before reading Theta

    def _optimizer(self) -> torch.optim.Optimizer:
        s = self.settings
        groups: list = self.params
        if s.lr_ratio != 1:  # LoRA+ (Hayou et al. 2024): B at lr_ratio x the rate of A
            b = self.lora.is_b()
            groups = [{"params": [p for p, is_b in zip(self.params, b) if not is_b], "lr": s.lr},
                      {"params": [p for p, is_b in zip(self.params, b) if is_b], "lr": s.lr * s.lr_ratio}]
        return torch.optim.Adam(groups, lr=s.lr, betas=tuple(s.betas), weight_decay=s.weight_decay)

    def reverse_action(self, action: str) -> str | None:
        """The text of a time-reversed / turn-back clip made under ``action`` (None: not needed or not declared)."""
        s = self.settings
        if s.write != "rehearsal" or not (s.reverse or s.turns) or s.text_condition != "action":
            return None
        return (s.reverse_actions or {}).get(action)

    def reads(self, context: torch.Tensor, text: torch.Tensor | None) -> tuple[bool, float]:
        """Does generation apply Theta to the chunk after ``context`` under ``text``? (read, recognition ratio).
        Chunks that wait to be written (``write_every``) are written first where Theta is read."""
        read, ratio = self.read(self.episode, context, text)
        if read:
            self.caught_up = self.write_waiting()
        return read, ratio

    # -- fast learning (Eq. 3, Alg. 1a l.11-14) ----------------------------------------------------------
    def update(self, context: torch.Tensor, generated: torch.Tensor, null_text: torch.Tensor,
               text: torch.Tensor | None = None, reverse_text: torch.Tensor | None = None,
               recognised: bool = False) -> UpdateRecord:
        """One chunk's fast learning. ``context`` (B, C, f_p, h, w): the chunk's input latents X_i; ``generated``
        (B, C, f_g, h, w): its output Y_i; ``text``: its action; ``reverse_text``: the reverse action's text;
        ``recognised``: the read policy recognised where the chunk starts (``write_where="new-ground"``: no steps)."""
        if torch.is_inference_mode_enabled():  # e.g. inside trainer.predict: learn on ordinary copies
            with torch.inference_mode(False):
                copies = [None if x is None else x.clone() for x in (context, generated, null_text, text, reverse_text)]
                return self.update(*copies, recognised=recognised)
        self.lora.check_live()
        s = self.settings
        by_text = s.text_condition == "action"
        cond = text if text is not None and by_text else null_text
        back = reverse_text if by_text else null_text  # None: the action has no declared reverse
        chunk, self.chunks_seen = self.chunks_seen, self.chunks_seen + 1
        z0 = torch.cat([context, generated], dim=2).detach()  # Alg. 1a l.11: X_i (+) Y_i, (B, C, f_p+f_g, h, w)
        n_input = context.shape[2]
        if self.write.needs_episode:
            self.episode.append(context, generated, cond, back, null_text)
        clip, n_clip_input = z0, n_input
        if 0 < s.update_frames < z0.shape[2]:  # a cheaper update: the last frames only
            clip = z0[:, :, -s.update_frames :]
            n_clip_input = max(0, n_input - (z0.shape[2] - s.update_frames))
        self.episode.clip = (clip.shape[2], n_clip_input)
        if recognised and s.write_where == "new-ground":  # known ground: kept in the episode, not written again
            if self.caught_up is not None:  # ... but the chunks that waited were written before this one was read
                record, self.caught_up = self.caught_up, None
                record.chunk = chunk
                return record
            record = UpdateRecord(chunk=chunk, loss=0.0, grad_norm=0.0, written=False)
            self.history.append(record)
            return record
        count = 1 + (self.waiting.count if self.waiting is not None else 0)
        self.waiting = Waiting(clip, n_clip_input, text, cond, null_text, chunk, count)
        if count < s.write_every:  # new ground, written with the next write (its clips are in the episode)
            record = UpdateRecord(chunk=chunk, loss=0.0, grad_norm=0.0, written=False)
            self.history.append(record)
            return record
        return self.write_waiting()

    def write_waiting(self) -> UpdateRecord | None:
        """Write the chunks that wait (``write_every``) now; None if none waits. Generation's read does it before
        Theta is applied; call it wherever Theta is used otherwise (the slow-fast loop's Theta_i, a diagnostic)."""
        if self.waiting is None:
            return None
        w, self.waiting = self.waiting, None
        with torch.inference_mode(False):  # :meth:`reads` may be called inside trainer.predict
            return self._write(w.clip, w.n_input, w.text, w.cond, w.null, w.chunk)

    def _write(self, clip: torch.Tensor, n_clip_input: int, text: torch.Tensor | None, cond: torch.Tensor,
               null_text: torch.Tensor, chunk: int) -> UpdateRecord:
        """The steps of one write (Alg. 1a l.11-14), each on a batch of the write policy; rolled back whole if a
        guard fires."""
        s = self.settings
        record = UpdateRecord(chunk=chunk, loss=0.0, grad_norm=0.0)
        snapshot = self._snapshot()
        g = torch.Generator().manual_seed(stable_seed("temp-lora", s.seed, chunk))
        first_batch = None
        for step in range(s.steps_per_chunk):
            clips, n_clean, texts = self.write.batch(self.episode, clip, n_clip_input, text, cond, null_text, g)
            n = clips.shape[0]
            record.clip_passes += n
            t = torch.randint(0, self.diffusion.num_train_timesteps, (n,), generator=g).to(clip.device)
            noise = torch.randn(clips.shape, generator=g).to(clip.device, clip.dtype)
            batch = (clips, torch.full((n,), n_clean, dtype=torch.long, device=clip.device), t, noise, texts)
            first_batch = first_batch or batch
            loss = self._loss(*batch)
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
            grads = [torch.zeros_like(p) if gr is None else gr for p, gr in zip(self.params, grads)]
            record.loss = float(loss.detach())
            record.grad_norm = float(torch.linalg.vector_norm(torch.stack([gr.norm() for gr in grads])))
            record.timesteps.append(int(t[0]))
            if step == 0:
                record.loss_before = record.loss
            reason = self._guard(record.loss, record.grad_norm)
            if reason:
                return self._roll_back(snapshot, record, reason)
            for p, gr in zip(self.params, grads):
                p.grad = gr
            self.optimizer.step()  # Alg. 1a l.14: Theta_{i+1} <- Theta_i - alpha grad
            self.optimizer.zero_grad(set_to_none=True)
            if not all(torch.isfinite(p).all() for p in self.params):
                return self._roll_back(snapshot, record, "non-finite LoRA weights after the step")
        if s.loss_guard:  # divergence: the update made its own first batch worse, not better
            with torch.no_grad():
                record.loss_after = float(self._loss(*first_batch))
            if not record.loss_after <= s.loss_guard * record.loss_before:  # also catches NaN
                return self._roll_back(snapshot, record, f"loss on its own batch rose from {record.loss_before:.4g} "
                                       f"to {record.loss_after:.4g} (> {s.loss_guard} x)")
        self.history.append(record)
        return record

    def _loss(self, z0, n_clean, t, noise, cond) -> torch.Tensor:
        noisy = self.diffusion.add_noise(z0, noise, t)  # Alg. 1a l.12: noise on the whole sequence ...
        frame = torch.arange(z0.shape[2], device=z0.device)[None, None, :, None, None]
        noisy = torch.where(frame < n_clean[:, None, None, None, None], z0, noisy)  # ... but clean context
        recompute = checkpointed_layers(self.unet) if self.settings.checkpointing else contextlib.nullcontext()
        with torch.enable_grad(), recompute:
            pred = unet_output(self.unet, noisy, t, cond)
            target = self.diffusion.target(z0, noise, t)  # eps (paper), or v for a v-prediction model
            return masked_mse(pred, target, n_clean)  # Alg. 1a l.13 (all frames unless some are clean)

    # -- guards ------------------------------------------------------------------------------------------
    def _guard(self, loss: float, grad_norm: float) -> str:
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return f"non-finite loss ({loss}) or gradient norm ({grad_norm})"
        previous = [r.grad_norm for r in self.history if r.written and not r.rolled_back]
        factor = self.settings.explode_factor
        if len(previous) >= 3 and grad_norm > factor * statistics.median(previous):
            return f"gradient norm {grad_norm:.3g} > {factor} x median {statistics.median(previous):.3g}"
        return ""

    def _snapshot(self) -> dict:
        return {"params": [p.detach().clone() for p in self.params],
                "adam": {id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                         for p, s in self.optimizer.state.items()}}

    def _roll_back(self, snapshot: dict, record: UpdateRecord, reason: str) -> UpdateRecord:
        with torch.no_grad():
            for p, saved in zip(self.params, snapshot["params"]):
                p.copy_(saved)
        for p in self.params:
            if id(p) in snapshot["adam"]:
                self.optimizer.state[p] = snapshot["adam"][id(p)]
            else:
                self.optimizer.state.pop(p, None)
        self.optimizer.zero_grad(set_to_none=True)
        record.rolled_back, record.reason = True, reason
        log.warning("Temp-LoRA update at chunk %d rolled back: %s", record.chunk, reason)
        self.history.append(record)
        return record

    # -- the memory on disk (safetensors: data, never code; storage.py) --------------------------------------
    def save(self, path: str | Path, extra: dict[str, torch.Tensor] | None = None) -> Path:
        """Theta, its optimizer's state, the episode the write and read policies use, and ``extra`` tensors."""
        return save_memory(self, path, extra)

    def load(self, path: str | Path) -> dict[str, torch.Tensor]:
        """Load a memory written by :meth:`save` (data only: safetensors); returns its ``extra`` tensors."""
        return load_memory(self, path)
