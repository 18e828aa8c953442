"""Long-horizon planning tasks (paper Sec. 4.2, Table 2): the contract every task environment follows.

A task is a real environment with primitive *text* actions (one environment step = one video frame) and a
long-horizon goal that needs memory of the episode: put moved objects back where they were (object return),
walk back through the waypoints of a path (path retrace). The video model is conditioned on *subgoals*, one
text per chunk of ``chunk_frames`` frames (what a language model would produce by decomposing the task);
the inverse dynamics model turns generated frames back into primitive actions.

Frames are float tensors in [0, 1], shape (C, H, W) (a video: (T, C, H, W)), the package's pixel convention.

An :class:`Episode` (an expert demonstration, for training the video model, the slow-fast loop and the IDM)
has the same layout as the built-in world's episodes, so :class:`~slowfast_vgen.systems.SlowFastLoopSystem`
consumes it directly: ``frames`` = ``first_frames`` frame(s) followed by one chunk of ``chunk_frames``
frames per subgoal; ``actions`` = the subgoal texts (one per chunk); ``steps`` = the primitive action that
produced each frame after the first (``T - 1`` of them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from slowfast_vgen.errors import UserInputError


@dataclass
class Episode:
    """One recorded expert episode of a planning task."""

    frames: torch.Tensor            # (T, C, H, W) float in [0, 1]; T = first_frames + len(actions) * chunk_frames
    actions: list[str]              # subgoal text per chunk
    steps: list[str]                # primitive action per transition (T - 1)
    seed: int
    first_frames: int = 1
    # task ground truth (positions, waypoints, ...); every task sets "expert_score" (score() after the expert's
    # episode) and "phase1_chunks": how many leading subgoals set the task up (move the cubes away, walk the
    # path); at planning time they may be executed with the expert's actions (``given_actions``) so that the
    # score measures the memory-dependent part (putting back, retracing), which needs the set-up to have happened
    info: dict[str, Any] = field(default_factory=dict)
    domain: str = "planning"        # the task's name (the episode contract's ``domain``)

    def __post_init__(self) -> None:
        t = self.frames.shape[0]
        if self.frames.ndim != 4 or not self.frames.is_floating_point():
            raise UserInputError(f"Episode.frames must be a float (T, C, H, W) video, got {tuple(self.frames.shape)}")
        if len(self.steps) != t - 1:
            raise UserInputError(f"Episode of {t} frames needs {t - 1} primitive steps, got {len(self.steps)}")
        if not self.actions or (t - self.first_frames) % len(self.actions):
            raise UserInputError(
                f"Episode of {t} frames ({self.first_frames} first) does not split into {len(self.actions)} equal chunks"
            )

    @property
    def chunk_frames(self) -> int:
        return (self.frames.shape[0] - self.first_frames) // len(self.actions)

    def as_dict(self) -> dict[str, Any]:
        """The episode contract (``datamodules.common.check_episode``): what generation and the slow-fast loop read."""
        return {"frames": self.frames, "actions": list(self.actions), "seed": self.seed,
                "first": self.frames[: self.first_frames], "steps": list(self.steps), "info": self.info,
                "domain": self.domain}


@runtime_checkable
class PlanningTask(Protocol):
    """A planning environment. Implementations: :mod:`slowfast_vgen.planning.pybullet_return`,
    :mod:`slowfast_vgen.planning.doom_retrace`, :mod:`slowfast_vgen.planning.world_retrace` (built-in world)."""

    name: str                       # e.g. "object-return"
    actions: tuple[str, ...]        # primitive text actions (the IDM's vocabulary)
    chunk_frames: int               # primitive steps (= frames) per subgoal
    metric_name: str                # what :meth:`score` measures, with its unit

    def reset(self, seed: int) -> torch.Tensor:
        """Start the episode ``seed`` (same seed = same scene); return the first observation (C, H, W)."""

    def subgoals(self) -> list[str]:
        """The subgoal texts of the current episode, in order (the scripted decomposition of the task)."""

    def step(self, action: str) -> torch.Tensor:
        """Apply one primitive action; return the next observation (C, H, W). Unknown action: UserInputError."""

    def score(self) -> float:
        """The task metric for everything executed since :meth:`reset` (lower is better)."""

    def record(self, seed: int) -> Episode:
        """An expert demonstration of episode ``seed`` (scripted policy that solves the task)."""

    def close(self) -> None:
        """Release the simulator."""


SubgoalSource = Callable[[list[str], torch.Tensor], "str | None"]
"""Any callable ``(subgoals done so far, last observation (C, H, W)) -> next subgoal text or None (done)``:
a scripted list (:class:`ScriptedSubgoals`) or a user's language-model client."""


class ScriptedSubgoals:
    """A fixed list of subgoal texts, handed out one by one."""

    def __init__(self, subgoals: list[str]) -> None:
        if not subgoals or not all(isinstance(s, str) and s.strip() for s in subgoals):
            raise UserInputError(f"ScriptedSubgoals needs a non-empty list of non-empty texts, got {subgoals!r}")
        self.subgoals = list(subgoals)

    def __call__(self, done: list[str], observation: torch.Tensor) -> str | None:
        return self.subgoals[len(done)] if len(done) < len(self.subgoals) else None


TASKS: dict[str, str] = {
    "world-retrace": "slowfast_vgen.planning.world_retrace:WorldRetraceTask",
    "object-return": "slowfast_vgen.planning.pybullet_return:ObjectReturnTask",
    "path-retrace": "slowfast_vgen.planning.doom_retrace:PathRetraceTask",
}


def make_task(name: str, **kwargs: Any) -> PlanningTask:
    """Build a registered task by name (imports its simulator only then)."""
    import importlib

    if name not in TASKS:
        raise UserInputError(f"unknown planning task {name!r}; expected one of {sorted(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)
