"""SCuts: scene cuts per video found by PySceneDetect (paper Sec. 4.1, Tables 1/4/6/8/9/10 "SCuts").

SCuts comes from StreamingT2V (Henschel et al., 2024), which counts the cuts that PySceneDetect's
``AdaptiveDetector`` finds with its default parameters. The paper does not give settings; we use those
defaults (``adaptive_threshold=3.0, min_scene_len=15`` frames, ``window_width=2, min_content_val=15.0``),
make them configurable and report them with :meth:`SceneCuts.protocol`.

Frames are converted to 8-bit BGR, as PySceneDetect reads them from a video file, and downscaled the
way ``SceneManager`` does by default (``auto_downscale``: factor ``max(H, W) / 256`` when the frame is at
least 256 pixels wide, OpenCV bilinear), so in-memory results agree with ``scenedetect -i video.mp4
detect-adaptive`` on a losslessly encoded file.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from slowfast_vgen.errors import UserInputError
from slowfast_vgen.metrics.common import check_video, to_uint8

DOWNSCALE_MIN_WIDTH = 256  # scenedetect.scene_manager.DEFAULT_MIN_WIDTH


def detect_cuts(
    frames_bgr: np.ndarray,
    adaptive_threshold: float = 3.0,
    min_scene_len: int = 15,
    window_width: int = 2,
    min_content_val: float = 15.0,
    auto_downscale: bool = True,
    fps: float = 30.0,
) -> list[int]:
    """Frame indices where ``AdaptiveDetector`` starts a new scene, for uint8 BGR frames ``(T, H, W, 3)``."""
    import cv2
    from scenedetect import AdaptiveDetector, FrameTimecode

    detector = AdaptiveDetector(
        adaptive_threshold=adaptive_threshold,
        min_scene_len=min_scene_len,
        window_width=window_width,
        min_content_val=min_content_val,
    )
    h, w = frames_bgr.shape[1:3]
    factor = max(h, w) / DOWNSCALE_MIN_WIDTH if auto_downscale and max(h, w) >= DOWNSCALE_MIN_WIDTH else 1.0
    cuts: list[FrameTimecode] = []
    timecode = FrameTimecode(0, fps=fps)
    for i, frame in enumerate(frames_bgr):
        if factor > 1.0:
            size = (max(1, round(w / factor)), max(1, round(h / factor)))  # cv2 takes (width, height)
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
        timecode = FrameTimecode(i, fps=fps)
        cuts += detector.process_frame(timecode, np.ascontiguousarray(frame))
    cuts += detector.post_process(timecode)
    return sorted({cut.frame_num for cut in cuts})


class SceneCuts(Metric):
    """Mean number of scene cuts per video ``(B, T, C, H, W)`` in [0, 1] (lower is better).

    Args mirror ``scenedetect.AdaptiveDetector`` (``min_scene_len`` in frames); ``auto_downscale``
    mirrors ``SceneManager``'s default. ``fps`` only labels timecodes; it does not change the result.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        adaptive_threshold: float = 3.0,
        min_scene_len: int = 15,
        window_width: int = 2,
        min_content_val: float = 15.0,
        auto_downscale: bool = True,
        fps: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if window_width < 1 or min_scene_len < 0 or fps <= 0:
            raise UserInputError(
                f"need window_width >= 1, min_scene_len >= 0 and fps > 0, got {window_width}, {min_scene_len}, {fps}"
            )
        self.settings = {
            "adaptive_threshold": float(adaptive_threshold),
            "min_scene_len": int(min_scene_len),
            "window_width": int(window_width),
            "min_content_val": float(min_content_val),
            "auto_downscale": bool(auto_downscale),
            "fps": float(fps),
        }
        self.add_state("total_cuts", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_videos", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def cuts_per_video(self, videos: Tensor) -> list[list[int]]:
        """Cut frame indices for each video of the batch."""
        videos = check_video(videos)
        frames = to_uint8(videos).expand(-1, -1, 3, -1, -1)  # (B, T, 3, H, W), grey -> RGB
        frames = frames.flip(2).permute(0, 1, 3, 4, 2).cpu().numpy()  # RGB -> BGR, (B, T, H, W, 3)
        return [detect_cuts(video, **self.settings) for video in frames]

    def update(self, videos: Tensor) -> None:
        cuts = self.cuts_per_video(videos)
        self.total_cuts += sum(len(c) for c in cuts)
        self.num_videos += len(cuts)

    def compute(self) -> Tensor:
        if int(self.num_videos) == 0:
            raise UserInputError("SceneCuts.compute() called before any update()")
        return self.total_cuts.to(torch.float64) / self.num_videos

    def protocol(self) -> dict[str, Any]:
        return {"metric": "SCuts", "detector": "scenedetect.AdaptiveDetector", **self.settings,
                "frames": "8-bit BGR", "per": "cuts per video, mean over videos", "num_videos": int(self.num_videos)}
