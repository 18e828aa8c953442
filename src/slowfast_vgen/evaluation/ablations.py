"""The paper's ablations as functions that notebooks call (notebooks hold no logic of their own).

* :func:`lr_rank_grid`: Temp-LoRA learning rate x LoRA rank (Tables 6 and 8: SCuts, SRC);
* :func:`sampling_steps`: inference-time DPM-Solver steps (Table 9);
* :func:`temp_lora_variants`: Table 4's variants (original Temp-LoRA, without the local learning rule,
  without chunk input, without Temp-LoRA, ours).

Each runs the revisit benchmark of the built-in world (or any episode dataset with ``first``, ``actions``,
``frames``, ``revisits``) and returns rows (dicts) with mean and spread over episodes; :func:`plot_rows`
draws them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L

from slowfast_vgen.evaluation.revisit import generate_episodes, score_episodes, summarize
from slowfast_vgen.metrics import SceneRevisitConsistency


def build_system(config: str, weights: str | None = None) -> L.LightningModule:
    """The LightningModule of an experiment YAML, with UNet weights from a safetensors file if given."""
    from slowfast_vgen.experiment import load_system

    return load_system(config, weights).model


def run_condition(
    system: L.LightningModule, episodes: Any, temp_lora: dict | None, steps: int | None = None,
    single_frame_context: bool = False, src: SceneRevisitConsistency | None = None, progress: bool = True,
) -> dict[str, Any]:
    """Generate and score ``episodes`` under one setting; returns means and standard deviations."""
    old_steps, old_context = system.sampler.num_inference_steps, system.generator.context_frames
    try:
        if steps is not None:
            system.sampler.num_inference_steps = steps
        if single_frame_context:
            system.generator.context_frames = 1
        outputs = generate_episodes(system, episodes, temp_lora, progress=progress)
    finally:
        system.sampler.num_inference_steps, system.generator.context_frames = old_steps, old_context
    results = score_episodes(outputs, episodes, src or SceneRevisitConsistency())
    stats = summarize(results)
    row: dict[str, Any] = {k: v["mean"] for k, v in stats.items()}
    row.update({f"{k}_std": v["std"] for k, v in stats.items()})
    row["episodes"] = len(results)
    row["rollbacks"] = sum(r.rollbacks for r in results)
    return row


def lr_rank_grid(system, episodes, lrs: Sequence[float], ranks: Sequence[int], updates_per_chunk: int = 1,
                 include_baseline: bool = True) -> list[dict[str, Any]]:
    """Tables 6/8: one row per (lr, rank), plus "wo Temp-LoRA"."""
    src = SceneRevisitConsistency()
    rows = []
    for lr in lrs:
        for rank in ranks:
            row = run_condition(system, episodes, dict(rank=rank, lr=lr, steps_per_chunk=updates_per_chunk), src=src)
            rows.append({"setting": f"lr={lr:g} rank={rank}", "lr": lr, "rank": rank, **row})
    if include_baseline:
        rows.append({"setting": "wo Temp-LoRA", "lr": None, "rank": None, **run_condition(system, episodes, None, src=src)})
    return rows


def sampling_steps(system, episodes, steps: Sequence[int], temp_lora: dict | None = None) -> list[dict[str, Any]]:
    """Table 9: one row per number of DPM-Solver steps (with Temp-LoRA at the paper's settings by default)."""
    src = SceneRevisitConsistency()
    lora = temp_lora if temp_lora is not None else dict(rank=32, lr=1e-4)
    return [{"setting": f"{n} steps", "steps": n, **run_condition(system, episodes, lora, steps=n, src=src)} for n in steps]


def temp_lora_variants(system, episodes, rank: int = 32, lr: float = 1e-4) -> list[dict[str, Any]]:
    """Table 4: the Temp-LoRA variants of App. D.1 and ours."""
    src = SceneRevisitConsistency()
    base = dict(rank=rank, lr=lr)
    settings = [
        ("Ours (w original Temp-LoRA)", {**base, "variant": "original"}, False),
        ("Ours (wo Local Learning Rule)", {**base, "variant": "no-local"}, False),
        ("Ours (wo Chunk Input)", {**base, "variant": "temp-lora"}, True),
        ("Ours (wo/ Temp-LoRA)", None, False),
        ("Ours SlowFast-VGen", {**base, "variant": "temp-lora"}, False),
    ]
    return [{"setting": name, **run_condition(system, episodes, lora, single_frame_context=single, src=src)}
            for name, lora, single in settings]


def rows_to_markdown(rows: list[dict[str, Any]], keys: Sequence[str] = ("SCuts", "SRC")) -> str:
    lines = ["| setting | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for r in rows:
        lines.append(f"| {r['setting']} | " + " | ".join(f"{r[k]:.2f} ± {r[k + '_std']:.2f}" for k in keys) + " |")
    return "\n".join(lines)


def plot_rows(rows: list[dict[str, Any]], keys: Sequence[str] = ("SCuts", "SRC"), title: str = "", path: str | None = None):
    """Bar charts with error bars (std over episodes), one panel per metric; returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), dpi=110, squeeze=False)
    names = [r["setting"] for r in rows]
    for ax, key in zip(axes[0], keys):
        ax.bar(range(len(rows)), [r[key] for r in rows], yerr=[r[key + "_std"] for r in rows], capsize=3)
        ax.set_xticks(range(len(rows)), names, rotation=60, ha="right", fontsize=7)
        ax.set_title(key)
    fig.suptitle(title)
    fig.tight_layout()
    if path:
        fig.savefig(path)
    return fig
