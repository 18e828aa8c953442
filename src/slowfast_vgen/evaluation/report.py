"""The revisit report: side-by-side videos, a table with spread over episodes, a similarity plot, settings.

Written as ``index.html`` (opens in a browser), ``report.md``, ``results.json``, ``similarity.png`` and
``videos/`` (mp4 + GIF, and a PNG filmstrip per episode: real / without / with Temp-LoRA, frame by frame).
Every number comes from the run that wrote the report.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import torch

from slowfast_vgen.evaluation.revisit import EpisodeResult, paired_difference, summarize
from slowfast_vgen.io import atomic_path, write_video

HIGHER_IS_BETTER = {"SRC": True, "SCuts": False, "PSNR": True, "SSIM": True, "LPIPS": False, "Revisit PSNR": True,
                    "Revisit LPIPS": False, "Other PSNR": True}
# Smallest differences worth reporting as an effect (units of the table: x100 for SRC, SSIM and LPIPS, dB for PSNR).
MIN_EFFECT = {"SRC": 0.5, "SCuts": 0.1, "PSNR": 0.1, "SSIM": 0.5, "LPIPS": 0.5, "Revisit PSNR": 0.1,
              "Revisit LPIPS": 0.5, "Other PSNR": 0.1}
MAX_DAMAGE_DB = 0.5  # memory may cost the frames that are not revisits at most this much (issue 13)
MIN_GAP_CLOSED = 0.25  # ... and must close a quarter of the floor-to-ceiling gap
MAX_P = 0.05  # ... with a paired p below this
MAX_TIME_RATIO = 3.0  # a memory at the paper's price (issue 36): at most 3x the generation time without it ...
MIN_GAP_CLOSED_AT_PRICE = 0.40  # ... closing at least 40 % of the gap (with the p and damage above)

MEMORY_TEXT = (
    "Revisit PSNR: the revisited pixels that had left the context window (no context frame of their chunk "
    "showed them, so only memory can get them right), against the first visit of the same place as generated "
    "(for the first frame: the real one). Floor: no memory (without Temp-LoRA). Ceiling: a perfect memory, "
    "which copies the first visit (squared error 0). Gap closed: the share of the floor's squared error that "
    "Temp-LoRA removes. Other PSNR: the action-following error of the frames that are not later visits, as a "
    "PSNR; its drop is what memory costs elsewhere."
)

RECORDED_MEMORY_TEXT = (
    "Recorded episodes: a revisit is a whole frame whose pose (position and angle within the data's tolerances) matches "
    "an earlier frame while no context frame of its chunk does (the place had left the window). Revisit PSNR: "
    "those frames against the first visit as generated (frame 0: the real one); Revisit LPIPS (×100): the same "
    "pairs by LPIPS. Floor: no memory. Ceiling: a "
    "perfect memory (squared error 0). Gap closed: the share of the floor's squared error that Temp-LoRA "
    "removes. Other PSNR: the other generated frames against the real ones; its drop is what memory costs "
    "elsewhere. Episodes with no such frame have no revisit scores (n in results.json)."
)

WORLD_TEXT = (
    "{n} episodes of the built-in world: each leaves its start and comes back along the same path. "
    "Mean ± standard deviation over episodes. SRC: cosine similarity ×100 between the first visit of a "
    "place and later visits of the generated video; SCuts: scene cuts per video; PSNR/SSIM(×100)/LPIPS(×100): "
    "generated vs real frames at the revisited frames. Places beyond the first view are ones the model has never "
    "been shown: at best it can come back to what it generated itself, so PSNR/SSIM/LPIPS against the real frames "
    "stay poor there even for a perfect memory; SRC compares the video with itself."
)

RECORDED_TEXT = (
    "{n} recorded episodes ({source}), each generated from its first real frame under its own action stream. "
    "Mean ± standard deviation over episodes. SRC: cosine similarity ×100 between the first visit of a place and "
    "later visits of the generated video; SCuts: scene cuts per video; PSNR/SSIM(×100)/LPIPS(×100): generated vs "
    "real frames at the revisited frames."
)

PATTERN_TEXT = (
    "The memory scores above over the episodes of each revisit pattern of the recording (gt pattern; Memory Maze: "
    "retrace, loop, detour, explore-return). n: the episodes of that pattern with a frame that needs memory "
    "(the pairs of the paired test)."
)

MOTION_TEXT = (
    "Motion MSE: each generated frame against the previous one moved by the camera step of its action, on the "
    "pixels both show (the real video scores 0). Still MSE: against the previous frame unmoved, what a model that "
    "ignored the action would score. Motion well below Still means the video moves as it is told."
)


def verdict(diff: dict[str, float], key: str) -> str:
    """Plain words for a paired difference (with - without Temp-LoRA)."""
    better = diff["mean"] > 0 if HIGHER_IS_BETTER[key] else diff["mean"] < 0
    if abs(diff["mean"]) < MIN_EFFECT[key]:
        return f"no meaningful difference (|mean difference| < {MIN_EFFECT[key]})"
    strength = "clearly (|t| >= 2)" if abs(diff["t"]) >= 2 else "not significantly (|t| < 2)"
    return f"{'better' if better else 'worse'} with Temp-LoRA, {strength}"


def plot_similarity(path: Path, runs: dict[str, list[EpisodeResult]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    for (name, results), color in zip(runs.items(), ("tab:gray", "tab:blue")):
        by_frame: dict[int, list[float]] = {}
        for r in results:
            for frame, sim in r.similarity:
                by_frame.setdefault(frame, []).append(sim)
        frames = sorted(by_frame)
        means = [sum(by_frame[f]) / len(by_frame[f]) for f in frames]
        ax.plot(frames, means, marker="o", ms=3, color=color, label=name)
        for r in results:
            ax.plot([f for f, _ in r.similarity], [s for _, s in r.similarity], color=color, alpha=0.2, lw=0.8)
    ax.set_xlabel("frame of the revisit (returning to earlier places)")
    ax.set_ylabel("cosine similarity to first visit")
    ax.set_title("Scene revisit consistency over time (thin: episodes, bold: mean)")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_filmstrip(path: Path, rows: list[torch.Tensor], upscale: int = 4) -> None:
    """Rows of frames (each (T, C, H, W) in [0, 1]) as one PNG, frames across, 1-pixel white gaps."""
    from PIL import Image

    strips = [torch.cat([torch.nn.functional.pad(f.clamp(0, 1), (0, 1, 0, 1), value=1.0) for f in r], dim=2)
              for r in rows]  # (C, H + 1, T * (W + 1)) each
    grid = torch.nn.functional.interpolate(torch.cat(strips, dim=1)[None], scale_factor=upscale, mode="nearest")[0]
    pixels = (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="png")


def write_report(
    out: str | Path, without: list[EpisodeResult], with_lora: list[EpisodeResult], settings: dict[str, Any],
    upscale: int = 8, fps: int = 6,
) -> Path:
    """The report folder of a revisit benchmark run. The arm with memory is named in the report's text after
    ``settings["memory"]`` (``frame-bank``: "the frame bank"; otherwise Temp-LoRA); results.json keeps its keys for
    every memory ("with Temp-LoRA" is the arm with memory) so that ``sfvgen evaluate pool`` and ``plot`` read every
    run alike."""
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    arm = "the frame bank" if settings.get("memory") == "frame-bank" else "Temp-LoRA"  # the memory's name
    rows = []
    for a, b in zip(without, with_lora):
        side = torch.cat([a.real, a.video, b.video], dim=3)  # (T, C, H, 3W): real | without | with
        write_video(out / "videos" / f"episode_{a.seed}", side, fps=fps, upscale=upscale)
        write_filmstrip(out / "videos" / f"episode_{a.seed}_frames.png", [a.real, a.video, b.video], upscale // 2 or 1)
        rows.append(a.seed)
    stats = revisit_statistics(without, with_lora)
    summary, diffs, verdicts, memory = (stats[k] for k in ("summary", "paired_difference_with_minus_without", "verdict",
                                                           "memory"))
    keys = list(diffs)
    plot_similarity(out / "similarity.png", {"without memory": without, f"with {arm}": with_lora})
    by_pattern = stats.get("memory_by_pattern")
    results = {
        "summary": summary, "paired_difference_with_minus_without": diffs, "verdict": verdicts,
        "memory": memory, **({"memory_by_pattern": by_pattern} if by_pattern else {}), "n_episodes": len(without),
        "episodes": [{"seed": a.seed, **({"pattern": a.pattern} if a.pattern else {}), "without": a.scores,
                      "with": b.scores, "rollbacks_with": b.rollbacks, "theta_read_chunks_with": b.read_chunks,
                      "recognition_with": b.recognition, "clip_passes_with": b.clip_passes,
                      **({"recalled_chunks_with": b.recalled_chunks} if b.recalled_chunks is not None else {})}
                     for a, b in zip(without, with_lora)],
        "settings": settings,
    }
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2))
    table = ["| | " + " | ".join(f"{k} {'↑' if HIGHER_IS_BETTER[k] else '↓'}" for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for name, stats in summary.items():
        table.append(f"| {name} | " + " | ".join(
            f"{stats[k]['mean']:.2f} ± {stats[k]['std']:.2f}" for k in keys) + " |")
    table.append("| with − without (paired) | " + " | ".join(
        f"{diffs[k]['mean']:+.2f} ± {diffs[k]['std']:.2f}" for k in keys) + " |")
    n = len(without)
    recorded = "Motion MSE" not in summary["without Temp-LoRA"]  # recorded episodes: no camera per pixel
    motion = [] if recorded else _motion_table(summary)
    intro = (RECORDED_TEXT.format(n=n, source=settings.get("shards", "a shard set")) if recorded
             else WORLD_TEXT.format(n=n))
    memory_lines = _memory_lines(memory, RECORDED_MEMORY_TEXT if recorded else MEMORY_TEXT) if memory else []
    pattern_lines = _pattern_lines(by_pattern) if by_pattern else []
    lines = [
        "# Revisit benchmark: with and without Temp-LoRA", "",
        intro, "",
        *table, "",
        "## Did Temp-LoRA help on this model?", "",
        *[f"- **{k}**: {verdicts[k]} (paired difference {diffs[k]['mean']:+.2f} ± {diffs[k]['std']:.2f}, "
          f"t = {diffs[k]['t']:.2f}, p = {diffs[k]['p']:.3g}, n = {diffs[k]['n']})" for k in keys], "",
        *memory_lines,
        *pattern_lines,
        *(["## Does the model follow the actions?", "", MOTION_TEXT, "", *motion, ""] if motion else []),
        "## Frame by frame", "",
        *[f"![episode {seed}: real / without / with Temp-LoRA](videos/episode_{seed}_frames.png)" for seed in rows], "",
        "## Settings", "", "```json", json.dumps(settings, indent=2), "```", "",
    ]
    if arm != "Temp-LoRA":  # the text names the memory the run used
        lines, table, memory_lines, pattern_lines = ([x.replace("Temp-LoRA", arm) for x in part]
                                                     for part in (lines, table, memory_lines, pattern_lines))
        verdicts = {k: v.replace("Temp-LoRA", arm) for k, v in verdicts.items()}
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines))
    _write_html(out, lines, rows, table, motion, verdicts, memory_lines, pattern_lines, arm)
    return out / "index.html"


def revisit_statistics(without: list[EpisodeResult], with_lora: list[EpisodeResult]) -> dict[str, Any]:
    """The statistics of results.json over paired episodes: per-arm summaries, paired differences, their verdicts
    and the memory scores (used by the report and by ``sfvgen evaluate pool``); with ``memory_by_pattern`` when the
    episodes carry a revisit pattern (:func:`pattern_memory`)."""
    stats = _statistics(without, with_lora)
    by_pattern = pattern_memory(without, with_lora) if stats["memory"] is not None else {}
    return {**stats, **({"memory_by_pattern": by_pattern} if by_pattern else {})}


def _statistics(without: list[EpisodeResult], with_lora: list[EpisodeResult]) -> dict[str, Any]:
    summary = {"without Temp-LoRA": summarize(without), "with Temp-LoRA": summarize(with_lora)}
    keys = [k for k in HIGHER_IS_BETTER if k in without[0].scores]
    diffs = {k: paired_difference(with_lora, without, k) for k in keys}
    return {"summary": summary, "paired_difference_with_minus_without": diffs,
            "verdict": {k: verdict(diffs[k], k) for k in keys},
            "memory": memory_summary(summary, diffs) if "Revisit PSNR" in keys else None}


def pattern_memory(without: list[EpisodeResult], with_lora: list[EpisodeResult]) -> dict[str, dict[str, Any]]:
    """The memory scores (:func:`memory_summary`) over the episodes of each revisit pattern, by pattern name
    (sorted), each with ``n_episodes`` and the Revisit PSNR paired difference (``revisit_psnr``: mean, std, n, t,
    p); episodes without a pattern are in no row. Empty when no episode has one."""
    out = {}
    for name in sorted({a.pattern for a in without if a.pattern}):
        pairs = [(a, b) for a, b in zip(without, with_lora) if a.pattern == name]
        stats = _statistics([a for a, _ in pairs], [b for _, b in pairs])
        diffs = stats["paired_difference_with_minus_without"]
        out[name] = {"n_episodes": len(pairs), **stats["memory"], "revisit_psnr": diffs["Revisit PSNR"],
                     **({"revisit_lpips": diffs["Revisit LPIPS"]} if "Revisit LPIPS" in diffs else {})}
    return out


def pattern_rows(by_pattern: dict[str, dict[str, Any]]) -> list[str]:
    """One printed line per revisit pattern (``sfvgen demo`` and ``sfvgen evaluate pool``)."""
    lines = []
    for name, row in by_pattern.items():
        d, mse = row["revisit_psnr"], row["revisit_mse"]
        lines.append(f"{name:>14}: gap closed {100 * row['gap_closed']:.1f} % (Revisit MSE "
                     f"{mse['floor_no_memory']:.4f} -> {mse['temp_lora']:.4f}), Revisit PSNR {d['mean']:+.2f} dB "
                     f"(p = {d['p']:.3g}), n = {d['n']} of {row['n_episodes']} episodes"
                     + (f", Revisit LPIPS {row['revisit_lpips']['mean']:+.2f} (p = {row['revisit_lpips']['p']:.3g})"
                        if "revisit_lpips" in row else ""))
    return lines


def clears_memory_bar(gap_closed: float, p: float, damage_db: float) -> bool:
    """Issue 13's bar for a memory: >= MIN_GAP_CLOSED of the gap, paired p < MAX_P, damage <= MAX_DAMAGE_DB."""
    return bool(gap_closed >= MIN_GAP_CLOSED and p < MAX_P and damage_db <= MAX_DAMAGE_DB)


