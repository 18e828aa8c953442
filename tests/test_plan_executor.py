"""The planning executor (Sec. 3.4) on the built-in path-retrace task, with stand-in model parts."""

from __future__ import annotations

import pytest
import torch

from slowfast_vgen.errors import UserInputError
from slowfast_vgen.generation.long_video import Chunk
from slowfast_vgen.models import PixelShuffleAutoencoder
from slowfast_vgen.planning.executor import PlanExecutor
from slowfast_vgen.planning.tasks import PlanningTask, ScriptedSubgoals, make_task


class ReplayGenerator:
    """Generates the expert's next chunk (a perfect video model) and records what it was asked."""

    def __init__(self, episode, chunk_frames=4):
        self.episode, self.chunk_frames, self.context_frames = episode, chunk_frames, chunk_frames
        self.autoencoder, self.temp_lora, self.unet = PixelShuffleAutoencoder(), None, torch.nn.Linear(1, 1)
        self.calls = []

    def stream(self, first, actions, seed=0, context_latents=None):
        (goal,) = actions
        i = len(self.calls)
        self.calls.append((goal, context_latents))
        frames = self.episode.frames[1 + i * self.chunk_frames : 1 + (i + 1) * self.chunk_frames]
        yield Chunk(i, goal, self.autoencoder.encode(frames[None]), frames[None], None)


class ReplayIDM:
    """Returns the expert's actions for each chunk and checks the frames it is given."""

    def __init__(self, episode, actions):
        self.episode, self.actions, self.k = episode, list(actions), 0

    def infer(self, video):
        f = 4
        start = self.k * f
        torch.testing.assert_close(video, self.episode.frames[start : start + f + 1])  # last seen + generated
        self.k += 1
        return self.episode.steps[start : start + f]


def test_executor_with_a_perfect_model_reproduces_the_expert():
    task = make_task("world-retrace", legs=3)
    assert isinstance(task, PlanningTask)
    expert = task.record(7)
    gen = ReplayGenerator(expert)
    result = PlanExecutor(gen, ReplayIDM(expert, task.actions)).run(task, seed=7)
    assert result.subgoals == expert.actions and result.executed == expert.steps
    torch.testing.assert_close(result.observed, expert.frames)
    torch.testing.assert_close(result.generated, expert.frames)
    assert result.score == 0.0 == expert.info["expert_score"]
    # closed loop: chunk i + 1 is conditioned on the frames the environment showed (encoded)
    torch.testing.assert_close(gen.calls[1][1], gen.autoencoder.encode(expert.frames[1:5][None]))


def test_doing_nothing_on_the_way_back_scores_worse():
    task = make_task("world-retrace", legs=3)
    expert = task.record(7)
    task.reset(7)
    for a in expert.steps[: 3 * 4]:
        task.step(a)
    for _ in range(3 * 4):
        task.step("stay")
    assert task.score() > 4.0  # at least two legs of 8 px are never revisited


def test_subgoal_sources_and_errors():
    src = ScriptedSubgoals(["a", "b"])
    assert [src([], None), src(["a"], None), src(["a", "b"], None)] == ["a", "b", None]
    with pytest.raises(UserInputError, match="non-empty"):
        ScriptedSubgoals([])
    with pytest.raises(UserInputError, match="unknown planning task 'nope'"):
        make_task("nope")
    task = make_task("world-retrace")
    expert = task.record(1)
    with pytest.raises(UserInputError, match="condition_on 'both'"):
        PlanExecutor(ReplayGenerator(expert), ReplayIDM(expert, task.actions), condition_on="both")
    with pytest.raises(UserInputError, match="does not accept"):
        PlanExecutor(ReplayGenerator(expert), ReplayIDM(expert, ["fly"])).run(task, 1)
    with pytest.raises(UserInputError, match="unknown action 'fly'"):
        task.step("fly")
    # a language-model-like source: stops by returning None; gets the last observation
    seen = []

    def llm(done, obs):
        seen.append(obs.shape)
        return "go left" if not done else None

    result = PlanExecutor(ReplayGenerator(expert), ReplayIDM(expert, task.actions)).run(task, 1, subgoals=llm)
    assert result.subgoals == ["go left"] and seen == [(3, 16, 16), (3, 16, 16)]


class StayIDM:
    actions = ["stay"]

    def infer(self, video):
        return ["stay"] * (video.shape[0] - 1)


def test_given_set_up_actions_run_verbatim_before_the_model_plans():
    task = make_task("world-retrace", legs=3)
    expert = task.record(5)
    set_up = expert.steps[: expert.info["phase1_chunks"] * 4]
    idle = PlanExecutor(ReplayGenerator(expert), StayIDM()).run(task, 5)  # a model that never moves
    assert set(idle.executed) == {"stay"}
    # with the expert's set-up (walk the path out), the same model is scored on the way back
    result = PlanExecutor(ReplayGenerator(expert), StayIDM()).run(task, 5, given_actions=set_up)
    assert result.executed == set_up + ["stay"] * len(set_up)
    task.reset(5)
    for a in result.executed:
        task.step(a)
    assert result.score == task.score() > 4.0
    with pytest.raises(UserInputError, match="not whole chunks of 4"):
        PlanExecutor(ReplayGenerator(expert), StayIDM()).run(task, 5, given_actions=set_up[:3])
