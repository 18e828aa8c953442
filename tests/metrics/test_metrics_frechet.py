"""Frechet distance (float64) against a scipy.linalg.sqrtm implementation; streaming statistics."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from slowfast_vgen.errors import UserInputError
from slowfast_vgen.metrics.frechet import frechet_distance, mean_cov_from_sums


def scipy_frechet(mu1, s1, mu2, s2) -> float:
    """The FID/FVD reference formula (pytorch-fid / StyleGAN-V), with scipy's matrix square root."""
    covmean, _ = scipy.linalg.sqrtm(s1 @ s2, disp=False)
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n,d,shift", [(200, 16, 0.5), (60, 32, 0.0), (300, 64, 2.0)])
def test_matches_scipy(n, d, shift):
    rng = np.random.default_rng(d)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    b = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.7 + shift
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    ref = scipy_frechet(mu1, s1, mu2, s2)
    ours = frechet_distance(*(torch.from_numpy(x) for x in (mu1, s1, mu2, s2)))
    assert ours.dtype == torch.float64
    assert ours.item() == pytest.approx(ref, rel=1e-8, abs=1e-8)


def test_rank_deficient_covariances_match_scipy():
    # fewer samples than dimensions (as with few FVD clips): singular covariances
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 20)), rng.normal(size=(5, 20)) + 1
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    ours = frechet_distance(*(torch.from_numpy(x) for x in (mu1, s1, mu2, s2))).item()
    assert ours == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-6)


def test_identical_distributions_give_zero():
    rng = np.random.default_rng(2)
    a = torch.from_numpy(rng.normal(size=(100, 8)))
    mu, cov = a.mean(0), torch.from_numpy(np.cov(a.numpy(), rowvar=False))
    assert abs(frechet_distance(mu, cov, mu, cov).item()) < 1e-10


def test_streaming_sums_equal_numpy_cov():
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(50, 6)) * 10 + 3)
    mean, cov = mean_cov_from_sums(x.sum(0), x.T @ x, torch.tensor(50))
    np.testing.assert_allclose(mean.numpy(), x.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(x.numpy(), rowvar=False), rtol=1e-10, atol=1e-10)
    with pytest.raises(UserInputError, match="at least 2"):
        mean_cov_from_sums(x[0], torch.outer(x[0], x[0]), torch.tensor(1))


def test_shape_errors():
    with pytest.raises(UserInputError, match=r"\(3, 3\)"):
        frechet_distance(torch.zeros(3), torch.eye(2), torch.zeros(3), torch.eye(3))
