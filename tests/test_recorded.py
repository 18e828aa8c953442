"""Recorded episodes as revisit benchmark episodes: frames at a matching pose, chunks along the action spans,
the frame-level revisit score, and `sfvgen demo --shards` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from testutils import REPO, world_shards

from slowfast_vgen.datamodules.recorded import RecordedRevisitDataset, chunk_starts, pose_revisits, split_pose
from slowfast_vgen.simulators.world import revisit_episode
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.evaluation.memory import revisit_frame_score
from slowfast_vgen.evaluation.revisit import EpisodeResult, paired_difference, summarize
from slowfast_vgen.generation.long_video import chunk_action


def line_poses(xs: list[float], angle: float = 90.0) -> tuple[np.ndarray, np.ndarray]:
    return split_pose(np.array([[x, 0.0, 0.0, angle] for x in xs]), ["x", "y", "z", "angle"])


def test_pose_revisits_keep_only_places_that_left_the_window():
    # out 0..5 and back 4..0, one unit a frame; chunks of 2 frames after frame 0, context 2
    xs = [0, 1, 2, 3, 4, 5, 4, 3, 2, 1, 0]
    chunks = [(a, min(a + 2, 11), "x") for a in range(1, 11, 2)]
    starts = chunk_starts(11, chunks)
    assert starts.tolist() == [-1, 1, 1, 3, 3, 5, 5, 7, 7, 9, 9]
    groups = pose_revisits(*line_poses(xs), starts, context_frames=2, pose_tolerance=0)
    # frame 6 (x=4): its chunk starts at 5, context frames 3, 4 show x=3, 4: copying, not memory.
    # frame 7 (x=3): context 5, 6 (x=5, 4): needs memory of frame 3; 8 -> 2, 9 -> 1, 10 -> 0 likewise
    # (frame 8's context is 5, 6 too: it is in the chunk that starts at 7).
    assert groups == [(0, [10]), (1, [9]), (2, [8]), (3, [7])]
    # a tolerance of one unit: frame 7 (x=3) matches context frame 6 (x=4), so it does not need memory
    wide = pose_revisits(*line_poses(xs), starts, context_frames=2, pose_tolerance=1.0)
    assert 7 not in {j for _, js in wide for j in js}
    # another angle is another view
    positions, angles = line_poses(xs)
    angles[7:] = 180.0
    assert pose_revisits(positions, angles, starts, 2, 0) == []
    assert pose_revisits(positions, None, starts, 2, 0) == groups  # no angle field: position only
    # explicit pairs count under the same memory rule
    far = line_poses([0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100])
    assert pose_revisits(*far, starts, 2, 0, explicit=[(10, 0)]) == [(0, [10])]
    with pytest.raises(UserInputError, match="positions must be"):
        pose_revisits(np.zeros((3, 2)), None, starts, 2)
    # pose fields are found by name, in any order
    pos, ang = split_pose(np.array([[90.0, 1.0, 2.0]]), ["yaw", "x", "y"])
    assert pos.tolist() == [[1.0, 2.0]] and ang.tolist() == [90.0]
    with pytest.raises(UserInputError, match="position fields"):
        split_pose(np.zeros((1, 2)), ["speed", "angle"])


def test_chunk_actions_are_texts_or_text_and_length():
    assert chunk_action("go left", 4) == ("go left", 4)
    assert chunk_action(("stay", 3), 4) == ("stay", 3)
    for bad in (("stay", 0), ("stay",), (3, 2), 5):
        with pytest.raises(UserInputError, match="chunk action"):
            chunk_action(bad, 4)


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


def test_recorded_scores_include_lpips_at_the_revisits():
    """LPIPS (x100) of the revisit frames against the real ones, and Revisit LPIPS against the first visit as
    generated: 0 where the memory brought back the first visit exactly, > 0 where it did not."""
    from slowfast_vgen.evaluation.revisit import score_episodes
    from slowfast_vgen.metrics import SceneRevisitConsistency

    g = torch.Generator().manual_seed(0)
    real = torch.rand(9, 3, 16, 16, generator=g)
    ep = {"first": real[:1], "frames": real, "actions": [("forward forward forward forward", 4)] * 2,
          "revisits": [(1, [8])], "seed": 0}
    exact, off = real.clone(), real.clone()
    exact[8] = real[1]  # the later visit is the first one as generated, not the real frame 8
    off[8] = torch.rand(3, 16, 16, generator=g)
    src = SceneRevisitConsistency(backbone="alexnet")
    (a,) = score_episodes([{"video": exact[None]}], [ep], src, 4, 4)
    (b,) = score_episodes([{"video": off[None]}], [ep], src, 4, 4)
    assert a.scores["Revisit LPIPS"] == pytest.approx(0.0, abs=1e-4) and a.scores["Revisit MSE"] == 0.0
    assert b.scores["Revisit LPIPS"] > 5.0 and a.scores["LPIPS"] > 5.0  # frame 1 is not the real frame 8


def test_demo_on_recorded_shards(tmp_path, capsys):
    from slowfast_vgen.demo import main

    world_shards(tmp_path / "shards", chunk_frames=4, chunks_out=3)
    out = tmp_path / "demo"
    assert main(["--shards", str(tmp_path / "shards"), "--pose-tolerance", "0", "--episodes", "2", "--steps", "2",
                 "--rank", "4", "--steps-per-chunk", "2", "--draws", "3", "--guidance", "1", "1.5",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["shards"] == str(tmp_path / "shards") and results["n_episodes"] == 2
    err = capsys.readouterr().err  # not a terminal: a line per generated episode, in each arm
    assert err.count("episode 1/2: ") == 2 and err.count("episode 2/2: ") == 2
    summary = results["summary"]["with Temp-LoRA"]
    assert {"Revisit PSNR", "Revisit MSE", "Revisit LPIPS", "LPIPS", "Other PSNR", "SRC"} <= set(summary)
    assert "Motion MSE" not in summary and summary["Revisit LPIPS"]["mean"] >= 0
    assert summary["Revisit PSNR"]["n"] == 2 and 0 <= results["memory"]["revisit_psnr_p"] <= 1
    report = (out / "report.md").read_text()
    assert "recorded episodes" in report and "Does the model follow the actions?" not in report
    assert len(list((out / "videos").glob("*.mp4"))) == 2
    assert results["settings"]["first_episode"] == 0
    assert results["settings"]["guidance"] == {"image": 1.0, "text": 1.5}  # both arms sampled with it
    with pytest.raises(UserInputError, match="not a folder"):
        main(["--shards", str(tmp_path / "nowhere"), "--episodes", "2", "--out", str(out)])
    with pytest.raises(UserInputError, match="from episode 2: the shard set holds 2 episodes"):
        main(["--shards", str(tmp_path / "shards"), "--first-episode", "2", "--episodes", "2", "--out", str(out)])
    with pytest.raises(UserInputError, match="use it with --shards"):
        main(["--first-episode", "1", "--episodes", "2", "--out", str(out)])


def _memory_needed(ep, chunk_frames, context_frames):
    """The world's exact revisits (same camera position) whose first visit left the chunk's context window."""
    out = set()
    for first, js in ep["revisits"]:
        for j in js:
            start = 1 + (j - 1) // chunk_frames * chunk_frames
            context = range(max(0, start - context_frames), start)
            if not any(torch.equal(ep["positions"][k], ep["positions"][j]) for k in context):
                out.add(j)
    return out


@pytest.mark.slow
def test_own_recordings_to_table1_and_table4(tmp_path, monkeypatch):
    """Plain mp4 videos + action and pose logs -> `data build --gt` -> one short epoch -> Tables 1 and 4."""
    import yaml

    from slowfast_vgen.cli import main as sfvgen
    from slowfast_vgen.datamodules.shards.videoio import encode_video

    monkeypatch.chdir(tmp_path)
    videos, action_rows, gt_rows, world = tmp_path / "videos", [], [], []
    videos.mkdir()
    for seed in range(3):
        ep = revisit_episode(seed, chunk_frames=4, chunks_out=3, min_gap=1)
        frames = (ep["frames"].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
        (videos / f"walk{seed}.mp4").write_bytes(encode_video(frames, 8.0, "mp4-lossless")[1])
        action_rows += [{"video": f"walk{seed}.mp4", "start_frame": 1 + 4 * c, "end_frame": 5 + 4 * c, "action": a}
                        for c, a in enumerate(ep["actions"])]
        gt_rows += [{"video": f"walk{seed}.mp4", "frame": t, "x": x, "y": y}
                    for t, (x, y) in enumerate(ep["positions"].tolist())]
        world.append(ep)
    (tmp_path / "actions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in action_rows))
    (tmp_path / "poses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gt_rows))
    assert sfvgen(["data", "build", "videos", "actions.jsonl", "shards", "--video", "mp4-lossless",
                   "--gt", "poses.jsonl", "--no-progress"]) == 0

    # the benchmark episodes found in the shards: exactly the world's revisits that need memory
    ds = RecordedRevisitDataset("shards", chunk_frames=4, context_frames=4, pose_tolerance=0)
    for i, ep in enumerate(world):
        found = {j for _, js in ds[i]["revisits"] for j in js}
        assert found and found == _memory_needed(ep, 4, 4)
        for first, js in ds[i]["revisits"]:
            assert all(torch.equal(ep["positions"][first], ep["positions"][j]) for j in js)

    # one short epoch of slow learning on the shards (the tiny preset)
    config = yaml.safe_load((REPO / "experiments" / "slow_tiny.yaml").read_text())
    config["trainer"].update(max_epochs=1, max_steps=-1, limit_train_batches=2, limit_val_batches=0,
                             default_root_dir="runs", logger=False, callbacks=[
                                 {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                  "init_args": {"dirpath": "ckpt", "save_last": True}}])
    config["trainer"].pop("val_check_interval", None)
    config["model"]["init_args"].update(chunk_frames=4, context_frames=4, num_inference_steps=2)
    config["data"] = {"class_path": "slowfast_vgen.datamodules.shards.datamodule.ShardDataModule",
                      "init_args": {"train_shards": "shards", "batch_size": 2, "frames": 8, "min_frames": 5,
                                    "max_context": 4}}
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(config))
    assert sfvgen(["fit", "-c", "own.yaml"]) == 0
    assert sfvgen(["export", "ckpt/last.ckpt", "own.safetensors"]) == 0

    for table in ("table1", "table4"):
        (tmp_path / f"{table}.yaml").write_text(yaml.safe_dump({
            "table": table, "model": {"config": "own.yaml", "weights": "own.safetensors"},
            "benchmark": {"shards": "shards", "episodes": 2, "pose_tolerance": 0},
            "settings": {"steps": 2, "rank": 4, "lr": 1e-3}, "out": f"out/{table}"}))
        assert sfvgen(["evaluate", "-c", f"{table}.yaml"]) == 0
        result = json.loads((tmp_path / "out" / table / "table.json").read_text())
        assert result["protocol"]["episode_source"] == "shards shards" and result["protocol"]["episodes"] == 2
        assert result["protocol"]["frames_per_episode"] == 25
        rows = {r["setting"]: r for r in result["rows"]}
        assert all(r["episodes"] == 2 for r in rows.values())
        assert all(math.isfinite(r["SRC"]) for name, r in rows.items() if "reference" not in name)
        if table == "table1":
            assert {"PSNR", "SSIM", "LPIPS", "PSNR_std"} <= set(rows["Ours SlowFast-VGen"])
            assert rows["Copy the last context frame (reference)"]["PSNR"] > 0
        else:
            assert len(rows) == 5


def test_build_gt_sidecar_checks_every_row(tmp_path):
    from slowfast_vgen.datamodules.prep.build import build_shards, read_gt_file
    from slowfast_vgen.datamodules.shards.videoio import encode_video

    frames = np.zeros((6, 16, 16, 3), dtype=np.uint8)
    (tmp_path / "v").mkdir()
    for name in ("a", "b", "c"):
        (tmp_path / "v" / f"{name}.mp4").write_bytes(encode_video(frames, 8.0, "mp4-lossless")[1])
    (tmp_path / "actions.jsonl").write_text("".join(
        json.dumps({"video": f"{n}.mp4", "start_frame": 1, "end_frame": 6, "action": "go left"}) + "\n" for n in "abc"))
    rows = [{"video": "a.mp4", "frame": t, "x": t, "y": 0, "revisit_of": 0 if t == 5 else None} for t in range(6)]
    rows += [{"video": "b.mp4", "frame": t, "x": t, "y": 0} for t in (0, 1, 3, 4, 5)]  # frame 2 missing
    rows += [{"video": "c.mp4", "frame": t, "x": t, "y": 0} for t in range(4)]  # the video goes on
    (tmp_path / "gt.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n"
                                               for r in rows))
    out = build_shards(tmp_path / "v", tmp_path / "actions.jsonl", tmp_path / "s", video="mp4-lossless",
                       progress=False, gt=tmp_path / "gt.jsonl")
    assert out["skipped_videos"] == {"b.mp4": "ground truth of 'b.mp4' has no row for frame 2 (one row per frame from 0)"}
    assert "stops there" in out["gt_notes"]["c.mp4"] and out["num_episodes"] == 2
    ds = RecordedRevisitDataset(tmp_path / "s", chunk_frames=1, context_frames=1, pose_tolerance=0)
    a = ds[[ep for ep, _ in ds.source.episodes].index("a")]
    assert a["revisits"] == [(0, [5])] and a["pose_names"] == ["x", "y"]  # the explicit revisit
    c = ds[[ep for ep, _ in ds.source.episodes].index("c")]
    assert len(c["frames"]) == 4
    for bad, message in (({"video": "a.mp4", "frame": 0, "x": "left"}, "must be a number"),
                         ({"video": "a.mp4", "frame": 2, "x": 1, "revisit_of": 2}, "earlier frame"),
                         ({"video": "a.mp4"}, "expected an object")):
        (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n")
        with pytest.raises(UserInputError, match=message):
            read_gt_file(tmp_path / "bad.jsonl")
    (tmp_path / "bad.jsonl").write_bytes(b"\xff\xfe{")
    with pytest.raises(UserInputError, match="not UTF-8"):
        read_gt_file(tmp_path / "bad.jsonl")


def test_slow_fast_loop_from_shards(tmp_path):
    """Alg. 1b on recorded episodes: chunks along the action spans (variable lengths), fresh episodes per epoch."""
    import lightning as L

    from slowfast_vgen.datamodules.recorded import ShardLoopDataModule
    from slowfast_vgen.models import HashTextEncoder, PixelShuffleAutoencoder, build_unet3d
    from slowfast_vgen.systems.slowfast import SlowFastLoopSystem

    world_shards(tmp_path / "shards", seeds=(0, 1, 2, 3), chunk_frames=3, chunks_out=2)
    dm = ShardLoopDataModule(str(tmp_path / "shards"), num_episodes=2, chunk_frames=2, fresh_episodes=True)
    assert [dm.episodes_of_epoch(e)[0]["episode"] for e in (0, 1, 2)] == ["world-0", "world-2", "world-0"]
    assert dm.episodes[0]["actions"][:2] == [(world_episode_action(0), 2), (world_episode_action(0), 1)]
    torch.manual_seed(0)
    system = SlowFastLoopSystem(build_unet3d("tiny"), PixelShuffleAutoencoder(), HashTextEncoder(), lr=1e-3,
                                chunk_frames=2, context_frames=2, memory_dir=str(tmp_path / "mem"),
                                temp_lora={"rank": 4}, records_per_batch=2)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, reload_dataloaders_every_n_epochs=1)
    trainer.fit(system, dm)
    # 2 episodes x 8 chunks (4 spans of 3 frames -> 2 + 1) = 16 records per epoch, 2 per batch
    assert trainer.global_step == 2 * 8
    assert sorted(p.name for p in (tmp_path / "mem" / "epoch_0001").glob("*.safetensors")) == [
        "episode_00000.safetensors", "episode_00001.safetensors"]


def world_episode_action(seed):
    return revisit_episode(seed, chunk_frames=3, chunks_out=2, min_gap=1)["actions"][0]


def _turns(angles: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Poses that turn in place: position (0, 0), the given headings."""
    return np.zeros((len(angles), 2)), np.array(angles, dtype=np.float64)


