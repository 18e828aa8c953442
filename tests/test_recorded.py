"""Recorded episodes as revisit benchmark episodes: frames at a matching pose, chunks along the action spans,
the frame-level revisit score, and `sfvgen demo --shards` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from slowfast_vgen.datamodules.recorded import RecordedRevisitDataset, chunk_starts, pose_revisits
from slowfast_vgen.datamodules.shardset import ShardSetWriter
from slowfast_vgen.datamodules.world import revisit_episode
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.evaluation.memory import revisit_frame_score
from slowfast_vgen.evaluation.revisit import EpisodeResult, paired_difference, summarize
from slowfast_vgen.generation.long_video import chunk_action


def line_poses(xs: list[float]) -> np.ndarray:
    return np.array([[x, 0.0, 0.0, 90.0] for x in xs])


def test_pose_revisits_keep_only_places_that_left_the_window():
    # out 0..5 and back 4..0, one unit a frame; chunks of 2 frames after frame 0, context 2
    xs = [0, 1, 2, 3, 4, 5, 4, 3, 2, 1, 0]
    chunks = [(a, min(a + 2, 11), "x") for a in range(1, 11, 2)]
    starts = chunk_starts(11, chunks)
    assert starts.tolist() == [-1, 1, 1, 3, 3, 5, 5, 7, 7, 9, 9]
    groups = pose_revisits(line_poses(xs), starts, context_frames=2, pose_tolerance=0)
    # frame 6 (x=4): its chunk starts at 5, context frames 3, 4 show x=3, 4: copying, not memory.
    # frame 7 (x=3): context 5, 6 (x=5, 4): needs memory of frame 3; 8 -> 2, 9 -> 1, 10 -> 0 likewise
    # (frame 8's context is 5, 6 too: it is in the chunk that starts at 7).
    assert groups == [(0, [10]), (1, [9]), (2, [8]), (3, [7])]
    # a tolerance of one unit: frame 7 (x=3) matches context frame 6 (x=4), so it does not need memory
    wide = pose_revisits(line_poses(xs), starts, context_frames=2, pose_tolerance=1.0)
    assert 7 not in {j for _, js in wide for j in js}
    # another angle is another view
    turned = line_poses(xs)
    turned[7:, 3] = 180.0
    assert pose_revisits(turned, starts, 2, 0) == []
    # explicit pairs count under the same memory rule
    far = line_poses([0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100])
    assert pose_revisits(far, starts, 2, 0, explicit=[(10, 0)]) == [(0, [10])]
    with pytest.raises(UserInputError, match="poses must be"):
        pose_revisits(np.zeros((3, 2)), starts, 2)


def test_chunk_actions_are_texts_or_text_and_length():
    assert chunk_action("go left", 4) == ("go left", 4)
    assert chunk_action(("stay", 3), 4) == ("stay", 3)
    for bad in (("stay", 0), ("stay",), (3, 2), 5):
        with pytest.raises(UserInputError, match="chunk action"):
            chunk_action(bad, 4)


def world_shards(root, seeds=(0, 1), chunk_frames=2, chunks_out=3):
    """Revisit episodes of the built-in world written as a recording: frames, per-frame actions, poses."""
    writer = ShardSetWriter(root, "test-world", {}, video="mp4-lossless")
    episodes = []
    for seed in seeds:
        ep = revisit_episode(seed, chunk_frames=chunk_frames, chunks_out=chunks_out, min_gap=1)
        frames = (ep["frames"].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
        spans = [(1 + c * chunk_frames, 1 + (c + 1) * chunk_frames, a) for c, a in enumerate(ep["actions"])]
        poses = [[float(x), float(y), 0.0, 0.0] for x, y in ep["positions"].tolist()]
        writer.write_episode(f"world-{seed}", iter(frames), 8.0, spans, "game", False,
                             lambda a, b, poses=poses: {"pose_names": ["x", "y", "z", "angle"], "pose": poses[a:b]})
        episodes.append(ep)
    writer.finish()
    return episodes


def test_recorded_episodes_from_shards_match_the_world(tmp_path):
    world = world_shards(tmp_path / "shards")
    ds = RecordedRevisitDataset(tmp_path / "shards", chunk_frames=2, context_frames=2, pose_tolerance=0)
    assert len(ds) == 2
    for i, ep in enumerate(world):
        got = ds[i]
        assert torch.allclose(got["frames"], ep["frames"], atol=1 / 255 + 1e-6)  # lossless video
        assert got["actions"] == [(a, 2) for a in ep["actions"]]
        assert got["first"].shape == (1, 3, 16, 16) and got["seed"] == i
        # every benchmark revisit is an exact one of the world's (same camera position), beyond the window
        exact = {(first, j) for first, js in ep["revisits"] for j in js}
        pairs = {(first, j) for first, js in got["revisits"] for j in js}
        assert pairs, "the return leg must revisit places that left the window"
        for first, j in pairs:
            assert torch.equal(ep["positions"][first], ep["positions"][j])
            assert first < (j - 1) // 2 * 2 + 1 - 2  # outside the 2 context frames of j's chunk
        assert {j for _, j in pairs} <= {j for _, j in exact}
    with pytest.raises(UserInputError, match="holds 2 episodes"):
        RecordedRevisitDataset(tmp_path / "shards", episodes=3)


def test_frame_revisit_score_and_nan_episodes():
    video = torch.zeros(4, 3, 2, 2)
    video[3] = 0.5
    score = revisit_frame_score(video, [(0, [3])])
    assert score["Revisit MSE"] == pytest.approx(0.25) and score["Revisit PSNR"] == pytest.approx(10 * math.log10(4))
    assert math.isnan(revisit_frame_score(video, [])["Revisit PSNR"])

    def result(value):
        return EpisodeResult(seed=0, video=video, real=video, revisits=[], scores={"Revisit PSNR": value})

    with_lora = [result(11.0), result(math.nan), result(13.0)]
    without = [result(10.0), result(math.nan), result(10.0)]
    diff = paired_difference(with_lora, without, "Revisit PSNR")
    assert diff["n"] == 2 and diff["mean"] == pytest.approx(2.0)
    stats = summarize(with_lora)["Revisit PSNR"]
    assert stats["n"] == 2 and stats["mean"] == pytest.approx(12.0)
    assert paired_difference([result(math.nan)], [result(1.0)], "Revisit PSNR")["n"] == 0


def test_demo_on_recorded_shards(tmp_path):
    from slowfast_vgen.demo import main

    world_shards(tmp_path / "shards", chunk_frames=4, chunks_out=3)
    out = tmp_path / "demo"
    assert main(["--shards", str(tmp_path / "shards"), "--pose-tolerance", "0", "--episodes", "2", "--steps", "2",
                 "--rank", "4", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["shards"] == str(tmp_path / "shards") and results["n_episodes"] == 2
    summary = results["summary"]["with Temp-LoRA"]
    assert {"Revisit PSNR", "Revisit MSE", "Other PSNR", "SRC"} <= set(summary) and "Motion MSE" not in summary
    assert summary["Revisit PSNR"]["n"] == 2 and 0 <= results["memory"]["revisit_psnr_p"] <= 1
    report = (out / "report.md").read_text()
    assert "recorded episodes" in report and "Does the model follow the actions?" not in report
    assert len(list((out / "videos").glob("*.mp4"))) == 2
    with pytest.raises(UserInputError, match="not a folder"):
        main(["--shards", str(tmp_path / "nowhere"), "--episodes", "2", "--out", str(out)])
