"""Frozen frame autoencoders: pixel videos ``(B, T, C, H, W)`` in [0, 1] <-> latents ``(B, C, F, h, w)``.

The paper freezes the ModelScope VAE and applies it frame by frame (App. A.3.1, C.1). Two implementations
share one interface:

* :class:`PixelShuffleAutoencoder`: lossless pixel-space "autoencoder" (pixel unshuffle), no weights, used by
  the tiny presets and the built-in world so that everything runs on CPU without downloads;
* :class:`DiffusersVAE`: a diffusers ``AutoencoderKL`` (ModelScope's VAE) applied frame by frame.
"""

from __future__ import annotations

import torch
from torch import nn

from slowfast_vgen.errors import UserInputError


class FrameAutoencoder(nn.Module):
    """Interface: frozen, applied frame by frame."""

    latent_channels: int
    downscale: int

    def __init__(self) -> None:
        super().__init__()

    def train(self, mode: bool = True) -> "FrameAutoencoder":
        return super().train(False)  # always frozen: eval mode, no dropout/batch-stat updates

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def check_video(video: torch.Tensor, name: str = "video") -> None:
    """Validate the pixel-video convention ``(B, T, C, H, W)`` float in [0, 1]."""
    if not isinstance(video, torch.Tensor) or video.ndim != 5 or not video.is_floating_point():
        got = f"{tuple(video.shape)} {video.dtype}" if isinstance(video, torch.Tensor) else type(video).__name__
        raise UserInputError(f"{name}: expected a float tensor shaped (B, T, C, H, W), got {got}")
    lo, hi = float(video.min()), float(video.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise UserInputError(f"{name}: expected values in [0, 1], got range [{lo:.3f}, {hi:.3f}]")


class PixelShuffleAutoencoder(FrameAutoencoder):
    """Lossless: frames in [0, 1] -> [-1, 1] -> ``pixel_unshuffle`` by ``factor`` -> latents.

    ``C * factor**2`` latent channels at ``H / factor``; ``decode(encode(x)) == x`` up to float rounding.
    """

    def __init__(self, channels: int = 3, factor: int = 2, scale: float = 1.0) -> None:
        super().__init__()
        if factor < 1:
            raise UserInputError(f"PixelShuffleAutoencoder: factor must be >= 1, got {factor}")
        self.channels, self.downscale, self.scale = channels, factor, scale
        self.latent_channels = channels * factor * factor

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = video.shape
        if c != self.channels or h % self.downscale or w % self.downscale:
            raise UserInputError(
                f"PixelShuffleAutoencoder: got frames {c}x{h}x{w}; expected {self.channels} channels and sides "
                f"divisible by {self.downscale}"
            )
        x = video.reshape(b * t, c, h, w) * 2 - 1  # (B*T, C, H, W) in [-1, 1]
        z = nn.functional.pixel_unshuffle(x, self.downscale) * self.scale  # (B*T, C*f*f, H/f, W/f)
        return z.reshape(b, t, *z.shape[1:]).transpose(1, 2)  # (B, C', F, h, w)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = latents.shape
        z = latents.transpose(1, 2).reshape(b * f, c, h, w) / self.scale  # (B*F, C', h, w)
        x = nn.functional.pixel_shuffle(z, self.downscale)  # (B*F, C, H, W)
        return ((x + 1) / 2).clamp(0, 1).reshape(b, f, *x.shape[1:])  # (B, T, C, H, W)


class DiffusersVAE(FrameAutoencoder):
    """A diffusers ``AutoencoderKL`` applied frame by frame, ``frames_per_call`` frames at a time.

    Latents are the posterior mean (``sample_posterior=False``) or a sample, times ``scaling_factor``
    (0.18215 for ModelScope). Load pretrained weights with :meth:`from_pretrained`.
    """

    def __init__(self, vae: nn.Module, sample_posterior: bool = False, frames_per_call: int = 16) -> None:
        super().__init__()
        self.vae = vae.requires_grad_(False)
        self.sample_posterior, self.frames_per_call = sample_posterior, frames_per_call
        self.scaling_factor = float(vae.config.scaling_factor)
        self.latent_channels = int(vae.config.latent_channels)
        self.downscale = 2 ** (len(vae.config.block_out_channels) - 1)

    @classmethod
    def from_pretrained(cls, pretrained: str, subfolder: str | None = "vae", **kwargs) -> "DiffusersVAE":
        from diffusers import AutoencoderKL

        from slowfast_vgen.models.unet import _from_pretrained

        return cls(_from_pretrained(AutoencoderKL, pretrained, subfolder, None, what="VAE"), **kwargs)

    @classmethod
    def tiny(cls, latent_channels: int = 4, **kwargs) -> "DiffusersVAE":
        """A randomly initialised 2-level AutoencoderKL (tests of the VAE code path)."""
        from diffusers import AutoencoderKL

        vae = AutoencoderKL(
            block_out_channels=(8, 16),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=latent_channels,
            norm_num_groups=4,
            layers_per_block=1,
        )
        return cls(vae, **kwargs)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        b, t = video.shape[:2]
        frames = video.reshape(b * t, *video.shape[2:]) * 2 - 1  # (B*T, C, H, W) in [-1, 1]
        out = []
        for chunk in frames.split(self.frames_per_call):
            dist = self.vae.encode(chunk.to(self.vae.dtype)).latent_dist
            out.append(dist.sample() if self.sample_posterior else dist.mode())
        z = torch.cat(out) * self.scaling_factor  # (B*T, c, h, w)
        return z.reshape(b, t, *z.shape[1:]).transpose(1, 2)  # (B, c, F, h, w)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = latents.shape
        z = latents.transpose(1, 2).reshape(b * f, c, h, w) / self.scaling_factor  # (B*F, c, h, w)
        x = torch.cat([self.vae.decode(chunk.to(self.vae.dtype)).sample for chunk in z.split(self.frames_per_call)])
        return ((x.float() + 1) / 2).clamp(0, 1).reshape(b, f, *x.shape[1:])  # (B, T, C, H, W)


def load_vae(
    pretrained: str, subfolder: str | None = "vae", sample_posterior: bool = False, frames_per_call: int = 16
) -> DiffusersVAE:
    """A pretrained diffusers-format VAE (e.g. ModelScope's) from a folder or hub id, frozen (usable from YAML)."""
    return DiffusersVAE.from_pretrained(
        pretrained, subfolder, sample_posterior=sample_posterior, frames_per_call=frames_per_call
    )
