"""The denoising network: diffusers' ``UNet3DConditionModel`` (the ModelScope T2V UNet, paper App. A.3).

Two ways to get one, both returning the same class so that every part of the framework is exercised
by tiny CPU configs exactly as by the full-size GPU ones:

* :func:`build_unet3d` builds a randomly initialised UNet from a named preset (``"tiny"``, ``"small"``,
  ``"modelscope"``) with optional overrides;
* :func:`load_unet3d` loads pretrained weights in diffusers format from a local folder or a hub id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet3DConditionModel
from torch import nn

from slowfast_vgen.errors import ModelNotAvailableError, UserInputError

# App. A.3.2: three CrossAttnDownBlock3D + one DownBlock3D, channels (320, 640, 1280, 1280), heads of dim 64,
# GroupNorm(32), CLIP ViT-H/14 text features (1024). This is diffusers' config of ModelScope T2V 1.7B.
MODELSCOPE_UNET: dict[str, Any] = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    norm_num_groups=32,
    cross_attention_dim=1024,
    attention_head_dim=64,
)

UNET_PRESETS: dict[str, dict[str, Any]] = {
    "modelscope": MODELSCOPE_UNET,
    # ~1.3 M parameters: unit tests and CPU smoke runs (seconds per step on 2 cores).
    "tiny": dict(
        sample_size=8,
        in_channels=12,
        out_channels=12,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=8,
    ),
    # ~6 M parameters: the shipped demo model of the built-in world (pixel-space, 12 channels = 3 x 2 x 2).
    "small": dict(
        sample_size=16,
        in_channels=12,
        out_channels=12,
        down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(48, 96, 128),
        layers_per_block=1,
        norm_num_groups=16,
        cross_attention_dim=64,
        attention_head_dim=16,
    ),
}


def build_unet3d(preset: str = "tiny", config: dict[str, Any] | None = None, **overrides: Any) -> UNet3DConditionModel:
    """A randomly initialised UNet3D from a preset, with overrides of its diffusers config.

    Example: ``build_unet3d("tiny", in_channels=4, out_channels=4)`` for a 4-channel latent autoencoder;
    from YAML, overrides go in ``config: {in_channels: 4, ...}``.
    """
    if preset not in UNET_PRESETS:
        raise UserInputError(f"unknown UNet preset {preset!r}; expected one of {sorted(UNET_PRESETS)}")
    config = {**UNET_PRESETS[preset], **(config or {}), **overrides}
    for key in ("down_block_types", "up_block_types", "block_out_channels"):
        config[key] = tuple(config[key])
    return UNet3DConditionModel(**config)


def unet_output(unet: nn.Module, z_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The one UNet3D call of this project, eps_Phi(z_t, t, c) (or v): ``z_t`` (B, C, F, h, w), ``text`` the
    encoder states (B, L, D). The UNet computes in its own dtype (a half-precision UNet under a float32
    autoencoder or sampler); the output comes back in ``z_t``'s dtype, so the scheduler's and the loss's
    arithmetic stay in the caller's precision."""
    dtype = next(unet.parameters()).dtype
    return unet(z_t.to(dtype), t, encoder_hidden_states=text.to(dtype)).sample.to(z_t.dtype)


def load_unet3d(pretrained: str, subfolder: str | None = "unet", revision: str | None = None) -> UNet3DConditionModel:
    """Load a pretrained UNet3D in diffusers format (e.g. ModelScope T2V) from a folder or a hub id.

    ``pretrained`` is a local directory holding ``unet/config.json`` plus weights, or a hub id such as
    ``"ali-vilab/text-to-video-ms-1.7b"`` on a networked machine. Offline, a missing model gives a
    :class:`ModelNotAvailableError` that names what is missing and how to provide it.
    """
    return _from_pretrained(UNet3DConditionModel, pretrained, subfolder, revision, what="UNet3D")


def _from_pretrained(
    cls: Any, pretrained: str, subfolder: str | None, revision: str | None, what: str, marker: str = "config.json"
) -> Any:
    local = Path(pretrained).expanduser()
    if local.exists():
        folder = local / subfolder if subfolder else local
        if not (folder / marker).is_file():
            raise ModelNotAvailableError(
                f"{what}: {folder / marker} not found; expected a diffusers-format folder "
                f"({marker} + weights) at {folder}"
            )
        return cls.from_pretrained(str(local), subfolder=subfolder, use_safetensors=_has_safetensors(folder))
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        return cls.from_pretrained(
            pretrained, subfolder=subfolder, revision=revision, local_files_only=offline
        )
    except (OSError, ValueError) as err:  # hub unreachable, repo missing, or not in the local cache
        raise ModelNotAvailableError(
            f"{what}: could not load {pretrained!r} (subfolder {subfolder!r}): {err.__class__.__name__}. "
            "It is neither a local folder nor reachable on the model hub from this machine. Download it on a "
            "networked machine (e.g. `huggingface-cli download ali-vilab/text-to-video-ms-1.7b --local-dir "
            "models/modelscope`) and pass that folder."
        ) from None


def _has_safetensors(folder: Path) -> bool | None:
    # Prefer safetensors (data, never code); fall back to whatever the folder has.
    return True if any(folder.glob("*.safetensors")) else None
