"""``sfvgen bench metrics``: throughput of each metric (clips/s) on small clips, printed as JSON.

Times ``update()`` on random clips after one warm-up call (model loading and the first call are
excluded; at least ``--repeats`` calls and one second per metric); FVD's ``compute()`` (the float64
Frechet distance on 400-d features) is timed separately.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from collections.abc import Callable

import torch

from slowfast_vgen.metrics import FVD, LPIPS, PSNR, SSIM, SceneCuts, SceneRevisitConsistency
from slowfast_vgen.errors import ArgumentParser


def _clips(n: int, frames: int, size: int, device: torch.device, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, frames, 3, size, size, generator=g).to(device)  # (B, T, C, H, W)


def _time(update: Callable[[], None], repeats: int, min_seconds: float = 1.0) -> float:
    """Mean seconds per call over at least ``repeats`` calls and ``min_seconds``, after one warm-up call."""
    update()  # warm-up (allocations, lazy device moves)
    _sync()
    calls, start = 0, time.perf_counter()
    while calls < repeats or time.perf_counter() - start < min_seconds:
        update()
        _sync()
        calls += 1
    return (time.perf_counter() - start) / calls


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(device: str = "cpu", frames: int = 16, size: int = 64, fvd_sizes: tuple[int, ...] = (64, 224),
        batch: int = 4, fvd_batch: int = 2, repeats: int = 2) -> dict:
    dev = torch.device(device)
    clip = f"{frames}x3x{size}x{size}"
    results = []

    def record(metric: str, clip_shape: str, seconds: float, clips: int, **extra) -> None:
        results.append({"metric": metric, "clip": clip_shape, "batch": clips, "seconds_per_update": round(seconds, 4),
                        "clips_per_s": round(clips / seconds, 3), **extra})

    preds, target = _clips(batch, frames, size, dev, 0), _clips(batch, frames, size, dev, 1)
    for name, metric in (("PSNR", PSNR()), ("SSIM", SSIM()), ("LPIPS", LPIPS())):
        metric = metric.to(dev)
        record(name, clip, _time(lambda m=metric: m.update(preds, target), repeats), batch)
    scuts = SceneCuts().to(dev)
    record("SceneCuts", clip, _time(lambda: scuts.update(preds), repeats), batch)
    src = SceneRevisitConsistency().to(dev)
    revisits = [[(0, [frames // 2, frames - 1])]] * batch  # 3 frames embedded per clip
    record("SRC", clip, _time(lambda: src.update(preds, revisits), repeats), batch,
           backbone=src.backbone_name, frames_embedded_per_clip=3, embed_resolution=src.resolution)

    fvd = FVD(batch_size=fvd_batch).to(dev)
    for fvd_size in fvd_sizes:
        videos = _clips(fvd_batch, frames, fvd_size, dev, 2)
        seconds = _time(lambda v=videos: fvd.update(v, real=True), repeats)
        record("FVD", f"{frames}x3x{fvd_size}x{fvd_size}", seconds, fvd_batch, i3d_input=f"{fvd.num_frames}x3x224x224")
    fvd.update(_clips(max(2, fvd_batch), frames, 64, dev, 3), real=False)
    start = time.perf_counter()
    fvd.compute()
    fvd_compute_s = time.perf_counter() - start

    return {
        "benchmark": "metrics",
        "date": datetime.date.today().isoformat(),
        "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "repeats": repeats,
        "results": results,
        "fvd_compute_s": round(fvd_compute_s, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="sfvgen bench metrics", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip (default: 16)")
    parser.add_argument("--size", type=int, default=64, help="frame side for PSNR/SSIM/LPIPS/SCuts/SRC (default: 64)")
    parser.add_argument("--fvd-sizes", type=int, nargs="+", default=[64, 224],
                        help="frame sides for FVD (default: 64 224)")
    parser.add_argument("--batch", type=int, default=4, help="clips per update (default: 4)")
    parser.add_argument("--fvd-batch", type=int, default=2, help="clips per FVD update (default: 2)")
    parser.add_argument("--repeats", type=int, default=2, help="timed updates per metric (default: 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = run(args.device, args.frames, args.size, tuple(args.fvd_sizes), args.batch, args.fvd_batch, args.repeats)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
