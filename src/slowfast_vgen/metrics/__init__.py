"""Evaluation metrics of the paper (Sec. 4.1): FVD, PSNR, SSIM, LPIPS, SCuts and SRC.

Every metric is a ``torchmetrics.Metric`` taking pixel videos ``(B, T, C, H, W)`` in [0, 1] and exposes
``protocol()``, a dict saying how its number was measured. Reported values follow the paper's tables:
FVD raw, PSNR in dB, SSIM/LPIPS/SRC x100, SCuts as cuts per video. See docs/metrics.md.
"""

from slowfast_vgen.metrics.frame import PSNR, SSIM
from slowfast_vgen.metrics.fvd import FVD
from slowfast_vgen.metrics.lpips import LPIPS
from slowfast_vgen.metrics.scenes import SceneCuts
from slowfast_vgen.metrics.src import SceneRevisitConsistency

__all__ = ["FVD", "LPIPS", "PSNR", "SSIM", "SceneCuts", "SceneRevisitConsistency"]
