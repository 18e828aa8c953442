"""The diffusion process: masked conditional noising and loss (Eq. 1-2), chunk sampling with guidance."""

from slowfast_vgen.diffusion.masked import DiffusionInputs, MaskedDiffusion, context_mask, masked_mse
from slowfast_vgen.diffusion.sampling import SCHEDULERS, ChunkSampler, MemoryGuidance, ThetaGate

__all__ = ["SCHEDULERS", "ChunkSampler", "DiffusionInputs", "MemoryGuidance", "MaskedDiffusion", "context_mask", "masked_mse", "ThetaGate"]
