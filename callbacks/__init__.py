"""Lightning callbacks (installed as ``slowfast_vgen.callbacks``): side effects and inference-time learning."""

from slowfast_vgen.callbacks.temp_lora import TempLoRA
from slowfast_vgen.callbacks.video_logger import VideoLogger

__all__ = ["TempLoRA", "VideoLogger"]
