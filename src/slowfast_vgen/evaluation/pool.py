"""``sfvgen evaluate pool RUN/results.json ...``: one paired test over the episodes of several revisit runs;
``sfvgen evaluate plot LABEL=RUN.json ...``: where runs stand against the memory bar (:func:`plot_runs`).

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
import math
from pathlib import Path
from typing import Any

import torch

from slowfast_vgen.errors import ArgumentParser, UserInputError
from slowfast_vgen.evaluation.report import (
    MAX_DAMAGE_DB, MAX_P, MAX_TIME_RATIO, MIN_GAP_CLOSED, MIN_GAP_CLOSED_AT_PRICE, clears_memory_bar, pattern_rows,
    revisit_statistics)
from slowfast_vgen.evaluation.revisit import EpisodeResult
from slowfast_vgen.io import atomic_path

# settings that say which episodes a run covered, or how long it took: allowed to differ between pooled runs
PER_RUN_SETTINGS = frozenset({"episodes", "first_seed", "first_episode", "seconds", "generation_seconds"})


def _read_json(path: Path, expected: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserInputError(f"{path}: no such file (expected {expected})") from None
    except json.JSONDecodeError as err:
        raise UserInputError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from None


def _load(path: Path) -> dict[str, Any]:
    run = _read_json(path, "the results.json of an `sfvgen demo` run")
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
    def kept(settings: dict[str, Any]) -> dict[str, Any]:  # runs before the frame bank had Temp-LoRA as their memory
        return {k: v for k, v in {"memory": "temp-lora", **settings}.items() if k not in PER_RUN_SETTINGS}

    common = kept(runs[0]["settings"])
    for path, run in zip(paths[1:], runs[1:]):
        other = kept(run["settings"])
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
            pattern = ep.get("pattern")  # the recording's revisit pattern (since issue 37): memory_by_pattern
            without.append(EpisodeResult(ep["seed"], empty, empty, [], scores=_scores(ep["without"]), pattern=pattern))
            with_lora.append(EpisodeResult(ep["seed"], empty, empty, [], scores=_scores(ep["with"]),
                                           rollbacks=ep.get("rollbacks_with", 0), pattern=pattern))
    if not without:
        raise UserInputError(f"pool: no episodes in {[str(p) for p in paths]}")
    timed = [run["settings"].get("generation_seconds") for run in runs]
    if all(timed):  # the arms' time summed over the runs (each run's arms on one machine)
        seconds = {arm: round(sum(t[arm] for t in timed), 1) for arm in ("without", "with")}
        common["generation_seconds"] = {**seconds, "ratio": round(seconds["with"] / seconds["without"], 2)}
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
        for line in pattern_rows(pooled.get("memory_by_pattern") or {}):
            print(line)
    if args.out is not None:
        print(f"pooled: {args.out.resolve()}")
    return 0


def run_memory(path: str | Path) -> dict[str, Any]:
    """The memory scores of one run or pool (an ``sfvgen demo`` results.json or an ``sfvgen evaluate pool`` output):
    gap closed, damage, the Revisit PSNR paired difference, n, and whether it clears the bar."""
    path = Path(path)
    run = _read_json(path, "a results.json or a pooled JSON")
    memory = run.get("memory") if isinstance(run, dict) else None
    if not isinstance(memory, dict) or "gap_closed" not in memory:
        raise UserInputError(f"{path}: no memory scores (expected 'memory' with 'gap_closed', as `sfvgen demo` "
                             "and `sfvgen evaluate pool` write)")
    diff = run["paired_difference_with_minus_without"]["Revisit PSNR"]
    gap, damage, p = memory["gap_closed"], memory["damage_other_frames_db"], diff["p"]
    timed = (run.get("settings") or {}).get("generation_seconds") or {}
    ratio = timed.get("ratio", float("nan"))
    clears = clears_memory_bar(gap, p, damage)
    return {"gap_closed": gap, "damage_db": damage, "revisit_psnr_db": diff["mean"], "p": p, "n": diff["n"],
            "n_episodes": run.get("n_episodes", diff["n"]), "time_ratio": ratio, "clears_bar": clears,
            "clears_price_bar": clears and gap >= MIN_GAP_CLOSED_AT_PRICE and ratio <= MAX_TIME_RATIO}


def _label_offsets(ax, fig, points: list[tuple[float, float]], line: float = 9.0, width: float = 170.0) -> list[float]:
    """Vertical offsets (points) that keep the labels of nearby points from overlapping: from the top down, a label
    within ``width`` points to the side of one already placed moves below it (a grey line then ties it to its
    point)."""
    per_point = 72.0 / fig.dpi
    shown = [tuple(v * per_point for v in ax.transData.transform(xy)) for xy in points]  # display points
    placed: list[tuple[float, float]] = []  # (x, label y) of the labels placed so far
    offsets = [0.0] * len(points)
    for i in sorted(range(len(points)), key=lambda k: -shown[k][1]):
        x, y = shown[i]
        while any(abs(px - x) < width and abs(py - y) < line for px, py in placed):
            y -= line / 2
        placed.append((x, y))
        offsets[i] = y - shown[i][1]
    return offsets


def plot_runs(runs: dict[str, str | Path], path: str | Path, title: str = "Temp-LoRA in generation",
              against: str = "damage") -> list[dict]:
    """One point per run: gap closed (y) against damage to the other frames (x), filled where the paired p is below
    0.05, sized by the number of paired episodes with revisits, with the region that clears the memory bar (>= 25 %
    of the gap, p < 0.05, damage <= 0.5 dB) shaded. ``against="time"``: against the generation time with memory over
    without (the demo's ``generation_seconds``), the price bar shaded (>= 40 % of the gap at <= 3x the time; p and
    damage as above). ``runs``: label -> results.json or pooled JSON. Returns the rows plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not runs:
        raise UserInputError("plot: give at least one LABEL=results.json")
    if against not in ("damage", "time"):
        raise UserInputError(f"plot: against {against!r}; expected 'damage' or 'time'")
    rows = [{"label": label, "file": str(file), **run_memory(file)} for label, file in runs.items()]
    by_time = against == "time"
    untimed = [r["file"] for r in rows if math.isnan(r["time_ratio"])]
    if by_time and untimed:
        raise UserInputError(f"plot --against time: {', '.join(untimed)} record no generation_seconds (written by "
                             "`sfvgen demo` since issue 36)")
    x_of = (lambda r: r["time_ratio"]) if by_time else (lambda r: r["damage_db"])  # noqa: E731
    x_bar, gap_bar, passes = ((MAX_TIME_RATIO, MIN_GAP_CLOSED_AT_PRICE, "clears_price_bar") if by_time else
                              (MAX_DAMAGE_DB, MIN_GAP_CLOSED, "clears_bar"))
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    xs = [x_of(r) for r in rows] + [x_bar]
    ys = [100 * r["gap_closed"] for r in rows] + [gap_bar * 100]
    y_lo, y_hi = min(min(ys) - 5, -5), max(ys) + 8
    x_lo, x_hi = (0.5, max(xs) * 1.5) if by_time else (min(min(xs) - 0.3, -0.3), max(xs) + 0.3)
    bar = (f"the bar: gap >= {gap_bar:.0%} at <= {x_bar:g}x the time, p < {MAX_P}, damage <= {MAX_DAMAGE_DB} dB"
           if by_time else f"the bar: gap >= {gap_bar:.0%}, p < {MAX_P}, damage <= {MAX_DAMAGE_DB} dB")
    ax.fill_between([x_lo, x_bar], gap_bar * 100, y_hi, color="tab:green", alpha=0.12, label=bar)
    ax.axhline(0, color="grey", lw=0.8)
    for r in rows:
        colour = "tab:green" if r[passes] else "tab:blue"
        ax.scatter(x_of(r), 100 * r["gap_closed"], s=12 * r["n"], zorder=3, edgecolors=colour,
                   facecolors=colour if r["p"] < MAX_P else "none", linewidths=1.5)
    if by_time:
        ax.set_xscale("log")
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    points = [(x_of(r), 100 * r["gap_closed"]) for r in rows]
    for r, xy, dy in zip(rows, points, _label_offsets(ax, fig, points)):
        ax.annotate(f"{r['label']} (n={r['n']}, p={r['p']:.2g})", xy, textcoords="offset points", xytext=(7, 4 + dy),
                    fontsize=7, arrowprops=dict(arrowstyle="-", lw=0.5, color="grey") if dy else None)
    ax.set_xlabel("generation time with memory / without (same run; log scale)" if by_time else
                  "damage to the frames that are not revisits (dB, lower is better)")
    ax.set_ylabel("floor-to-ceiling gap closed (%)")
    ax.set_title(f"{title}\nfilled: paired p < {MAX_P}; size: episodes with revisits (n)", fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return rows


def plot_main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="sfvgen evaluate plot",
                       description="Gap closed against damage for several revisit runs, with the memory bar (PNG).")
    p.add_argument("runs", nargs="+", metavar="LABEL=JSON",
                   help="a label and the results.json of `sfvgen demo` (or a pooled JSON of `sfvgen evaluate pool`)")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--title", default="Temp-LoRA in generation")
    p.add_argument("--against", choices=("damage", "time"), default="damage",
                   help="x axis: damage to the other frames (the memory bar), or the time ratio (the price bar)")
    args = p.parse_args(argv)
    runs = {}
    for item in args.runs:
        label, sep, file = item.partition("=")
        if not sep or not label or not file:
            raise UserInputError(f"plot: {item!r} is not LABEL=JSON (e.g. episodic=docs/memory_episodic_10.json)")
        if label in runs:
            raise UserInputError(f"plot: the label {label!r} is given twice")
        runs[label] = file
    args.out.parent.mkdir(parents=True, exist_ok=True)
    passes = "clears_price_bar" if args.against == "time" else "clears_bar"
    for r in plot_runs(runs, args.out, args.title, args.against):
        print(f"{r['label']:>24}: gap {100 * r['gap_closed']:+.1f} %, damage {r['damage_db']:+.2f} dB, p = {r['p']:.3g}, "
              f"n = {r['n']}, time {r['time_ratio']:.1f}x{'  clears the bar' if r[passes] else ''}")
    print(f"plot: {args.out.resolve()}")
    return 0
