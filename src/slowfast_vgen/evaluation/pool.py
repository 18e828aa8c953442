"""``sfvgen evaluate pool RUN/results.json ...``: one paired test over the episodes of several revisit runs.

A benchmark of 40 episodes costs hours on a CPU; it is natural to run it as several ``sfvgen demo`` runs side by
side (``--seed`` picks the world's episodes, ``--first-episode`` recorded ones) and then test over all of them.
The pooled numbers are the ones ``results.json`` of a single run holds (the same
:func:`slowfast_vgen.evaluation.report.revisit_statistics`), recomputed over the union of the runs' episodes.

Pooling is refused, with the reason, when the runs differ in anything but which episodes they ran (the model,
sampler, Temp-LoRA settings, benchmark) or share an episode (it would be counted twice). The pairing is within
each run: both arms of an episode come from the same run. Note that the demo draws an episode's sampler noise
from its position in the run, so the second half of a split run samples other videos than a single run of the
same episodes would; the pooled test stays a valid paired test, it is not bit-identical to that run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from slowfast_vgen.errors import ArgumentParser, UserInputError
from slowfast_vgen.evaluation.report import revisit_statistics
from slowfast_vgen.evaluation.revisit import EpisodeResult
from slowfast_vgen.io import atomic_path

# settings that say which episodes a run covered, or how long it took: allowed to differ between pooled runs
PER_RUN_SETTINGS = frozenset({"episodes", "first_seed", "first_episode", "seconds"})


def _load(path: Path) -> dict[str, Any]:
    try:
        run = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserInputError(f"{path}: no such file (expected the results.json of an `sfvgen demo` run)") from None
    except json.JSONDecodeError as err:
        raise UserInputError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(run, dict) or not isinstance(run.get("episodes"), list) or not isinstance(run.get("settings"), dict):
        raise UserInputError(f"{path}: not the results.json of an `sfvgen demo` run (expected 'episodes' and "
                             f"'settings')")
    for i, ep in enumerate(run["episodes"]):
        if not isinstance(ep, dict) or not {"seed", "without", "with"} <= set(ep):
            raise UserInputError(f"{path}: episode {i} lacks 'seed', 'without' or 'with' (got {sorted(ep)[:5]})")
    return run


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys where two settings dicts differ (a key only one of them records, written by a version that did
    not have that setting yet, is not a difference)."""
    out = []
    for key in sorted(set(a) & set(b)):
        va, vb = a[key], b[key]
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} vs {vb!r}")
    return out


def _scores(scores: dict[str, Any]) -> dict[str, float]:
    return {k: float("nan") if v is None else float(v) for k, v in scores.items()}


def pool_runs(paths: list[str | Path], ignore: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The paired statistics of ``sfvgen demo`` over the episodes of all ``paths`` (results.json files).

    ``ignore``: dotted settings (e.g. ``model.weights``: the same model retrained into another file) that may
    differ between the runs; the pooled settings are the first run's, the ignored keys are listed."""
    if len(paths) < 1:
        raise UserInputError("pool: give at least one results.json")
    paths = [Path(p) for p in paths]
    runs = [_load(p) for p in paths]
    common = {k: v for k, v in runs[0]["settings"].items() if k not in PER_RUN_SETTINGS}
    for path, run in zip(paths[1:], runs[1:]):
        other = {k: v for k, v in run["settings"].items() if k not in PER_RUN_SETTINGS}
        diff = [d for d in _differences(common, other) if not any(d.startswith(f"{key}.") or d.startswith(f"{key}:")
                                                                 for key in ignore)]
        if diff:
            raise UserInputError(f"pool: {path} was run with other settings than {paths[0]}: " + "; ".join(diff[:4])
                                 + ("; ..." if len(diff) > 4 else "") + " (only the episodes may differ; --ignore KEY if that one may)")
    without, with_lora, seen = [], [], {}
    empty = torch.empty(0)
    for path, run in zip(paths, runs):
        for ep in run["episodes"]:
            if ep["seed"] in seen:
                raise UserInputError(f"pool: episode {ep['seed']} is in {seen[ep['seed']]} and in {path}: pooled runs "
                                     f"must cover disjoint episodes (it would be counted twice)")
            seen[ep["seed"]] = path
            without.append(EpisodeResult(ep["seed"], empty, empty, [], scores=_scores(ep["without"])))
            with_lora.append(EpisodeResult(ep["seed"], empty, empty, [], scores=_scores(ep["with"]),
                                           rollbacks=ep.get("rollbacks_with", 0)))
    if not without:
        raise UserInputError(f"pool: no episodes in {[str(p) for p in paths]}")
    return {
        **revisit_statistics(without, with_lora),
        "n_episodes": len(without), "episodes": sorted(seen), "files": [str(p) for p in paths],
        "settings": common, "ignored_settings": list(ignore),
    }


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="sfvgen evaluate pool", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", type=Path, help="results.json files of `sfvgen demo` runs (disjoint episodes)")
    p.add_argument("--out", type=Path, default=None, help="write the pooled statistics here (JSON)")
    p.add_argument("--ignore", nargs="+", default=[], metavar="KEY",
                   help="settings that may differ between the runs, dotted (e.g. model.weights)")
    args = p.parse_args(argv)
    pooled = pool_runs(args.results, args.ignore)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(pooled, indent=2))
    for key, diff in pooled["paired_difference_with_minus_without"].items():
        print(f"{key:>13}: with - without {diff['mean']:+.3f} ± {diff['std']:.3f}, p = {diff['p']:.3g}, n = {diff['n']}")
    memory = pooled["memory"]
    if memory:
        print(f"memory: gap closed {100 * memory['gap_closed']:.1f} % (Revisit MSE {memory['revisit_mse']['floor_no_memory']:.4f}"
              f" -> {memory['revisit_mse']['temp_lora']:.4f}), damage to other frames {memory['damage_other_frames_db']:+.2f} dB,"
              f" n = {pooled['n_episodes']} episodes from {len(args.results)} run{'s' if len(args.results) > 1 else ''}")
    if args.out is not None:
        print(f"pooled: {args.out.resolve()}")
    return 0
