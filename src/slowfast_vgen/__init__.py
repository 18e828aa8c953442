"""SlowFast-VGen: action-driven long video generation with slow-fast learning.

Tensor conventions used throughout the package (stated once, here):

* pixel videos: float tensors in [0, 1] shaped ``(B, T, C, H, W)`` (batch, time, channels, height, width);
  this is what datamodules yield, what metrics take and what video writers consume;
* latent videos: diffusers' convention ``(B, C, F, H, W)`` (channels before frames), which is what
  ``diffusers.UNet3DConditionModel`` consumes; ``F`` counts latent frames (one per pixel frame);
* text conditioning: ``(B, L, D)`` token embeddings from the frozen text encoder;
* ``n_context``: a ``(B,)`` long tensor, the number ``f_p`` of clean past frames at the start of each
  sample; the remaining ``f_g = F - f_p`` frames are generated (paper Sec. 3.1.1, Eq. 1-2).

Layers (see docs/design.md): ``models`` (networks), ``diffusion`` (noising, masked loss, sampling,
guidance), ``systems`` (Lightning modules that connect them), ``datamodules`` and ``callbacks``.
"""

__version__ = "0.1.0"