def test_memory_maze_revisits_need_the_agent_to_have_been_away():
    from slowfast_vgen.simulators import memory_maze as mm

    away = dict(away_distance=mm.AWAY_DISTANCE, away_angle=mm.AWAY_ANGLE)
    starts = np.arange(5)  # one frame per chunk, context 1: frame j's window is frame j - 1
    tol = (mm.POSITION_TOLERANCE, mm.ANGLE_TOLERANCE)
    # a 60-degree glance to the left and back: the windows (30, 60 degrees) do not show frames 0 and 1's views,
    # but the agent never went away, so for the recorder frames 3 and 4 are no revisits, nor for the benchmark
    glance = _turns([0, 30, 60, 30, 0])
    assert pose_revisits(*glance, starts, 1, *tol) == [(0, [4]), (1, [3])]  # without the rule
    assert pose_revisits(*glance, starts, 1, *tol, **away) == []
    assert mm.find_revisits(np.column_stack([glance[0], glance[1]])) == []
    # turned 120 degrees (more than away_angle) and back: frame 4 revisits frame 0 for both (frame 3 is 60 degrees
    # from frame 1 and its turn to 120: not away)
    look = _turns([0, 60, 120, 60, 0])
    assert pose_revisits(*look, starts, 1, *tol, **away) == [(0, [4])]
    assert [(r["of_frame"], r["frame"]) for r in mm.find_revisits(np.column_stack(look))] == [(0, 4)]
    with pytest.raises(UserInputError, match="tolerances must be >= 0"):
        pose_revisits(*look, starts, 1, *tol, away_distance=-1.0)


