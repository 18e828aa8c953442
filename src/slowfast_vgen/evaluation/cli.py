"""``sfvgen evaluate -c experiments/eval/X.yaml``: the paper's tables as markdown, CSV and JSON.

``sfvgen evaluate human-sheet VIDEO_DIR``: a rating sheet for human evaluation (App. C.3).

``sfvgen evaluate pool RUN/results.json ...``: one paired test over the episodes of several ``sfvgen demo`` runs
(:mod:`slowfast_vgen.evaluation.pool`); ``sfvgen evaluate plot LABEL=RUN.json ...``: gap closed against damage
for several runs, with the memory bar.

An evaluation YAML names the model (an experiment YAML + optional UNet weights), the benchmark (revisit
episodes of the built-in world, or with ``benchmark.shards`` recorded episodes with poses, e.g. ViZDoom from
``sfvgen data record`` or your own from ``sfvgen data build --gt``; ``benchmark.episodes``,
``benchmark.pose_tolerance``, ``benchmark.resolution``) and the table:

* ``table1``: slow learning (PSNR, SSIM x100, LPIPS x100 and optionally FVD of generated chunks vs real ones,
  from real context frames and the real action) and long videos (SCuts, SRC) with and without Temp-LoRA;
* ``table2``: long-horizon planning on task environments (:mod:`slowfast_vgen.evaluation.planning`; the
  models and tasks are listed under ``benchmark.tasks``);
* ``table4``: Temp-LoRA variants; ``table6_8``: learning rate x rank; ``table9``: sampling steps.

The output folder holds ``table.md``, ``table.csv``, ``table.json`` with the protocol (seeds, number of
videos, frames, settings) and the metric protocols.
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from slowfast_vgen.errors import ArgumentParser, UserInputError
from slowfast_vgen.evaluation import ablations
from slowfast_vgen.io import atomic_path, repo_path

TABLES = ("table1", "table2", "table4", "table6_8", "table9")


# The schema of an evaluation YAML, as OmegaConf structured configs: unknown keys and wrong types are errors that
# name the key. Unset optional values are None and dropped after the merge, so each table's own default applies.
@dataclass
class ModelSpec:
    config: Optional[str] = None  # an experiment YAML
    weights: Optional[str] = None  # UNet weights (safetensors)


@dataclass
class TaskSpec:  # table2: one planning task (slowfast_vgen.evaluation.planning)
    task: str = MISSING
    task_kwargs: dict[str, Any] = field(default_factory=dict)
    config: Optional[str] = None
    weights: Optional[str] = None
    loop_weights: Optional[str] = None
    episodes: Optional[int] = None
    seed: Optional[int] = None
    idm_episodes: Optional[int] = None
    idm_steps: Optional[int] = None
    idm_lr: Optional[float] = None
    idm_seed: Optional[int] = None


@dataclass
class BenchmarkSpec:
    episodes: Optional[int] = None  # world: 4; shards: all
    seed: Optional[int] = None  # world: the first episode's seed (10000)
    chunks_out: Optional[int] = None
    world: dict[str, Any] = field(default_factory=dict)
    shards: Optional[str] = None  # recorded episodes with poses instead of the built-in world
    pose_tolerance: Optional[float] = None
    resolution: Optional[Any] = None
    tasks: list[TaskSpec] = field(default_factory=list)


@dataclass
class SettingsSpec:
    steps: Optional[int] = None  # sampler steps (paper: 20)
    rank: Optional[int] = None  # Temp-LoRA (paper: 32, 1e-4)
    lr: Optional[float] = None
    fvd: Optional[bool] = None
    condition_on: Optional[str] = None
    expert_set_up: Optional[bool] = None
    lrs: Optional[list[float]] = None  # table6_8
    ranks: Optional[list[int]] = None
    sweep: Optional[list[int]] = None  # table9


@dataclass
class EvalConfig:
    table: str = MISSING
    model: ModelSpec = field(default_factory=ModelSpec)
    benchmark: BenchmarkSpec = field(default_factory=BenchmarkSpec)
    settings: SettingsSpec = field(default_factory=SettingsSpec)
    out: str = MISSING


def _without_none(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_none(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_without_none(v) for v in node]
    return node


def _config_error(path: str, err: Exception) -> UserInputError:
    key = getattr(err, "full_key", None)
    detail = str(getattr(err, "msg", None) or err).splitlines()[0]
    if "not in" in detail and key:  # OmegaConf: Key 'colour' not in 'EvalConfig'
        fields = getattr(getattr(err, "object_type", None), "__dataclass_fields__", None)
        expected = f"; expected one of {sorted(fields)}" if fields else ""
        return UserInputError(f'evaluation config {path!r}: key "{key}" is not expected{expected}')
    return UserInputError(f'evaluation config {path!r}: key "{key}": {detail}' if key else f"evaluation config {path!r}: {detail}")


def load_eval_config(path: str, overrides: list[str]) -> dict[str, Any]:
    if not Path(path).is_file():
        raise UserInputError(f"evaluation config {path!r} not found")
    schema = OmegaConf.structured(EvalConfig)
    try:
        cfg = OmegaConf.merge(schema, OmegaConf.load(path))
    except OmegaConfBaseException as err:
        raise _config_error(path, err) from None
    except yaml.YAMLError as err:
        raise UserInputError(f"evaluation config {path!r} is not valid YAML: {' '.join(str(err).split())[:200]}") from None
    for item in overrides:  # key=value; keys may index lists (benchmark.tasks.0.episodes=2)
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserInputError(f"override {item!r}: expected key=value, e.g. benchmark.episodes=2")
        try:
            OmegaConf.update(cfg, key, yaml.safe_load(value) if value else value, merge=True)
        except Exception as err:  # noqa: BLE001 - OmegaConf raises several types for a bad key path
            raise UserInputError(f"override {item!r}: {err}".splitlines()[0]) from None
    try:
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise UserInputError(f"evaluation config {path!r}: {missing} must be set")
        cfg = _without_none(OmegaConf.to_container(cfg, resolve=True))
    except OmegaConfBaseException as err:
        raise _config_error(path, err) from None
    entries = [cfg.get("model") or {}] + [t for t in (cfg.get("benchmark") or {}).get("tasks") or [] if isinstance(t, dict)]
    for entry in entries:  # relative paths: from the working directory, else the repository root
        for key in ("config", "weights", "loop_weights"):
            if isinstance(entry.get(key), str):
                entry[key] = repo_path(entry[key])
    if cfg["table"] not in TABLES:
        raise UserInputError(f'evaluation config key "table": {cfg["table"]!r}; expected one of {list(TABLES)}')
    check_numbers(cfg, path)
    return cfg


# Every numeric setting of an evaluation config, with the smallest value it takes (and whether it is an integer).
NUMBERS = {
    "benchmark.episodes": (1, int), "benchmark.chunks_out": (1, int), "benchmark.pose_tolerance": (0, float),
    "benchmark.resolution": (1, int), "settings.steps": (1, int), "settings.rank": (1, int),
    "settings.lr": (0, float), "settings.lrs": (0, float), "settings.ranks": (1, int), "settings.sweep": (1, int),
    "task.episodes": (1, int), "task.idm_episodes": (1, int), "task.idm_steps": (1, int), "task.idm_lr": (0, float),
}


def check_numbers(cfg: dict[str, Any], path: str) -> None:
    """A number out of range (a negative learning rate, zero episodes, ...) is a one-line error naming the key, the
    value and what it must be, before any model is loaded."""
    def check(key: str, value: Any, rule: tuple[float, type]) -> None:
        low, kind = rule
        for v in value if isinstance(value, list) else [value]:
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            if not number or (kind is int and v != int(v)) or not v >= low:
                what = "an integer" if kind is int else "a number"
                raise UserInputError(f"evaluation config {path!r}: {key} = {value!r}; expected {what} >= {low}")

    for section in ("benchmark", "settings"):
        for name, value in (cfg.get(section) or {}).items():
            if f"{section}.{name}" in NUMBERS:
                check(f"{section}.{name}", value, NUMBERS[f"{section}.{name}"])
    for i, task in enumerate((cfg.get("benchmark") or {}).get("tasks") or []):
        for name, value in (task.items() if isinstance(task, dict) else ()):
            if f"task.{name}" in NUMBERS:
                check(f"benchmark.tasks.{i}.{name}", value, NUMBERS[f"task.{name}"])


def slow_learning_rows(system, episodes, fvd: bool, seed: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    """Table 1 left: each episode's chunks generated from the REAL previous chunk and action, vs the real chunk.

    PSNR, SSIM and LPIPS are the mean over episodes of each episode's mean over its chunks, with the spread over
    episodes (``_std``), as the long-video columns; FVD is one statistic of all chunks. The second dict is the
    trivial predictor for scale: every frame of the chunk a copy of the last real context frame.
    """
    from tqdm.auto import tqdm

    from slowfast_vgen.datamodules.common import check_episode
    from slowfast_vgen.generation.long_video import chunk_action
    from slowfast_vgen.metrics import FVD, LPIPS, PSNR, SSIM
    from slowfast_vgen.metrics.lpips import nearest_upsample

    def frame_metrics():
        return {"PSNR": PSNR(max_db=100.0), "SSIM": SSIM(), "LPIPS": LPIPS()}

    model, copy = frame_metrics(), frame_metrics()
    per_episode: dict[str, dict[str, list[float]]] = {"model": {k: [] for k in model}, "copy": {k: [] for k in copy}}
    fvd_metric = FVD() if fvd else None

    def update(metrics, fake, target):
        for name, m in metrics.items():
            small = name == "LPIPS"  # AlexNet needs >= 31 px: the tiny models' frames are upsampled
            m.update(*(nearest_upsample(x) if small else x for x in (fake, target)))

    f_g, f_p = system.generator.chunk_frames, system.generator.context_frames
    for i in tqdm(range(len(episodes)), desc="Table 1: chunks from real context", unit="episode", file=sys.stderr):
        ep = check_episode(episodes[i], f_g, where=f"episode {i}")
        real = ep["frames"]  # (T, C, H, W): first frame, then the chunks (f_g frames, or (text, n) of a recording)
        start = 1
        for c, item in enumerate(ep["actions"]):
            action, n = chunk_action(item, f_g)
            context = real[max(0, start - f_p) : start][None]
            fake = system.generate_chunk(context, [action], n, seed=seed + c)[:, context.shape[1] :]
            target = real[start : start + n][None]
            start += n
            update(model, fake, target)
            update(copy, context[:, -1:].expand_as(target), target)
            if fvd_metric is not None:
                fvd_metric.update(target, real=True)
                fvd_metric.update(fake, real=False)
        for which, metrics in (("model", model), ("copy", copy)):
            for name, m in metrics.items():
                per_episode[which][name].append(float(m.compute()))
                m.reset()

    def row(values: dict[str, list[float]]) -> dict[str, float]:  # the convention of revisit.summarize
        out = {}
        for name, v in values.items():
            out[name], out[f"{name}_std"] = statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0
        return out

    ours = row(per_episode["model"])
    if fvd_metric is not None:
        ours["FVD"] = float(fvd_metric.compute())
    return ours, row(per_episode["copy"])


def run_table(cfg: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from slowfast_vgen.datamodules.world import WorldRevisitDataset

    if cfg["table"] == "table2":
        from slowfast_vgen.evaluation.planning import run_table2

        return run_table2(cfg)
    from slowfast_vgen.experiment import load_system

    cli = load_system(cfg["model"]["config"], cfg["model"].get("weights"))
    system = cli.model
    s = cfg["settings"]
    system.sampler.num_inference_steps = int(s.get("steps", 20))
    b = cfg["benchmark"]
    f_g, f_p = system.generator.chunk_frames, system.generator.context_frames
    if b.get("shards"):  # recorded episodes with poses (sfvgen data record / data build --gt)
        from slowfast_vgen.datamodules.recorded import RecordedRevisitDataset

        resolution = b.get("resolution", cli.datamodule.hparams.get("resolution"))
        episodes = RecordedRevisitDataset(repo_path(b["shards"]), resolution, f_g, f_p, episodes=b.get("episodes"),
                                          pose_tolerance=b.get("pose_tolerance"))  # None: the data's own
    else:
        episodes = WorldRevisitDataset(
            int(b.get("episodes", 4)), seed=int(b.get("seed", 10_000)), chunk_frames=f_g,
            chunks_out=int(b.get("chunks_out", 3)), min_gap=f_g + f_p, **b.get("world", {}),
        )
    lora = dict(rank=int(s.get("rank", 32)), lr=float(s.get("lr", 1e-4)))
    table = cfg["table"]
    if table == "table1":
        # Left half: one chunk from real context + action vs the real chunk; right half: long videos.
        slow, copy = slow_learning_rows(system, episodes, fvd=bool(s.get("fvd", False)))
        long_keys = ("SCuts", "SCuts_std", "SRC", "SRC_std", "episodes", "rollbacks")
        without, with_lora = (ablations.run_condition(system, episodes, x) for x in (None, lora))
        rows = [{"setting": "Ours (wo/ Temp-LoRA)", **{k: without[k] for k in long_keys}},
                {"setting": "Ours SlowFast-VGen", **slow, **{k: with_lora[k] for k in long_keys}},
                {"setting": "Copy the last context frame (reference)", **copy, "episodes": len(episodes)}]
    elif table == "table4":
        rows = ablations.temp_lora_variants(system, episodes, **lora)
    elif table == "table6_8":
        rows = ablations.lr_rank_grid(system, episodes, s.get("lrs", [1e-3, 1e-4, 1e-5]), s.get("ranks", [16, 32, 64]))
    else:
        rows = ablations.sampling_steps(system, episodes, s.get("sweep", [10, 20, 50]), temp_lora=lora)
    frames = [len(episodes[i]["frames"]) for i in range(len(episodes))]
    protocol = {"table": table, "episodes": len(episodes), "first_seed": episodes.seed,
                "episode_source": f"shards {b['shards']}" if b.get("shards") else "built-in world",
                "frames_per_episode": frames[0] if len(set(frames)) == 1 else {"min": min(frames), "max": max(frames)},
                "chunk_frames": system.generator.chunk_frames, "context_frames": system.generator.context_frames,
                "sampler": system.sampler.scheduler_name, "steps": system.sampler.num_inference_steps,
                "temp_lora": lora, "model": cfg["model"], "torch_seed_policy": "per-chunk generator seeds"}
    return rows, protocol


def write_outputs(out: Path, rows: list[dict[str, Any]], protocol: dict[str, Any]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    if protocol.get("table") == "table2":
        from slowfast_vgen.evaluation.planning import table2_markdown

        md = table2_markdown(rows, protocol)
    else:
        keys = [k for k in ("FVD", "PSNR", "SSIM", "LPIPS", "SCuts", "SRC", "Revisit PSNR") if any(k in r for r in rows)]
        md = ["| setting | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for r in rows:
            cells = [(f"{r[k]:.2f}" + (f" ± {r[k + '_std']:.2f}" if k + "_std" in r else "")) if k in r else "/"
                     for k in keys]
            md.append(f"| {r['setting']} | " + " | ".join(cells) + " |")
    md += ["", "Protocol:", "", "```json", json.dumps(protocol, indent=2, default=str), "```"]
    written = []
    with atomic_path(out / "table.md") as tmp:
        tmp.write_text("\n".join(md) + "\n")
    written.append(out / "table.md")
    with atomic_path(out / "table.csv") as tmp, open(tmp, "w", newline="") as f:
        fields = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("task", "setting"), k))
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    written.append(out / "table.csv")
    with atomic_path(out / "table.json") as tmp:
        tmp.write_text(json.dumps({"rows": rows, "protocol": protocol}, indent=2, default=str))
    written.append(out / "table.json")
    return written


def main(argv: list[str] | None = None) -> int:
    if argv and argv[0] == "human-sheet":  # sfvgen evaluate human-sheet VIDEO_DIR (App. C.3)
        from slowfast_vgen.evaluation.human import main as human_main

        return human_main(argv[1:])
    if argv and argv[0] == "pool":  # sfvgen evaluate pool RUN/results.json ... (split benchmark runs)
        from slowfast_vgen.evaluation.pool import main as pool_main

        return pool_main(argv[1:])
    if argv and argv[0] == "plot":  # sfvgen evaluate plot LABEL=RUN.json ... (runs against the memory bar)
        from slowfast_vgen.evaluation.pool import plot_main

        return plot_main(argv[1:])
    p = ArgumentParser(prog="sfvgen evaluate", description=__doc__.split("\n\n")[0],
                       epilog="also: sfvgen evaluate pool RUN/results.json ... (one paired test over split demo runs); "
                       "sfvgen evaluate plot LABEL=RUN.json ... --out PNG [--against damage|time]; sfvgen evaluate "
                       "human-sheet VIDEO_DIR (App. C.3)")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. benchmark.episodes=2 settings.steps=5")
    args = p.parse_args(argv)
    cfg = load_eval_config(args.config, args.overrides)
    torch.manual_seed(0)
    rows, protocol = run_table(cfg)
    for path in write_outputs(Path(cfg["out"]), rows, protocol):
        print(path.resolve())
    print(Path(cfg["out"], "table.md").read_text())
    return 0