def memory_summary(summary: dict, diffs: dict) -> dict[str, Any]:
    """Floor (no memory), Temp-LoRA and ceiling (perfect memory: error 0) on the pixels that need memory."""
    floor = summary["without Temp-LoRA"]["Revisit MSE"]["mean"]
    fast = summary["with Temp-LoRA"]["Revisit MSE"]["mean"]
    damage = -diffs["Other PSNR"]["mean"]
    return {
        "revisit_mse": {"floor_no_memory": floor, "temp_lora": fast, "ceiling_perfect_memory": 0.0},
        "revisit_mse_std": {"floor_no_memory": summary["without Temp-LoRA"]["Revisit MSE"]["std"],
                            "temp_lora": summary["with Temp-LoRA"]["Revisit MSE"]["std"]},
        "gap_closed": (floor - fast) / floor if floor > 0 else float("nan"),
        "revisit_psnr_gain_db": diffs["Revisit PSNR"]["mean"], "revisit_psnr_p": diffs["Revisit PSNR"]["p"],
        "damage_other_frames_db": damage, "damage_within_bound": damage <= MAX_DAMAGE_DB,
    }


def _memory_lines(memory: dict[str, Any], text: str = MEMORY_TEXT) -> list[str]:
    mse, std = memory["revisit_mse"], memory.get("revisit_mse_std", {})

    def spread(arm: str) -> str:
        return f" ± {std[arm]:.4f}" if arm in std else ""

    return [
        "## Does Temp-LoRA remember?", "", text, "",
        "| | floor: no memory | Temp-LoRA | ceiling: perfect memory |", "|---|---|---|---|",
        f"| Revisit MSE ↓ (± std over episodes) | {mse['floor_no_memory']:.4f}{spread('floor_no_memory')} | "
        f"{mse['temp_lora']:.4f}{spread('temp_lora')} | 0 |", "",
        f"- Gap closed: **{100 * memory['gap_closed']:.1f} %** of the floor-to-ceiling gap; Revisit PSNR "
        f"{memory['revisit_psnr_gain_db']:+.2f} dB (paired p = {memory['revisit_psnr_p']:.3g}).",
        f"- Damage to the other frames: {memory['damage_other_frames_db']:+.2f} dB "
        f"({'within' if memory['damage_within_bound'] else 'beyond'} the {MAX_DAMAGE_DB} dB bound).", "",
    ]