def test_benchmark_revisits_are_the_recorders_on_a_retrace():
    """Out 2 cells, a turn around, back, a turn to the start heading (Memory Maze's retrace): each benchmark
    revisit is the recorder's pair, and each recorder pair beyond the window is a benchmark revisit."""
    from slowfast_vgen.simulators import memory_maze as mm

    poses = [(0.25 * k, 0.0, 0.0) for k in range(9)]
    poses += [(2.0, 0.0, 18.0 * k) for k in range(1, 11)]  # turn around
    poses += [(2.0 - 0.25 * k, 0.0, 180.0) for k in range(1, 9)]
    poses += [(0.0, 0.0, 180.0 - 18.0 * k) for k in range(1, 11)]  # turn to the start heading
    poses = np.array(poses)  # (T, 3)
    T = len(poses)
    chunks = [(a, min(a + 4, T), "x") for a in range(1, T, 4)]
    starts = chunk_starts(T, chunks)
    groups = pose_revisits(*split_pose(poses, ["x", "y", "angle"]), starts, 4, mm.POSITION_TOLERANCE,
                           mm.ANGLE_TOLERANCE, away_distance=mm.AWAY_DISTANCE, away_angle=mm.AWAY_ANGLE)
    recorder = {r["frame"]: r["of_frame"] for r in mm.find_revisits(poses)}
    found = {j: i for i, js in groups for j in js}
    assert found and all(recorder.get(j) == i for j, i in found.items())

    def in_window(s: int, t: int) -> bool:  # frame t's window shows frame s's pose
        near = lambda a, b: (math.dist(a[:2], b[:2]) <= mm.POSITION_TOLERANCE  # noqa: E731
                             and abs(mm.wrap(a[2] - b[2])) <= mm.ANGLE_TOLERANCE)
        return any(near(poses[k], poses[t]) for k in range(max(0, starts[t] - 4), starts[t]))

    assert {t for t, s in recorder.items() if s < starts[t] and not in_window(s, t)} == set(found)


