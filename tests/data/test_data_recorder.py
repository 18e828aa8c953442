"""ViZDoom recorder: revisit episodes with exact ground truth, written straight to shards (the Game domain)."""

from __future__ import annotations

import time

import pytest
import torch

from slowfast_vgen.datamodules.prep import cli
from slowfast_vgen.datamodules.shards.read import ShardEpisodeDataset
from slowfast_vgen.datamodules.shards.format import load_manifest, verify_shards

pytest.importorskip("vizdoom")

from slowfast_vgen.datamodules.prep.record import record_shards  # noqa: E402


def test_revisit_episodes_are_exact(tmp_path):
    s = record_shards(tmp_path / "doom", episodes=3, loops=2, policy="mixed", seed=1, progress=False)
    assert s["complete"] and s["revisits"] == s["exact_revisits"] == 6
    ds = ShardEpisodeDataset(tmp_path / "doom")
    assert len(ds) == 3
    for i in range(3):
        ep = ds.load(i)
        assert ep["domain"] == "game" and ep["fps"] == 35.0
        gt = ep["gt"][0]
        assert len(gt["pose"]) == len(ep["video"]) and len(gt["revisits"]) == 2
        for r in gt["revisits"]:
            a, b = r["of_frame"], r["frame"]
            assert b > a and r["exact"] and r["pixel_mae"] == 0
            assert gt["pose"][a] == gt["pose"][b]  # same x, y, z, angle
            assert torch.equal(ep["video"][a], ep["video"][b])  # the stored frames match exactly (lossless)
            assert any(p != gt["pose"][a] for p in gt["pose"][a:b])  # it did leave the place
        assert ep["revisits"] == [(0, sorted(r["frame"] for r in gt["revisits"]))]  # SRC metric input
        texts = {t for _, _, t in ep["actions"]}
        assert texts <= {"go forward", "go backward", "go left", "go right", "turn left", "turn right", "stay"}
        assert ep["actions"][0][0] == 1  # frame t is labelled with the action that led to it
    assert verify_shards(tmp_path / "doom", deep=True)["ok"]


def test_recorder_cli_resumes(tmp_path, capsys):
    args = ["record", str(tmp_path / "d"), "--episodes", "4", "--policy", "random", "--shard-size", "100KB",
            "--no-progress"]
    assert cli.main(args + ["--limit-shards", "1"]) == 0
    first = load_manifest(tmp_path / "d", require_complete=False)
    assert not first["complete"] and first["num_shards"] == 1
    assert cli.main(args) == 0
    manifest = load_manifest(tmp_path / "d")
    assert manifest["num_episodes"] == 4 and manifest["complete"]


@pytest.mark.slow
def test_one_hundred_revisit_episodes_in_under_two_minutes(tmp_path):
    t0 = time.perf_counter()
    s = record_shards(tmp_path / "doom", episodes=100, progress=False)
    seconds = time.perf_counter() - t0
    print(f"recorded {s['episodes']} episodes, {s['frames']} frames, {s['exact_revisits']}/{s['revisits']} exact "
          f"revisits in {seconds:.1f} s")
    assert s["num_episodes"] == 100 and s["exact_revisits"] == s["revisits"] == 100
    assert seconds < 120
