"""``sfvgen generate``: a long video from a first frame and a stream of actions, with Temp-LoRA memory.

    sfvgen generate -c experiments/world_demo.yaml --actions actions.txt            # one action per line
    sfvgen generate -c experiments/world_demo.yaml --actions -                      # type actions, Ctrl-D ends
    sfvgen generate ... --memory-out world.safetensors   # save the episode's memory and last context
    sfvgen generate ... --memory-in world.safetensors    # continue that world later

The model comes from the experiment YAML plus ``--weights`` (UNet safetensors) or ``--ckpt`` (Lightning
checkpoint, read with ``weights_only=True``). Frames are written as mp4 (streamed) and GIF.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from slowfast_vgen.errors import ArgumentParser, UserInputError, positive_int
from slowfast_vgen.io import atomic_path, to_uint8_frames


def read_actions(source: str) -> Iterator[str]:
    """Actions from a file (one per line, # comments) or, with ``-``, interactively from stdin."""
    if source == "-":
        interactive = sys.stdin.isatty()
        while True:
            if interactive:
                print("action> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line or (interactive and not line.strip()):
                return
            if line.strip() and not line.startswith("#"):
                yield line.strip()
        return
    path = Path(source)
    if not path.is_file():
        raise UserInputError(f"--actions {source!r}: file not found; expected a text file with one action per line, or -")
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines:
        raise UserInputError(f"--actions {source!r} holds no action; expected one action per line")
    yield from lines


def load_first_frame(path: str | None, size: int, world_seed: int, world: dict) -> torch.Tensor:
    """(1, 1, 3, size, size) in [0, 1]: an image file resized, or a start view of the built-in world."""
    if path is None:
        from slowfast_vgen.simulators.world import World

        w = World(seed=world_seed, cells=world["cells"], cell_size=world["cell_size"], view_size=world["view_size"])
        return torch.from_numpy(w.render(0, 0))[None, None]
    import imageio.v3 as iio

    try:
        image = iio.imread(path)
    except Exception as err:  # imageio raises many types for unreadable files
        raise UserInputError(f"--first {path!r}: cannot read an image ({err.__class__.__name__})") from None
    image = image[0] if image.ndim == 4 else image  # a video: its first frame
    x = torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1).float()[None] / 255
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x.clamp(0, 1)[None]


def load_model(config: str, weights: str | None, ckpt: str | None):
    from slowfast_vgen.experiment import load_system

    cli = load_system(config, weights, ckpt)
    hp = getattr(cli.datamodule, "hparams", {})
    world = {k: hp.get(k) for k in ("cells", "cell_size", "view_size", "speed")}
    return cli.model.eval(), world


def main(argv: list[str] | None = None) -> int:
    from slowfast_vgen.experiment import DEFAULT_CONFIG, DEFAULT_WEIGHTS
    from slowfast_vgen.lora import VARIANTS, TempLoRA

    p = ArgumentParser(prog="sfvgen generate", description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS) if DEFAULT_WEIGHTS.is_file() else None)
    p.add_argument("--ckpt", default=None)
    p.add_argument("--actions", required=True, help="a file with one action per chunk, or - for stdin")
    p.add_argument("--first", default=None, help="an image (or video: first frame); default: the built-in world")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--out", default="outputs/generate/video", help="output path without extension")
    p.add_argument("--fps", type=positive_int, default=6)
    p.add_argument("--upscale", type=positive_int, default=8)
    p.add_argument("--steps", type=positive_int, default=None, help="sampling steps (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-temp-lora", action="store_true", help="generate without fast learning")
    p.add_argument("--rank", type=positive_int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--updates-per-chunk", type=positive_int, default=1)
    p.add_argument("--variant", default="temp-lora", choices=VARIANTS)
    p.add_argument("--single-frame-context", action="store_true",
                   help="Table 4 'wo chunk input': condition each chunk on the last frame only")
    p.add_argument("--memory-in", default=None, help="continue a world saved with --memory-out")
    p.add_argument("--memory-out", default=None, help="save the episode's memory (safetensors)")
    args = p.parse_args(argv)
    actions = read_actions(args.actions)
    if args.actions != "-":
        actions = iter(list(actions))  # check the file before loading the model

    system, world = load_model(args.config, args.weights, args.ckpt)
    if args.steps is not None:
        system.sampler.num_inference_steps = args.steps
    gen = system.generator
    if args.single_frame_context:
        gen.context_frames = 1
    learner = None
    if not args.no_temp_lora:
        learner = TempLoRA(system.unet, system.diffusion, rank=args.rank, lr=args.lr,
                           steps_per_chunk=args.updates_per_chunk, variant=args.variant)
        gen.temp_lora = learner
    first = load_first_frame(args.first, world["view_size"] or 16, args.world_seed, world)
    context = None
    if args.memory_in:
        if learner is None:
            raise UserInputError("--memory-in needs Temp-LoRA; drop --no-temp-lora")
        context = learner.load(args.memory_in).get("context")
        first = system.autoencoder.decode(context)[:, -1:]
    frames = [to_uint8_frames(first[0], args.upscale)]
    out = Path(args.out)
    import imageio.v3 as iio

    mp4 = out.with_name(out.name + ".mp4")
    last_context = None
    with atomic_path(mp4) as tmp, iio.imopen(tmp, "w", plugin="pyav") as writer:
        writer.init_video_stream("libx264", fps=args.fps, pixel_format="yuv420p")
        for frame in frames[0]:
            writer.write_frame(frame)
        t0 = time.perf_counter()
        for chunk in gen.stream(first, actions, seed=args.seed, context_latents=context):
            u8 = to_uint8_frames(chunk.video[0], args.upscale)
            for frame in u8:
                writer.write_frame(frame)
            frames.append(u8)
            last_context = chunk.latents
            note = f", Temp-LoRA loss {chunk.update.loss:.4f}" if chunk.update else ""
            note = f", Temp-LoRA not written: {chunk.update.reason}" if chunk.update and chunk.update.skipped else note
            note += " (rolled back)" if chunk.update and chunk.update.rolled_back else ""
            print(f"chunk {chunk.index + 1}: {chunk.action!r} in {time.perf_counter() - t0:.1f} s{note}", flush=True)
            t0 = time.perf_counter()
    if len(frames) == 1:
        raise UserInputError("no action was given; nothing generated")
    gif = out.with_name(out.name + ".gif")
    with atomic_path(gif) as tmp:
        iio.imwrite(tmp, np.concatenate(frames), extension=".gif", plugin="pillow", duration=int(1000 / args.fps), loop=0)
    if args.memory_out and learner is not None:
        learner.save(args.memory_out, extra={"context": last_context})
        print(f"memory: {Path(args.memory_out).resolve()}")
    print(f"video: {mp4.resolve()} and {gif.resolve()} ({sum(len(f) for f in frames)} frames)")
    return 0
