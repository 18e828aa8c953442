"""``sfvgen bench data --preset small``: clips/s read and decoded by one DataLoader worker, as JSON.

Writes small synthetic shard sets (moving textured frames, 64x64 and 256x256; mp4 crf 18, raw npy, and float16
latents as the ModelScope VAE would give at 256x256: 4 x 32 x 32 per frame) in a temporary folder, then times
``ShardClipDataset.load`` -- read at the manifest offsets, crc32 check, JSON parse, window decode, uint8 ->
float tensor -- on clips of 16 frames in this process, which is what one DataLoader worker does. Also prints
how many workers one GPU needs at the paper's scale (App. C.1: batch 128 on 64 GPUs = 2 clips per GPU step,
32-frame windows), for an assumed GPU step time.
"""

from __future__ import annotations

import json
import math
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slowfast_vgen.errors import ArgumentParser
from slowfast_vgen.datamodules.shards.read import ShardClipDataset
from slowfast_vgen.datamodules.shards.write import ShardSetWriter
from slowfast_vgen.datamodules.shards.videoio import npy_bytes

PRESETS = {"tiny": {"episodes": 1, "episode_frames": 40, "seconds": 0.3, "sizes": (64, 256)},  # tests
           "small": {"episodes": 4, "episode_frames": 96, "seconds": 3.0, "sizes": (64, 256)},
           "medium": {"episodes": 8, "episode_frames": 256, "seconds": 10.0, "sizes": (64, 256, 512)}}


def synthetic_frames(seed: int, frames: int, size: int) -> np.ndarray:
    """A camera panning over a fixed random texture (like a game or a street), uint8 ``(T, S, S, 3)``."""
    rng = np.random.default_rng(seed)
    tex = rng.integers(0, 256, (size // 8 + 1, (size + frames) // 8 + 1, 3), dtype=np.uint8)
    tex = np.kron(tex, np.ones((8, 8, 1), np.uint8))  # blocks of 8x8 pixels
    tex = (tex.astype(np.float32) * 0.7 + 40 * np.sin(np.arange(tex.shape[1]) / 9)[None, :, None] + 30).clip(0, 255)
    return np.stack([tex[:size, t : t + size] for t in range(frames)]).astype(np.uint8)


def write_set(root: Path, storage: str, size: int, episodes: int, frames: int) -> None:
    options = {"bench": storage, "size": size}
    video = "npy" if storage == "latents" else storage
    writer = ShardSetWriter(root, "bench", options, video=video, segment_frames=frames, overlap=0)
    for e in range(episodes):
        arr = synthetic_frames(e, frames, size)
        spans = [(a, min(a + 24, frames), "go right") for a in range(0, frames, 24)]
        if storage != "latents":
            writer.write_episode(f"ep{e}", iter(arr), 30.0, spans, "bench")
            continue
        latents = np.random.default_rng(e).standard_normal((4, frames, size // 8, size // 8)).astype(np.float16)
        meta = {"key": f"ep{e}--s00000", "episode": f"ep{e}", "segment": 0, "start_frame": 0, "overlap": 0,
                "frames": frames, "height": size, "width": size, "fps": 30.0, "domain": "bench",
                "actions": [list(s) for s in spans], "video": {"member": None},
                "latents": {"member": "latents.npy", "shape": list(latents.shape), "dtype": "float16"}}
        writer.write_sample(meta, {"latents.npy": npy_bytes(latents)})
    writer.finish()


def time_loads(dataset: ShardClipDataset, seconds: float, seed: int = 0) -> dict[str, float]:
    order = np.random.default_rng(seed).permutation(len(dataset))
    dataset.load(int(order[0]))  # warm up (opens the shard file)
    n, frames, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sample = dataset.load(int(order[n % len(order)]))
        n += 1
        frames += sample["video"].shape[0]
    dt = time.perf_counter() - t0
    return {"clips_per_s": round(n / dt, 1), "frames_per_s": round(frames / dt, 1), "clips": n}


def run(preset: str = "small", frames: int = 16, gpu_step_seconds: float = 1.0) -> dict[str, Any]:
    cfg = PRESETS[preset]
    torch.set_num_threads(1)  # one worker = one core
    results = []
    with tempfile.TemporaryDirectory(prefix="sfvgen-bench-") as tmp:
        for size in cfg["sizes"]:
            for storage in ("mp4", "npy") + (("latents",) if size == 256 else ()):
                root = Path(tmp) / f"{storage}-{size}"
                t0 = time.perf_counter()
                write_set(root, storage, size, cfg["episodes"], cfg["episode_frames"])
                write_s = time.perf_counter() - t0
                ds = ShardClipDataset(root, frames=frames, min_context=frames // 4, max_context=frames // 4,
                                      decode_video=storage != "latents")
                r = time_loads(ds, cfg["seconds"])
                results.append({"resolution": f"{size}x{size}", "storage": storage, "frames": frames, **r,
                                "write_frames_per_s": round(cfg["episodes"] * cfg["episode_frames"] / write_s, 1),
                                "bytes_per_frame": round(sum(p.stat().st_size for p in root.glob("*.tar"))
                                                         / (cfg["episodes"] * cfg["episode_frames"]))})
    mp4_256 = next(r for r in results if r["resolution"] == "256x256" and r["storage"] == "mp4")
    # Decoding cost grows with the frames per clip: a 32-frame clip costs about twice a 16-frame one.
    per_worker_32 = mp4_256["clips_per_s"] * frames / 32
    needed = 2 / gpu_step_seconds
    estimate = {
        "assumptions": "paper App. C.1: batch 128 on 64 GPUs = 2 clips/GPU/step, 32-frame windows, 256x256 mp4; "
                       f"GPU step {gpu_step_seconds} s (set with --gpu-step-seconds); one CPU core per worker",
        "clips_per_s_needed_per_gpu": round(needed, 2),
        "clips_per_s_per_worker_32_frames": round(per_worker_32, 1),
        "workers_per_gpu": max(1, math.ceil(needed / per_worker_32)),
        "workers_per_gpu_with_2x_headroom": max(1, math.ceil(2 * needed / per_worker_32)),
    }
    return {"bench": "data", "preset": preset, "machine": f"{platform.machine()} {torch.get_num_threads()} thread",
            "results": results, "estimate": estimate}


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="sfvgen bench data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--gpu-step-seconds", type=float, default=1.0,
                        help="assumed training step time per GPU at the paper's scale (for the worker estimate)")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.preset, args.frames, args.gpu_step_seconds), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
