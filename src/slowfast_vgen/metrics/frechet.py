"""The Frechet distance between two Gaussians, in float64, and streaming feature statistics.

``d^2 = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})`` (Frechet/Wasserstein-2 between Gaussians,
as used by FID and FVD). The trace of the matrix square root is computed from symmetric eigenproblems,
``tr((S_1 S_2)^{1/2}) = sum_i sqrt(lambda_i(S_1^{1/2} S_2 S_1^{1/2}))``, which is exact for PSD matrices
and stays real (no ``scipy.linalg.sqrtm`` imaginary residue); tests check it against scipy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from slowfast_vgen.errors import UserInputError


def _clean_eigvals(eigvals: Tensor) -> Tensor:
    """Zero the eigenvalues that are round-off (below ``D * eps * max``, numpy's rank tolerance).

    Covariances of fewer clips than feature dimensions are singular; the square root would turn their
    ~1e-16-relative noise eigenvalues into ~1e-8-relative errors, summed over hundreds of dimensions.
    """
    tol = eigvals.abs().max() * eigvals.shape[0] * torch.finfo(eigvals.dtype).eps
    return torch.where(eigvals > tol, eigvals, torch.zeros_like(eigvals))


def _psd_sqrt(matrix: Tensor) -> Tensor:
    """Symmetric PSD square root via eigh (round-off eigenvalues, including negative ones, set to 0)."""
    eigvals, eigvecs = torch.linalg.eigh(matrix)
    return (eigvecs * _clean_eigvals(eigvals).sqrt().unsqueeze(0)) @ eigvecs.T


@contextlib.contextmanager
def _one_cpu_thread(enabled: bool) -> Iterator[None]:
    """Run small CPU eigendecompositions on one thread.

    Measured on the 2-core machine with other work running: eigh of a 400x400 float64 matrix took 0.04 s
    on one thread and up to 5 s on two (threads spinning against each other).
    """
    previous = torch.get_num_threads()
    if enabled and previous > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2); all math in float64, returns a 0-d tensor."""
    with _one_cpu_thread(sigma1.device.type == "cpu"):
        return _frechet_distance(mu1, sigma1, mu2, sigma2)


def _frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise UserInputError(f"means must be equal-length vectors, got {tuple(mu1.shape)} and {tuple(mu2.shape)}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise UserInputError(f"covariances must be ({d}, {d}), got {tuple(sigma1.shape)} and {tuple(sigma2.shape)}")
    mu1, mu2, sigma1, sigma2 = (t.detach().to(torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    sigma1 = (sigma1 + sigma1.T) / 2  # symmetrise round-off
    sigma2 = (sigma2 + sigma2.T) / 2
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1  # (D, D), symmetric PSD, same spectrum as sigma1 @ sigma2
    tr_covmean = _clean_eigvals(torch.linalg.eigvalsh((inner + inner.T) / 2)).sqrt().sum()
    diff = mu1 - mu2
    return diff.dot(diff) + torch.trace(sigma1) + torch.trace(sigma2) - 2 * tr_covmean


def mean_cov_from_sums(total: Tensor, outer: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance (``np.cov``, divisor n-1) from the sum and the sum of outer products."""
    n = count.to(torch.float64)
    if n < 2:
        raise UserInputError(f"need at least 2 feature vectors for a covariance, got {int(n)}")
    mean = total / n
    cov = (outer - n * torch.outer(mean, mean)) / (n - 1)  # (D, D)
    return mean, cov
