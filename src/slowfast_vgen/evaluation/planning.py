"""Table 2 (paper Sec. 4.2): long-horizon planning, per task, for three models:

* ``Ours wo Temp-LoRA``: the slow-learned model, no fast learning while planning;
* ``Ours wo Loop``: the same model with Temp-LoRA updated after every generated chunk;
* ``Ours``: the model trained by the slow-fast learning loop (Alg. 1b), with Temp-LoRA.

For each task: an inverse dynamics model is trained on recorded expert episodes (its held-out accuracy is
reported), then ``episodes`` test episodes (seeds disjoint from the training ones) are executed with
:class:`~slowfast_vgen.planning.executor.PlanExecutor`; with ``settings.expert_set_up`` (default) the set-up
subgoals (moving the cubes away, walking the path out) are executed with the expert's actions, so that the
metric measures the return, which needs the memory of the episode; the task metric (distance to waypoints / original
positions: lower is better) is averaged over episodes, and FVD compares the generated long videos with the
expert's recorded videos of the same episodes (16-frame clips).
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from tqdm.auto import tqdm

from slowfast_vgen.errors import UserInputError

METHODS = (("Ours wo Temp-LoRA", "weights", False), ("Ours wo Loop", "weights", True), ("Ours", "loop_weights", True))
TASK_KEYS = {"task", "task_kwargs", "config", "weights", "loop_weights", "episodes", "seed", "idm_episodes",
             "idm_steps", "idm_lr", "idm_seed"}
FVD_FRAMES = 16


def check_task_entry(entry: dict[str, Any]) -> None:
    unknown = sorted(set(entry) - TASK_KEYS)
    if unknown:
        raise UserInputError(f"table2 task entry keys {unknown} are not expected; expected some of {sorted(TASK_KEYS)}")
    for key in ("task", "config", "weights", "loop_weights"):
        if not isinstance(entry.get(key), str):
            raise UserInputError(f"table2 task entry: {key!r} must be a string, got {entry.get(key)!r}")


def train_task_idm(env, episodes: int, steps: int, seed: int, heldout: list, lr: float = 2e-3):
    """An IDM trained on ``episodes`` expert episodes of ``env`` (seeds from ``seed``), scored on ``heldout``."""
    from slowfast_vgen.planning.idm import frame_pairs, train_idm

    vocab = list(env.actions)
    train = [env.record(seed + i) for i in range(episodes)]
    pairs = frame_pairs([e.frames for e in train], [e.steps for e in train], vocab)
    held = frame_pairs([e.frames for e in heldout], [e.steps for e in heldout], vocab)
    return train_idm(pairs, held, vocab, steps=steps, lr=lr, seed=seed)


def video_clips(videos: list[torch.Tensor], frames: int = FVD_FRAMES) -> torch.Tensor:
    """Non-overlapping clips of ``frames`` frames from each video (T, C, H, W) -> (N, frames, C, H, W)."""
    clips = [v[s : s + frames] for v in videos for s in range(0, v.shape[0] - frames + 1, frames)]
    if not clips:
        raise UserInputError(f"FVD needs videos of at least {frames} frames; got {[v.shape[0] for v in videos]}")
    return torch.stack(clips)


def real_fvd(real: list[torch.Tensor]):
    """An FVD metric holding the features of the real (expert) clips, computed once per task."""
    from slowfast_vgen.metrics import FVD

    metric = FVD()
    metric.update(video_clips(real), real=True)
    return metric


def fvd(real_metric, generated: list[torch.Tensor]) -> float:
    metric = real_metric.clone()
    metric.update(video_clips(generated), real=False)
    return float(metric.compute())


def run_task(entry: dict[str, Any], settings: dict[str, Any], progress: bool = True) -> tuple[list[dict], dict]:
    """The three rows of Table 2 for one task, and the task's protocol."""
    from slowfast_vgen.temp_lora import TempLoRA
    from slowfast_vgen.planning.executor import PlanExecutor
    from slowfast_vgen.planning.tasks import make_task
    from slowfast_vgen.experiment import load_system

    check_task_entry(entry)
    name, kwargs = entry["task"], dict(entry.get("task_kwargs") or {})
    n, seed = int(entry.get("episodes", 4)), int(entry.get("seed", 100_000))
    env = make_task(name, **kwargs)  # one simulator for recording, IDM data and planning
    rows = []
    try:
        expert = [env.record(seed + i) for i in range(n)]  # the test episodes, as the expert plays them
        idm = train_task_idm(env, int(entry.get("idm_episodes", 30)), int(entry.get("idm_steps", 300)),
                             int(entry.get("idm_seed", 0)), expert, lr=float(entry.get("idm_lr", 2e-3)))
        real = real_fvd([ep.frames for ep in expert]) if settings.get("fvd", True) else None
        set_up = bool(settings.get("expert_set_up", True))

        def given(ep) -> list[str]:  # the set-up phase (move the cubes away, walk the path) as the expert did it
            return ep.steps[: int(ep.info["phase1_chunks"]) * ep.chunk_frames] if set_up else []

        systems: dict[str, Any] = {}  # the slow model serves two rows: load it once
        for method, weights_key, with_lora in METHODS:
            if weights_key not in systems:
                systems[weights_key] = load_system(entry["config"], entry[weights_key]).model.eval()
            system = systems[weights_key]
            system.sampler.num_inference_steps = int(settings.get("steps", 20))
            learner = TempLoRA(system.unet, system.diffusion, rank=int(settings.get("rank", 32)),
                               lr=float(settings.get("lr", 1e-4))) if with_lora else None
            system.generator.temp_lora = learner
            executor = PlanExecutor(system.generator, idm.model, condition_on=settings.get("condition_on", "observed"))
            results = [executor.run(env, ep.seed, given_actions=given(ep)) for ep in
                       tqdm(expert, desc=f"{name}: {method}", unit="episode", disable=not progress)]
            if learner is not None:  # the base model again, exactly
                system.generator.temp_lora = None
                learner.remove()
            scores = [r.score for r in results]
            row = {"task": name, "setting": method, "metric": statistics.fmean(scores),
                   "metric_std": statistics.stdev(scores) if len(scores) > 1 else 0.0, "episodes": len(results),
                   "rollbacks": sum(bool(u and u.rolled_back) for r in results for u in r.updates)}
            if real is not None:
                row["FVD"] = fvd(real, [r.generated for r in results])
            rows.append(row)
    finally:
        env.close()
    protocol = {"task": name, "task_kwargs": kwargs, "metric": env.metric_name, "test_seeds": [seed, seed + n - 1],
                "expert_metric": statistics.fmean(float(ep.info["expert_score"]) for ep in expert),
                "idm": {"train_episodes": int(entry.get("idm_episodes", 30)), "steps": idm.steps,
                        "lr": float(entry.get("idm_lr", 2e-3)),
                        "train_accuracy": idm.train_accuracy, "heldout_accuracy": idm.heldout_accuracy},
                "frames_per_episode": int(expert[0].frames.shape[0]), "chunk_frames": expert[0].chunk_frames,
                "models": {"slow": entry["weights"], "loop": entry["loop_weights"], "config": entry["config"]}}
    return rows, protocol


