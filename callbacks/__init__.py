"""Lightning callbacks (installed as ``slowfast_vgen.callbacks``): side effects and inference-time memory."""

from slowfast_vgen.callbacks.frame_bank import FrameBank
from slowfast_vgen.callbacks.temp_lora import TempLoRA
from slowfast_vgen.callbacks.video_logger import VideoLogger

__all__ = ["FrameBank", "TempLoRA", "VideoLogger"]
