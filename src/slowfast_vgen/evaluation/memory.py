"""Where memory is needed, and whether it is there: the revisit score on the pixels that left the window.

A long video is generated chunk by chunk, each chunk seeing only the last ``f_p`` frames (its context). When
the camera comes back to a place, the part of the view that none of those context frames shows can only be
right if the model remembers it (paper Sec. 3.2: Temp-LoRA as episodic memory). Whole-frame scores (SRC,
PSNR of whole frames) mix those pixels with the ones the context shows, which any model can copy, and with
places that were invented on the way out. This module scores only the pixels that need memory:

* :func:`memory_masks`: for every later visit ``j`` of a revisit group, the pixels of frame ``j`` whose world
  position none of the context frames of ``j``'s chunk showed;
* :func:`revisit_memory_score`: squared error of those pixels against the first visit *as generated* (the
  video's own earlier frame at the same camera position; for frame 0 that is the real first frame), pooled
  over the episode, and its PSNR.

It needs the camera position of every frame (``positions`` on a torus of side ``world_size``): the built-in
world has them exactly; recorded episodes carry them as poses.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from slowfast_vgen.errors import ArgumentParser, UserInputError
from slowfast_vgen.models.unet import unet_output
from slowfast_vgen.seeds import stable_seed


def chunk_contexts(n_frames: int, chunk_frames: int, context_frames: int, first_frames: int = 1) -> dict[int, list[int]]:
    """Frame index -> the context frames of the chunk that generated it (as :class:`LongVideoGenerator` does).

    Frames ``0 .. first_frames-1`` are given (no context); chunk ``c`` generates frames
    ``first_frames + c*f_g ...`` from the last ``f_p`` frames before it.
    """
    out = {}
    for j in range(first_frames, n_frames):
        start = first_frames + (j - first_frames) // chunk_frames * chunk_frames
        out[j] = list(range(max(0, start - context_frames), start))
    return out


def memory_masks(
    positions: torch.Tensor,
    world_size: int,
    view: int,
    frames: list[int],
    chunk_frames: int,
    context_frames: int,
    first_frames: int = 1,
) -> dict[int, torch.Tensor]:
    """For each frame in ``frames``: a (view, view) bool mask, True where no context frame of its chunk
    showed that world position. ``positions`` (T, 2) as (x, y): pixel (r, c) of frame t shows world
    (x_t + c, y_t + r) mod ``world_size``."""
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise UserInputError(f"memory_masks: positions must be (T, 2) (x, y), got {tuple(positions.shape)}")
    contexts = chunk_contexts(positions.shape[0], chunk_frames, context_frames, first_frames)
    offsets = torch.arange(view)
    masks = {}
    for j in frames:
        if j not in contexts:
            raise UserInputError(f"memory_masks: frame {j} is not generated (0 <= given < {first_frames} or >= "
                                 f"{positions.shape[0]} frames)")
        x, y = (int(v) for v in positions[j])
        wx, wy = (x + offsets) % world_size, (y + offsets) % world_size  # world columns / rows of frame j
        seen = torch.zeros(view, view, dtype=torch.bool)
        for k in contexts[j]:
            kx, ky = (int(v) for v in positions[k])
            in_x = (wx - kx) % world_size < view  # (view,) columns of j that frame k shows
            in_y = (wy - ky) % world_size < view
            seen |= in_y[:, None] & in_x[None, :]
        masks[j] = ~seen
    return masks


def revisit_memory_score(
    video: torch.Tensor,
    revisits: list[tuple[int, list[int]]],
    positions: torch.Tensor,
    world_size: int,
    chunk_frames: int,
    context_frames: int,
    first_frames: int = 1,
) -> dict[str, float]:
    """Fidelity of the revisited pixels that left the window, against the first visit as generated.

    ``video`` (T, C, V, V) in [0, 1]; ``revisits``: (first visit, [later visits]) at equal positions.
    Returns ``Revisit MSE`` (pooled over every masked pixel of every later visit), ``Revisit PSNR``
    (10 log10(1 / MSE), capped at 100 dB) and ``memory pixels`` (how many pixels were scored; 0 when the
    episode never needs memory, and then the scores are NaN).
    """
    if video.shape[0] != positions.shape[0]:
        raise UserInputError(f"revisit_memory_score: {video.shape[0]} frames but {positions.shape[0]} positions")
    later = sorted({j for _, js in revisits for j in js})
    masks = memory_masks(positions, world_size, video.shape[-1], later, chunk_frames, context_frames, first_frames)
    total, count = 0.0, 0
    for i, js in revisits:
        for j in js:
            m = masks[j]
            if m.any():
                diff = (video[j].float() - video[i].float())[:, m]  # (C, pixels)
                total += float((diff**2).sum())
                count += diff.numel()
    return _pooled(total, count, video.shape[1])


def _pooled(total: float, count: int, channels: int) -> dict[str, float]:
    if count == 0:
        return {"Revisit MSE": math.nan, "Revisit PSNR": math.nan, "memory pixels": 0.0}
    mse = total / count
    return {"Revisit MSE": mse, "Revisit PSNR": min(100.0, 10 * math.log10(1.0 / max(mse, 1e-10))),
            "memory pixels": float(count // channels)}


def revisit_frame_score(video: torch.Tensor, revisits: list[tuple[int, list[int]]]) -> dict[str, float]:
    """The revisit score of recorded episodes, where a revisit is a whole frame (a pose, not a pixel's place:
    :mod:`slowfast_vgen.datamodules.recorded` keeps only the later visits whose place left the window).

    Squared error of each later visit against the first visit as generated (a given frame is the real one),
    pooled over the episode; the same keys as :func:`revisit_memory_score` (NaN when nothing needs memory).
    """
    total, count = 0.0, 0
    for i, js in revisits:
        for j in js:
            diff = video[j].float() - video[i].float()
            total += float((diff**2).sum())
            count += diff.numel()
    return _pooled(total, count, video.shape[1])


# -- diagnostics: is the memory written, is it read, what does it damage? ----------------------------------
# Teacher-forced on the environment's real frames (no sampling), so each number isolates the update itself:
# Theta is written on the real outward chunks of a retrace episode, as the generator would write it, then
# losses are compared with Theta on and off at fixed timesteps and noise.
DIAGNOSTIC_TIMESTEPS = (100, 300, 500, 700, 900)


def write_memory(learner: Any, system: Any, episode: dict, chunks: int | None = None) -> list:
    """Fast learning over the first ``chunks`` chunks of ``episode`` (default: the outward half of a retrace
    episode) with the real frames standing in for generated ones; returns the update records."""
    gen = system.generator
    z = system.encode_video(episode["frames"][None].to(system.device))  # (1, C, T, h, w)
    null = system.encode_text([""])
    chunks = len(episode["actions"]) // 2 if chunks is None else chunks
    records = []
    for c in range(chunks):
        s = 1 + c * gen.chunk_frames
        ctx = z[:, :, max(0, s - gen.context_frames) : s]
        action = episode["actions"][c]
        back = learner.reverse_action(action)
        records.append(learner.update(ctx, z[:, :, s : s + gen.chunk_frames], null, system.encode_text([action]),
                                      None if back is None else system.encode_text([back])))
    learner.write_waiting()  # write_every: Theta is measured next, so what waits is written (as before a read)
    return records


def _latent_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """(V, V) pixel mask -> (size, size) latent mask: True where every pixel of the latent cell is True."""
    pooled = torch.nn.functional.adaptive_avg_pool2d(mask[None, None].float(), size)[0, 0]
    return pooled > 1 - 1e-6


def measure_memory(
    learner: Any,
    system: Any,
    episode: dict,
    unseen: dict | None = None,
    timesteps: tuple[int, ...] = DIAGNOSTIC_TIMESTEPS,
    seed: int = 0,
    chunks: int | None = None,
) -> dict[str, float]:
    """Losses with Theta on and off (fixed timesteps and noise), and the three numbers they give:

    * ``written``: 1 - L_on / L_off of Eq. 3's loss (whole clip noised, no text) on the chunks Theta was
      trained on (> 0: the update stored them);
    * ``return_eq3``: the same on the return chunks (the same places, played backwards);
    * ``read``: 1 - L_on / L_off in the sampler's regime (clean context, noised targets, the action text) on
      the return chunks, on the latent positions that need memory (not shown by the context; pooled over them, as
      the benchmark pools pixels): > 0 means the model denoises what it must remember better with Theta;
    * ``damage_context``: L_on / L_off - 1 in the sampler's regime on the positions the context shows (copying);
    * ``damage_unseen``: the same on every target position of another episode's chunks (``unseen``).
    """
    gen, diffusion = system.generator, system.diffusion
    f_g, f_p = gen.chunk_frames, gen.context_frames
    n_out = len(episode["actions"]) // 2 if chunks is None else chunks
    z = system.encode_video(episode["frames"][None].to(system.device))
    null = system.encode_text([""])
    view, h = episode["frames"].shape[-1], z.shape[-1]
    n_chunks = (z.shape[2] - 1) // f_g

    def clip(c: int, ep_z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = 1 + c * f_g
        return ep_z[:, :, max(0, s - f_p) : s], ep_z[:, :, s : s + f_g]

    def predict(noisy, t, text, on: bool) -> torch.Tensor:
        with torch.no_grad():
            learner.set_enabled(on)
            return unet_output(system.unet, noisy, t, text).float()

    def losses(ctx, tgt, text, mask, clean: bool, salt: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked squared error at each of ``timesteps`` with Theta on and off (the same noisy inputs; the noise
        of a timestep does not depend on the others)."""
        z0 = torch.cat([ctx, tgt], dim=2)
        m = mask.to(z0.device)[None, None]  # (1, 1, F, h, w)
        inputs = []
        for t_val in timesteps:
            g = torch.Generator().manual_seed(stable_seed("memory-noise", seed, salt, t_val))
            noise = torch.randn(z0.shape, generator=g)
            noise = noise.to(z0.device, z0.dtype)
            t = torch.full((1,), t_val, dtype=torch.long, device=z0.device)
            noisy = diffusion.add_noise(z0, noise, t)
            if clean:  # the sampler's regime: the context frames stay clean
                noisy = torch.cat([ctx, noisy[:, :, ctx.shape[2]:]], dim=2)
            inputs.append((noisy, t, diffusion.target(z0, noise, t).float()))
        out = []
        for on in (True, False):
            per_t = []
            for noisy, t, target in inputs:
                err = (predict(noisy, t, text, on) - target) ** 2  # (1, C, F, h, w)
                per_t.append(float((err * m).sum() / (m.sum() * err.shape[1]).clamp(min=1)))
            out.append(torch.tensor(per_t, dtype=torch.float64))
        learner.set_enabled(True)
        return out[0], out[1]

    # per-timestep sums over chunks; each number below is a ratio of their means over the timesteps
    seen_on, seen_off, ret_on, ret_off, mem_on, mem_off, vis_on, vis_off = torch.zeros(8, len(timesteps), dtype=torch.float64)
    mem_n = vis_n = 0
    for c in range(n_chunks):
        ctx, tgt = clip(c, z)
        every = torch.ones(ctx.shape[2] + f_g, h, h, dtype=torch.bool)
        on, off = losses(ctx, tgt, null, every, clean=False, salt=c)
        if c < n_out:
            seen_on, seen_off = seen_on + on, seen_off + off
            continue
        ret_on, ret_off = ret_on + on, ret_off + off
        frames = list(range(1 + c * f_g, 1 + (c + 1) * f_g))
        pix = memory_masks(episode["positions"], int(episode["world_size"]), view, frames, f_g, f_p)
        mem = torch.stack([_latent_mask(pix[j], h) for j in frames])  # (f_g, h, h)
        vis = torch.stack([_latent_mask(~pix[j], h) for j in frames])
        pad = torch.zeros(ctx.shape[2], h, h, dtype=torch.bool)
        text = system.encode_text([episode["actions"][c]])
        # pooled over latent cells, as the benchmark's Revisit MSE pools pixels: a chunk weighs by how much of it
        # needs memory (the turn's chunk has a few cells, the return's later ones half their frames)
        if mem.any():
            on, off = losses(ctx, tgt, text, torch.cat([pad, mem]), clean=True, salt=100 + c)
            k = int(mem.sum())
            mem_on, mem_off, mem_n = mem_on + k * on, mem_off + k * off, mem_n + k
        if vis.any():
            on, off = losses(ctx, tgt, text, torch.cat([pad, vis]), clean=True, salt=200 + c)
            k = int(vis.sum())
            vis_on, vis_off, vis_n = vis_on + k * on, vis_off + k * off, vis_n + k
    mean = lambda x: float(x.mean())  # noqa: E731
    out = {
        "written": 1 - mean(seen_on) / mean(seen_off),
        "return_eq3": 1 - mean(ret_on) / mean(ret_off) if mean(ret_off) else math.nan,
        "read": 1 - mean(mem_on) / mean(mem_off) if mem_n else math.nan,
        "damage_context": mean(vis_on) / mean(vis_off) - 1 if vis_n else math.nan,
        # the read at each timestep: where in the noise levels (layout high, details low) Theta is read
        "read_by_timestep": {int(t): (1 - float(a / b)) if mem_n else math.nan
                             for t, a, b in zip(timesteps, mem_on, mem_off)},
        "loss": {"seen": [mean(seen_on) / max(n_out, 1), mean(seen_off) / max(n_out, 1)],
                 "memory": [mean(mem_on) / max(mem_n, 1), mean(mem_off) / max(mem_n, 1)],
                 "context": [mean(vis_on) / max(vis_n, 1), mean(vis_off) / max(vis_n, 1)]},
    }
    if unseen is not None:
        zu = system.encode_video(unseen["frames"][None].to(system.device))
        u_on, u_off = torch.zeros(2, len(timesteps), dtype=torch.float64)
        for c in range((zu.shape[2] - 1) // f_g):
            ctx, tgt = clip(c, zu)
            every = torch.cat([torch.zeros(ctx.shape[2], h, h, dtype=torch.bool), torch.ones(f_g, h, h, dtype=torch.bool)])
            on, off = losses(ctx, tgt, system.encode_text([unseen["actions"][c]]), every, clean=True, salt=300 + c)
            u_on, u_off = u_on + on, u_off + off
        out["damage_unseen"] = mean(u_on) / mean(u_off) - 1
        out["loss"]["unseen"] = [mean(u_on), mean(u_off)]
    return out


def memory_diagnostics(system: Any, episodes: list[dict], unseen: list[dict], lora: Any,
                       timesteps: tuple[int, ...] = DIAGNOSTIC_TIMESTEPS, progress: bool = False) -> dict:
    """Write a fresh Temp-LoRA (``lora``: a :class:`slowfast_vgen.temp_lora.TempLoRASettings` or dict) on each episode's
    outward leg, measure it (:func:`measure_memory`, with ``unseen[i]`` for damage), remove it; returns the
    per-episode numbers and their means and standard deviations."""
    from tqdm.auto import tqdm

    from dataclasses import asdict

    from slowfast_vgen.temp_lora import TempLoRA, TempLoRASettings

    if len(unseen) != len(episodes):
        raise UserInputError(f"memory_diagnostics: {len(episodes)} episodes but {len(unseen)} unseen episodes")
    per_episode = []
    for ep, other in tqdm(list(zip(episodes, unseen)), desc="memory", disable=not progress):
        learner = TempLoRA(system.unet, system.diffusion, lora)
        try:
            records = write_memory(learner, system, ep)
            scores = measure_memory(learner, system, ep, other, timesteps, seed=int(ep.get("seed", 0)))
            scores["rollbacks"] = sum(r.rolled_back for r in records)
        finally:
            learner.remove()
        per_episode.append(scores)
    keys = ["written", "return_eq3", "read", "damage_context", "damage_unseen", "rollbacks"]
    summary = {}
    for k in keys:
        vals = [float(s[k]) for s in per_episode if k in s and not math.isnan(float(s[k]))]
        if vals:
            mean = sum(vals) / len(vals)
            std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
            summary[k] = {"mean": mean, "std": std, "n": len(vals)}
    by_t = {}
    for t in timesteps:
        vals = [float(s["read_by_timestep"][int(t)]) for s in per_episode]
        vals = [v for v in vals if not math.isnan(v)]
        if vals:
            by_t[int(t)] = sum(vals) / len(vals)
    summary["read_by_timestep"] = by_t
    return {"summary": summary, "episodes": per_episode, "timesteps": list(timesteps),
            "lora": asdict(TempLoRASettings.build(lora))}


def main(argv: list[str] | None = None) -> int:
    """``sfvgen bench memory``: written / read / damage of Temp-LoRA on the built-in world, as JSON."""
    import json
    import time

    from slowfast_vgen.machine import machine
    from slowfast_vgen.simulators.world import REVERSE, revisit_episode
    from slowfast_vgen.temp_lora import add_options, settings_from_args
    from slowfast_vgen.experiment import DEFAULT_CONFIG, DEFAULT_WEIGHTS
    from slowfast_vgen.io import atomic_path
    from slowfast_vgen.experiment import load_system

    parser = ArgumentParser(prog="sfvgen bench memory", description=main.__doc__.split(": ", 1)[1])
    parser.add_argument("-c", "--config", default=str(DEFAULT_CONFIG), help="experiment (default: the demo's)")
    parser.add_argument("--weights", default=None, help="UNet safetensors (default: the shipped demo model "
                        "with the default config, else the config's own initialisation)")
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--seed", type=int, default=10_000, help="seed of the first retrace episode")
    parser.add_argument("--chunks-out", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--timesteps", type=int, nargs="+", default=list(DIAGNOSTIC_TIMESTEPS),
                        help="the fixed diffusion timesteps the losses are measured at (each also reported alone, "
                        "as read_by_timestep)")
    add_options(parser)
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.chunks_out < 1:
        raise UserInputError(f"--episodes and --chunks-out must be >= 1, got {args.episodes}, {args.chunks_out}")
    weights = args.weights or (str(DEFAULT_WEIGHTS) if args.config == str(DEFAULT_CONFIG) else None)
    start = time.perf_counter()
    cli = load_system(args.config, weights, overrides=["--trainer.enable_checkpointing", "false"])
    system = cli.model.eval()
    hp = cli.datamodule.hparams
    missing = [k for k in ("cells", "cell_size", "view_size", "speed") if k not in hp]
    if missing:
        raise UserInputError(f"bench memory needs an experiment on the built-in world (its data has no {missing}); "
                             f"got {args.config!r}")
    world = {k: hp[k] for k in ("cells", "cell_size", "view_size", "speed")}
    gen = system.generator
    make = lambda s: revisit_episode(s, chunk_frames=gen.chunk_frames, chunks_out=args.chunks_out,  # noqa: E731
                                     min_gap=gen.chunk_frames + gen.context_frames, **world)
    episodes = [make(args.seed + i) for i in range(args.episodes)]
    unseen = [make(args.seed + 500_000 + i) for i in range(args.episodes)]
    steps = system.diffusion.num_train_timesteps
    if any(not 0 <= t < steps for t in args.timesteps):
        raise UserInputError(f"--timesteps {args.timesteps}: each must be in [0, {steps}) (the model's training timesteps)")
    result = memory_diagnostics(system, episodes, unseen, settings_from_args(args, REVERSE), tuple(args.timesteps),
                                progress=True)
    result.update(bench="memory", config=args.config, weights=weights, first_seed=args.seed,
                  seconds=round(time.perf_counter() - start, 1), machine=machine())
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(text)
    return 0


def plot_search(rows: list[dict[str, Any]], path: str, title: str = "Temp-LoRA variants") -> None:
    """One bar group per variant: ``read`` (higher is better), ``damage_context`` and ``damage_unseen`` (lower is
    better), as in a table of :func:`memory_diagnostics` summaries (``rows``: dicts with ``name`` and the keys)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slowfast_vgen.io import atomic_path

    keys = [("read", "read (memory pixels)", "tab:green"), ("damage_context", "damage: copying", "tab:orange"),
            ("damage_unseen", "damage: unseen episodes", "tab:red")]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.6), dpi=110)
    height = 0.8 / len(keys)
    for k, (key, label, color) in enumerate(keys):
        ax.barh([i + k * height for i in range(len(rows))], [100 * float(r.get(key, math.nan)) for r in rows],
                height=height, color=color, label=label)
    ax.set_yticks([i + height for i in range(len(rows))], [r["name"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("% change of the loss with Theta (read: drop, higher is better; damage: rise, lower is better)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
