"""Every YAML under experiments/ is instantiated; each trainable one runs a CPU fast_dev_run (STYLE 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
from jsonargparse import ArgumentParser
from lightning.pytorch.strategies import Strategy
from omegaconf import OmegaConf

from testutils import REPO
from tiny_pretrained import write_tiny_modelscope
from slowfast_vgen.experiment import load_experiment

# Training experiments (LightningCLI); experiments/eval/ holds `sfvgen evaluate` configs (tests/test_evaluate.py).
EXPERIMENTS = sorted(p for p in (REPO / "experiments").rglob("*.yaml") if "eval" not in p.relative_to(REPO).parts[1:-1])
CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "1",
       "--trainer.strategy", "auto", "--trainer.precision", "32-true", "--trainer.fast_dev_run", "1"]
# Per-experiment overrides that shrink a full-size config to seconds on CPU; everything else is as written.
SHRINK = {
    "slow_modelscope.yaml": ["--data.init_args.resolution", "32", "--data.init_args.frames", "4",
                             "--data.init_args.min_frames", "3", "--data.init_args.max_context", "2",
                             "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "1"],
    "world_retrace_slow.yaml": ["--data.init_args.num_episodes", "2", "--data.init_args.val_episodes", "1"],
    # its init_weights come from step 1 of the recipe (tests/test_table2.py runs the whole recipe)
    "world_retrace_loop.yaml": ["--data.init_args.num_episodes", "1", "--model.init_args.init_weights", "null"],
    "object_return_slow.yaml": ["--data.init_args.num_episodes", "2", "--data.init_args.val_episodes", "1"],
    "object_return_loop.yaml": ["--data.init_args.num_episodes", "1", "--model.init_args.init_weights", "null"],
    "path_retrace_slow.yaml": ["--data.init_args.num_episodes", "2", "--data.init_args.val_episodes", "1"],
    "path_retrace_loop.yaml": ["--data.init_args.num_episodes", "1", "--model.init_args.init_weights", "null"],
    "doom_slow.yaml": ["--data.init_args.num_workers", "0", "--data.init_args.batch_size", "1",
                       "--data.init_args.frames", "4", "--data.init_args.min_frames", "3",
                       "--data.init_args.max_context", "2"],
}


@pytest.fixture(scope="module")
def tiny_modelscope(tmp_path_factory):
    return write_tiny_modelscope(tmp_path_factory.mktemp("modelscope"))


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    """A real shard set built by `data build` from a few small lossless videos."""
    import sys

    sys.path.insert(0, str(REPO / "tests" / "data"))
    from datautils import make_dataset

    from slowfast_vgen.datamodules.prep.build import build_shards

    root = tmp_path_factory.mktemp("shards")
    videos, actions, _, _ = make_dataset(root)
    build_shards(videos, actions, root / "train", video="mp4-lossless", progress=False)
    return root / "train"


def test_there_are_experiments():
    assert {"slow_tiny.yaml", "slow_modelscope.yaml"} <= {p.name for p in EXPERIMENTS}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_experiment_instantiates_and_runs_a_cpu_fast_dev_run(path: Path, tmp_path, tiny_modelscope, tiny_shards,
                                                             monkeypatch):
    monkeypatch.setenv("MODELSCOPE", str(tiny_modelscope))
    monkeypatch.setenv("SHARDS", str(tiny_shards))
    monkeypatch.setenv("DOOM_SHARDS", str(tiny_shards))
    monkeypatch.setenv("DOOM_VAL_SHARDS", str(tiny_shards))
    monkeypatch.setenv("MAZE_SHARDS", str(tiny_shards))
    monkeypatch.setenv("MAZE_VAL_SHARDS", str(tiny_shards))
    monkeypatch.chdir(tmp_path)  # runs/ and logs land in the temporary folder
    cli = load_experiment(str(path), CPU + SHRINK.get(path.name, []))
    assert cli.model is not None and cli.datamodule is not None
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.state.finished


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_experiment_strategy_as_written_instantiates(path: Path):
    """The cluster strategy (FSDP/DDP) is replaced above for CPU; here it is built as written."""
    strategy = OmegaConf.to_container(OmegaConf.load(path)).get("trainer", {}).get("strategy")
    if not isinstance(strategy, dict):
        pytest.skip("no strategy object in this config")
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy)
    built = parser.instantiate(parser.parse_object({"strategy": strategy})).strategy
    assert type(built).__name__ == strategy["class_path"].rsplit(".", 1)[1]


def test_maze_from_world_tells_the_maze_chunks_apart(monkeypatch, tmp_path, tiny_shards):
    """Every 4-frame Memory Maze chunk text (its frames' words in order) reaches the recipe's text encoder as its
    own embedding: the same words in another order are another chunk."""
    import itertools

    from slowfast_vgen.simulators.memory_maze import WORDS

    monkeypatch.setenv("MAZE_SHARDS", str(tiny_shards))
    monkeypatch.setenv("MAZE_VAL_SHARDS", str(tiny_shards))
    monkeypatch.chdir(tmp_path)
    cli = load_experiment(str(REPO / "experiments" / "maze_from_world.yaml"), CPU)
    assert cli.datamodule.hparams["resolution"] == "16x16"
    assert str(cli.datamodule.hparams["train_shards"]) == str(tiny_shards)
    texts = [" ".join(words) for words in itertools.product(WORDS.values(), repeat=4)]
    embeddings = cli.model.text_encoder(texts).flatten(1)  # (256, L * D)
    assert len({tuple(e.tolist()) for e in embeddings}) == len(texts) == 4**4
