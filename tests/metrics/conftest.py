"""Shared fixtures for the metric tests: small deterministic videos and a spliced multi-scene clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def procedural_segment(kind: int, n: int, h: int = 96, w: int = 128) -> np.ndarray:
    """A smoothly moving synthetic scene, float32 (n, 3, h, w) in [0, 1]; ``kind`` picks one of three looks."""
    t, y, x = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij")
    if kind == 0:  # red sine bands drifting right
        r, g, b = 0.5 + 0.5 * np.sin(0.15 * x - 0.2 * t), 0.3 + 0.2 * np.cos(0.1 * y), 0.2 + 0 * x
    elif kind == 1:  # blue/yellow checkerboard scrolling down
        c = (((y + 2 * t) // 12 + x // 12) % 2).astype(np.float64)
        r, g, b = 0.9 * c, 0.8 * c, 1.0 - 0.8 * c
    else:  # green rings moving left
        d = np.sqrt((x - w / 2 + t) ** 2 + (y - h / 2) ** 2)
        r, g, b = 0.1 + 0 * x, 0.5 + 0.5 * np.cos(0.3 * d), 0.3 + 0.3 * np.sin(0.05 * x)
    return np.clip(np.stack([r, g, b], axis=1), 0, 1).astype(np.float32)


def spliced_video(lengths: tuple[int, ...] = (20, 20, 20), h: int = 96, w: int = 128) -> tuple[np.ndarray, list[int]]:
    """Segments of different scenes back to back: (T, 3, H, W) and the known cut frames."""
    segments = [procedural_segment(k % 3, n, h, w) for k, n in enumerate(lengths)]
    return np.concatenate(segments), [int(c) for c in np.cumsum(lengths)[:-1]]


@pytest.fixture
def videos() -> tuple[torch.Tensor, torch.Tensor]:
    """Reference and distorted random videos (B=3, T=4, C=3, 32x40)."""
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 4, 3, 32, 40, generator=g)
    preds = (target + 0.1 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    return preds, target


@pytest.fixture
def make_spliced():
    """The :func:`spliced_video` helper, as a fixture (test modules do not import conftest)."""
    return spliced_video
