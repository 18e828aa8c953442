"""Temp-LoRA: fast learning of episodic memory at inference time (paper Sec. 3.2, Eq. 3, Algorithm 1a).

A LoRA (peft) is injected into the UNet (W' = Phi + Theta, Eq. 6/10). After every generated chunk the
learner takes gradient steps on Theta only, with the base weights Phi untouched:

* ``variant="temp-lora"`` (ours, Eq. 3): z0' = z0^{i-1} (+) z0^i along frames; the WHOLE sequence is noised
  at one random timestep, no clean-context mask, no text (empty prompt); loss on every frame;
* ``variant="original"`` (Table 4, "w original Temp-LoRA"): input -> output with text, as Temp-LoRA for
  text: clean input frames, noised output frames, the action text, loss on the output frames only;
* ``variant="no-local"`` (Table 4, "wo Local Learning Rule"): instead of the local input/output, a window
  sampled uniformly from the whole generated sequence so far (kept on CPU: it grows with the video).

Updates whose loss or gradient is non-finite or explodes (the instability the paper reports at high
learning rates, App. D.5), or (``loss_guard``) that make their own batch's loss worse, are rolled back to the
last good Theta and logged; generation continues.

Options beyond the paper (off by default; the search behind them is in docs/memory.md): several draws per
step, replay of the episode so far, time-reversed clips, a clean-context form of the update under the
action's text, a timestep range, a novelty gate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from torch import nn
from torch.distributed.tensor import DTensor

from slowfast_vgen.diffusion.masked import MaskedDiffusion, masked_mse
from slowfast_vgen.errors import UserInputError, positive_int
from slowfast_vgen.io import atomic_path
from slowfast_vgen.models.unet import unet_output
from slowfast_vgen.seeds import stable_seed

log = logging.getLogger(__name__)

ADAPTER = "temp_lora"
VARIANTS = ("temp-lora", "original", "no-local")
# What the update's clips are conditioned on: "none" = the empty prompt (Eq. 3); "action" = the chunk's action
# (a time-reversed clip: the reverse action, from ``reverse_actions``, else the empty prompt).
TEXT_CONDITIONS = ("none", "action")
# The paper does not name the wrapped layers: the attention projections of the spatial and temporal
# transformers (to_q/to_k/to_v/to_out.0 match transformer_in, attentions and temp_attentions).
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass
class UpdateRecord:
    """What one fast-learning update did (for logs, tests and the guard)."""

    chunk: int
    loss: float
    grad_norm: float
    rolled_back: bool = False
    reason: str = ""
    timesteps: list[int] = field(default_factory=list)
    loss_before: float = math.nan  # the first step's loss on its batch
    loss_after: float = math.nan  # the same batch after the update (only measured with ``loss_guard``)
    skipped: bool = False  # nothing was written: ``novelty_gate`` (Theta explained the chunk) or ``write_chunks``
    memory_ratio: float = math.nan  # ``novelty_gate``: the chunk's own clip's loss with Theta / without
    read: bool = True  # generation applied Theta to this chunk (``read_gate`` may withhold it)
    recognition: float = math.nan  # ``read_gate``: the chunk's recognition ratio (:meth:`TempLoRA.recognition`)


@dataclass(frozen=True)
class TempLoRASettings:
    """Every setting of the fast learner, declared once: :class:`TempLoRA`, the Lightning callback
    (:class:`slowfast_vgen.callbacks.TempLoRA`), the slow-fast loop's inner learner and the command-line options
    (:func:`lora_options`) all build one. The fields are the arguments documented on :class:`TempLoRA`."""

    rank: int = 32
    alpha: float | None = None
    target_modules: tuple[str, ...] | str = DEFAULT_TARGETS
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    steps_per_chunk: int = 1
    variant: str = "temp-lora"
    explode_factor: float = 20.0
    seed: int = 0
    draws: int = 1
    replay: bool = False
    reverse: bool = False
    clean_context: int = 0
    timestep_range: tuple[int, int] | None = None
    loss_guard: float = 0.0
    text_condition: str = "none"
    reverse_actions: dict[str, str] | None = None
    novelty_gate: float = 0.0
    lr_decay: float = 0.0
    write_chunks: int = 0
    consolidate: bool = False
    turns: bool = False
    update_frames: int = 0
    checkpointing: bool = False
    memory_guidance: float = 0.0
    read_timestep_range: tuple[int, int] | None = None
    read_gate: float = 0.0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise UserInputError(f"Temp-LoRA variant {self.variant!r}; expected one of {list(VARIANTS)}")
        if self.rank < 1 or self.steps_per_chunk < 1 or not self.lr >= 0:  # lr 0: stores nothing (a control)
            raise UserInputError(f"Temp-LoRA: need rank >= 1, steps_per_chunk >= 1, lr >= 0; got {self.rank}, "
                                 f"{self.steps_per_chunk}, {self.lr}")
        if self.draws < 1 or self.clean_context < 0 or self.loss_guard < 0:
            raise UserInputError(f"Temp-LoRA: need draws >= 1, clean_context >= 0, loss_guard >= 0; got {self.draws}, "
                                 f"{self.clean_context}, {self.loss_guard}")
        if self.variant != "temp-lora" and (self.replay or self.reverse or self.clean_context or self.consolidate):
            raise UserInputError(f"Temp-LoRA: replay / reverse / clean_context / consolidate are options of variant "
                                 f"'temp-lora', not of {self.variant!r}")
        if self.turns and not self.consolidate:
            raise UserInputError("Temp-LoRA: turns adds turn-back clips to the windows of consolidate; set "
                                 "consolidate too")
        if self.text_condition not in TEXT_CONDITIONS:
            raise UserInputError(f"Temp-LoRA text_condition {self.text_condition!r}; expected one of {list(TEXT_CONDITIONS)}")
        if not self.lr_decay >= 0:
            raise UserInputError(f"Temp-LoRA: lr_decay must be >= 0, got {self.lr_decay}")
        if not self.memory_guidance >= 0:
            raise UserInputError(f"Temp-LoRA: memory_guidance must be >= 0 (0: Theta applied directly, as the paper), "
                                 f"got {self.memory_guidance}")
        if not self.read_gate >= 0:
            raise UserInputError(f"Temp-LoRA: read_gate must be >= 0 (0: Theta read at every chunk, as the paper), "
                                 f"got {self.read_gate}")
        if self.read_gate and not self.consolidate:
            raise UserInputError(f"Temp-LoRA: read_gate {self.read_gate} looks the chunk up among the clips that "
                                 "consolidate rehearses; set consolidate too")
        if self.update_frames < 0:
            raise UserInputError(f"Temp-LoRA: update_frames must be >= 0 (0: the whole clip), got {self.update_frames}")
        if self.write_chunks < 0:
            raise UserInputError(f"Temp-LoRA: write_chunks must be >= 0 (0: every chunk, as Alg. 1a), got {self.write_chunks}")
        for name in ("timestep_range", "read_timestep_range"):
            value = getattr(self, name)
            if value is not None and (len(value) != 2 or not 0 <= value[0] < value[1]):
                raise UserInputError(f"Temp-LoRA: {name} is [lo, hi) with 0 <= lo < hi, got {list(value)}")
        if self.read_timestep_range is not None and self.memory_guidance > 0:
            raise UserInputError("Temp-LoRA: read_timestep_range gates Theta applied directly; it does not combine "
                                 f"with memory_guidance {self.memory_guidance}")

    @classmethod
    def build(cls, settings: TempLoRASettings | dict[str, Any] | None = None, **options: Any) -> TempLoRASettings:
        """``settings`` (an object or a dict) with ``options`` over it; an unknown name is a one-line error."""
        base = dict(settings) if isinstance(settings, dict) else ({} if settings is None else
                                                               {f.name: getattr(settings, f.name) for f in fields(cls)})
        merged = {**base, **options}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise UserInputError(f"Temp-LoRA settings {unknown} are not known; expected some of {sorted(known)}")
        return cls(**merged)


class TempLoRA:
    """The fast learner: owns the LoRA on ``unet`` and its Adam optimizer; plain PyTorch.

    Args:
        unet: the UNet3D to adapt (modified in place: LoRA layers are injected).
        diffusion: the training noise process (timesteps and ``add_noise``).
        rank, alpha: LoRA rank (paper: 32) and alpha (not given by the paper; default = rank, scaling 1).
        target_modules: names of the linear layers to wrap.
        lr, betas, weight_decay: Adam (paper: 1e-4, (0.9, 0.999), 0).
        steps_per_chunk: gradient steps after each chunk (not given by the paper; default 1).
        variant: ``"temp-lora"`` (ours), ``"original"`` or ``"no-local"`` (Table 4 ablations).
        text_condition: ``"none"`` (Eq. 3: no text) or ``"action"``: each clip with its action's text, so that Theta
            stores what the places look like, not which way the episode went (without it a clean-context update
            learns the outward direction as a prior and fights the action on the way back).
        reverse_actions: action -> its reverse (e.g. "go left" -> "go right"), the text of time-reversed clips.
        novelty_gate: if > 0, a chunk whose own clip Theta already explains (loss with Theta below this
            factor times the loss without, at the first step's timestep and noise) is not written: memory is
            not overwritten with the model's own re-rendering of a place it remembers. Costs two forward
            passes of one clip per chunk.
        explode_factor: an update whose gradient norm exceeds this multiple of the median of the previous
            ones (after 3 updates) is rolled back, as is any non-finite one.
        seed: fixes the LoRA initialisation and the noise of every update.
        draws: clips per gradient step, batched (default 1: the chunk's own clip, as in Alg. 1a).
        replay: the extra draws are windows of the episode so far, not the chunk's clip again.
        reverse: every other clip runs backwards in time (a return along a path sees the places reversed).
        clean_context: the first frames of each clip stay clean and out of the loss, the regime in which the
            sampler reads the model (Eq. 1); 0 is Eq. 3 (the whole clip noised).
        timestep_range: ``[lo, hi)`` of the update's timesteps (default: all training timesteps).
        loss_guard: if > 0, after a chunk's steps the loss on the first step's batch is computed again; an
            update that raised it past ``loss_guard`` times its value is rolled back (divergence, which a
            gradient-norm check can miss). Costs one forward pass per chunk.
        lr_decay: chunk ``i`` of an episode learns at ``lr / (1 + lr_decay * i)`` (0: a constant rate, as the
            paper): early chunks are written firmly, later ones less, so that a return to known places does not
            overwrite them with the model's re-rendering (docs/memory.md: freezing the memory at the turn helped).
        consolidate: every step trains on every window of the episode so far (each start; with ``reverse`` each
            also time-reversed), one batch, instead of ``draws - 1`` random ones beside the chunk's clip: the whole
            episode is rehearsed after each chunk, so a later chunk does not overwrite what earlier ones wrote.
            ``draws`` caps the batch (a random subset of the clips, the chunk's own always in it). Search 11 of
            docs/memory.md: written on one chunk at a time Theta forgets and is not read; rehearsed jointly it is.
        turns: with ``consolidate``, also the way back from the end of each window: its last input frames, then
            the frames before them in reverse order, under the reverse action. It assumes the actions are
            reversible (reversing an action retraces the views: a camera moving through a static scene); without
            it a Theta that rehearsed the outward direction fights the action at the turn (Search 11).
        write_chunks: if > 0, only the first ``write_chunks`` chunks of an episode are written; Theta is frozen
            after them (a write budget). With the revisit benchmark's ``chunks_out`` it freezes the memory exactly at
            the turn: an oracle that knows where the way back starts (docs/memory.md, Search 10), not a method. 0:
            every chunk (Alg. 1a l.11-14).
        update_frames: if > 0, the update trains on the last ``update_frames`` frames of X_i (+) Y_i only (a cheaper
            update: each frame is still written once, as output; ``sfvgen bench temp-lora --components``).
        checkpointing: recompute each layer's activations (in the down / mid / up blocks) in the update's backward
            pass instead of keeping them (less memory for about one more forward pass; sampling is unaffected).
        memory_guidance: if > 0, generation reads Theta by memory guidance with this weight instead of sampling
            with Theta applied (:class:`slowfast_vgen.diffusion.sampling.MemoryGuidance`: Phi alone under the usual
            guidance, plus w times what Theta changes in Eq. 3's regime; two more UNet passes per step). 0: the paper.
        read_timestep_range: ``[lo, hi)``: generation applies Theta only at the sampler's steps with a timestep in
            it (Phi alone at the others; :class:`slowfast_vgen.diffusion.sampling.ThetaGate`), e.g. where the update
            wrote (``timestep_range``). None: every step (the paper).
        read_gate: if > 0 (with ``consolidate``), generation applies Theta to a chunk only when the memory recognises
            where it starts: some rehearsed clip under the chunk's action text begins with frames within ``read_gate``
            times the median distance of all the rehearsed clips' beginnings from the chunk's context
            (:meth:`recognition`); elsewhere Phi generates alone, so content the memory does not hold is not
            bent towards content it does. A key / value lookup not in the paper (docs/memory.md, Search 12). 0:
            Theta at every chunk (the paper).

    ``target_modules`` may be a regular expression (peft's convention), e.g. ``r"up_blocks.*(to_q|to_k|to_v|to_out.0)"``
    for Theta on the decoder only: the backward pass then stops where the first LoRA layer is, and the encoder's
    activations are not kept (a cheaper update).
    """

    def __init__(
        self,
        unet: nn.Module,
        diffusion: MaskedDiffusion,
        settings: TempLoRASettings | None = None,
        **options: Any,
    ) -> None:
        if diffusion is None:
            raise UserInputError(
                "Temp-LoRA: `diffusion` is required: pass the model's own MaskedDiffusion (its noise schedule and "
                "prediction type), e.g. TempLoRA(system.unet, system.diffusion); a default would train epsilon "
                "prediction on a model that may predict v or z_0"
            )
        s = TempLoRASettings.build(settings, **options)  # every option is declared and checked there, once
        self.settings = s
        self.unet, self.diffusion = unet, diffusion
        self.rank, self.alpha = s.rank, float(s.alpha if s.alpha is not None else s.rank)
        self.target_modules = s.target_modules if isinstance(s.target_modules, str) else list(s.target_modules)
        self.lr, self.betas, self.weight_decay = s.lr, tuple(s.betas), s.weight_decay
        self.steps_per_chunk, self.variant, self.explode_factor, self.seed = s.steps_per_chunk, s.variant, float(s.explode_factor), s.seed
        n_train = self.diffusion.num_train_timesteps
        lo, hi = s.timestep_range if s.timestep_range is not None else (0, n_train)
        if hi > n_train:  # 0 <= lo < hi: checked by the settings
            raise UserInputError(f"Temp-LoRA: need timestep_range[1] <= {n_train} (the training timesteps), got {[lo, hi]}")
        self.draws, self.replay, self.reverse, self.clean_context = s.draws, s.replay, s.reverse, s.clean_context
        self.text_condition, self.reverse_actions = s.text_condition, dict(s.reverse_actions or {})
        self.novelty_gate, self.lr_decay = float(s.novelty_gate), float(s.lr_decay)
        self.write_chunks = int(s.write_chunks)
        self.consolidate, self.turns = bool(s.consolidate), bool(s.turns)
        self.update_frames, self.checkpointing = int(s.update_frames), bool(s.checkpointing)
        self.timestep_range, self.loss_guard = (int(lo), int(hi)), float(s.loss_guard)
        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, target_modules=self.target_modules, lora_dropout=0.0)
        trainable = {n: p.requires_grad for n, p in unet.named_parameters()}
        try:  # parameters made inside inference mode (e.g. trainer.predict) could never train
            with torch.inference_mode(False):
                inject_adapter_in_model(config, unet, adapter_name=ADAPTER)
        except ValueError as err:
            raise UserInputError(f"Temp-LoRA target_modules {self.target_modules}: {err}") from None
        for name, p in unet.named_parameters():  # peft freezes the base: Phi keeps its own flags
            base = name.replace(".base_layer", "")
            if base in trainable:
                p.requires_grad_(trainable[base])
            elif name in trainable:
                p.requires_grad_(trainable[name])
        self.params = [p for n, p in unet.named_parameters() if ".lora_" in n and ADAPTER in n]
        for p in self.params:  # Theta in float32 whatever Phi's precision: lr-1e-4 Adam steps vanish in fp16/bf16
            p.data = p.data.float()
        self.history: list[UpdateRecord] = []
        self.chunks_seen = 0
        self.reset()

    # -- episode lifecycle ----------------------------------------------------------------------------
    def reset(self) -> None:
        """New episode: Theta_0 (A random from ``seed``, B = 0, so Phi + Theta_0 == Phi) and fresh Adam."""
        with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.no_grad():
            torch.manual_seed(self.seed)
            for module in self.lora_layers():
                module.reset_lora_parameters(ADAPTER, init_lora_weights=True)
        self.optimizer = torch.optim.Adam(self.params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        self.history, self.chunks_seen = [], 0
        self._sequence: list[torch.Tensor] = []  # for variant "no-local" and replay
        self._texts: list[tuple[torch.Tensor, torch.Tensor]] = []  # per frame of _sequence: (text, reverse text)
        self._clip: tuple[int, int] | None = None  # (frames, input frames) of the last update's clip, for recognition

    def reverse_action(self, action: str) -> str | None:
        """The text of a time-reversed copy of a clip made under ``action`` (None: not needed or not known)."""
        if not ((self.reverse or self.turns) and self.text_condition == "action"):
            return None
        return self.reverse_actions.get(action)

    def lora_layers(self) -> list[LoraLayer]:
        return [m for m in self.unet.modules() if isinstance(m, LoraLayer)]

    def set_enabled(self, enabled: bool) -> None:
        """Switch Theta off (Phi alone) or on without touching its values."""
        for module in self.lora_layers():
            module.enable_adapters(enabled)

    @property
    def sharded(self) -> bool:
        """Phi is sharded by FSDP2 (``fully_shard``: DTensor weights). Theta, injected after the wrapping, stays a
        plain tensor of this rank: one episode's memory per rank."""
        return any(isinstance(module.get_base_layer().weight, DTensor) for module in self.lora_layers())

    def _check_live(self) -> None:
        """Theta must be the UNet's own LoRA parameters: wrapping the UNet (e.g. ``fully_shard``) after Temp-LoRA
        was injected replaces them, and the optimizer would train stale copies that no forward pass reads."""
        live = {id(p) for n, p in self.unet.named_parameters() if ".lora_" in n and ADAPTER in n}
        if not live or any(id(p) not in live for p in self.params):
            raise UserInputError(
                "Temp-LoRA: the UNet's LoRA parameters were replaced after Temp-LoRA was set up (was the UNet wrapped, "
                "e.g. by FSDP's fully_shard, afterwards? that also shards Theta across ranks, which mixes their "
                "episodes): wrap the UNet first, then build TempLoRA on it")

    @contextlib.contextmanager
    def merged(self) -> Iterator[None]:
        """Sample with Theta added into the wrapped weights (W + B A s): no LoRA cost per UNet call.

        Inside, the plain base layers (holding W + B A s) stand in the UNet in place of their LoRA wrappers,
        so a call costs what Phi alone costs. The original weights are kept as exact copies and copied back
        afterwards, so Phi stays bit-identical; outputs differ from the unmerged computation only by float
        rounding.
        """
        if self.sharded:
            raise UserInputError("Temp-LoRA: merging Theta into FSDP-sharded weights is not supported (each rank holds "
                                 "a shard of Phi but a whole Theta); sample unmerged (merge_for_sampling=False)")
        swapped = []
        with torch.no_grad():
            for parent, child, module in self._lora_slots():
                base = module.get_base_layer()
                swapped.append((parent, child, module, base.weight, base.weight.detach().clone()))
                base.weight += module.get_delta_weight(ADAPTER).to(base.weight.dtype)
                setattr(parent, child, base)
        try:
            yield
        finally:
            with torch.no_grad():
                for parent, child, module, weight, copy in swapped:
                    weight.copy_(copy)
                    setattr(parent, child, module)

    def _lora_slots(self) -> list[tuple[nn.Module, str, LoraLayer]]:
        """(parent module, attribute name, LoRA layer) for every LoRA layer in the UNet."""
        slots = []
        for name, module in list(self.unet.named_modules()):
            if isinstance(module, LoraLayer):
                parent_name, _, child = name.rpartition(".")
                slots.append((self.unet.get_submodule(parent_name) if parent_name else self.unet, child, module))
        return slots

    @contextlib.contextmanager
    def per_sample(self, thetas: list[dict[str, torch.Tensor]]) -> Iterator[None]:
        """UNet calls inside use Theta_b for sample b of the batch (functional, frozen LoRA per sample).

        ``thetas``: one dict per sample, ``{parameter name in the UNet: value}`` (the LoRA A/B weights of
        this adapter, as recorded by the slow-fast loop). peft's own mixed-adapter batches need one named
        adapter per distinct Theta and loop over them; here each wrapped layer adds
        ``s * (x_b A_b^T) B_b^T`` with two batched matmuls. Inside the UNet3D every layer's batch axis holds
        each sample's rows contiguously (frames, or pixels for temporal attention, fold into it), so the
        rows of sample b are the b-th of B equal blocks. Gradients reach Phi (the base weights), never Theta.
        """
        modules = dict(self.unet.named_modules())
        hooks = []
        for name, module in modules.items():
            if not isinstance(module, LoraLayer):
                continue
            try:
                a = torch.stack([t[f"{name}.lora_A.{ADAPTER}.weight"] for t in thetas])  # (B, r, in)
                b = torch.stack([t[f"{name}.lora_B.{ADAPTER}.weight"] for t in thetas])  # (B, out, r)
            except KeyError as err:
                raise UserInputError(f"per-sample Theta misses LoRA weight {err.args[0]!r}") from None
            hooks.append(module.register_forward_hook(_per_sample_hook(a, b, module.scaling[ADAPTER])))
        self.set_enabled(False)
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()
            self.set_enabled(True)

    def remove(self) -> None:
        """Take the LoRA layers out of the UNet: it is the base model again, exactly."""
        for parent, child, module in self._lora_slots():
            setattr(parent, child, module.get_base_layer())
        self.params = []

    # -- fast learning (Eq. 3, Alg. 1a lines 11-14) -----------------------------------------------------
    def update(
        self,
        context: torch.Tensor,
        generated: torch.Tensor,
        null_text: torch.Tensor,
        text: torch.Tensor | None = None,
        reverse_text: torch.Tensor | None = None,
    ) -> UpdateRecord:
        """One chunk's fast learning on Theta. ``context`` (B, C, f_p, h, w): the chunk's input latents
        z0^{i-1}; ``generated`` (B, C, f_g, h, w): its output z0^i; ``text``: its action (variant "original",
        ``text_condition="action"``); ``reverse_text``: the reverse action (for time-reversed clips)."""
        if torch.is_inference_mode_enabled():  # e.g. inside trainer.predict: learn on ordinary copies
            with torch.inference_mode(False):
                copies = [None if x is None else x.clone() for x in (context, generated, null_text, text, reverse_text)]
                return self.update(*copies)
        self._check_live()
        fwd = text if text is not None and self.text_condition == "action" else null_text
        rev = reverse_text if reverse_text is not None and self.text_condition == "action" else null_text
        chunk = self.chunks_seen
        self.chunks_seen += 1
        z0 = torch.cat([context, generated], dim=2).detach()  # Alg. 1a l.11: X_i (+) Y_i, (B, C, f_p+f_g, h, w)
        n_input = context.shape[2]
        if self.variant == "no-local" or self.replay or self.consolidate:
            new = generated.detach().cpu() if self._sequence else z0.cpu()
            self._sequence.append(new)
            self._texts += [(fwd, rev)] * new.shape[2]  # per frame: its chunk's action and reverse
        if 0 < self.write_chunks <= chunk:  # the write budget is spent: Theta stays as it is
            record = UpdateRecord(chunk=chunk, loss=math.nan, grad_norm=math.nan, skipped=True,
                                  reason=f"write budget spent ({self.write_chunks} chunks written)")
            self.history.append(record)
            return record
        for group in self.optimizer.param_groups:  # lr_decay: later chunks of the episode write less
            group["lr"] = self.lr / (1.0 + self.lr_decay * chunk)
        snapshot = self._snapshot()
        record = UpdateRecord(chunk=chunk, loss=0.0, grad_norm=0.0)
        g = torch.Generator().manual_seed(stable_seed("temp-lora", self.seed, chunk))
        own_batch = None  # the first step's batch, for the loss guard
        clip, n_clip_input = z0, n_input
        if 0 < self.update_frames < z0.shape[2]:  # a cheaper update: the last frames only
            clip = z0[:, :, -self.update_frames:]
            n_clip_input = max(0, n_input - (z0.shape[2] - self.update_frames))
        self._clip = (clip.shape[2], n_clip_input)
        for step in range(self.steps_per_chunk):
            batch = self._batch(clip, n_clip_input, step, null_text, text, g, (fwd, rev))
            own_batch = own_batch or batch
            if step == 0 and self.novelty_gate:  # before any gradient: a remembered chunk costs two forwards only
                remembered, record.memory_ratio = self._remembered(batch, z0.shape[0])
                if remembered:
                    record.skipped = True
                    record.reason = f"already remembered (loss ratio {record.memory_ratio:.3f} < {self.novelty_gate})"
                    record.timesteps.append(int(batch[2][0]))
                    self.history.append(record)
                    return record
            loss = self._loss(*batch)
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
            grads = [torch.zeros_like(p) if gr is None else gr for p, gr in zip(self.params, grads)]
            grad_norm = float(torch.linalg.vector_norm(torch.stack([gr.norm() for gr in grads])))
            record.loss, record.grad_norm = float(loss.detach()), grad_norm
            record.timesteps.append(int(batch[2][0]))
            if step == 0:
                record.loss_before = record.loss
            reason = self._guard(record.loss, grad_norm)
            if reason:
                return self._roll_back(snapshot, record, reason)
            for p, gr in zip(self.params, grads):
                p.grad = gr
            self.optimizer.step()  # Alg. 1a l.14: Theta_{i+1} <- Theta_i - alpha grad
            self.optimizer.zero_grad(set_to_none=True)
            if not all(torch.isfinite(p).all() for p in self.params):
                return self._roll_back(snapshot, record, "non-finite LoRA weights after the step")
        if self.loss_guard:  # divergence: the update made its own first batch worse, not better
            with torch.no_grad():
                record.loss_after = float(self._loss(*own_batch))
            if not record.loss_after <= self.loss_guard * record.loss_before:  # also catches NaN
                return self._roll_back(snapshot, record, (
                    f"loss on its own batch rose from {record.loss_before:.4g} to {record.loss_after:.4g} "
                    f"(> {self.loss_guard} x)"))
        self.history.append(record)
        return record

    def _remembered(self, batch: tuple, b: int) -> tuple[bool, float]:
        """Does Theta already explain this chunk? The loss of the chunk's own forward clip (the first ``b`` rows
        of the batch: its new frames; reversed and replayed clips show frames Theta has seen) with Theta, against
        without; below ``novelty_gate`` it is remembered."""
        own = tuple(x[:b] for x in batch)
        with torch.no_grad():
            with_theta = float(self._loss(*own))
            self.set_enabled(False)
            try:
                without = float(self._loss(*own))
            finally:
                self.set_enabled(True)
        ratio = with_theta / without if without > 0 else 1.0
        return ratio < self.novelty_gate, ratio

    def _roll_back(self, snapshot: dict, record: UpdateRecord, reason: str) -> UpdateRecord:
        self._restore(snapshot)
        record.rolled_back, record.reason = True, reason
        log.warning("Temp-LoRA update at chunk %d rolled back: %s", record.chunk, reason)
        self.history.append(record)
        return record

    def _batch(self, z0, n_input, step, null_text, text, g, texts) -> tuple:
        """One step's training batch: (clean clips, clean-frame counts, timesteps, noise, text), Alg. 1a l.12.

        Variant "temp-lora" stacks ``draws`` clips: the chunk's own X_i (+) Y_i first, then (``replay``) windows
        of the same length drawn from the episode so far; with ``reverse`` every other clip runs backwards in
        time (the way back along a path shows the same places in reverse order); the first ``clean_context``
        frames of each clip stay clean (the sampler's regime) and the loss skips them.
        """
        b = z0.shape[0]
        if self.variant == "no-local":
            clips, n_clean, cond = self._sample_window(z0, g), 0, null_text.expand(b, *null_text.shape[1:])
        elif self.variant == "original":
            if text is None:
                raise UserInputError("Temp-LoRA variant 'original' needs the action text of the chunk")
            clips, n_clean, cond = z0, n_input, text  # clean input, noised output, with text (Eq. 1)
        elif self.consolidate:
            parts = self._rehearsal(z0, n_input, g)
            clips = torch.cat([p for p, _ in parts])
            n_clean = min(self.clean_context, clips.shape[2] - 1)
            cond = torch.cat([tx.expand(p.shape[0], *tx.shape[1:]) for p, tx in parts])
        else:
            parts = [(z0, texts)] + [self._sample_window(z0, g, with_text=True) if self.replay else (z0, texts)
                                     for _ in range(self.draws - 1)]
            if self.reverse:  # a reversed clip shows the places in the order of the way back, under the reverse action
                parts = [(p.flip(2), (tx[1], tx[1])) if (d + step) % 2 else (p, tx) for d, (p, tx) in enumerate(parts)]
            clips = torch.cat([p for p, _ in parts])
            n_clean = min(self.clean_context, clips.shape[2] - 1)
            cond = torch.cat([tx[0].expand(p.shape[0], *tx[0].shape[1:]) for p, tx in parts])  # Eq. 3: null text
        n = clips.shape[0]
        lo, hi = self.timestep_range
        t = torch.randint(lo, hi, (n,), generator=g).to(z0.device)
        noise = torch.randn(clips.shape, generator=g).to(z0.device, z0.dtype)
        return clips, torch.full((n,), n_clean, dtype=torch.long, device=z0.device), t, noise, cond

    def _loss(self, z0, n_clean, t, noise, cond) -> torch.Tensor:
        noisy = self.diffusion.add_noise(z0, noise, t)  # Alg. 1a l.12: noise on the whole sequence ...
        frame = torch.arange(z0.shape[2], device=z0.device)[None, None, :, None, None]
        noisy = torch.where(frame < n_clean[:, None, None, None, None], z0, noisy)  # ... but clean context
        with torch.enable_grad(), _checkpointed_layers(self.unet) if self.checkpointing else contextlib.nullcontext():
            pred = unet_output(self.unet, noisy, t, cond)
            target = self.diffusion.target(z0, noise, t)  # eps (paper), or v for a v-prediction model
            return masked_mse(pred, target, n_clean)  # Alg. 1a l.13 (all frames unless some are clean)

    def _rehearsal(self, z0: torch.Tensor, n_input: int, g: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``consolidate``: (clip, text) for every window of z0's length in the episode so far (:meth:`_episode_clips`),
        at most ``draws`` of them, the chunk's own clip (the last window) always included."""
        own = (z0, self._texts[-1][0])
        parts = self._episode_clips(z0.shape[2], n_input, z0.device, z0.dtype)
        if len(parts) > self.draws - 1:
            keep = torch.randperm(len(parts), generator=g)[: self.draws - 1].sort().values
            parts = [parts[int(i)] for i in keep]
        return [own] + parts

    def _episode_clips(self, length: int, n_input: int, device, dtype,
                       last: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(clip, text) for every window of ``length`` frames in the episode so far, forwards under the action of its
        last frame (the last window only with ``last``: the chunk's own clip is added apart), reversed (``reverse``,
        under the reverse action of its first frame) and followed by its turn back (``turns``: the window's last
        ``n_input`` frames, then the ``length - n_input`` frames before them backwards, under the reverse action of
        its last frame)."""
        seq = torch.cat(self._sequence, dim=2)
        n_gen = length - n_input
        parts = []
        for start in range(seq.shape[2] - length + 1):
            end = start + length - 1
            window = seq[:, :, start : end + 1].to(device, dtype)
            if last or end < seq.shape[2] - 1:
                parts.append((window, self._texts[end][0]))
            if self.reverse:
                parts.append((window.flip(2), self._texts[start][1]))
            if self.turns and n_input >= 1:  # Alg. 1a's X_i (+) Y_i for "go back from here"
                back = torch.cat([window[:, :, length - n_input :], window[:, :, length - 1 - n_gen : length - 1].flip(2)], 2)
                parts.append((back, self._texts[end][1]))
        return parts

    def recognition(self, context: torch.Tensor, text: torch.Tensor | None = None) -> float:
        """How well the memory knows where the next chunk starts (``read_gate``): the mean squared distance from
        ``context`` (B, C, f, h, w; its last frames) to the beginning of the nearest clip rehearsed under ``text``
        (the chunk's action, when the update is conditioned on it), over the median distance to the beginnings of all
        of them. Near 0: the memory holds a clip that starts here under this action (a return along a written path);
        near 1 or above: it does not (new ground, or the same ground under another action). ``inf`` before any
        chunk was written."""
        if not self._sequence or self._clip is None:
            return math.inf
        length, n_input = self._clip
        k = min(context.shape[2], n_input)
        if k == 0:
            return math.inf
        parts = self._episode_clips(length, n_input, context.device, context.dtype, last=True)
        if not parts:
            return math.inf
        query = context[:, :, -k:]
        dist = torch.stack([((clip[:, :, :k] - query) ** 2).mean() for clip, _ in parts])
        same = [text is None or self.text_condition != "action" or (tx.shape == text.shape and torch.equal(tx, text))
                for _, tx in parts]
        if not any(same):
            return math.inf
        nearest = dist[torch.tensor(same, device=dist.device)].min()
        return float(nearest / dist.median().clamp_min(1e-12))

    def _sample_window(self, z0: torch.Tensor, g: torch.Generator, with_text: bool = False):
        """A window of z0's length from the episode so far; ``with_text``: also (the action text of its last
        frame, the reverse text of its first frame): the texts it has forwards and backwards."""
        seq = torch.cat(self._sequence, dim=2)  # (B, C, F_total, h, w) on CPU
        length = z0.shape[2]  # the sequence always ends with z0, so it is at least this long
        start = int(torch.randint(0, seq.shape[2] - length + 1, (1,), generator=g))
        window = seq[:, :, start : start + length].to(z0.device, z0.dtype)
        if not with_text:
            return window
        return window, (self._texts[start + length - 1][0], self._texts[start][1])

    # -- guard -----------------------------------------------------------------------------------------
    def _guard(self, loss: float, grad_norm: float) -> str:
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return f"non-finite loss ({loss}) or gradient norm ({grad_norm})"
        previous = [r.grad_norm for r in self.history if not (r.rolled_back or r.skipped)]
        if len(previous) >= 3 and grad_norm > self.explode_factor * statistics.median(previous):
            return f"gradient norm {grad_norm:.3g} > {self.explode_factor} x median {statistics.median(previous):.3g}"
        return ""

    def _snapshot(self) -> dict:
        return {
            "params": [p.detach().clone() for p in self.params],
            "optimizer_tensors": {
                id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                for p, s in self.optimizer.state.items()
            },
        }

    def _restore(self, snapshot: dict) -> None:
        with torch.no_grad():
            for p, saved in zip(self.params, snapshot["params"]):
                p.copy_(saved)
        for p in self.params:
            if id(p) in snapshot["optimizer_tensors"]:
                self.optimizer.state[p] = snapshot["optimizer_tensors"][id(p)]
            else:
                self.optimizer.state.pop(p, None)
        self.optimizer.zero_grad(set_to_none=True)

    # -- memory on disk ----------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Theta and its Adam moments as flat tensors (for safetensors)."""
        tensors = {f"lora.{k}": v.detach().contiguous() for k, v in get_peft_model_state_dict(self.unet, adapter_name=ADAPTER).items()}
        for i, p in enumerate(self.params):
            for key, value in self.optimizer.state.get(p, {}).items():
                tensors[f"adam.{i}.{key}"] = torch.as_tensor(value).detach().contiguous()
        return tensors

    def save(self, path: str | Path, extra: dict[str, torch.Tensor] | None = None) -> Path:
        """Save the episode's memory (Theta, Adam state, counters, settings) to one safetensors file."""
        meta = {"rank": self.rank, "alpha": self.alpha, "target_modules": self.target_modules,
                "variant": self.variant, "chunks_seen": self.chunks_seen, "lr": self.lr}
        tensors = {**self.state_tensors(), **{f"extra.{k}": v.detach().contiguous().cpu() for k, v in (extra or {}).items()}}
        with atomic_path(Path(path)) as tmp:
            save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp), metadata={"temp_lora": json.dumps(meta)})
        return Path(path)

    def load(self, path: str | Path) -> dict[str, torch.Tensor]:
        """Load a memory saved by :meth:`save` (data only: safetensors); returns its ``extra`` tensors."""
        from slowfast_vgen.io import read_safetensors

        path = Path(path)
        tensors, metadata = read_safetensors(path, "Temp-LoRA memory")
        try:
            meta = json.loads(metadata.get("temp_lora", "{}"))
        except json.JSONDecodeError:
            meta = None
        if not isinstance(meta, dict) or "rank" not in meta:
            raise UserInputError(f"Temp-LoRA memory {str(path)!r} has no Temp-LoRA metadata; expected a file written "
                                 f"by --memory-out (TempLoRA.save)")
        if meta.get("rank") != self.rank or meta.get("target_modules") != self.target_modules:
            raise UserInputError(
                f"Temp-LoRA memory {path.name}: rank {meta.get('rank')} on {meta.get('target_modules')}; this learner "
                f"has rank {self.rank} on {self.target_modules}"
            )
        device = self.params[0].device
        lora = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("lora.")}
        set_peft_model_state_dict(self.unet, lora, adapter_name=ADAPTER)
        self.optimizer = torch.optim.Adam(self.params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        for i, p in enumerate(self.params):
            state = {
                k.split(".", 2)[2]: v if k.endswith(".step") else v.to(device)  # Adam keeps `step` on the CPU
                for k, v in tensors.items()
                if k.startswith(f"adam.{i}.")
            }
            if state:
                self.optimizer.state[p] = state
        self.chunks_seen = int(meta.get("chunks_seen", 0))
        return {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}


@contextlib.contextmanager
def _checkpointed_layers(unet: nn.Module) -> Iterator[None]:
    """Inside: each layer of the down / mid / up blocks of a diffusers UNet (every entry of a block's module
    lists: ResNets, temporal convolutions, spatial and temporal transformers, down/upsamplers) recomputes its
    activations in the backward pass (``torch.utils.checkpoint``, non-reentrant) instead of storing them. Per layer,
    not per block: a recomputed ModelScope block at 32 frames of 32x32 latents holds several GB (a 16+16-frame update
    with per-block recomputation did not fit in 23 GB; docs/benchmarks.md). diffusers' UNet3DConditionModel has no
    gradient checkpointing of its own."""
    from torch.utils.checkpoint import checkpoint

    blocks = [*getattr(unet, "down_blocks", []), *([unet.mid_block] if getattr(unet, "mid_block", None) else []),
              *getattr(unet, "up_blocks", [])]
    layers = [layer for block in blocks for child in block.children() if isinstance(child, nn.ModuleList)
              for layer in child]

    def wrap(fn):
        def forward(*args, **kwargs):
            return checkpoint(fn, *args, use_reentrant=False, **kwargs) if torch.is_grad_enabled() else fn(*args, **kwargs)
        return forward

    for layer in layers:
        layer.forward = wrap(layer.forward)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # back to the class's forward


def _per_sample_hook(a: torch.Tensor, b: torch.Tensor, scaling: float):
    """Forward hook adding sample b's LoRA delta to the rows of sample b (see :meth:`TempLoRA.per_sample`)."""

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        n = x.shape[0]
        if n % a.shape[0]:
            raise RuntimeError(f"per-sample LoRA: layer batch {n} is not a multiple of {a.shape[0]} samples")
        rows = x.reshape(a.shape[0], -1, x.shape[-1])  # (B, rows per sample, in)
        wa, wb = a.to(x.device, x.dtype), b.to(x.device, x.dtype)
        delta = torch.bmm(torch.bmm(rows, wa.transpose(1, 2)), wb.transpose(1, 2)) * scaling
        return output + delta.reshape(output.shape).to(output.dtype)

    return hook


# Temp-LoRA settings by name. "paper": Sec. 3.2 / App. C.1 as the paper states them (rank 32, lr 1e-4, Eq. 3: the
# whole clip noised, no text; one step per chunk, which the paper leaves open). "memory": what the search in
# docs/memory.md found to store places so that the way back reads them (clean-context clips under their action's
# text, time-reversed copies under the reverse action, more steps at a higher rate, guarded against divergence).
# "episodic": what Search 11 found to be read in generation: after each chunk the whole episode so far is rehearsed
# in one batch (every window, reversed, and the way back from each), clean context under the action's text.
# "episodic-gated": "episodic" written twice as long on twice the clips (60 steps of 24) and read only where the memory
# recognises the chunk's start (``read_gate`` 1: its nearest rehearsed clip under the chunk's action starts nearer than
# the median clip), so new ground is made by Phi alone (Search 12: the configuration the demo ships).
TEMP_LORA_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(rank=32, lr=1e-4, steps_per_chunk=1),
    "memory": dict(rank=32, lr=1e-3, steps_per_chunk=20, draws=2, reverse=True, clean_context=4,
                   text_condition="action", explode_factor=math.inf, loss_guard=1.5),
    "episodic": dict(rank=32, lr=1e-3, steps_per_chunk=30, draws=12, consolidate=True, reverse=True, turns=True,
                     clean_context=4, text_condition="action", explode_factor=math.inf),
}
TEMP_LORA_PRESETS["episodic-gated"] = dict(TEMP_LORA_PRESETS["episodic"], steps_per_chunk=60, draws=24, read_gate=1.0)
_OPTIONS = {  # flag -> (TempLoRA kwarg, type, help)
    "--rank": ("rank", positive_int, "LoRA rank (paper: 32)"),
    "--lr": ("lr", float, "learning rate (paper: 1e-4)"),
    "--updates-per-chunk": ("steps_per_chunk", positive_int, "gradient steps after each chunk"),
    "--draws": ("draws", positive_int, "clips per gradient step (batched)"),
    "--clean-context": ("clean_context", int, "clean leading frames of each update clip (0: Eq. 3)"),
    "--loss-guard": ("loss_guard", float, "roll back an update that raises its own batch's loss past this factor "
                     "(0: off)"),
    "--novelty-gate": ("novelty_gate", float, "skip writing a chunk that Theta already explains (loss ratio "
                       "with / without Theta below this; 0: off)"),
    "--lr-decay": ("lr_decay", float, "chunk i of an episode learns at lr / (1 + lr_decay * i) (0: constant)"),
    "--write-chunks": ("write_chunks", int, "write only the first N chunks of an episode, then freeze Theta (0: every "
                       "chunk; N = --chunks-out: the oracle that freezes at the turn)"),
    "--update-frames": ("update_frames", int, "train on the last N frames of input + output only (0: all; cheaper)"),
    "--read-gate": ("read_gate", float, "with --consolidate: apply Theta to a chunk only when a rehearsed clip under its "
                    "action starts within this fraction of the median distance from its context (0: every chunk)"),
    "--memory-guidance": ("memory_guidance", float, "read Theta by memory guidance with this weight: Phi alone plus w "
                          "times Theta's change in Eq. 3's regime (0: Theta applied, the paper)"),
    "--explode-factor": ("explode_factor", float, "roll back an update whose gradient norm exceeds this multiple "
                         "of the median of the earlier ones (inf: off)"),
}


def lora_options(parser: Any, default_preset: str = "paper") -> None:
    """Temp-LoRA settings as command-line options (``bench memory``, the demo): a preset and overrides."""
    parser.add_argument("--temp-lora", default=default_preset, choices=sorted(TEMP_LORA_PRESETS),
                        help=f"Temp-LoRA settings to start from (default: {default_preset}; paper: as the paper "
                        "states them; memory: the variant read best under teacher forcing; episodic: the one "
                        "read in generation, docs/memory.md Search 11; episodic-gated: episodic read only where the "
                        "memory recognises the chunk's start, Search 12)")
    for flag, (_, kind, text) in _OPTIONS.items():
        parser.add_argument(flag, type=kind, default=None, help=f"{text}; overrides the preset")
    parser.add_argument("--replay", action=argparse.BooleanOptionalAction, default=None,
                        help="extra draws from the episode so far")
    parser.add_argument("--reverse", action=argparse.BooleanOptionalAction, default=None,
                        help="every other clip reversed in time")
    parser.add_argument("--consolidate", action=argparse.BooleanOptionalAction, default=None,
                        help="every step rehearses every window of the episode so far (at most --draws clips)")
    parser.add_argument("--turns", action=argparse.BooleanOptionalAction, default=None,
                        help="with --consolidate: also the way back from the end of each window (reversible actions)")
    parser.add_argument("--text-condition", default=None, choices=["none", "action"],
                        help="update clips under the empty prompt (Eq. 3) or their action's text")
    parser.add_argument("--timestep-range", type=int, nargs=2, default=None, metavar=("LO", "HI"),
                        help="the update's timesteps [LO, HI)")
    parser.add_argument("--read-timestep-range", type=int, nargs=2, default=None, metavar=("LO", "HI"),
                        help="apply Theta only at the sampler's steps with a timestep in [LO, HI) (default: all)")
    parser.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=None,
                        help="recompute the UNet blocks' activations in the update's backward (less memory, more time)")
    parser.add_argument("--targets", default=None,
                        help="LoRA target modules: comma-separated names, or a regular expression (peft), e.g. "
                             "'up_blocks.*(to_q|to_k|to_v|to_out.0)' for the decoder only (a cheaper update)")


def lora_kwargs(args: Any, reverse_actions: dict[str, str] | None = None) -> dict:
    """TempLoRA kwargs from :func:`lora_options`; ``reverse_actions``: the domain's action reversal."""
    kw = dict(TEMP_LORA_PRESETS[args.temp_lora])
    given = {name: getattr(args, flag[2:].replace("-", "_")) for flag, (name, _, _) in _OPTIONS.items()}
    given.update(replay=args.replay, reverse=args.reverse, consolidate=args.consolidate, turns=args.turns,
                 text_condition=args.text_condition,
                 timestep_range=None if args.timestep_range is None else list(args.timestep_range),
                 read_timestep_range=None if args.read_timestep_range is None else list(args.read_timestep_range),
                 checkpointing=args.checkpointing, target_modules=parse_targets(args.targets))
    kw.update({k: v for k, v in given.items() if v is not None})
    if (kw.get("reverse") or kw.get("turns")) and kw.get("text_condition") == "action":
        kw["reverse_actions"] = dict(reverse_actions or {})
    return kw


def parse_targets(text: str | None) -> str | list[str] | None:
    """``--targets``: "to_q,to_k" -> a list of names; anything with a regular-expression character -> the regex."""
    if text is None:
        return None
    if any(ch in text for ch in "*()|[]^$\\+?"):
        return text
    return [t.strip() for t in text.split(",") if t.strip()]
