"""``sfvgen bench temp-lora``: cost of fast learning (paper Table 3) and memory flatness over long videos.

Each mode (without / with Temp-LoRA) runs in a fresh subprocess so that peak memory is its own: on CUDA
``torch.cuda.max_memory_allocated``, on CPU the process's peak resident set size. Settings follow the
paper: DPM-Solver 20 steps, three-way guidance, LoRA rank 32, one update per chunk.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from slowfast_vgen.errors import ArgumentParser

PRESETS = {
    "tiny": dict(unet="tiny", view=16, embed=32, chunk=4, context=4),
    "small": dict(unet="small", view=32, embed=64, chunk=8, context=8),
    # The paper's setting (Table 3): the ModelScope UNet (1.4 B parameters) on 4 x 32 x 32 VAE latents (256 px),
    # 16 context + 16 new frames (the 32-frame window). Latent space only: a random clean context stands in for an
    # encoded first chunk and chunks are not decoded (the VAE costs the same with or without Temp-LoRA). GPU sized.
    "modelscope": dict(unet="modelscope", latent=(4, 32), embed=1024, chunk=16, context=16),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_mode(preset: str | dict, temp_lora: bool, chunks: int, steps: int, rank: int, device: str, merge: bool = False,
             dtype: str = "float32", lora_preset: str = "paper") -> dict:
    """One mode in this process; ``preset``: a name in PRESETS or such a dict; ``lora_preset``: Temp-LoRA
    settings by name (:data:`slowfast_vgen.evaluation.memory.TEMP_LORA_PRESETS`)."""
    from slowfast_vgen.datamodules.world import REVERSE, World
    from slowfast_vgen.evaluation.memory import TEMP_LORA_PRESETS
    from slowfast_vgen.diffusion import ChunkSampler, MaskedDiffusion
    from slowfast_vgen.generation import LongVideoGenerator
    from slowfast_vgen.lora import TempLoRA
    from slowfast_vgen.models import HashTextEncoder, PixelShuffleAutoencoder, build_unet3d

    cfg = PRESETS[preset] if isinstance(preset, str) else preset
    torch.manual_seed(0)
    dev = torch.device(device)
    unet = build_unet3d(cfg["unet"]).eval().to(dev, DTYPES[dtype])
    diffusion = MaskedDiffusion()
    settings = {**TEMP_LORA_PRESETS[lora_preset], "rank": rank, "reverse_actions": REVERSE}
    learner = TempLoRA(unet, diffusion, **settings) if temp_lora else None
    gen = LongVideoGenerator(unet, PixelShuffleAutoencoder().to(dev), HashTextEncoder(cfg["embed"]).to(dev),
                             ChunkSampler(diffusion.scheduler_config(), num_inference_steps=steps),
                             chunk_frames=cfg["chunk"], context_frames=cfg["context"], temp_lora=learner,
                             merge_for_sampling=merge)
    actions = (["go right", "go up", "go left", "go down"] * chunks)[:chunks]
    if "latent" in cfg:  # latent space: a random clean context, no decoding
        channels, side = cfg["latent"]
        z = torch.randn(1, channels, cfg["context"], side, side, generator=torch.Generator().manual_seed(0))
        stream = gen.stream(None, actions, decode=False, context_latents=z.to(dev, DTYPES[dtype]))
    else:
        first = torch.from_numpy(World(seed=0, view_size=cfg["view"], cell_size=cfg["view"] // 2).render(0, 0))
        stream = gen.stream(first[None, None].to(dev), actions, decode=True)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, memory = [], {}
    t0 = time.perf_counter()
    for chunk in stream:
        _ = (chunk.latents if chunk.video is None else chunk.video).cpu()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        n = chunk.index + 1
        if n in (10, chunks):
            memory[n] = round(torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else rss_mb(), 2)
        t0 = time.perf_counter()
    steady = times[2:] if len(times) > 4 else times
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds_per_chunk": sum(steady) / len(steady), "peak_memory_mb": round(peak, 2),
            "memory_mb_at_chunk": memory, "chunks": chunks}


def main(argv: list[str] | None = None) -> int:
    from slowfast_vgen.evaluation.memory import TEMP_LORA_PRESETS

    p = ArgumentParser(prog="sfvgen bench temp-lora")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--chunks", type=int, default=20)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--merge", action="store_true", help="sample with Theta merged into the weights")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="UNet weights (default: float16 on CUDA, else float32)")
    p.add_argument("--temp-lora", default="paper", choices=sorted(TEMP_LORA_PRESETS),
                   help="Temp-LoRA settings (paper: one Eq. 3 step per chunk; memory: docs/memory.md)")
    p.add_argument("--child", choices=["with", "without"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.dtype = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    if args.child:
        print(json.dumps(run_mode(args.preset, args.child == "with", args.chunks, args.steps, args.rank, args.device,
                                  args.merge, args.dtype, args.temp_lora)))
        return 0
    from slowfast_vgen.bench import machine

    results = {}
    for mode in ("without", "with"):
        cmd = [sys.executable, "-m", "slowfast_vgen.cli", "bench", "temp-lora", "--child", mode,
               "--preset", args.preset, "--chunks", str(args.chunks), "--steps", str(args.steps),
               "--rank", str(args.rank), "--device", args.device, "--dtype", args.dtype, "--temp-lora", args.temp_lora,
               *(["--merge"] if args.merge else [])]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    w, wo = results["with"], results["without"]
    print(json.dumps({
        "bench": "temp-lora", "preset": args.preset, "device": args.device,
        "settings": {"sampler": "dpm-solver", "steps": args.steps, "guidance": "three-way (2, 5)",
                     "rank": args.rank, "temp_lora": args.temp_lora,
                     "updates_per_chunk": TEMP_LORA_PRESETS[args.temp_lora]["steps_per_chunk"],
                     "draws": TEMP_LORA_PRESETS[args.temp_lora].get("draws", 1), "dtype": args.dtype,
                     "merge_for_sampling": args.merge,
                     "chunk_frames": PRESETS[args.preset]["chunk"], "context_frames": PRESETS[args.preset]["context"]},
        "without_temp_lora": wo, "with_temp_lora": w,
        "time_ratio": round(w["seconds_per_chunk"] / wo["seconds_per_chunk"], 4),
        "memory_ratio": round(w["peak_memory_mb"] / wo["peak_memory_mb"], 4),
        "paper_table3": {"time_ratio": round(13.8066 / 12.9305, 4), "memory_ratio": round(9931 / 9579, 4)},
        "machine": machine(),
    }, indent=2))
    return 0
