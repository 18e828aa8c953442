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
learning rates, App. D.5) are rolled back to the last good Theta and logged; generation continues.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from torch import nn

from slowfast_vgen.diffusion.masked import MaskedDiffusion, masked_mse
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.io import atomic_path

log = logging.getLogger(__name__)

ADAPTER = "temp_lora"
VARIANTS = ("temp-lora", "original", "no-local")
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
        explode_factor: an update whose gradient norm exceeds this multiple of the median of the previous
            ones (after 3 updates) is rolled back, as is any non-finite one.
        seed: fixes the LoRA initialisation and the noise of every update.
    """

    def __init__(
        self,
        unet: nn.Module,
        diffusion: MaskedDiffusion | None = None,
        rank: int = 32,
        alpha: float | None = None,
        target_modules: tuple[str, ...] | list[str] = DEFAULT_TARGETS,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        steps_per_chunk: int = 1,
        variant: str = "temp-lora",
        explode_factor: float = 20.0,
        seed: int = 0,
    ) -> None:
        if variant not in VARIANTS:
            raise UserInputError(f"Temp-LoRA variant {variant!r}; expected one of {list(VARIANTS)}")
        if rank < 1 or steps_per_chunk < 1 or lr <= 0:
            raise UserInputError(
                f"Temp-LoRA: need rank >= 1, steps_per_chunk >= 1, lr > 0; got {rank}, {steps_per_chunk}, {lr}"
            )
        self.unet, self.diffusion = unet, diffusion or MaskedDiffusion()
        self.rank, self.alpha = rank, float(alpha if alpha is not None else rank)
        self.target_modules = list(target_modules)
        self.lr, self.betas, self.weight_decay = lr, tuple(betas), weight_decay
        self.steps_per_chunk, self.variant, self.explode_factor, self.seed = steps_per_chunk, variant, explode_factor, seed
        config = LoraConfig(r=rank, lora_alpha=self.alpha, target_modules=self.target_modules, lora_dropout=0.0)
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
        self._sequence: list[torch.Tensor] = []  # only for variant "no-local"

    def lora_layers(self) -> list[LoraLayer]:
        return [m for m in self.unet.modules() if isinstance(m, LoraLayer)]

    def set_enabled(self, enabled: bool) -> None:
        """Switch Theta off (Phi alone) or on without touching its values."""
        for module in self.lora_layers():
            module.enable_adapters(enabled)

    @contextlib.contextmanager
    def merged(self) -> Iterator[None]:
        """Sample with Theta added into the wrapped weights (W + B A s): no LoRA cost per UNet call.

        Inside, the plain base layers (holding W + B A s) stand in the UNet in place of their LoRA wrappers,
        so a call costs what Phi alone costs. The original weights are kept as exact copies and copied back
        afterwards, so Phi stays bit-identical; outputs differ from the unmerged computation only by float
        rounding.
        """
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
    ) -> UpdateRecord:
        """One chunk's fast learning on Theta. ``context`` (B, C, f_p, h, w): the chunk's input latents
        z0^{i-1}; ``generated`` (B, C, f_g, h, w): its output z0^i; ``text`` only for variant "original"."""
        if torch.is_inference_mode_enabled():  # e.g. inside trainer.predict: learn on ordinary copies
            with torch.inference_mode(False):
                copies = [None if x is None else x.clone() for x in (context, generated, null_text, text)]
                return self.update(*copies)
        chunk = self.chunks_seen
        self.chunks_seen += 1
        z0 = torch.cat([context, generated], dim=2).detach()  # Alg. 1a l.11: X_i (+) Y_i, (B, C, f_p+f_g, h, w)
        if self.variant == "no-local":
            self._sequence.append(generated.detach().cpu() if self._sequence else z0.cpu())
        snapshot = self._snapshot()
        record = UpdateRecord(chunk=chunk, loss=0.0, grad_norm=0.0)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + chunk)
        for _ in range(self.steps_per_chunk):
            batch = self._sample_window(z0, g) if self.variant == "no-local" else z0
            loss, t = self._loss(batch, context.shape[2], null_text, text, g)
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
            grads = [torch.zeros_like(p) if gr is None else gr for p, gr in zip(self.params, grads)]
            grad_norm = float(torch.linalg.vector_norm(torch.stack([gr.norm() for gr in grads])))
            record.loss, record.grad_norm = float(loss.detach()), grad_norm
            record.timesteps.append(int(t[0]))
            reason = self._guard(record.loss, grad_norm)
            if reason:
                self._restore(snapshot)
                record.rolled_back, record.reason = True, reason
                log.warning("Temp-LoRA update at chunk %d rolled back: %s", chunk, reason)
                break
            for p, gr in zip(self.params, grads):
                p.grad = gr
            self.optimizer.step()  # Alg. 1a l.14: Theta_{i+1} <- Theta_i - alpha grad
            self.optimizer.zero_grad(set_to_none=True)
            if not all(torch.isfinite(p).all() for p in self.params):
                self._restore(snapshot)
                record.rolled_back, record.reason = True, "non-finite LoRA weights after the step"
                log.warning("Temp-LoRA update at chunk %d rolled back: %s", chunk, record.reason)
                break
        self.history.append(record)
        return record

    def _loss(self, z0, n_input, null_text, text, g) -> tuple[torch.Tensor, torch.Tensor]:
        b = z0.shape[0]
        t = torch.randint(0, self.diffusion.num_train_timesteps, (b,), generator=g).to(z0.device)
        noise = torch.randn(z0.shape, generator=g).to(z0.device, z0.dtype)
        noisy = self.diffusion.add_noise(z0, noise, t)  # Alg. 1a l.12: noise on the whole sequence
        cond = null_text.expand(b, *null_text.shape[1:])  # no text: remember the trajectory, not the action
        n_ctx = torch.zeros(b, dtype=torch.long, device=z0.device)  # no clean-context mask
        if self.variant == "original":
            if text is None:
                raise UserInputError("Temp-LoRA variant 'original' needs the action text of the chunk")
            n_ctx = torch.full((b,), n_input, dtype=torch.long, device=z0.device)
            frame = torch.arange(z0.shape[2], device=z0.device)[None, None, :, None, None]
            noisy = torch.where(frame < n_input, z0, noisy)  # clean input, noised output (Eq. 1)
            cond = text
        with torch.enable_grad():
            pred = self.unet(noisy, t, encoder_hidden_states=cond.to(noisy.dtype)).sample
            target = self.diffusion.target(z0, noise, t)  # eps (paper), or v for a v-prediction model
            return masked_mse(pred, target, n_ctx), t  # Alg. 1a l.13 (all frames unless "original")

    def _sample_window(self, z0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        seq = torch.cat(self._sequence, dim=2)  # (B, C, F_total, h, w) on CPU
        length = z0.shape[2]
        start = int(torch.randint(0, seq.shape[2] - length + 1, (1,), generator=g))
        return seq[:, :, start : start + length].to(z0.device, z0.dtype)

    # -- guard -----------------------------------------------------------------------------------------
    def _guard(self, loss: float, grad_norm: float) -> str:
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return f"non-finite loss ({loss}) or gradient norm ({grad_norm})"
        previous = [r.grad_norm for r in self.history if not r.rolled_back]
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
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"Temp-LoRA memory {str(path)!r} not found; expected a .safetensors file from save()")
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("temp_lora", "{}"))
        if meta.get("rank") != self.rank or meta.get("target_modules") != self.target_modules:
            raise UserInputError(
                f"Temp-LoRA memory {path.name}: rank {meta.get('rank')} on {meta.get('target_modules')}; this learner "
                f"has rank {self.rank} on {self.target_modules}"
            )
        tensors = load_file(str(path))
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
