"""``sfvgen generate``: a long video from a first frame and a stream of actions, with Temp-LoRA memory.

    sfvgen generate -c experiments/world_demo.yaml --actions actions.txt            # one action per line
    sfvgen generate -c experiments/world_demo.yaml --actions -                      # type actions, Ctrl-D ends
    sfvgen generate ... --memory-out world.safetensors   # save the episode's memory, last context and noise state
    sfvgen generate ... --memory-in world.safetensors    # continue that world later, as if never stopped

The model comes from the experiment YAML plus ``--weights`` (UNet safetensors) or ``--ckpt`` (Lightning
checkpoint, read with ``weights_only=True``). Frames are written as mp4 (streamed) and GIF (``--npy``: also the
exact frames). Temp-LoRA runs with the settings of every command (``--temp-lora PRESET`` and overrides; default:
the configuration that remembers) and the preset's guidance.
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


def load_first_frame(path: str | None, size: int, world_seed: int, world: dict, episode: int | None = None) -> torch.Tensor:
    """(1, 1, 3, size, size) in [0, 1]: an image file resized, the first frame of the built-in world's revisit
    episode ``episode`` (the demo's episode of that seed), or a start view of the built-in world."""
    if episode is not None:
        from slowfast_vgen.simulators.world import revisit_episode

        return revisit_episode(episode, **{k: v for k, v in world.items() if v is not None})["first"][None]
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
    from slowfast_vgen.temp_lora import PRESET_GUIDANCE, TempLoRA, add_options, settings_from_args

    p = ArgumentParser(prog="sfvgen generate", description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS) if DEFAULT_WEIGHTS.is_file() else None)
    p.add_argument("--ckpt", default=None)
    p.add_argument("--actions", required=True, help="a file with one action per chunk, or - for stdin")
    p.add_argument("--first", default=None, help="an image (or video: first frame); default: the built-in world")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--world-episode", type=int, default=None, metavar="SEED",
                   help="start from the first frame of the built-in world's revisit episode SEED (as `sfvgen demo "
                        "--seed SEED` generates it)")
    p.add_argument("--out", default="outputs/generate/video", help="output path without extension")
    p.add_argument("--fps", type=positive_int, default=6)
    p.add_argument("--upscale", type=positive_int, default=8)
    p.add_argument("--steps", type=positive_int, default=None, help="sampling steps (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, nargs=2, default=None, metavar=("IMAGE", "TEXT"),
                   help="guidance scales of the context and the action text (default: the Temp-LoRA preset's)")
    p.add_argument("--npy", action="store_true", help="also write the frames, exact, as OUT.npy (uint8, T x H x W x 3)")
    p.add_argument("--no-temp-lora", action="store_true", help="generate without fast learning")
    add_options(p)
    p.add_argument("--single-frame-context", action="store_true",
                   help="Table 4 'wo chunk input': condition each chunk on the last frame only")
    p.add_argument("--memory-in", default=None, help="continue a world saved with --memory-out")
    p.add_argument("--memory-out", default=None, help="save the episode's memory (safetensors)")
    args = p.parse_args(argv)
    guidance = args.guidance or PRESET_GUIDANCE[args.temp_lora]
    if not all(g > 0 for g in guidance):
        raise UserInputError(f"--guidance {guidance[0]:g} {guidance[1]:g}: both scales must be > 0 (1: no guidance)")
    reverse = None
    if args.first is None:  # the built-in world declares its action reversals with its data
        from slowfast_vgen.simulators.world import REVERSE as reverse
    settings = None if args.no_temp_lora else settings_from_args(args, reverse)
    if settings is not None and settings.turn_back_note():
        print(f"Temp-LoRA: {settings.turn_back_note()}")
    actions = read_actions(args.actions)
    if args.actions != "-":
        actions = iter(list(actions))  # check the file before loading the model

    system, world = load_model(args.config, args.weights, args.ckpt)
    if args.steps is not None:
        system.sampler.num_inference_steps = args.steps
    system.sampler.guidance_image, system.sampler.guidance_text = guidance
    gen = system.generator
    if args.single_frame_context:
        gen.context_frames = 1
    learner = None
    if settings is not None:
        learner = TempLoRA(system.unet, system.diffusion, settings)
        gen.temp_lora = learner
    if args.world_episode is not None and args.first is not None:
        raise UserInputError("--first and --world-episode both give the first frame: use one")
    first = load_first_frame(args.first, world["view_size"] or 16, args.world_seed, world, args.world_episode)
    context = sampler_state = None
    if args.memory_in:
        if learner is None:
            raise UserInputError("--memory-in needs Temp-LoRA; drop --no-temp-lora")
        saved = learner.load(args.memory_in)
        if "context" not in saved:
            raise UserInputError(f"--memory-in {args.memory_in!r} holds no context latents; expected a file written "
                                 "by `sfvgen generate --memory-out`")
        context, sampler_state = saved["context"].to(system.device), saved.get("sampler_state")
        first = system.autoencoder.decode(context)[:, -1:]
    frames = [to_uint8_frames(first[0], args.upscale)]
    out = Path(args.out)
    import imageio.v3 as iio

    mp4 = out.with_name(out.name + ".mp4")
    last = None
    running = context if context is not None else system.autoencoder.encode(first.to(system.device))
    with atomic_path(mp4) as tmp, iio.imopen(tmp, "w", plugin="pyav") as writer:
        writer.init_video_stream("libx264", fps=args.fps, pixel_format="yuv420p")
        for frame in frames[0]:
            writer.write_frame(frame)
        t0 = time.perf_counter()
        for chunk in gen.stream(first, actions, seed=args.seed, context_latents=context, sampler_state=sampler_state):
            u8 = to_uint8_frames(chunk.video[0], args.upscale)
            for frame in u8:
                writer.write_frame(frame)
            frames.append(u8)
            last = chunk
            running = torch.cat([running, chunk.latents], 2)[:, :, -gen.context_frames :]  # the next chunk's context
            u = chunk.update
            note = "" if u is None else f", Theta {'read' if u.read else 'not read'}, Temp-LoRA loss {u.loss:.4f}"
            note += " (rolled back)" if u is not None and u.rolled_back else ""
            print(f"chunk {chunk.index + 1}: {chunk.action!r} in {time.perf_counter() - t0:.1f} s{note}", flush=True)
            t0 = time.perf_counter()
    if len(frames) == 1:
        raise UserInputError("no action was given; nothing generated")
    gif = out.with_name(out.name + ".gif")
    with atomic_path(gif) as tmp:
        iio.imwrite(tmp, np.concatenate(frames), extension=".gif", plugin="pillow", duration=int(1000 / args.fps), loop=0)
    if args.npy:
        with atomic_path(out.with_name(out.name + ".npy")) as tmp, open(tmp, "wb") as f:
            np.save(f, np.concatenate(frames), allow_pickle=False)
    if args.memory_out and learner is not None:
        learner.save(args.memory_out, extra={"context": running, "sampler_state": last.sampler_state})
        print(f"memory: {Path(args.memory_out).resolve()}")
    print(f"video: {mp4.resolve()} and {gif.resolve()} ({sum(len(f) for f in frames)} frames)")
    return 0
