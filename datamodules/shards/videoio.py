"""Codecs for shard members and input videos: H.264 mp4 (lossy or lossless RGB), raw ``.npy`` arrays.

Frames are uint8 arrays ``(T, H, W, 3)`` (RGB) everywhere in this module; conversion to the float
``(T, C, H, W)`` batch convention happens in the datasets. Arrays are stored as ``.npy`` and always read
with ``allow_pickle=False``.

Video storage kinds (``--video`` of ``sfvgen data build``):

* ``mp4``: H.264 at constant quality ``crf`` (lossy), chroma ``yuv420p`` (standard; sides cropped to even
  numbers) or ``yuv444p`` (no chroma subsampling: +2-5 dB PSNR on saturated low-resolution frames such as games);
* ``mp4-lossless``: H.264 RGB (libx264rgb, qp 0): bit-exact, about 2-5x larger than ``mp4``;
* ``npy``: raw uint8 frames: bit-exact, largest, fastest to read.

Both mp4 kinds put a keyframe every ``gop`` frames so that a window can be decoded without decoding the
segment from its start.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from slowfast_vgen.errors import UserInputError

if TYPE_CHECKING:
    import torch

VIDEO_KINDS = ("mp4", "mp4-lossless", "npy")
VIDEO_MEMBERS = ("mp4", "frames.npy")  # member extensions that can hold the pixels of a sample
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v")


def fps_fraction(fps: float) -> Fraction:
    """A rational frame rate for the muxer (29.97 -> 30000/1001)."""
    if not fps > 0:
        raise UserInputError(f"fps must be > 0, got {fps}")
    return Fraction(fps).limit_denominator(1001)


PIX_FMTS = ("yuv420p", "yuv444p")


def encode_video(
    frames: np.ndarray, fps: float, kind: str = "mp4", crf: int = 18, gop: int = 16, pix_fmt: str = "yuv420p"
) -> tuple[str, bytes, dict[str, Any]]:
    """Encode uint8 frames ``(T, H, W, 3)``; returns (member extension, bytes, description for the metadata)."""
    if kind not in VIDEO_KINDS:
        raise UserInputError(f"unknown video storage {kind!r}; expected one of {VIDEO_KINDS}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise UserInputError(f"frames: expected a non-empty uint8 array (T, H, W, 3), got {frames.shape} "
                             f"{frames.dtype}")
    if kind == "npy":
        return "frames.npy", npy_bytes(np.ascontiguousarray(frames)), {"member": "frames.npy", "codec": "raw"}
    if pix_fmt not in PIX_FMTS:
        raise UserInputError(f"pix_fmt {pix_fmt!r}: expected one of {PIX_FMTS}")
    if kind == "mp4":
        if pix_fmt == "yuv420p":
            frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]  # yuv420p needs even sides
        codec, options = "libx264", {"crf": str(crf), "preset": "veryfast"}
    else:
        codec, pix_fmt, options = "libx264rgb", "rgb24", {"qp": "0", "preset": "ultrafast"}  # ~3x faster, +35%
    if frames.shape[1] < 2 or frames.shape[2] < 2:
        raise UserInputError(f"frames of {frames.shape[1]}x{frames.shape[2]} pixels are too small for mp4")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps_fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.options = {**options, "sc_threshold": "0"}  # keyframes exactly every gop frames
        stream.codec_context.gop_size = gop
        stream.thread_count = 1  # one core per DataLoader worker / writer process
        for frame in _encoder_frames(frames, pix_fmt, 1 / fps_fraction(fps)):
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    desc = {"member": "mp4", "codec": codec, "pix_fmt": pix_fmt, "gop": gop}
    if kind == "mp4":
        desc["crf"] = crf
    return "mp4", buf.getvalue(), desc


def rgb_to_yuv(frames: np.ndarray, pix_fmt: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 RGB ``(T, H, W, 3)`` -> planes Y ``(T, H, W)``, U, V (BT.601, limited range, swscale's default).

    Done here rather than by swscale inside the encoder, so that the conversion is the same on every machine.
    yuv420p chroma is the mean of each 2x2 block.
    """
    x = frames.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16 + 0.256788 * r + 0.504129 * g + 0.097906 * b
    u = 128 - 0.148223 * r - 0.290993 * g + 0.439216 * b
    v = 128 + 0.439216 * r - 0.367788 * g - 0.071427 * b
    if pix_fmt == "yuv420p":
        t, h, w = y.shape
        u = u.reshape(t, h // 2, 2, w // 2, 2).mean(axis=(2, 4))  # (T, H/2, W/2)
        v = v.reshape(t, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
    return tuple(np.clip(np.round(p), 0, 255).astype(np.uint8) for p in (y, u, v))


def _filled_frame(planes: list[np.ndarray], width: int, height: int, pix_fmt: str) -> av.VideoFrame:
    """A frame whose planes, row padding included, are all written (padding repeats the last column).

    ``VideoFrame.from_ndarray`` leaves the padding of each row uninitialised, and encoders may read it.
    (libx264 can still give slightly different bytes for the same tiny frames from run to run; decoded quality is
    the same. Resumable writers therefore never compare bytes, they skip finished samples by key.)
    """
    frame = av.VideoFrame(width, height, pix_fmt)
    for plane, data in zip(frame.planes, planes, strict=True):
        buf = np.empty((data.shape[0], plane.line_size), np.uint8)  # (rows, line_size)
        buf[:, : data.shape[1]] = data
        buf[:, data.shape[1] :] = data[:, -1:]
        plane.update(buf)
    return frame


def _encoder_frames(frames: np.ndarray, pix_fmt: str, time_base: Fraction) -> Iterator[av.VideoFrame]:
    t, h, w, _ = frames.shape
    if pix_fmt == "rgb24":
        planes = ([frame.reshape(h, w * 3)] for frame in frames)
    else:
        planes = ([y, u, v] for y, u, v in zip(*rgb_to_yuv(frames, pix_fmt), strict=True))
    for i, p in enumerate(planes):
        frame = _filled_frame(p, w, h, pix_fmt)
        frame.pts, frame.time_base = i, time_base
        yield frame


_REFORMATTER: tuple[int, VideoReformatter] | None = None  # (pid, reformatter): one per process
_INHERITED: list[VideoReformatter] = []


def _reformatter() -> VideoReformatter:
    """This process's reformatter. A swscale context made before a fork deadlocks in the child, in use and when
    freed (its worker threads do not exist there): a DataLoader worker makes its own and never frees the parent's."""
    global _REFORMATTER
    if _REFORMATTER is None or _REFORMATTER[0] != os.getpid():
        if _REFORMATTER is not None:
            _INHERITED.append(_REFORMATTER[1])
        _REFORMATTER = (os.getpid(), VideoReformatter())
    return _REFORMATTER[1]


def _frame_rgb(frame: av.VideoFrame) -> np.ndarray:
    if frame.format.name == "gbrp":  # libx264rgb output: planes G, B, R
        g, b, r = (np.frombuffer(p, np.uint8).reshape(frame.height, p.line_size)[:, : frame.width]
                   for p in frame.planes)
        return np.stack([r, g, b], axis=-1)
    # A reused reformatter keeps its swscale context: ~30x faster than frame.to_ndarray(format="rgb24") per frame.
    return _reformatter().reformat(frame, format="rgb24").to_ndarray()  # (H, W, 3)


def decode_mp4(data: bytes, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Frames ``[start, stop)`` of an mp4 member as uint8 ``(n, H, W, 3)``; seeks to the keyframe before ``start``."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"  # one thread per DataLoader worker
        rate = stream.average_rate or stream.guessed_rate
        pts_per_frame = float(1 / (rate * stream.time_base))
        if start > 0:
            container.seek(int(start * pts_per_frame), stream=stream, backward=True, any_frame=False)
        out = []
        for frame in container.decode(stream):
            index = round(frame.pts / pts_per_frame) if frame.pts is not None else len(out) + start
            if index < start:
                continue
            if stop is not None and index >= stop:
                break
            out.append(_frame_rgb(frame))
    if not out:
        raise ValueError(f"no frames in [{start}, {stop})")
    return np.stack(out)


def decode_frames(member: str, data: bytes, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Frames ``[start, stop)`` of a video member (``mp4`` or ``frames.npy``) as uint8 ``(n, H, W, 3)``."""
    if member == "mp4":
        return decode_mp4(data, start, stop)
    if member == "frames.npy":
        arr = npy_slice(data, start, stop)
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"frames.npy holds {arr.shape} {arr.dtype}, expected uint8 (T, H, W, 3)")
        return arr
    raise ValueError(f"unknown video member {member!r}")


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    """Read a whole ``.npy`` member; never unpickles."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def npy_slice(data: bytes, start: int = 0, stop: int | None = None, axis: int = 0) -> np.ndarray:
    """Rows ``[start, stop)`` along ``axis`` of a C-ordered ``.npy`` member without copying the rest."""
    buf = io.BytesIO(data)
    version = np.lib.format.read_magic(buf)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
    else:
        return load_npy(data)[(slice(None),) * axis + (slice(start, stop),)]
    if dtype.hasobject or fortran:
        raise ValueError("npy member holds objects or a Fortran-ordered array")
    count = int(np.prod(shape))
    if len(data) - buf.tell() < count * dtype.itemsize:
        raise ValueError(f"npy member truncated: {len(data) - buf.tell()} of {count * dtype.itemsize} data bytes")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=buf.tell()).reshape(shape)
    index = [slice(None)] * arr.ndim
    index[axis] = slice(start, stop)
    return arr[tuple(index)]


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def probe_video(path: str | Path) -> tuple[float, float]:
    """(fps, duration in seconds) of a video file."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            else:
                duration = float(stream.frames / fps) if fps else 0.0
    except (av.FFmpegError, IndexError) as err:
        raise UserInputError(f"cannot read video {path}: {err}") from None
    return fps, duration


def iter_video_file(path: str | Path, fps: float | None = None) -> tuple[float, Iterator[np.ndarray]]:
    """Stream the frames of a video file as uint8 ``(H, W, 3)``, resampled to ``fps`` (nearest frame) if given.

    Returns (output fps, iterator). Errors while opening raise :class:`UserInputError`; errors in the middle of
    a stream end it (a damaged tail is cut, like ffmpeg does).
    """
    try:
        container = av.open(str(path))
        stream = container.streams.video[0]
    except (av.FFmpegError, IndexError) as err:
        raise UserInputError(f"cannot read video {path}: {err}") from None
    src_fps = float(stream.average_rate or stream.guessed_rate or 0) or 30.0
    out_fps = float(fps) if fps else src_fps
    stream.thread_type = "AUTO"

    def frames() -> Iterator[np.ndarray]:
        nxt = 0  # next output frame index
        try:
            for i, frame in enumerate(container.decode(stream)):
                t = float(frame.pts * stream.time_base) if frame.pts is not None else i / src_fps
                rgb = None
                # Output frame k shows the source frame nearest to time k / out_fps.
                while nxt / out_fps < t + 0.5 / src_fps:
                    rgb = _frame_rgb(frame) if rgb is None else rgb
                    yield rgb
                    nxt += 1
        except av.FFmpegError:
            return
        finally:
            container.close()

    return out_fps, frames()


def parse_size(size: Any) -> tuple[int, int] | int | None:
    """``None``, ``64`` (shorter side) or ``"120x160"`` / ``(120, 160)`` (height x width, resize then center crop)."""
    if size is None or size == "":
        return None
    if isinstance(size, str):
        parts = size.lower().split("x")
        try:
            vals = [int(p) for p in parts]
        except ValueError:
            vals = []
        if len(vals) not in (1, 2):
            raise UserInputError(f"size {size!r}: expected an integer (shorter side) or HEIGHTxWIDTH such as 120x160")
        size = vals[0] if len(vals) == 1 else tuple(vals)
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or min(int(v) for v in size) < 1:
            raise UserInputError(f"size {size!r}: expected (height, width) with positive sides")
        return int(size[0]), int(size[1])
    if int(size) < 1:
        raise UserInputError(f"size must be >= 1, got {size}")
    return int(size)


def resize_crop(video: "torch.Tensor", size: tuple[int, int] | int | None) -> "torch.Tensor":
    """Resize float frames ``(T, C, H, W)`` to cover ``size`` (antialiased bilinear), then center-crop to it.

    An int resizes the shorter side only. Frames already at the target size are returned unchanged.
    """
    import torch

    if size is None:
        return video
    h, w = video.shape[-2:]
    if isinstance(size, int):
        scale = size / min(h, w)
        target = (max(1, round(h * scale)), max(1, round(w * scale)))
    else:
        target = size
    if (h, w) == tuple(target):
        return video
    scale = max(target[0] / h, target[1] / w)
    rh, rw = max(target[0], round(h * scale)), max(target[1], round(w * scale))
    if (rh, rw) != (h, w):
        video = torch.nn.functional.interpolate(video, size=(rh, rw), mode="bilinear", antialias=True,
                                                align_corners=False).clamp_(0, 1)  # (T, C, rh, rw)
    top, left = (rh - target[0]) // 2, (rw - target[1]) // 2
    return video[..., top : top + target[0], left : left + target[1]]


def resize_uint8(frames: np.ndarray, size: tuple[int, int] | int | None) -> np.ndarray:
    """:func:`resize_crop` for uint8 ``(T, H, W, 3)`` frames (used when building shards)."""
    import torch

    if size is None:
        return frames
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255  # (T, 3, H, W)
    y = resize_crop(x, size)
    if y is x:
        return frames
    return (y * 255).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()  # (T, H', W', 3)
