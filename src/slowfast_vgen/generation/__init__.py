"""Long-video generation: streaming chunk-by-chunk generation with optional Temp-LoRA memory."""

from slowfast_vgen.generation.long_video import Chunk, LongVideoGenerator

__all__ = ["Chunk", "LongVideoGenerator"]
