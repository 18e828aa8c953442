"""``sfvgen demo`` (= ``make demo``): the paper's revisit benchmark on a CPU, with no download.

1. Build the demo model from ``experiments/world_demo.yaml`` (shipped inside the package as
   ``slowfast_vgen/configs/world_demo.yaml``, a symlink the wheel build resolves, so that a non-editable install finds it) and
   load the shipped weights (``slowfast_vgen/assets/world_demo.safetensors``); without them, train for
   ``--train-minutes``.
2. Generate revisit episodes of the built-in world (leave a place, come back) with and without
   Temp-LoRA, through ``trainer.predict`` and the TempLoRA callback; by default with the Temp-LoRA configuration
   that remembers at the lowest price found (``episodic-lazy``, unguided; docs/memory.md, Search 15).
3. Score them (SRC, SCuts, PSNR/SSIM at revisited frames vs the real world) and write a report folder:
   ``index.html``, ``report.md``, ``results.json``, ``similarity.png``, ``videos/*.mp4|gif``.

``--shards DIR`` takes the episodes from a recording with poses instead (e.g. ViZDoom or Memory Maze from ``sfvgen
data record``; :mod:`slowfast_vgen.datamodules.recorded`), with ``--config``/``--weights`` of a model trained on such
data (``experiments/doom_from_world.yaml``, ``experiments/maze_from_world.yaml``). A revisit is then what the
recording's own tolerances say (Memory Maze's), and the memory scores are also split by the episodes' revisit
pattern where the recording has one (``memory_by_pattern``).

``--memory frame-bank`` makes the arm with memory a frame bank instead of Temp-LoRA: where a chunk comes back to a
place that has left its context, the frame generated there before is shown to the model again, looked up by the
episode's poses (:mod:`slowfast_vgen.generation.frame_bank`; no training, no gradient step).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from slowfast_vgen.errors import ArgumentParser, UserInputError, nonnegative_int, positive_int
from slowfast_vgen.experiment import DEFAULT_CONFIG, DEFAULT_WEIGHTS


def build_demo_system(config: Path, weights: Path | None, train_minutes: float, out: Path):
    """The demo LightningModule: shipped weights if present, else a short CPU training run."""
    from slowfast_vgen.experiment import load_system

    shipped = weights is not None and weights.is_file()
    overrides = ["--trainer.default_root_dir", str(out / "train"), "--trainer.enable_checkpointing", "false"]
    cli = load_system(str(config), str(weights) if shipped else None, overrides=overrides)
    system = cli.model
    hp = cli.datamodule.hparams
    # the world's settings, or (a shard-set experiment) the resolution it trains at
    world = {k: hp[k] for k in ("cells", "cell_size", "view_size", "speed", "resolution") if k in hp}
    if shipped:
        print(f"loaded the {'shipped demo model' if weights == DEFAULT_WEIGHTS else 'weights'}: {weights}")
        return system, world, {"weights": str(weights), "trained_here_minutes": 0}
    print(f"no weights at {weights}: training the demo model for {train_minutes} min on the built-in world")
    import lightning as L

    from slowfast_vgen.lightning_cli import default_progress_bar

    trainer = L.Trainer(
        max_time={"minutes": train_minutes}, max_steps=-1, accelerator="auto", devices=1, logger=False,
        enable_checkpointing=False, limit_val_batches=0, default_root_dir=str(out / "train"),
        callbacks=[default_progress_bar()],  # "Epoch N", not "Epoch N/-2" (the run is time-limited)
    )
    trainer.fit(system, cli.datamodule)
    return system, world, {"weights": None, "trained_here_minutes": train_minutes, "steps": trainer.global_step}


def main(argv: list[str] | None = None) -> int:
    from dataclasses import asdict

    from slowfast_vgen.temp_lora import PRESET_GUIDANCE, add_options, settings_from_args

    parser = ArgumentParser(prog="sfvgen demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--chunks-out", type=positive_int, default=3, help="chunks away from the start before returning")
    parser.add_argument("--steps", type=positive_int, default=20, help="DPM-Solver steps per chunk (paper: 20)")
    parser.add_argument("--guidance", type=float, nargs=2, default=None, metavar=("IMAGE", "TEXT"),
                        help="classifier-free guidance scales of the context and the action text (both arms; default: "
                             "the preset's: 1 1 (none) for the rehearsal presets, where their memory was measured; 2 5 "
                             "for paper, as the paper)")
    parser.add_argument("--memory", choices=("temp-lora", "frame-bank"), default="temp-lora",
                        help="the arm with memory: Temp-LoRA (the paper's; its options below), or frame-bank: the frame "
                             "generated where a chunk comes back to shown again in its context, looked up by the "
                             "episodes' poses (no training; the baseline on Memory Maze, docs/memory.md)")
    add_options(parser)
    parser.add_argument("--train-minutes", type=float, default=3.0, help="only used when no weights are found")
    parser.add_argument("--seed", type=int, default=10_000, help="seed of the first episode")
    parser.add_argument("--shards", type=Path, default=None,
                        help="revisit episodes recorded in a shard set with poses (e.g. `sfvgen data record`) instead "
                             "of the built-in world; use with --config/--weights of a model trained on such data")
    parser.add_argument("--first-episode", type=nonnegative_int, default=0,
                        help="--shards: start at this recorded episode (a long benchmark split into runs; the world "
                             "picks its episodes by --seed)")
    parser.add_argument("--pose-tolerance", type=float, default=None,
                        help="--shards: frames within this distance are one place (default: the data's own, gt "
                             "tolerance, e.g. Memory Maze's 0.25 cell; else 4.0, ViZDoom map units)")
    parser.add_argument("--angle-tolerance", type=float, default=None,
                        help="--shards: ... and within this angle in degrees (default: the data's own, e.g. Memory "
                             "Maze's 15; else 0.001, ViZDoom's same angle)")
    args = parser.parse_args(argv)
    args.guidance = args.guidance or PRESET_GUIDANCE[args.temp_lora]
    if args.shards is not None:  # the action reversals are declared with the data
        from slowfast_vgen.datamodules.shards.format import load_manifest

        if not args.shards.is_dir():
            raise UserInputError(f"--shards {str(args.shards)!r}: not a folder (expected a shard set with a "
                                 f"manifest.json, e.g. from `sfvgen data record`)")
        reverse = load_manifest(args.shards).get("reverse_actions")
    else:
        from slowfast_vgen.datamodules.world import WorldRevisitDataset

        reverse = WorldRevisitDataset.reverse_actions
    lora = settings_from_args(args, reverse)  # a bad Temp-LoRA value fails now, not after the arm without memory
    if lora.turn_back_note():
        print(f"Temp-LoRA: {lora.turn_back_note()}")
    if args.first_episode and args.shards is None:
        raise UserInputError(f"--first-episode {args.first_episode} picks recorded episodes: use it with --shards (the "
                             "built-in world's episodes are picked by --seed)")
    if not all(g > 0 for g in args.guidance):
        raise UserInputError(f"--guidance {args.guidance[0]:g} {args.guidance[1]:g}: both scales must be > 0 (1: no "
                             "guidance, the conditional prediction alone)")
    if args.episodes < 2:
        raise UserInputError(f"--episodes must be >= 2 to report a spread, got {args.episodes}")
    start = time.perf_counter()
    from slowfast_vgen.datamodules.world import WorldRevisitDataset
    from slowfast_vgen.evaluation.report import pattern_rows, write_report
    from slowfast_vgen.evaluation.revisit import generate_episodes, score_episodes
    from slowfast_vgen.metrics import SceneRevisitConsistency

    system, world, model_info = build_demo_system(args.config, args.weights, args.train_minutes, args.out)
    system.sampler.num_inference_steps = args.steps
    system.sampler.guidance_image, system.sampler.guidance_text = args.guidance
    chunk = system.generator.chunk_frames
    if args.shards is not None:
        from slowfast_vgen.datamodules.recorded import RecordedRevisitDataset

        episodes = RecordedRevisitDataset(args.shards, world.get("resolution"), chunk, system.generator.context_frames,
                                          episodes=args.episodes, pose_tolerance=args.pose_tolerance,
                                          angle_tolerance=args.angle_tolerance, first_episode=args.first_episode)
        tolerance = episodes[0]["tolerance"]  # what the benchmark counted as one place (the first episode's)
    else:
        world.pop("resolution", None)
        episodes = WorldRevisitDataset(args.episodes, seed=args.seed, chunk_frames=chunk, chunks_out=args.chunks_out,
                                       min_gap=chunk + system.generator.context_frames, **world)
    print(f"generating {args.episodes} revisit episodes without Temp-LoRA ...")
    arm_start = time.perf_counter()
    plain = generate_episodes(system, episodes, None)
    seconds_without = time.perf_counter() - arm_start
    bank = args.memory == "frame-bank"
    print(f"generating {args.episodes} revisit episodes with " + (
        "the frame bank (earlier frames shown again by pose) ..." if bank else
        f"Temp-LoRA ({args.temp_lora}: rank {lora.rank}, lr {lora.lr}, steps per chunk: {lora.steps_per_chunk}) ..."))
    arm_start = time.perf_counter()
    fast = generate_episodes(system, episodes, None if bank else lora, frame_bank=bank)
    seconds_with = time.perf_counter() - arm_start
    print("scoring ...")
    src = SceneRevisitConsistency(backbone="auto")
    how = dict(chunk_frames=chunk, context_frames=system.generator.context_frames)
    without, with_lora = score_episodes(plain, episodes, src, **how), score_episodes(fast, episodes, src, **how)
    settings = {
        "model": model_info, "config": str(args.config), "episodes": args.episodes, "first_seed": args.seed,
        "chunk_frames": chunk, "context_frames": system.generator.context_frames, "chunks_out_and_back": args.chunks_out,
        **({"shards": str(args.shards), "pose_tolerance": tolerance["position"], "first_episode": args.first_episode,
            "angle_tolerance": tolerance["angle"], "away": {k: tolerance[k] for k in ("away_distance", "away_angle")}}
           if args.shards is not None else {}),
        "sampler": system.sampler.scheduler_name, "steps": args.steps,
        "guidance": {"image": system.sampler.guidance_image, "text": system.sampler.guidance_text},
        "memory": args.memory, **({} if bank else {"temp_lora": {"preset": args.temp_lora, **asdict(lora)}}),
        "world": world,
        "src_protocol": src.protocol(), "seconds": None,
        # the arms' generation time, same process and machine: what the memory costs (docs/benchmarks.md)
        "generation_seconds": {"without": round(seconds_without, 1), "with": round(seconds_with, 1),
                               "ratio": round(seconds_with / seconds_without, 2)},
    }
    settings["seconds"] = round(time.perf_counter() - start, 1)
    page = write_report(args.out, without, with_lora, settings)
    results = json.loads((args.out / "results.json").read_text())
    summary = results["summary"]
    for name, stats in summary.items():
        digits = {k: 4 if "MSE" in k else 2 for k in stats}  # MSEs of [0, 1] pixels are small numbers
        print(f"{name:>18}: " + ", ".join(f"{k} {v['mean']:.{digits[k]}f}±{v['std']:.{digits[k]}f}"
                                          for k, v in stats.items()))
    memory = results["memory"]
    print(f"memory: gap closed {100 * memory['gap_closed']:.1f} % (Revisit PSNR {memory['revisit_psnr_gain_db']:+.2f} dB, "
          f"paired p = {memory['revisit_psnr_p']:.3g}, n = {results['n_episodes']}); damage to other frames "
          f"{memory['damage_other_frames_db']:+.2f} dB")
    for line in pattern_rows(results.get("memory_by_pattern") or {}):
        print(line)
    passes = [r.clip_passes for r in with_lora if r.clip_passes is not None]
    print(f"generation: {seconds_without:.0f} s without memory, {seconds_with:.0f} s with "
          f"({seconds_with / seconds_without:.1f}x); " + (
              f"the frame bank read at {sum(len(r.recalled_chunks or ()) for r in with_lora) / len(with_lora):.1f} "
              "chunks per episode" if bank else
              f"the memory's writes: {sum(passes) / max(1, len(passes)):.0f} clip-passes per episode"))
    print(f"report: {page.resolve()}")
    print(f"videos: {(args.out / 'videos').resolve()} (mp4 + GIF)")
    print(f"done in {settings['seconds']} s")
    return 0
