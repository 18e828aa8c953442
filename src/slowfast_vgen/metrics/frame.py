"""Per-frame reference metrics: PSNR and SSIM (paper Sec. 4.1, Table 1 "PSNR", "SSIM").

Protocol (the paper does not state it; ours, reported by ``protocol()``): the score is computed per frame
between the generated and the ground-truth video, averaged over the frames of each video, then over
videos. PSNR is in dB with data range 1; SSIM is reported x100 like the paper's tables.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from slowfast_vgen.errors import UserInputError
from slowfast_vgen.metrics.common import check_pair


class PerVideoMean(Metric):
    """Base: a per-frame score ``_frame_scores(preds, target) -> (N,)``, averaged per video then over videos.

    States are float64 sums reduced with ``sum`` across processes (exact under DDP).
    """

    is_differentiable = False
    full_state_update = False
    scale: float = 1.0  # reported value = scale * mean (x100 for SSIM/LPIPS, as in the paper's tables)

    def __init__(self, frame_batch_size: int = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if frame_batch_size < 1:
            raise UserInputError(f"frame_batch_size must be >= 1, got {frame_batch_size}")
        self.frame_batch_size = int(frame_batch_size)
        self.add_state("score_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_videos", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def _frame_scores(self, preds: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def video_scores(self, preds: Tensor, target: Tensor) -> Tensor:
        """Per-video mean of the per-frame scores, unscaled: (B,) float64."""
        preds, target = check_pair(preds, target)
        b, t = preds.shape[:2]
        p, g = preds.flatten(0, 1), target.flatten(0, 1)  # (B*T, C, H, W)
        scores = torch.cat(
            [
                self._frame_scores(p[i : i + self.frame_batch_size], g[i : i + self.frame_batch_size]).to(torch.float64)
                for i in range(0, b * t, self.frame_batch_size)
            ]
        )
        return scores.reshape(b, t).mean(dim=1)  # (B,)

    def update(self, preds: Tensor, target: Tensor) -> None:
        scores = self.video_scores(preds, target).to(self.score_sum.device)
        self.score_sum += scores.sum()
        self.num_videos += scores.numel()

    def compute(self) -> Tensor:
        if int(self.num_videos) == 0:
            raise UserInputError(f"{type(self).__name__}.compute() called before any update()")
        return self.scale * self.score_sum / self.num_videos


class PSNR(PerVideoMean):
    """Peak signal-to-noise ratio in dB (data range 1), per frame over all channels and pixels.

    A frame identical to its reference has infinite PSNR (as in scikit-image); evaluate generated frames
    only (not copied context frames), or set ``max_db`` to clip each frame's value.
    """

    higher_is_better = True

    def __init__(self, max_db: float | None = None, frame_batch_size: int = 64, **kwargs: Any) -> None:
        super().__init__(frame_batch_size=frame_batch_size, **kwargs)
        self.max_db = None if max_db is None else float(max_db)

    def _frame_scores(self, preds: Tensor, target: Tensor) -> Tensor:
        # float64: the MSE of near-identical frames is below float32 resolution of the sum
        psnr = peak_signal_noise_ratio(preds.double(), target.double(), data_range=1.0, reduction="none", dim=(1, 2, 3))
        return psnr if self.max_db is None else psnr.clamp(max=self.max_db)  # (N,)

    def protocol(self) -> dict[str, Any]:
        return {"metric": "PSNR", "unit": "dB", "data_range": 1.0, "per": "frame, mean per video, mean over videos",
                "max_db": self.max_db, "num_videos": int(self.num_videos)}


class SSIM(PerVideoMean):
    """Structural similarity x100, per frame, on RGB (channel-averaged).

    Defaults follow Wang et al. (2004): 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, data
    range 1, and the map averaged over the valid interior (``crop_border``). This equals
    ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1.0, channel_axis=-1)``; ``crop_border=False`` averages the
    whole reflect-padded map like ``torchmetrics`` does by default.
    """

    higher_is_better = True
    scale = 100.0

    def __init__(self, sigma: float = 1.5, crop_border: bool = True, frame_batch_size: int = 64, **kwargs: Any) -> None:
        super().__init__(frame_batch_size=frame_batch_size, **kwargs)
        if sigma <= 0:
            raise UserInputError(f"sigma must be > 0, got {sigma}")
        self.sigma, self.crop_border = float(sigma), bool(crop_border)
        self.pad = int(3.5 * self.sigma + 0.5)  # Gaussian window 2 * pad + 1 (11 for sigma 1.5), as skimage

    def _frame_scores(self, preds: Tensor, target: Tensor) -> Tensor:
        h, w = preds.shape[-2:]
        if min(h, w) <= 2 * self.pad:
            side = 2 * self.pad + 1
            raise UserInputError(f"SSIM needs frames larger than its {side}x{side} window, got {h}x{w}")
        _, ssim_map = structural_similarity_index_measure(
            preds, target, gaussian_kernel=True, sigma=self.sigma, data_range=1.0, reduction="none",
            return_full_image=True,
        )  # ssim_map: (N, C, H, W)
        if self.crop_border:
            ssim_map = ssim_map[..., self.pad : h - self.pad, self.pad : w - self.pad]
        return ssim_map.flatten(1).mean(dim=1)  # (N,)

    def protocol(self) -> dict[str, Any]:
        side = 2 * self.pad + 1
        return {"metric": "SSIM", "unit": "x100", "window": f"gaussian {side}x{side}, sigma {self.sigma}",
                "k1": 0.01, "k2": 0.03, "data_range": 1.0, "crop_border": self.crop_border,
                "channels": "RGB, averaged", "per": "frame, mean per video, mean over videos",
                "num_videos": int(self.num_videos)}
