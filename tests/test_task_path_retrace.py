"""Path-retrace planning task on ViZDoom (paper Sec. 4.2, Table 2, "Game Navigation")."""

from __future__ import annotations

import math

import pytest
import torch

from slowfast_vgen.errors import UserInputError
from slowfast_vgen.planning.tasks import Episode, PlanningTask, make_task

pytest.importorskip("vizdoom")

from slowfast_vgen.planning.doom_retrace import (  # noqa: E402
    HOME_TEXT,
    RETRACE_TEXT,
    SUBGOAL_TEXTS,
    PathRetraceTask,
)


@pytest.fixture(scope="module")
def task():
    with PathRetraceTask(resolution=16) as t:
        yield t


def test_protocol_and_registry(task):
    assert isinstance(task, PlanningTask)
    assert task.name == "path-retrace" and task.chunk_frames == 4 and "map units" in task.metric_name
    assert task.actions == ("go forward", "turn left", "turn right", "stay")
    other = make_task("path-retrace", resolution=8, chunk_frames=2)
    try:
        assert isinstance(other, PathRetraceTask) and other.chunk_frames == 2
        assert other.reset(0).shape == (3, 8, 8)
    finally:
        other.close()


def test_record_is_deterministic(task):
    a, b = task.record(3), task.record(3)
    assert torch.equal(a.frames, b.frames)
    assert a.steps == b.steps and a.actions == b.actions
    assert a.info["waypoints"] == b.info["waypoints"] and a.info["trajectory"] == b.info["trajectory"]
    c = task.record(4)
    assert c.info["waypoints"][0] != a.info["waypoints"][0]  # another seed, another start


def test_frames_shape_range_and_chunks():
    with PathRetraceTask(resolution=32, chunk_frames=3, segments=2) as task:
        ep = task.record(7)
    assert isinstance(ep, Episode) and ep.first_frames == 1 and ep.seed == 7
    t = ep.frames.shape[0]
    assert ep.frames.shape == (t, 3, 32, 32) and ep.frames.dtype == torch.float32
    assert 0.0 <= float(ep.frames.min()) and float(ep.frames.max()) <= 1.0 and float(ep.frames.std()) > 0.05
    assert t == 1 + len(ep.actions) * 3 and len(ep.steps) == t - 1 and ep.chunk_frames == 3
    assert set(ep.steps) <= set(PathRetraceTask.actions)
    assert set(ep.actions) <= set(SUBGOAL_TEXTS)
    n1 = ep.info["phase1_chunks"]
    assert ep.info["phase1_steps"] == 3 * n1 and ep.actions[n1:] and ep.actions[-1] == HOME_TEXT
    assert all(text in (RETRACE_TEXT, HOME_TEXT) for text in ep.actions[n1:])
    for i, text in enumerate(ep.actions[:n1]):  # the walk: each chunk does what its text says, padded with stay
        chunk = ep.steps[3 * i: 3 * i + 3]
        if text == "go forward":
            assert chunk == ["go forward"] * 3
        else:
            k = chunk.count(text)
            assert k >= 1 and chunk == [text] * k + ["stay"] * (3 - k)
    assert len(ep.info["waypoints"]) == 1 + ep.actions[:n1].count("go forward")
    assert len(ep.info["trajectory"]) == t


def test_reset_equals_record_and_replays_exactly(task):
    ep = task.record(5)
    first = task.reset(5)
    assert torch.equal(first, ep.frames[0])
    assert task.subgoals() == ep.actions
    frames = [first] + [task.step(a) for a in ep.steps]
    assert torch.equal(torch.stack(frames), ep.frames)
    assert task.score() == pytest.approx(ep.info["score"])


def test_reset_of_a_new_seed_gives_the_record_subgoals(task):
    first = task.reset(11)  # never recorded before: reset plans it
    subgoals = task.subgoals()
    ep = task.record(11)
    assert subgoals == ep.actions and torch.equal(first, ep.frames[0])


def test_actions_have_unambiguous_effects(task):
    """No momentum across steps: "stay" never changes the frame, every other step does, turns are 22.5 degrees,
    forward steps all cover about the same distance."""
    for seed in (0, 1):
        ep = task.record(seed)
        traj = ep.info["trajectory"]
        for i, action in enumerate(ep.steps):
            same = torch.equal(ep.frames[i], ep.frames[i + 1])
            assert same == (action == "stay"), (seed, i, action)
            (x0, y0, _, a0), (x1, y1, _, a1) = traj[i], traj[i + 1]
            moved, turned = math.hypot(x1 - x0, y1 - y0), (a1 - a0 + 180) % 360 - 180
            if action == "go forward":
                assert 30 < moved < 36 and turned == 0
            elif action == "stay":
                assert moved == 0 and turned == 0
            else:
                assert moved == 0 and turned == pytest.approx(22.5 if action == "turn left" else -22.5)


def test_expert_scores_small_and_idle_retrace_scores_large(task):
    for seed in (2, 6):
        ep = task.record(seed)
        expert = ep.info["score"]
        assert expert < 10.0  # within the waypoint radius (20 map units) of every waypoint
        home = ep.info["trajectory"][-1]
        assert math.dist(home[:2], ep.info["waypoints"][0]) <= 20.0  # back at the start
        task.reset(seed)
        n1 = ep.info["phase1_steps"]
        for action in ep.steps[:n1]:  # walk like the expert ...
            task.step(action)
        for _ in ep.steps[n1:]:       # ... then do nothing instead of retracing
            task.step("stay")
        idle = task.score()
        assert idle > 100.0 and idle > 10 * expert + 50.0


def test_unknown_action_and_bad_arguments(task):
    task.reset(0)
    with pytest.raises(UserInputError, match="'fly'.*go forward.*stay"):
        task.step("fly")
    with pytest.raises(UserInputError, match="resolution"):
        PathRetraceTask(resolution=3)
    with pytest.raises(UserInputError, match="chunk_frames"):
        PathRetraceTask(chunk_frames=0)
    with pytest.raises(UserInputError, match="seed"):
        task.reset("a")


def test_closed_task_refuses_to_step():
    with PathRetraceTask(resolution=8) as t:
        t.reset(1)
    with pytest.raises(UserInputError, match="closed"):
        t.step("stay")


@pytest.mark.slow
def test_idm_learns_the_actions_on_heldout_episodes(task):
    """The IDM (Sec. 3.4) on the task's own recordings: 10 training and 3 held-out episodes at 16 px. Measured
    held-out accuracy 0.84-0.88 (majority class about 0.55); the threshold leaves a margin."""
    from slowfast_vgen.planning.idm import frame_pairs, train_idm

    train_eps = [task.record(s) for s in range(10)]
    held_eps = [task.record(1000 + s) for s in range(3)]
    train = frame_pairs([e.frames for e in train_eps], [e.steps for e in train_eps], task.actions)
    held = frame_pairs([e.frames for e in held_eps], [e.steps for e in held_eps], task.actions)
    result = train_idm(train, held, task.actions, steps=300, lr=5e-3)
    assert result.train_accuracy > 0.8
    assert result.heldout_accuracy > 0.72
