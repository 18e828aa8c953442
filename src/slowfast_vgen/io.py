"""Writing videos (mp4 + GIF) and files atomically: nothing partial is ever left under a final name; finding
the repository's own files (configs, shipped weights) from any working directory."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from slowfast_vgen.errors import UserInputError

REPO = Path(__file__).resolve().parents[2]  # the clone this package is installed from (editable install)


def repo_path(path: str) -> str:
    """``path`` as given if it exists or is absolute; else the same relative path in the repository, if there."""
    if Path(path).exists() or Path(path).is_absolute() or not (REPO / path).exists():
        return path
    return str(REPO / path)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it to ``path`` only if the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_safetensors(path: str | Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file (data only), with a one-line error naming the file
    when it is missing or not a safetensors file (``what``: e.g. "UNet weights", "Temp-LoRA memory")."""
    from safetensors import SafetensorError, safe_open

    if not Path(path).is_file():
        raise UserInputError(f"{what} {str(path)!r} not found; expected a .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise UserInputError(f"{what} {str(path)!r} is not a readable safetensors file "
                             f"({str(err).strip().splitlines()[0][:120]})") from None


def to_uint8_frames(video: torch.Tensor, upscale: int = 1) -> np.ndarray:
    """(T, C, H, W) float in [0, 1] -> (T, H*upscale, W*upscale, 3) uint8, nearest-neighbour upscaling."""
    if video.ndim != 4 or video.shape[1] not in (1, 3):
        raise UserInputError(f"video: expected (T, C, H, W) with C in (1, 3), got {tuple(video.shape)}")
    frames = (video.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    if frames.shape[1] == 1:
        frames = frames.expand(-1, 3, -1, -1)
    if upscale > 1:
        frames = frames.repeat_interleave(upscale, dim=2).repeat_interleave(upscale, dim=3)
    return frames.permute(0, 2, 3, 1).contiguous().cpu().numpy()  # (T, H, W, 3)


def write_video(
    path: str | Path, video: torch.Tensor, fps: int = 8, formats: tuple[str, ...] = ("mp4", "gif"), upscale: int = 1
) -> list[Path]:
    """Write ``video`` (T, C, H, W) in [0, 1] as ``path.mp4`` and/or ``path.gif``; returns the files written.

    mp4 is H.264 (yuv420p, playable in browsers); small frames are upscaled by ``upscale`` (nearest) first.
    """
    import imageio.v3 as iio

    frames = to_uint8_frames(video, upscale)
    if frames.shape[1] % 2 or frames.shape[2] % 2:  # yuv420p needs even sides
        frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)), mode="edge")
    base = Path(path)
    base = base.with_suffix("") if base.suffix in (".mp4", ".gif") else base
    written = []
    for fmt in formats:
        target = base.with_name(base.name + "." + fmt)
        with atomic_path(target) as tmp:
            if fmt == "mp4":
                iio.imwrite(tmp, frames, extension=".mp4", plugin="pyav", codec="libx264", fps=fps,
                            out_pixel_format="yuv420p")
            elif fmt == "gif":
                iio.imwrite(tmp, frames, extension=".gif", plugin="pillow", duration=int(1000 / fps), loop=0)
            else:
                raise UserInputError(f"unknown video format {fmt!r}; expected 'mp4' or 'gif'")
        written.append(target)
    return written
