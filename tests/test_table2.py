"""Table 2 (long-horizon planning) end to end at tiny size: the recipe's three commands, on the built-in task."""

from __future__ import annotations

import json

from slowfast_vgen.cli import main as sfvgen
from testutils import REPO


def test_table2_recipe_end_to_end_at_tiny_size(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exp = REPO / "experiments" / "planning"
    small = ["--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
             "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "true"]
    # 1: slow learning on expert episodes (fine-tunes the shipped world model), then export Phi
    assert sfvgen(["fit", "-c", str(exp / "world_retrace_slow.yaml"), *small, "--trainer.max_epochs", "1",
                   "--trainer.max_steps", "-1", "--trainer.limit_val_batches", "0",
                   "--trainer.val_check_interval", "1.0", "--trainer.check_val_every_n_epoch", "1", "--trainer.default_root_dir", "slow",
                   "--data.init_args.num_episodes", "2", "--data.init_args.val_episodes", "1"]) in (0, None)
    (ckpt,) = (tmp_path / "slow").rglob("*.ckpt")
    assert sfvgen(["export", str(ckpt), "slow.safetensors"]) == 0
    # 2: the slow-fast loop from it (one epoch over 2 episodes, per-sample Theta), then export Phi
    assert sfvgen(["fit", "-c", str(exp / "world_retrace_loop.yaml"), *small, "--trainer.max_epochs", "1",
                   "--trainer.default_root_dir", "loop", "--model.init_args.init_weights", "slow.safetensors",
                   "--model.init_args.memory_dir", "loop/memory", "--data.init_args.num_episodes", "2"]) in (0, None)
    (ckpt,) = (tmp_path / "loop").rglob("*.ckpt")
    assert sfvgen(["export", str(ckpt), "loop.safetensors"]) == 0
    # 3: Table 2: 2 test episodes per method, 2 sampling steps, FVD on
    t = "benchmark.tasks.0"
    assert sfvgen(["evaluate", "-c", str(REPO / "experiments" / "eval" / "table2_world.yaml"), "out=table2",
                   f"{t}.weights=slow.safetensors", f"{t}.loop_weights=loop.safetensors", f"{t}.episodes=2",
                   f"{t}.idm_episodes=6", f"{t}.idm_steps=60", "settings.steps=2"]) == 0
    result = json.loads((tmp_path / "table2" / "table.json").read_text())
    rows = {r["setting"]: r for r in result["rows"]}
    assert list(rows) == ["Ours wo Temp-LoRA", "Ours wo Loop", "Ours"]
    for r in rows.values():
        assert r["episodes"] == 2 and r["metric"] >= 0 and r["FVD"] >= 0
    (task,) = result["protocol"]["tasks"]
    assert task["expert_metric"] == 0.0  # the scripted expert retraces its path exactly
    assert 0 <= task["idm"]["heldout_accuracy"] <= 1
    md = (tmp_path / "table2" / "table.md").read_text()
    assert md.splitlines()[0].startswith("| task | Ours wo Temp-LoRA: dist. | Ours wo Temp-LoRA: FVD")
    assert "| world-retrace |" in md