def run_table2(cfg: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    tasks = cfg["benchmark"].get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise UserInputError(f"table2: benchmark.tasks must be a non-empty list of task entries, got {tasks!r}")
    rows, protocols = [], []
    for entry in tasks:
        r, p = run_task(entry, cfg["settings"])
        rows += r
        protocols.append(p)
    s = cfg["settings"]
    return rows, {"table": "table2", "tasks": protocols, "sampler_steps": int(s.get("steps", 20)),
                  "temp_lora": {"rank": int(s.get("rank", 32)), "lr": float(s.get("lr", 1e-4))},
                  "condition_on": s.get("condition_on", "observed"), "fvd_clip_frames": FVD_FRAMES,
                  "expert_set_up": bool(s.get("expert_set_up", True))}


def table2_markdown(rows: list[dict[str, Any]], protocol: dict[str, Any]) -> list[str]:
    """The paper's layout: one line per task, a (metric, FVD) pair of columns per method."""
    methods = [m for m, _, _ in METHODS]
    head = "| task | " + " | ".join(f"{m}: dist. | {m}: FVD" for m in methods) + " |"
    md = [head, "|---|" + "---|---|" * len(methods)]
    for p in protocol["tasks"]:
        cells = []
        for m in methods:
            r = next(x for x in rows if x["task"] == p["task"] and x["setting"] == m)
            cells.append(f"{r['metric']:.3g} ± {r['metric_std']:.2g}")
            cells.append(f"{r['FVD']:.1f}" if "FVD" in r else "/")
        md.append(f"| {p['task']} | " + " | ".join(cells) + " |")
    md += ["", "Distance: " + "; ".join(f"{p['task']}: {p['metric']} (expert: {p['expert_metric']:.3g}; IDM held-out "
                                       f"accuracy {100 * p['idm']['heldout_accuracy']:.1f} %)" for p in protocol["tasks"]),
           "Lower is better for both. Mean ± std over episodes."]
    return md
