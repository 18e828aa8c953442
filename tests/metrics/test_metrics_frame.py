"""PSNR and SSIM against scikit-image, on random and on real (skimage.data) frames; input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data, transform
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from slowfast_vgen.errors import UserInputError
from slowfast_vgen.metrics import PSNR, SSIM


def skimage_video_score(preds: torch.Tensor, target: torch.Tensor, metric: str) -> float:
    """Per frame with scikit-image, mean per video, mean over videos (SSIM x100)."""
    per_video = []
    for p_vid, t_vid in zip(preds.double().numpy(), target.double().numpy()):
        frames = []
        for p, t in zip(p_vid.transpose(0, 2, 3, 1), t_vid.transpose(0, 2, 3, 1)):  # (H, W, C)
            if metric == "psnr":
                frames.append(peak_signal_noise_ratio(t, p, data_range=1.0))
            else:
                frames.append(100 * structural_similarity(
                    p, t, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1
                ))
        per_video.append(np.mean(frames))
    return float(np.mean(per_video))


def real_videos() -> tuple[torch.Tensor, torch.Tensor]:
    """Three real photos as 4-frame 'videos' (slow pan), and distorted copies (blur + noise + shift)."""
    rng = np.random.default_rng(0)
    target, preds = [], []
    for image in (data.astronaut(), data.coffee(), data.chelsea()):
        image = transform.resize(image, (96, 128), anti_aliasing=True)  # float64 in [0, 1]
        frames = np.stack([np.roll(image, 2 * t, axis=1) for t in range(4)])  # (T, H, W, 3)
        blurred = (frames + np.roll(frames, 1, axis=2) + np.roll(frames, 1, axis=1)) / 3
        noisy = np.clip(blurred + rng.normal(scale=0.03, size=frames.shape), 0, 1)
        target.append(frames.transpose(0, 3, 1, 2))
        preds.append(noisy.transpose(0, 3, 1, 2))
    return torch.tensor(np.stack(preds), dtype=torch.float32), torch.tensor(np.stack(target), dtype=torch.float32)


@pytest.mark.parametrize("metric_cls,name,atol", [(PSNR, "psnr", 1e-4), (SSIM, "ssim", 1e-3)])
def test_random_frames_match_skimage(videos, metric_cls, name, atol):
    preds, target = videos
    metric = metric_cls()
    metric.update(preds[:2], target[:2])
    metric.update(preds[2:], target[2:])
    assert metric.compute().item() == pytest.approx(skimage_video_score(preds, target, name), abs=atol)


@pytest.mark.parametrize("metric_cls,name,atol", [(PSNR, "psnr", 1e-4), (SSIM, "ssim", 1e-3)])
def test_real_frames_match_skimage(metric_cls, name, atol):
    preds, target = real_videos()
    metric = metric_cls()
    metric.update(preds, target)
    value = metric.compute().item()
    assert value == pytest.approx(skimage_video_score(preds, target, name), abs=atol)
    # sanity: mild distortions of natural images
    assert (20 < value < 40) if name == "psnr" else (50 < value < 100)


def test_average_is_per_video_then_over_videos(videos):
    preds, target = videos
    metric = PSNR()
    per_video = metric.video_scores(preds, target)  # (B,)
    metric.update(preds, target)
    assert metric.compute().item() == pytest.approx(per_video.mean().item(), rel=1e-12)


def test_identical_frames():
    x = torch.rand(1, 2, 3, 16, 16)
    ssim = SSIM()
    ssim.update(x, x)
    assert ssim.compute().item() == pytest.approx(100.0, abs=1e-4)
    psnr = PSNR()
    psnr.update(x, x)
    assert torch.isinf(psnr.compute())
    capped = PSNR(max_db=60.0)
    capped.update(x, x)
    assert capped.compute().item() == 60.0


def test_grayscale_and_torchmetrics_border_mode(videos):
    preds, target = videos
    grey = SSIM()
    grey.update(preds[:, :, :1], target[:, :, :1])
    assert 0 < grey.compute().item() < 100
    full = SSIM(crop_border=False)
    full.update(preds, target)
    assert 0 < full.compute().item() < 100


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.rand(2, 3, 8, 8), r"\(B, T, C, H, W\)"),
        (torch.rand(1, 2, 3, 16, 16) * 255, r"\[0, 1\]"),
        (torch.randint(0, 255, (1, 2, 3, 16, 16), dtype=torch.uint8), "float"),
        (torch.rand(1, 2, 4, 16, 16), "C in"),
    ],
)
def test_input_validation(bad, match):
    with pytest.raises(UserInputError, match=match):
        PSNR().update(bad, bad)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_shape_mismatch_and_small_frames():
    with pytest.raises(UserInputError, match="same shape"):
        PSNR().update(torch.rand(1, 2, 3, 16, 16), torch.rand(1, 3, 3, 16, 16))
    with pytest.raises(UserInputError, match="11x11"):
        SSIM().update(torch.rand(1, 2, 3, 8, 8), torch.rand(1, 2, 3, 8, 8))
    with pytest.raises(UserInputError, match="before any update"):
        SSIM().compute()
