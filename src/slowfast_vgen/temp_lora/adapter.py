"""Theta as a peft LoRA in the UNet: injection, reset, on / off, merged sampling, per-sample Theta, removal.

W' = Phi + Theta (paper Eq. 6/10): each wrapped linear layer computes ``W x + s B A x`` (peft's LoRA layer), with
B = 0 at initialisation so that Phi + Theta_0 == Phi. Nothing here learns; :class:`slowfast_vgen.temp_lora.TempLoRA`
does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from torch import nn
from torch.distributed.tensor import DTensor

from slowfast_vgen.errors import UserInputError

ADAPTER = "temp_lora"


class LoRAAdapter:
    """A LoRA named :data:`ADAPTER` injected into ``unet`` (in place); Phi keeps its own ``requires_grad`` flags and
    Theta (``params``) is float32 whatever Phi's precision (lr-1e-4 Adam steps vanish in fp16/bf16)."""

    def __init__(self, unet: nn.Module, rank: int, alpha: float, target_modules: str | Sequence[str]) -> None:
        self.unet = unet
        targets = target_modules if isinstance(target_modules, str) else list(target_modules)
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0)
        trainable = {n: p.requires_grad for n, p in unet.named_parameters()}
        try:  # parameters made inside inference mode (e.g. trainer.predict) could never train
            with torch.inference_mode(False):
                inject_adapter_in_model(config, unet, adapter_name=ADAPTER)
        except ValueError as err:
            raise UserInputError(f"Temp-LoRA target_modules {targets}: {err}") from None
        for name, p in unet.named_parameters():  # peft freezes the base: Phi keeps its own flags
            base = name.replace(".base_layer", "")
            if base in trainable:
                p.requires_grad_(trainable[base])
            elif name in trainable:
                p.requires_grad_(trainable[name])
        self.params = self._live()
        for p in self.params:
            p.data = p.data.float()

    def _live(self) -> list[nn.Parameter]:
        return [p for n, p in self.unet.named_parameters() if ".lora_" in n and ADAPTER in n]

    def is_b(self) -> list[bool]:
        """For each of ``params``: is it a B matrix (the output side, zero at Theta_0)?"""
        names = {id(p): n for n, p in self.unet.named_parameters()}
        return [".lora_B." in names[id(p)] for p in self.params]

    def layers(self) -> list[LoraLayer]:
        return [m for m in self.unet.modules() if isinstance(m, LoraLayer)]

    def reset(self, seed: int) -> None:
        """Theta_0: A random from ``seed`` (peft's Kaiming init), B = 0."""
        with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.no_grad():
            torch.manual_seed(seed)
            for module in self.layers():
                module.reset_lora_parameters(ADAPTER, init_lora_weights=True)

    def set_enabled(self, enabled: bool) -> None:
        """Switch Theta off (Phi alone) or on without touching its values."""
        for module in self.layers():
            module.enable_adapters(enabled)

    @property
    def sharded(self) -> bool:
        """Phi is sharded by FSDP2 (``fully_shard``: DTensor weights). Theta, injected after the wrapping, stays a
        plain tensor of this rank: one episode's memory per rank."""
        return any(isinstance(module.get_base_layer().weight, DTensor) for module in self.layers())

    def check_live(self) -> None:
        """Theta must be the UNet's own LoRA parameters: wrapping the UNet (e.g. ``fully_shard``) after Temp-LoRA
        was injected replaces them, and the optimizer would train stale copies that no forward pass reads."""
        live = {id(p) for p in self._live()}
        if not live or any(id(p) not in live for p in self.params):
            raise UserInputError(
                "Temp-LoRA: the UNet's LoRA parameters were replaced after Temp-LoRA was set up (was the UNet wrapped, "
                "e.g. by FSDP's fully_shard, afterwards? that also shards Theta across ranks, which mixes their "
                "episodes): wrap the UNet first, then build TempLoRA on it")

    def _slots(self) -> list[tuple[nn.Module, str, LoraLayer]]:
        """(parent module, attribute name, LoRA layer) for every LoRA layer in the UNet."""
        slots = []
        for name, module in list(self.unet.named_modules()):
            if isinstance(module, LoraLayer):
                parent_name, _, child = name.rpartition(".")
                slots.append((self.unet.get_submodule(parent_name) if parent_name else self.unet, child, module))
        return slots

    @contextlib.contextmanager
    def merged(self) -> Iterator[None]:
        """Sample with Theta added into the wrapped weights (W + B A s): no LoRA cost per UNet call.

        Inside, the plain base layers (holding W + B A s) stand in the UNet in place of their LoRA wrappers, so a
        call costs what Phi alone costs. The original weights are kept as exact copies and copied back afterwards,
        so Phi stays bit-identical; outputs differ from the unmerged computation only by float rounding.
        """
        if self.sharded:
            raise UserInputError("Temp-LoRA: merging Theta into FSDP-sharded weights is not supported (each rank holds "
                                 "a shard of Phi but a whole Theta); sample unmerged (merge_for_sampling=False)")
        swapped = []
        with torch.no_grad():
            for parent, child, module in self._slots():
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

    @contextlib.contextmanager
    def per_sample(self, thetas: list[dict[str, torch.Tensor]]) -> Iterator[None]:
        """UNet calls inside use Theta_b for sample b of the batch (functional, frozen LoRA per sample).

        ``thetas``: one dict per sample, ``{parameter name in the UNet: value}`` (the LoRA A/B weights of this
        adapter, as recorded by the slow-fast loop). peft's own mixed-adapter batches need one named adapter per
        distinct Theta and loop over them; here each wrapped layer adds ``s * (x_b A_b^T) B_b^T`` with two batched
        matmuls. Inside the UNet3D every layer's batch axis holds each sample's rows contiguously (frames, or pixels
        for temporal attention, fold into it), so the rows of sample b are the b-th of B equal blocks. Gradients
        reach Phi (the base weights), never Theta.
        """
        hooks = []
        for name, module in self.unet.named_modules():
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
        for parent, child, module in self._slots():
            setattr(parent, child, module.get_base_layer())
        self.params = []

    def state_dict(self) -> dict[str, torch.Tensor]:
        return get_peft_model_state_dict(self.unet, adapter_name=ADAPTER)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        set_peft_model_state_dict(self.unet, state, adapter_name=ADAPTER)


def _per_sample_hook(a: torch.Tensor, b: torch.Tensor, scaling: float):
    """Forward hook adding sample b's LoRA delta to the rows of sample b (see :meth:`LoRAAdapter.per_sample`)."""

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


@contextlib.contextmanager
def checkpointed_layers(unet: nn.Module) -> Iterator[None]:
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
