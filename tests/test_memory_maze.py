"""Memory Maze recorder (issue 37): frames and poses as the environment reports them, revisit pairs within the
stated tolerances and none missed, action labels, the `record --env memory-maze` shard set, bad input."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from slowfast_vgen.datamodules.prep import cli
from slowfast_vgen.errors import UserInputError

pytest.importorskip("memory_maze")

from slowfast_vgen.datamodules.prep.record_maze import maze_seed, record_maze_shards  # noqa: E402
from slowfast_vgen.simulators import memory_maze as mm  # noqa: E402


@pytest.fixture(scope="module")
def episodes():
    """A short retrace (about 40 steps) and a loop (a cycle around a wall, about 80 steps) in two mazes."""
    short = mm.MazeRecorder("9x9", max_steps=60, out_cells=(1, 1))
    retrace = short.record_episode("retrace", 12, np.random.default_rng(0))
    loop = mm.MazeRecorder("9x9", max_steps=150).record_episode("loop", 3, np.random.default_rng(1))
    return {"retrace": retrace, "loop": loop}


def test_frames_poses_and_labels_are_the_environments(episodes):
    """Replaying the labels in a fresh environment of the same maze seed gives the stored frames and poses: each
    frame is the observation after the action it is labelled with."""
    from memory_maze import tasks

    ep = episodes["retrace"]
    assert ep["complete"] and ep["note"] == "" and ep["pattern"] == "retrace"
    env = tasks.memory_maze_9x9(seed=ep["maze_seed"], global_observables=True, target_color_in_image=False)
    # the package's action set (memory_maze.tasks): [roll, steer], forward = -1 roll, left = -1 steer
    expected = {"stay": [0, 0], "go forward": [-1, 0], "turn left": [0, -1], "turn right": [0, 1],
                "go forward and turn left": [-1, -1], "go forward and turn right": [-1, 1]}
    assert {t: env.action_set[i].tolist() for t, i in mm.ACTIONS.items()} == expected
    try:
        obs = env.reset().observation
        assert ep["labels"][0] is None and len(ep["labels"]) == len(ep["frames"]) == len(ep["poses"])
        for t, text in enumerate(ep["labels"]):
            if t:
                obs = env.step(mm.ACTIONS[text]).observation
            assert np.array_equal(ep["frames"][t], obs["image"]), t
            (x, y), (dx, dy) = obs["agent_pos"], obs["agent_dir"]
            assert ep["poses"][t].tolist() == pytest.approx([x, y, math.degrees(math.atan2(dy, dx))], abs=6e-5), t
            row, col = ep["cells"][t]
            assert (row, col) == (int(y), int(x)) and obs["maze_layout"][row, col] == 1
        assert np.array_equal(ep["layout"], obs["maze_layout"])
    finally:
        env.close()
    assert ep["frames"].shape[1:] == (64, 64, 3) and ep["frames"].dtype == np.uint8
    # the agent turns in place or goes straight: four of the six actions, each with its chunk word
    assert set(ep["labels"][1:]) <= set(mm.WORDS) and "go forward" in ep["labels"]
    # the labels say what happened: a turn changes the heading its way, "go forward" moves along it
    for t, text in enumerate(ep["labels"][1:], 1):
        turned = mm.wrap(ep["poses"][t, 2] - ep["poses"][t - 1, 2])
        if text in ("turn left", "turn right") and ep["labels"][t - 1] == text:
            assert (turned > 10) == (text == "turn left") and abs(turned) > 10, (t, text, turned)


def test_chunks_are_named_by_their_frames_actions():
    labels = [None, "go forward", "go forward", "turn left", "turn left", "stay", "turn right"]
    assert mm.chunk_spans(labels) == [(1, 5, "forward forward left left"), (5, 7, "stay right")]
    assert mm.chunk_spans(labels, 3) == [(1, 4, "forward forward left"), (4, 7, "left stay right")]
    reverses = mm.chunk_reverses()
    assert reverses["left left stay"] == "stay right right" and reverses["stay right"] == "left stay"
    assert len(reverses) == 3 + 9 + 27 + 81 and not any("forward" in k for k in reverses)  # moving has no reverse
    with pytest.raises(UserInputError, match="action 'go forward and turn left' has no chunk word"):
        mm.chunk_spans([None, "go forward and turn left"])


def brute_force_revisits(poses: np.ndarray) -> dict[int, int]:
    """frame t -> the earliest s < t at the same pose (within the tolerances) after being away; pair by pair."""
    def close(a, b, dist, angle):
        return math.hypot(a[0] - b[0], a[1] - b[1]) <= dist and abs((a[2] - b[2] + 180) % 360 - 180) <= angle

    found = {}
    for t in range(len(poses)):
        for s in range(t):
            away = any(not close(poses[s], poses[u], mm.AWAY_DISTANCE, mm.AWAY_ANGLE) for u in range(s + 1, t))
            if away and close(poses[s], poses[t], mm.POSITION_TOLERANCE, mm.ANGLE_TOLERANCE):
                found[t] = s
                break
    return found


@pytest.mark.parametrize("name", ["retrace", "loop"])
def test_revisit_pairs_are_within_tolerance_and_none_is_missed(episodes, name):
    ep = episodes[name]
    poses = ep["poses"]
    for r in ep["revisits"]:
        s, t = r["of_frame"], r["frame"]
        a, b = poses[s], poses[t]
        assert s < t and r["distance"] <= mm.POSITION_TOLERANCE and r["angle_error"] <= mm.ANGLE_TOLERANCE
        assert math.hypot(a[0] - b[0], a[1] - b[1]) == pytest.approx(r["distance"], abs=1e-4)
        assert abs(mm.wrap(a[2] - b[2])) == pytest.approx(r["angle_error"], abs=1e-3)
        assert max(math.hypot(*(poses[u, :2] - a[:2])) for u in range(s, t)) > mm.AWAY_DISTANCE or \
            max(abs(mm.wrap(poses[u, 2] - a[2])) for u in range(s, t)) > mm.AWAY_ANGLE  # it went away
    assert {r["frame"]: r["of_frame"] for r in ep["revisits"]} == brute_force_revisits(poses)
    assert ep["revisits"], f"a {name} episode comes back to a pose it held"


def test_a_retrace_comes_back_the_same_way_and_a_loop_does_not(episodes):
    retrace, loop = episodes["retrace"], episodes["loop"]
    assert all(r["retraced"] for r in retrace["revisits"])
    assert loop["pattern"] == "loop" and loop["complete"]
    # it passes the loop's first cell again on the heading it left with, and on: pairs in the order of the first pass
    ahead = [r for r in loop["revisits"] if not r["retraced"]]
    assert len(ahead) >= 3 and any(b["of_frame"] > a["of_frame"] for a, b in zip(ahead, ahead[1:]))


def test_the_grid_planner_finds_cycles_around_walls_only():
    layout = np.ones((3, 3), dtype=np.uint8)
    assert mm.cycle_around_wall(layout, (0, 0), np.random.default_rng(0)) is None  # an open room: no wall inside
    layout[1, 1] = 0
    out, back = mm.cycle_around_wall(layout, (0, 0), np.random.default_rng(0))
    assert len(out) + len(back) - 2 == 8 and mm.encloses_wall(layout, out + back[1:-1])
    corridor = np.array([[1, 1, 1, 1]], dtype=np.uint8)
    assert mm.plan_loop(corridor, (0, 0), np.random.default_rng(0), (1, 3)) is None
    assert mm.plan_detour(corridor, (0, 0), np.random.default_rng(0), (1, 3)) is None


def test_maze_seeds_of_train_and_test_recordings_are_disjoint():
    assert {maze_seed(0, i) for i in range(1000)}.isdisjoint(maze_seed(1, i) for i in range(1000))
    recorder, layouts = mm.MazeRecorder("9x9"), []
    for k in (0, 1):
        env = recorder.make_env(maze_seed(k, 0))
        layouts.append(env.reset().observation["maze_layout"])
        env.close()
    assert not np.array_equal(*layouts)


def test_record_command_writes_a_verified_shard_set(tmp_path, capsys):
    out = tmp_path / "maze"
    args = ["record", str(out), "--env", "memory-maze", "--episodes", "2", "--patterns", "detour,explore-return",
            "--max-steps", "12", "--seed", "1", "--no-progress"]
    assert cli.main(args) == 0
    assert cli.main(["verify", str(out), "--deep"]) == 0
    from slowfast_vgen.datamodules.shards.format import load_manifest
    from slowfast_vgen.datamodules.shards.read import ShardEpisodeDataset

    manifest = load_manifest(out)
    assert manifest["kind"] == "memory-maze" and manifest["reverse_actions"] == mm.chunk_reverses()
    ds = ShardEpisodeDataset(out)
    for i, requested in enumerate(("detour", "explore-return")):
        ep = ds.load(i)
        gt = ep["gt"][0]
        assert ep["video"].shape[1:] == (3, 64, 64) and len(gt["pose"]) == len(gt["cell"]) == len(ep["video"]) == 13
        assert gt["maze"]["seed"] == maze_seed(1, i) and gt["requested_pattern"] == requested
        assert gt["pose_names"] == ["x", "y", "angle"] and gt["tolerance"]["position"] == mm.POSITION_TOLERANCE
        assert not gt["complete"] and "step budget" in gt["note"]
        assert ep["actions"][0][0] == 1 and ep["actions"][-1][1] == 13 and ep["fps"] == mm.FPS
        assert [b - a for a, b, _ in ep["actions"]] == [4, 4, 4]  # 4-frame chunks named by their frames' words
        assert all(set(text.split()) <= set(mm.WORDS.values()) and len(text.split()) == 4 for *_, text in ep["actions"])


@pytest.mark.parametrize("argv, message", [
    (["--env", "doom"], "invalid choice: 'doom' (choose from 'vizdoom', 'memory-maze')"),
    (["--env", "memory-maze", "--patterns", "loop,spiral"], "pattern 'spiral': expected one or more of retrace, loop"),
    (["--env", "memory-maze", "--maze", "8x8"], "maze '8x8': expected one of 9x9, 11x11, 13x13, 15x15"),
    (["--env", "memory-maze", "--policy", "random"], "does not take --policy"),
    (["--maze", "9x9"], "record --env vizdoom does not take --maze"),
])
def test_bad_input_is_one_line(tmp_path, argv, message):
    with pytest.raises(UserInputError) as err:
        cli.main(["record", str(tmp_path / "x"), *argv])
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "x").exists()


def test_a_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "memory_maze", None)  # import memory_maze now fails
    with pytest.raises(UserInputError, match=r"pip install 'slowfast-vgen\[maze\]'"):
        mm.MazeRecorder("9x9")
