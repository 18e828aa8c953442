"""The diffusion process: masked conditional noising and loss (Eq. 1-2), chunk sampling with guidance."""

from slowfast_vgen.diffusion.masked import DiffusionInputs, MaskedDiffusion, context_mask, masked_mse
from slowfast_vgen.diffusion.sampling import SCHEDULERS, ChunkSampler

__all__ = ["SCHEDULERS", "ChunkSampler", "DiffusionInputs", "MaskedDiffusion", "context_mask", "masked_mse"]
