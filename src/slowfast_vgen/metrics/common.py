"""Input checks and small helpers shared by the metrics (pixel videos: ``(B, T, C, H, W)`` in [0, 1])."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from slowfast_vgen.errors import UserInputError

# Slack for values that left [0, 1] by float round-off (e.g. after a VAE decode and a clamp in bf16).
RANGE_TOL = 1e-3


def check_video(videos: Tensor, name: str = "videos", channels: tuple[int, ...] = (1, 3)) -> Tensor:
    """Validate a pixel video batch and return it as float32 clamped to [0, 1]."""
    if not isinstance(videos, Tensor):
        raise UserInputError(f"{name} must be a torch.Tensor (B, T, C, H, W), got {type(videos).__name__}")
    if videos.ndim != 5:
        raise UserInputError(f"{name} must have shape (B, T, C, H, W), got {tuple(videos.shape)}")
    if not videos.is_floating_point():
        raise UserInputError(f"{name} must be a float tensor in [0, 1], got dtype {videos.dtype}")
    if videos.shape[2] not in channels:
        raise UserInputError(f"{name} must have C in {channels} in (B, T, C, H, W), got shape {tuple(videos.shape)}")
    if videos.numel() == 0:
        raise UserInputError(f"{name} is empty, shape {tuple(videos.shape)}")
    lo, hi = videos.min().item(), videos.max().item()
    if not (lo >= -RANGE_TOL and hi <= 1 + RANGE_TOL):  # also catches NaN
        raise UserInputError(f"{name} must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    return videos.float().clamp(0, 1)


def check_pair(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Validate generated and reference videos of the same shape."""
    preds, target = check_video(preds, "preds"), check_video(target, "target")
    if preds.shape != target.shape:
        raise UserInputError(
            f"preds and target must have the same shape, got {tuple(preds.shape)} and {tuple(target.shape)}"
        )
    return preds, target


def to_rgb(frames: Tensor) -> Tensor:
    """(N, 1 or 3, H, W) -> (N, 3, H, W)."""
    return frames.expand(-1, 3, -1, -1) if frames.shape[1] == 1 else frames


def to_uint8(frames: Tensor) -> Tensor:
    """[0, 1] float -> uint8 with rounding (the 8-bit frames a video file would hold)."""
    return (frames * 255).round().clamp(0, 255).to(torch.uint8)


def resize_short_side_center_crop(frames: Tensor, size: int, antialias: bool) -> Tensor:
    """(N, C, H, W) -> (N, C, size, size): bilinear resize of the shorter side to ``size``, center crop."""
    h, w = frames.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        # math.ceil on the long side, exactly like the StyleGAN-V / VideoGPT FVD preprocessing
        new_h, new_w = (size, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), size)
        frames = F.interpolate(frames, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=antialias)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        frames = frames[..., top : top + size, left : left + size]
    return frames