def _write_turns(root, angles: list[float], declared: dict | None, pattern: str | None = None) -> None:
    """A recording that turns in place under the given headings, its gt declaring ``declared`` tolerances."""
    from slowfast_vgen.datamodules.shards.write import ShardSetWriter
    from slowfast_vgen.simulators.memory_maze import find_revisits

    poses = [[0.0, 0.0, a] for a in angles]
    episode = {"tolerance": declared} if declared else {}
    episode.update({"pattern": pattern} if pattern else {})
    revisits = find_revisits(np.array(poses)) if declared else []
    writer = ShardSetWriter(root, "test-turns", {}, video="mp4-lossless")
    frames = np.zeros((len(angles), 16, 16, 3), dtype=np.uint8)
    writer.write_episode("turns", iter(frames), 4.0, [(t, t + 1, "turn left") for t in range(1, len(angles))], "game",
                         False, lambda a, b: {"pose_names": ["x", "y", "angle"], "pose": poses[a:b],
                                              "revisits": [r for r in revisits if a <= r["frame"] < b], **episode})
    writer.finish()


def test_recorded_episodes_take_the_datas_tolerances(tmp_path):
    maze = {"position": 0.25, "angle": 15.0, "away_distance": 1.0, "away_angle": 90.0}
    _write_turns(tmp_path / "glance", [0, 30, 60, 30, 0], maze, "retrace")
    _write_turns(tmp_path / "look", [0, 60, 120, 60, 0], maze, "loop")
    _write_turns(tmp_path / "plain", [0, 60, 120, 60, 0], None)
    glance = RecordedRevisitDataset(tmp_path / "glance", chunk_frames=1, context_frames=1)[0]
    assert glance["tolerance"] == maze and glance["pattern"] == "retrace" and glance["revisits"] == []
    look = RecordedRevisitDataset(tmp_path / "look", chunk_frames=1, context_frames=1)[0]
    assert look["revisits"] == [(0, [4])] and look["pattern"] == "loop"
    # no declaration: ViZDoom's tolerances (4 units, the same angle to 1e-3 degrees), no "been away" rule
    plain = RecordedRevisitDataset(tmp_path / "plain", chunk_frames=1, context_frames=1)[0]
    assert plain["tolerance"] == {"position": 4.0, "angle": 1e-3, "away_distance": None, "away_angle": None}
    assert plain["revisits"] == [(0, [4]), (1, [3])] and "pattern" not in plain  # 3 revisits 1 without being away
    # an explicit option overrides the data's: 70 degrees make frame 4 (0) match its window (60): no memory needed
    wide = RecordedRevisitDataset(tmp_path / "look", chunk_frames=1, context_frames=1, angle_tolerance=70)[0]
    assert wide["tolerance"] == {**maze, "angle": 70.0} and wide["revisits"] == []
    with pytest.raises(UserInputError, match="angle_tolerance -1: expected >= 0"):
        RecordedRevisitDataset(tmp_path / "look", angle_tolerance=-1)
