"""Path retrace in the built-in world (Sec. 4.2 in miniature; no simulator, instant, exact).

The camera walks a path of ``legs`` straight legs (one chunk each, a random direction per leg, never straight
back), recording a waypoint at the end of every leg; then it must return to the start through the same
waypoints in reverse order. The return subgoals only say "go back along the path": which way to go at each
step is known only from memory of the episode (Temp-LoRA) or a skill learned across episodes (the slow-fast
loop). Score (as the paper's Minecraft task): the mean over waypoints of the closest distance, in pixels on
the torus map, between the positions visited on the way back and the waypoint.
"""

from __future__ import annotations

import numpy as np
import torch

from slowfast_vgen.seeds import stable_seed
from slowfast_vgen.simulators.world import ACTIONS, REVERSE, World
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.planning.tasks import Episode

BACK = "go back along the path"


class WorldRetraceTask:
    """The built-in world's path-retrace task (see the module docstring)."""

    name = "world-retrace"
    metric_name = "distance to waypoints (px)"

    def __init__(self, chunk_frames: int = 4, legs: int = 3, cells: int = 8, cell_size: int = 8,
                 view_size: int = 16, speed: int = 2) -> None:
        if chunk_frames < 1 or legs < 1:
            raise UserInputError(f"WorldRetraceTask needs chunk_frames >= 1 and legs >= 1, got {chunk_frames}, {legs}")
        self.chunk_frames, self.legs, self.speed = chunk_frames, legs, speed
        self.world_kwargs = dict(cells=cells, cell_size=cell_size, view_size=view_size)
        self.actions = tuple(ACTIONS)

    def _plan(self, seed: int) -> tuple[World, tuple[int, int], list[str]]:
        rng = np.random.default_rng(stable_seed("world-retrace", seed))
        world = World(seed=int(rng.integers(1 << 31)), **self.world_kwargs)
        start = tuple(int(v) for v in rng.integers(0, world.size, size=2))
        moves = [a for a in ACTIONS if a != "stay"]
        legs: list[str] = []
        for _ in range(self.legs):
            options = [m for m in moves if not legs or m != REVERSE[legs[-1]]]
            legs.append(options[int(rng.integers(len(options)))])
        return world, start, legs

    def reset(self, seed: int) -> torch.Tensor:
        self.world, (x, y), self._legs = self._plan(seed)
        self.pos, self.trajectory = (x, y), [(x, y)]
        return torch.from_numpy(self.world.render(x, y))

    def subgoals(self) -> list[str]:
        return list(self._legs) + [BACK] * len(self._legs)

    def step(self, action: str) -> torch.Tensor:
        if action not in ACTIONS:
            raise UserInputError(f"unknown action {action!r}; expected one of {list(self.actions)}")
        frames, positions = self.world.rollout(*self.pos, [action], self.speed)
        self.pos = tuple(int(v) for v in positions[-1])
        self.trajectory.append(self.pos)
        return torch.from_numpy(frames[-1])

    def waypoints(self) -> list[tuple[int, int]]:
        """The start and the end of every leg but the last (the turning point), as planned."""
        steps = [a for a in self._legs for _ in range(self.chunk_frames)]
        positions = [self.trajectory[0]]
        x, y = self.trajectory[0]
        for a in steps:
            dx, dy = ACTIONS[a]
            x, y = (x + dx * self.speed) % self.world.size, (y + dy * self.speed) % self.world.size
            positions.append((x, y))
        return [positions[k * self.chunk_frames] for k in range(self.legs)]

    def score(self) -> float:
        back = self.trajectory[self.legs * self.chunk_frames + 1 :]  # positions after the walk out
        if not back:
            back = self.trajectory[-1:]
        size = self.world.size

        def dist(a: tuple[int, int], b: tuple[int, int]) -> float:
            dx, dy = (min(abs(u - v), size - abs(u - v)) for u, v in zip(a, b))
            return float(np.hypot(dx, dy))

        return float(np.mean([min(dist(p, w) for p in back) for w in self.waypoints()]))

    def record(self, seed: int) -> Episode:
        first = self.reset(seed)
        steps = [a for a in self._legs for _ in range(self.chunk_frames)]
        steps += [REVERSE[a] for a in reversed(steps)]
        frames = [first] + [self.step(a) for a in steps]
        return Episode(frames=torch.stack(frames), actions=self.subgoals(), steps=steps, seed=seed, domain=self.name,
                       info={"waypoints": self.waypoints(), "trajectory": list(self.trajectory),
                             "expert_score": self.score(), "phase1_chunks": self.legs,
                             "phase1_steps": self.legs * self.chunk_frames})

    def close(self) -> None:
        pass

    def __enter__(self) -> WorldRetraceTask:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
