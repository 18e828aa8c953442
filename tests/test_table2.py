"""Table 2 (long-horizon planning) end to end at tiny size: the recipe's training steps, then `sfvgen evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slowfast_vgen.cli import main as sfvgen
from testutils import REPO

SMALL = ["--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
         "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "true", "--trainer.max_epochs", "1"]


def train_recipe(prefix: str, episodes: int = 2, data: tuple[str, ...] = ()) -> tuple[str, str]:
    """Steps 1-2 of experiments/planning/README.md at tiny size (one epoch each); returns the exported weights."""
    exp = REPO / "experiments" / "planning"
    # 1: slow learning on expert episodes, then Phi as safetensors
    assert sfvgen(["fit", "-c", str(exp / f"{prefix}_slow.yaml"), *SMALL, "--trainer.max_steps", "-1",
                   "--trainer.limit_val_batches", "0", "--trainer.val_check_interval", "1.0",
                   "--trainer.check_val_every_n_epoch", "1", "--trainer.default_root_dir", f"{prefix}/slow",
                   "--data.init_args.num_episodes", str(episodes), "--data.init_args.val_episodes", "1", *data]) in (0, None)
    assert sfvgen(["export", _ckpt(f"{prefix}/slow"), f"{prefix}/slow.safetensors"]) == 0
    # 2: the slow-fast loop from it (per-sample Theta), then its Phi
    assert sfvgen(["fit", "-c", str(exp / f"{prefix}_loop.yaml"), *SMALL, "--trainer.default_root_dir", f"{prefix}/loop",
                   "--model.init_args.init_weights", f"{prefix}/slow.safetensors", "--model.init_args.memory_dir",
                   f"{prefix}/loop/memory", "--data.init_args.num_episodes", str(episodes), *data]) in (0, None)
    assert sfvgen(["export", _ckpt(f"{prefix}/loop"), f"{prefix}/loop.safetensors"]) == 0
    return f"{prefix}/slow.safetensors", f"{prefix}/loop.safetensors"


def _ckpt(folder: str) -> str:
    (ckpt,) = Path(folder).rglob("*.ckpt")
    return str(ckpt)


def evaluate(config: str, weights: list[tuple[str, str]], episodes: int = 2, extra: tuple[str, ...] = ()) -> dict:
    overrides = ["out=table2", "settings.steps=2", *extra]
    for i, (slow, loop) in enumerate(weights):
        t = f"benchmark.tasks.{i}"
        overrides += [f"{t}.weights={slow}", f"{t}.loop_weights={loop}", f"{t}.episodes={episodes}",
                      f"{t}.idm_episodes=6", f"{t}.idm_steps=60"]
    assert sfvgen(["evaluate", "-c", str(REPO / "experiments" / "eval" / config), *overrides]) == 0
    return json.loads(Path("table2/table.json").read_text())


def check_layout(result: dict, tasks: list[str], episodes: int) -> None:
    methods = ["Ours wo Temp-LoRA", "Ours wo Loop", "Ours"]
    assert [(r["task"], r["setting"]) for r in result["rows"]] == [(t, m) for t in tasks for m in methods]
    for r in result["rows"]:
        assert r["episodes"] == episodes and r["metric"] >= 0 and r.get("FVD", 0) >= 0
    for task in result["protocol"]["tasks"]:
        assert 0 <= task["idm"]["heldout_accuracy"] <= 1
    md = Path("table2/table.md").read_text().splitlines()
    assert md[0].startswith("| task | Ours wo Temp-LoRA: dist. | Ours wo Temp-LoRA: FVD")
    assert [line.split("|")[1].strip() for line in md[2 : 2 + len(tasks)]] == tasks


def test_table2_recipe_end_to_end_on_the_built_in_task(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = evaluate("table2_world.yaml", [train_recipe("world_retrace")])
    check_layout(result, ["world-retrace"], episodes=2)
    assert result["protocol"]["tasks"][0]["expert_metric"] == 0.0  # the scripted expert retraces exactly


@pytest.mark.slow
def test_table2_recipe_end_to_end_on_pybullet_and_vizdoom(tmp_path, monkeypatch):
    pytest.importorskip("pybullet")
    pytest.importorskip("vizdoom")
    monkeypatch.chdir(tmp_path)
    # 16 px instead of 32, one path segment instead of 3, no FVD (the built-in task's test covers it): the same
    # code paths, a fraction of the compute
    px = ("--data.init_args.task_kwargs.resolution", "16")
    one_segment = (*px, "--data.init_args.task_kwargs.segments", "1")
    weights = [train_recipe("object_return", episodes=1, data=px),
               train_recipe("path_retrace", episodes=1, data=one_segment)]
    result = evaluate("table2_tasks.yaml", weights, episodes=1, extra=("settings.fvd=false",
                      "benchmark.tasks.0.task_kwargs.resolution=16", "benchmark.tasks.1.task_kwargs.resolution=16",
                      "benchmark.tasks.1.task_kwargs.segments=1"))
    check_layout(result, ["object-return", "path-retrace"], episodes=1)
    for task in result["protocol"]["tasks"]:
        assert task["expert_metric"] < 0.05 if task["task"] == "object-return" else task["expert_metric"] < 5