def _pattern_lines(by_pattern: dict[str, dict[str, Any]]) -> list[str]:
    lpips = all("revisit_lpips" in row for row in by_pattern.values())  # recorded episodes
    rows = []
    for name, row in by_pattern.items():
        d, mse = row["revisit_psnr"], row["revisit_mse"]
        extra = f" {row['revisit_lpips']['mean']:+.2f} ± {row['revisit_lpips']['std']:.2f} |" if lpips else ""
        rows.append(f"| {name} | {d['n']} of {row['n_episodes']} | {mse['floor_no_memory']:.4f} | "
                    f"{mse['temp_lora']:.4f} | {100 * row['gap_closed']:.1f} % | {d['mean']:+.2f} ± {d['std']:.2f} | "
                    f"{d['p']:.3g} |{extra}")
    return ["### By revisit pattern", "", PATTERN_TEXT, "",
            "| pattern | n | Revisit MSE ↓ no memory | Revisit MSE ↓ Temp-LoRA | gap closed | "
            "Revisit PSNR with − without (dB) | paired p |" + (" Revisit LPIPS with − without |" if lpips else ""),
            "|---|---|---|---|---|---|---|" + ("---|" if lpips else ""), *rows, ""]


def _motion_table(summary: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    keys = ["Motion MSE", "Still MSE"]
    table = ["| | Motion MSE ↓ | Still MSE (no-motion baseline) |", "|---|---|---|"]
    for name, stats in summary.items():
        table.append(f"| {name} | " + " | ".join(f"{stats[k]['mean']:.4f} ± {stats[k]['std']:.4f}" for k in keys) + " |")
    return table


def _html_table(table: list[str]) -> str:
    head = table[0].strip("|").split("|")
    body_rows = [r.strip("|").split("|") for r in table[2:]]
    cells = "".join(f"<th>{html.escape(c.strip())}</th>" for c in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in body_rows)
    return f"<table><tr>{cells}</tr>{trs}</table>"


def _write_html(out: Path, lines: list[str], seeds: list[int], table: list[str], motion: list[str],
                verdicts: dict[str, str], memory: list[str], patterns: list[str] = (), name: str = "Temp-LoRA") -> None:
    videos = "".join(
        f'<figure><img src="videos/episode_{s}.gif" alt="episode {s}"><figcaption>episode {s}: real | without | '
        f'with {name} (<a href="videos/episode_{s}.mp4">mp4</a>)</figcaption></figure>' for s in seeds
    )
    strips = "".join(
        f'<figure><img class="strip" src="videos/episode_{s}_frames.png" alt="episode {s} frames"><figcaption>episode '
        f'{s}, frame by frame: real / without / with {name}</figcaption></figure>' for s in seeds
    )
    verdict_items = "".join(f"<li><b>{k}</b>: {html.escape(v)}</li>" for k, v in verdicts.items())
    memory_html = ""
    if memory:  # heading, text, table (5 lines), bullets
        bullets = "".join(f"<li>{html.escape(b[2:]).replace('**', '')}</li>" for b in memory if b.startswith("- "))
        memory_html = (f"<h2>Does {name} remember?</h2><p>{html.escape(memory[2])}</p>"
                       f"{_html_table([r for r in memory if r.startswith('|')])}<ul>{bullets}</ul>")
    if patterns:  # heading, text, table
        memory_html += (f"<h3>By revisit pattern</h3><p>{html.escape(PATTERN_TEXT)}</p>"
                        f"{_html_table([r for r in patterns if r.startswith('|')])}")
    motion_html = (f"<h2>Does the model follow the actions?</h2><p>{html.escape(MOTION_TEXT)}</p>{_html_table(motion)}"
                   if motion else "")
    settings = html.escape(json.dumps(json.loads((out / "results.json").read_text())["settings"], indent=2))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>SlowFast-VGen demo report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}figure{{display:inline-block;margin:6px}}
figure img{{image-rendering:pixelated;width:384px}}figure img.strip{{width:auto;max-width:1080px}}</style></head><body>
<h1>Revisit benchmark: with and without {name}</h1><p>{html.escape(lines[2])}</p>
{_html_table(table)}<h2>Did {name} help on this model?</h2><ul>{verdict_items}</ul>{memory_html}
{motion_html}
<h2>Similarity to the first visit over time</h2><img style="display:block;width:640px" src="similarity.png">
<h2>Videos</h2><div>{videos}</div><h2>Frame by frame</h2><div>{strips}</div><h2>Settings</h2><pre>{settings}</pre></body></html>"""
    with atomic_path(out / "index.html") as tmp:
        tmp.write_text(page)
