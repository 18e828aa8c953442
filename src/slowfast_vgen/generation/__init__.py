"""Long-video generation: streaming chunk-by-chunk generation with optional Temp-LoRA memory or a frame bank."""

from slowfast_vgen.generation.frame_bank import PoseFrameBank
from slowfast_vgen.generation.long_video import Chunk, LongVideoGenerator

__all__ = ["Chunk", "LongVideoGenerator", "PoseFrameBank"]
