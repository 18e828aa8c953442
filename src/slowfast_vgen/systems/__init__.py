"""Lightning systems: they connect networks, diffusion process and data; no algorithm lives only here."""

from slowfast_vgen.systems.slow import SlowLearningSystem

__all__ = ["SlowLearningSystem"]
