"""Helpers for the data tests (a module name of its own: `conftest` is ambiguous across test folders)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from slowfast_vgen.datamodules.shards.videoio import encode_video

ACTIONS = ["go left", "go right", "turn left", "turn right", "go forward"]


def video_frames(seed: int, frames: int = 24, height: int = 32, width: int = 48) -> np.ndarray:
    """Smooth moving colour pattern plus a frame counter stripe, uint8 ``(T, H, W, 3)``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6, size=3)
    out = []
    for t in range(frames):
        img = np.stack([np.sin(x / 7 + t / 4 + phase[0]), np.cos(y / 5 - t / 6 + phase[1]),
                        np.sin((x + y) / 9 + t / 5 + phase[2])], axis=-1) * 0.5 + 0.5
        img[:2, : min(width, 2 * t + 2)] = 1.0  # frame counter
        out.append((img * 255).round().astype(np.uint8))
    return np.stack(out)


def write_video(path: Path, frames: np.ndarray, fps: float = 10.0) -> None:
    """A lossless (RGB H.264) mp4 file, so that decoding gives ``frames`` back exactly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_video(frames, fps, "mp4-lossless")[1])


def make_dataset(root: Path, videos: int = 3, frames: int = 24, fps: float = 10.0, height: int = 32,
                 width: int = 48, fmt: str = "jsonl") -> tuple[Path, Path, dict[str, np.ndarray], list[dict]]:
    """``root/videos/vid{i}.mp4`` + an action file; returns (video dir, action file, frames by stem, rows)."""
    vdir, truth, rows = root / "videos", {}, []
    for i in range(videos):
        arr = video_frames(i, frames + 2 * i, height, width)
        write_video(vdir / f"vid{i}.mp4", arr, fps)
        truth[f"vid{i}"] = arr
        t, k = 0.0, 0
        while t < len(arr) / fps - 1e-6:
            end = min(t + (3 + (i + k) % 4) / fps, len(arr) / fps)
            rows.append({"video": f"vid{i}.mp4", "start": round(t, 3), "end": round(end, 3),
                         "action": ACTIONS[(i + k) % len(ACTIONS)]})
            t, k = end, k + 1
    path = root / f"actions.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text("video,start,end,action\n" + "".join(f"{r['video']},{r['start']},{r['end']},{r['action']}\n"
                                                            for r in rows))
    return vdir, path, truth, rows
