"""Lightning systems: they connect networks, diffusion process and data; no algorithm lives only here."""

from slowfast_vgen.systems.slow import SlowLearningSystem
from slowfast_vgen.systems.slowfast import SlowFastLoopSystem

__all__ = ["SlowFastLoopSystem", "SlowLearningSystem"]
