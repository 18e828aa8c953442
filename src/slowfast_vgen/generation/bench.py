"""``sfvgen bench temp-lora``: cost of fast learning (paper Table 3) and memory flatness over long videos.

Each mode (without / with Temp-LoRA) runs in a fresh subprocess so that peak memory is its own: on CUDA
``torch.cuda.max_memory_allocated``, on CPU the process's peak resident set size. Sampling follows the paper
(DPM-Solver 20 steps) at the preset's guidance, as ``sfvgen demo`` runs it (three-way 2 / 5 for ``paper``);
Temp-LoRA takes the options of every command (``--temp-lora PRESET`` and overrides; ``--temp-lora paper`` is Table
3's setting: rank 32, one update per chunk).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from typing import Any

import torch
from slowfast_vgen.machine import machine
from slowfast_vgen.errors import ArgumentParser, positive_int

PRESETS = {
    "tiny": dict(unet="tiny", view=16, embed=32, chunk=4, context=4),
    "small": dict(unet="small", view=32, embed=64, chunk=8, context=8),
    # The paper's setting (Table 3): the ModelScope UNet (1.4 B parameters) on 4 x 32 x 32 VAE latents (256 px),
    # 16 context + 16 new frames (the 32-frame window). Latent space only: a random clean context stands in for an
    # encoded first chunk and chunks are not decoded (the VAE costs the same with or without Temp-LoRA). GPU sized.
    "modelscope": dict(unet="modelscope", latent=(4, 32), embed=1024, tokens=77, chunk=16, context=16),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_reset(device: torch.device) -> None:
    """Start a new peak-memory window: CUDA's allocator statistics, or on Linux the process's peak resident set
    (``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``). On the CPU, memory freed earlier is first handed
    back to the system (glibc ``malloc_trim``): memory the allocator kept would otherwise absorb the next phase's
    allocations without raising its peak."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        import ctypes
        import gc

        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: peaks may read low after a large free
            pass
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def peak_mb(device: torch.device) -> float:
    """The peak since :func:`peak_reset` (MB): allocated tensors on CUDA, resident memory on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def run_components(preset: str, device: str, dtype: str, settings: Any, repeats: int, steps: int,
                   update_only: bool = False, warmup: int = 1, guidance: tuple[float, float] = (2.0, 5.0)) -> dict:
    """Each phase of one Temp-LoRA chunk, timed (median of ``repeats``) and its peak memory, in this process:
    a sampling step (at three-way guidance one UNet call at batch 3 on the context + new frames) without
    LoRA, with the LoRA unmerged and with Theta merged; merging and unmerging; the update (the preset's steps on
    the context + new frames, Alg. 1a l.11-14). The per-chunk ratio at ``steps`` sampling steps is computed from
    the parts: ``(steps * step_with + update [+ merge]) / (steps * step_without)``. ``settings``: the Temp-LoRA
    settings (:class:`slowfast_vgen.temp_lora.TempLoRASettings` or a dict; e.g. ``update_frames``, ``target_modules``,
    ``checkpointing``: the cheaper updates); ``update_only``: time the update alone (to compare such options without re-timing sampling); ``warmup``:
    untimed sampling steps before the first sampling phase (none with ``update_only``)."""
    import statistics

    from slowfast_vgen.diffusion import ChunkSampler, MaskedDiffusion
    from slowfast_vgen.models import HashTextEncoder, build_unet3d, unet_output
    from slowfast_vgen.temp_lora import TempLoRA

    cfg = PRESETS[preset]
    dev, dt = torch.device(device), DTYPES[dtype]
    torch.manual_seed(0)
    peak_reset(dev)
    unet = build_unet3d(cfg["unet"]).eval().to(dev, dt)
    weights_mb = peak_mb(dev)
    parameters = sum(p.numel() for p in unet.parameters())
    diffusion = MaskedDiffusion()
    sampler = ChunkSampler(diffusion.scheduler_config(), num_inference_steps=steps, guidance_image=guidance[0],
                           guidance_text=guidance[1])
    sampler.scheduler.set_timesteps(steps, device=dev)
    encoder = HashTextEncoder(cfg["embed"], max_tokens=cfg.get("tokens", 8)).to(dev)
    null, text = encoder([""]).to(dev, dt), encoder(["go right"]).to(dev, dt)
    back = encoder(["go left"]).to(dev, dt)
    if "latent" in cfg:
        channels, side = cfg["latent"]
    else:
        channels, side = unet.config.in_channels, unet.config.sample_size
    g = torch.Generator().manual_seed(0)
    context = torch.randn(1, channels, cfg["context"], side, side, generator=g).to(dev, dt)
    new = torch.randn(1, channels, cfg["chunk"], side, side, generator=g).to(dev, dt)
    t = sampler.scheduler.timesteps[steps // 2]

    def denoise(z, tt, txt):
        return unet_output(unet, z, tt, txt)

    def timed(fn, name: str) -> dict[str, float]:
        times, peaks = [], []
        for i in range(repeats):
            peak_reset(dev)
            start = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            peaks.append(peak_mb(dev))
            # progress on stderr (stdout holds the JSON): at ModelScope size on a CPU a phase takes minutes
            print(f"bench: {name} run {i + 1}/{repeats}: {times[-1]:.3f} s, peak {peaks[-1]:.0f} MB", file=sys.stderr,
                  flush=True)
        return {"seconds": statistics.median(times), "runs": [round(x, 4) for x in times], "peak_mb": round(max(peaks), 1)}

    def sample_step():
        with torch.no_grad():
            sampler.guided_noise(denoise, context, new, t, text, null)

    # one-time costs (kernel selection, first allocations) kept out of the first phase's time
    for i in range(0 if update_only else warmup):
        start = time.perf_counter()
        sample_step()
        print(f"bench: warm-up step {i + 1}/{warmup}: {time.perf_counter() - start:.3f} s (not counted)",
              file=sys.stderr, flush=True)
    phases = {} if update_only else {"sample_step_without_lora": timed(sample_step, "sample_step_without_lora")}
    learner = TempLoRA(unet, diffusion, settings)
    described = {"update_steps": learner.settings.steps_per_chunk, "update_draws": learner.settings.draws}

    def update():  # one whole write (with write_every a chunk would otherwise only wait)
        learner.update(context, new, null, text, back)
        learner.write_waiting()

    if update_only:
        return {"phases": {"update": timed(update, "update")}, "weights_mb": round(weights_mb, 1),
                "parameters": parameters, "lora_parameters": sum(p.numel() for p in learner.params), **described}
    phases["sample_step_lora_unmerged"] = timed(sample_step, "sample_step_lora_unmerged")

    def merged_step():
        with learner.merged():
            sample_step()

    def merge_only():
        with learner.merged():
            pass

    phases["merge_unmerge"] = timed(merge_only, "merge_unmerge")
    phases["sample_step_merged"] = timed(merged_step, "sample_step_merged")  # includes one merge/unmerge: subtracted below
    phases["sample_step_merged"]["seconds"] = max(
        0.0, phases["sample_step_merged"]["seconds"] - phases["merge_unmerge"]["seconds"])

    phases["update"] = timed(update, "update")
    step0 = phases["sample_step_without_lora"]["seconds"]
    without = steps * step0
    merged = steps * phases["sample_step_merged"]["seconds"] + phases["merge_unmerge"]["seconds"] + phases["update"]["seconds"]
    unmerged = steps * phases["sample_step_lora_unmerged"]["seconds"] + phases["update"]["seconds"]
    peak_without = phases["sample_step_without_lora"]["peak_mb"]
    peak_merged = max(phases[k]["peak_mb"] for k in ("sample_step_merged", "merge_unmerge", "update"))
    peak_unmerged = max(phases[k]["peak_mb"] for k in ("sample_step_lora_unmerged", "update"))
    return {
        "phases": phases, "weights_mb": round(weights_mb, 1),
        "parameters": parameters,
        "lora_parameters": sum(p.numel() for p in learner.params),
        **described,
        "per_chunk_seconds": {"without": round(without, 3), "with_merged": round(merged, 3), "with_unmerged": round(unmerged, 3)},
        "time_ratio": {"merged": round(merged / without, 4), "unmerged": round(unmerged / without, 4)},
        "update_in_sampling_steps": round(phases["update"]["seconds"] / step0, 3),
        "memory_ratio": {"merged": round(peak_merged / peak_without, 4), "unmerged": round(peak_unmerged / peak_without, 4)},
    }


def run_mode(preset: str | dict, temp_lora: bool, chunks: int, steps: int, device: str, merge: bool = False,
             dtype: str = "float32", settings: Any = None, guidance: tuple[float, float] = (2.0, 5.0)) -> dict:
    """One mode in this process; ``preset``: a name in PRESETS or such a dict; ``settings``: the Temp-LoRA settings
    (:class:`slowfast_vgen.temp_lora.TempLoRASettings` or a dict, e.g. ``{"preset": "paper"}``)."""
    from slowfast_vgen.diffusion import ChunkSampler, MaskedDiffusion
    from slowfast_vgen.generation import LongVideoGenerator
    from slowfast_vgen.models import HashTextEncoder, PixelShuffleAutoencoder, build_unet3d
    from slowfast_vgen.simulators.world import World
    from slowfast_vgen.temp_lora import TempLoRA

    cfg = PRESETS[preset] if isinstance(preset, str) else preset
    torch.manual_seed(0)
    dev = torch.device(device)
    unet = build_unet3d(cfg["unet"]).eval().to(dev, DTYPES[dtype])
    diffusion = MaskedDiffusion()
    learner = TempLoRA(unet, diffusion, settings) if temp_lora else None
    encoder = HashTextEncoder(cfg["embed"], max_tokens=cfg.get("tokens", 8)).to(dev)
    gen = LongVideoGenerator(unet, PixelShuffleAutoencoder().to(dev), encoder,
                             ChunkSampler(diffusion.scheduler_config(), num_inference_steps=steps,
                                          guidance_image=guidance[0], guidance_text=guidance[1]),
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
    times, memory, written = [], {}, []
    t0 = time.perf_counter()
    for chunk in stream:
        _ = (chunk.latents if chunk.video is None else chunk.video).cpu()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        written.append(chunk.update is None or chunk.update.written)
        n = chunk.index + 1
        if n in (10, chunks):
            memory[n] = round(torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else rss_mb(), 2)
        t0 = time.perf_counter()
    first = 2 if len(times) > 4 else 0
    steady = times[first:]
    # ``write_where="new-ground"`` skips chunks the memory recognises: the cost of a chunk that is written, apart
    steady_written = [t for t, w in zip(steady, written[first:]) if w] or [math.nan]
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds_per_chunk": sum(steady) / len(steady), "peak_memory_mb": round(peak, 2),
            "seconds_per_written_chunk": sum(steady_written) / len(steady_written),
            "chunks_written": sum(written),
            "memory_mb_at_chunk": memory, "chunks": chunks,
            "temp_lora": None if learner is None else {"update_frames": learner.settings.update_frames,
                                                        "checkpointing": learner.settings.checkpointing,
                                                        "lora_layers": len(learner.lora_layers())}}


def main(argv: list[str] | None = None) -> int:
    from slowfast_vgen.simulators.world import REVERSE
    from slowfast_vgen.temp_lora import PRESET_GUIDANCE, TempLoRASettings, add_options, settings_from_args

    p = ArgumentParser(prog="sfvgen bench temp-lora")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--chunks", type=int, default=20)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--merge", action="store_true", help="sample with Theta merged into the weights")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="UNet weights (default: float16 on CUDA, else float32)")
    p.add_argument("--components", action="store_true",
                   help="time each phase of a chunk (sampling step without / with LoRA, merge, update) and its peak "
                        "memory in one process, and compute the per-chunk ratio at --steps from the parts")
    p.add_argument("--repeats", type=positive_int, default=3, help="--components: runs of each phase (median)")
    p.add_argument("--warmup", type=int, default=1, choices=range(0, 4), metavar="{0..3}",
                   help="--components: untimed sampling steps before the first phase")
    p.add_argument("--end-to-end", action="store_true",
                   help="with --components: also run --chunks whole chunks at --steps in each mode (subprocesses) "
                        "and compare the measured ratio with the one composed from the parts at those steps")
    p.add_argument("--update-only", action="store_true", help="--components: time the update alone")
    p.add_argument("--child", choices=["with", "without"], help=argparse.SUPPRESS)
    p.add_argument("--settings-json", default=None, help=argparse.SUPPRESS)  # the parent's settings, for its children
    p.add_argument("--guidance", type=float, nargs=2, default=None, metavar=("IMAGE", "TEXT"),
                   help="guidance scales of both modes (default: the preset's, as `sfvgen demo`: 2 5 for paper, 1 1 "
                        "for the rehearsal presets; at 1 1 a sampling step is one UNet call, not three)")
    add_options(p)
    args = p.parse_args(argv)
    args.guidance = args.guidance or PRESET_GUIDANCE[args.temp_lora]
    args.dtype = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    # the bench's chunks walk the built-in world, whose actions declare their reverses
    settings = (TempLoRASettings.build(json.loads(args.settings_json)) if args.settings_json
                else settings_from_args(args, REVERSE))
    if args.components:
        return components_main(args, settings)
    if args.child:
        print(json.dumps(run_mode(args.preset, args.child == "with", args.chunks, args.steps, args.device,
                                  args.merge, args.dtype, settings, tuple(args.guidance))))
        return 0
    results = both_modes(args, settings)
    w, wo = results["with"], results["without"]
    print(json.dumps({
        "bench": "temp-lora", "preset": args.preset, "device": args.device, "settings": _settings(args, settings),
        "without_temp_lora": wo, "with_temp_lora": w,
        "time_ratio": round(w["seconds_per_chunk"] / wo["seconds_per_chunk"], 4),
        "time_ratio_written_chunks": round(w["seconds_per_written_chunk"] / wo["seconds_per_chunk"], 4),
        "memory_ratio": round(w["peak_memory_mb"] / wo["peak_memory_mb"], 4),
        "paper_table3": PAPER_TABLE3, "machine": machine(),
    }, indent=2))
    return 0


PAPER_TABLE3 = {"time_ratio": round(13.8066 / 12.9305, 4), "memory_ratio": round(9931 / 9579, 4)}


def _settings(args: argparse.Namespace, settings: Any) -> dict:
    return {"sampler": "dpm-solver", "steps": args.steps, "guidance": {"image": args.guidance[0],
            "text": args.guidance[1]}, "dtype": args.dtype,
            "merge_for_sampling": args.merge, "temp_lora": args.temp_lora, "temp_lora_settings": asdict(settings),
            "chunk_frames": PRESETS[args.preset]["chunk"], "context_frames": PRESETS[args.preset]["context"]}


def components_main(args: argparse.Namespace, settings: Any) -> int:
    parts = run_components(args.preset, args.device, args.dtype, settings, args.repeats, args.steps,
                           args.update_only, args.warmup, tuple(args.guidance))
    out = {"bench": "temp-lora --components", "preset": args.preset, "device": args.device,
           "settings": {**_settings(args, settings), "repeats": args.repeats, "warmup": args.warmup}, **parts,
           "paper_table3": PAPER_TABLE3}
    if args.end_to_end and not args.update_only:
        peak_reset(torch.device(args.device))  # this process's UNet is gone: hand its memory back before the children
        results = both_modes(args, settings)
        ph, n = parts["phases"], args.steps
        composed = (n * ph["sample_step_merged" if args.merge else "sample_step_lora_unmerged"]["seconds"]
                    + ph["update"]["seconds"] + (ph["merge_unmerge"]["seconds"] if args.merge else 0.0))
        out["end_to_end"] = {
            "chunks": args.chunks, "steps": n, "merge_for_sampling": args.merge,
            "without": results["without"], "with": results["with"],
            "measured_time_ratio": round(results["with"]["seconds_per_chunk"] / results["without"]["seconds_per_chunk"], 4),
            "composed_time_ratio": round(composed / (n * ph["sample_step_without_lora"]["seconds"]), 4),
        }
    out["machine"] = machine()
    print(json.dumps(out, indent=2))
    return 0


def both_modes(args: argparse.Namespace, settings: Any) -> dict[str, dict]:
    """Each mode (without / with Temp-LoRA) in a fresh subprocess, so that each peak is its own."""
    results = {}
    for mode in ("without", "with"):
        cmd = [sys.executable, "-m", "slowfast_vgen.cli", "bench", "temp-lora", "--child", mode,
               "--preset", args.preset, "--chunks", str(args.chunks), "--steps", str(args.steps),
               "--device", args.device, "--dtype", args.dtype, "--settings-json", json.dumps(asdict(settings)),
               "--guidance", *(str(g) for g in args.guidance),
               *(["--merge"] if args.merge else [])]
        print(f"bench: {mode} Temp-LoRA, {args.chunks} chunks (a child process) ...", file=sys.stderr, flush=True)
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    return results
