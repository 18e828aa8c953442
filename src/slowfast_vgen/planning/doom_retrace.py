"""Path-retrace planning task on ViZDoom (the paper's Minecraft game-navigation task, Sec. 4.2, Table 2).

The player walks a random path of a few segments (phase 1, "walk"), then has to come back to its start through
the same waypoints in reverse order (phase 2, "retrace"). The earlier waypoints are out of view on the way back,
so solving it from video needs memory of the episode. The metric (Table 2, "Game Navigation"): "define a set of
waypoints along the way, and measure the closest distance to these waypoints", in Doom map units.

Map: the ``predict_position`` scenario that ships with ViZDoom, played without monsters (``dmflags`` 4096, set
before every new episode): one open room of 832 x 1,280 units with a low ceiling full of lights (strong motion
cues), walls that differ by side (crates, computer panels, grey tech panels), five crates standing on the floor
(landmarks and obstacles), no items, no hazards, nothing animated. The walk's segments are tried out in the
game: a segment whose forward steps do not all really move the player (a wall, a crate) is undone by replaying
the episode up to it, and another one is taken.

Primitive actions (one step = one recorded frame; the IDM's vocabulary):

- ``"go forward"``: :data:`FORWARD_TICS` tics of MOVE_FORWARD, then idle tics until the player stands still, then
  one more idle tic (the view bob of the last moving tic); about 33 units. Doom's momentum is spent inside the
  step, so the next step's frame shows only the next action's effect.
- ``"turn left"`` / ``"turn right"``: :data:`TURN_TICS` tics of the recorder's 11.25-degree turn (22.5 degrees).
  Turning has no momentum.
- ``"stay"``: one idle tic; the frame does not change.

The game machinery (buttons, hidden window, no sound, ``+sv_cheats 1`` for ``warp``, scenario lookup, settling)
is the revisit recorder's :class:`~slowfast_vgen.datamodules.prep.record.DoomRecorder`; frames come from
its smallest screen (160x120), area-resized to a square ``resolution``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from slowfast_vgen.seeds import stable_seed
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.planning.tasks import Episode

SCENARIO = "predict_position"
DOOM_MAP = "map01"
SCREEN = "160x120"               # the smallest ViZDoom screen; frames are resized from it
NO_MONSTERS = 4096               # dmflags DF_NO_MONSTERS: the scenario's monster never spawns
WARMUP_TICS = 8                  # the engine drops turn commands in the first tics of an episode (as the recorder)
ACTIONS: tuple[str, ...] = ("go forward", "turn left", "turn right", "stay")
FORWARD_TICS = 4                 # MOVE_FORWARD tics per "go forward" (then the player glides to a stop)
GLIDE_TICS = 28                  # idle tics after them before the velocity is checked tic by tic (about 39 in all)
TURN_TICS = 2                    # recorder turn tics (11.25 degrees each) per "turn left"/"turn right"
PLAN_STEP_UNITS = 36.0           # a generous bound on one "go forward" (about 33 units), for planning only
MIN_STEP_UNITS = 28.0            # a walk step that moves less (or changes height) hit something: segment undone
AREA = (-512, 192, -576, 576)    # x0, x1, y0, y1: starts and planned segment ends (the room is 64+ units larger)
WAYPOINT_RADIUS = 20.0           # the expert counts a waypoint as reached within this distance
MAX_LEG_STEPS = 200              # safety bound on the expert's steps towards one waypoint
RETRACE_TEXT = "go back to the previous waypoint"
HOME_TEXT = "return to the start"
SUBGOAL_TEXTS: tuple[str, ...] = ("turn left", "turn right", "go forward", RETRACE_TEXT, HOME_TEXT)

Pose = tuple[float, float, float, float]  # x, y, z, angle (degrees, counter-clockwise, 0 = +x)


def _wrap(degrees: float) -> float:
    """An angle difference in (-180, 180]."""
    d = (degrees + 180.0) % 360.0 - 180.0
    return 180.0 if d == -180.0 else d


def _area_resize(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Area (box) resize of one axis to ``size``: each output pixel averages ``n / size`` input pixels, exactly
    (differences of the interpolated cumulative sum; no BLAS, so it stays fast on a busy CPU)."""
    n = x.shape[axis]
    cum = np.concatenate([np.zeros_like(np.take(x, [0], axis=axis)), np.cumsum(x, axis=axis)], axis=axis)
    edges = np.arange(size + 1) * (n / size)
    i = np.minimum(edges.astype(np.int64), n - 1)
    shape = [1] * x.ndim
    shape[axis] = size + 1
    at = np.take(cum, i, axis=axis) + (edges - i).reshape(shape) * np.take(x, i, axis=axis)
    return np.diff(at, axis=axis) * (size / n)


class _Recording:
    """The expert episode under construction: frames, primitive steps, subgoal texts, waypoints."""

    def __init__(self, first: torch.Tensor, start: tuple[float, float]) -> None:
        self.frames, self.steps, self.texts, self.waypoints = [first], [], [], [start]

    def sizes(self) -> tuple[int, int, int, int]:
        return len(self.frames), len(self.steps), len(self.texts), len(self.waypoints)

    def truncate(self, sizes: tuple[int, int, int, int]) -> None:
        for items, n in zip((self.frames, self.steps, self.texts, self.waypoints), sizes):
            del items[n:]


class PathRetraceTask:
    """Walk a random path, then retrace it back to the start (Sec. 4.2, Table 2, "Game Navigation").

    Follows :class:`~slowfast_vgen.planning.tasks.PlanningTask`. ``resolution``: square frame size in pixels;
    ``chunk_frames``: primitive steps per subgoal; ``segments``: turn-and-walk segments of the walk phase;
    ``waypoint_radius``: when the expert counts a waypoint as reached (map units).
    """

    name = "path-retrace"
    actions: tuple[str, ...] = ACTIONS
    metric_name = "distance to waypoints (map units)"

    def __init__(self, resolution: int = 32, chunk_frames: int = 4, segments: int = 3,
                 waypoint_radius: float = WAYPOINT_RADIUS) -> None:
        for key, value, lo, hi in (("resolution", resolution, 8, 512), ("chunk_frames", chunk_frames, 1, 8),
                                   ("segments", segments, 1, 8)):
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise UserInputError(f"PathRetraceTask {key} must be an integer in [{lo}, {hi}], got {value!r}")
        radius_ok = isinstance(waypoint_radius, (int, float)) and not isinstance(waypoint_radius, bool)
        if not radius_ok or not 5 <= waypoint_radius <= 100:
            raise UserInputError(f"PathRetraceTask waypoint_radius must be a number in [5, 100] map units, "
                                 f"got {waypoint_radius!r}")
        try:
            from slowfast_vgen.simulators.vizdoom import ACTIONS as BUTTONS
            from slowfast_vgen.simulators.vizdoom import TURN_STEP, DoomRecorder
        except ImportError:
            raise UserInputError("the path-retrace task needs ViZDoom: pip install 'slowfast-vgen[game]'") from None
        self.resolution = resolution
        self.chunk_frames = chunk_frames
        self.segments = segments
        self.waypoint_radius = float(waypoint_radius)
        self.turn_degrees = TURN_TICS * TURN_STEP
        self._buttons = BUTTONS
        self._doom = DoomRecorder(SCENARIO, DOOM_MAP, SCREEN)
        self._plans: OrderedDict[int, dict[str, Any]] = OrderedDict()  # seed -> subgoals, waypoints, phase-1 steps
        self._seed: int | None = None
        self._trajectory: list[Pose] = []  # one pose per frame since reset

    # ------------------------------------------------------------------ protocol

    def reset(self, seed: int) -> torch.Tensor:
        """Start episode ``seed``: the exact initial state (position, angle, frame) of ``record(seed)``."""
        seed = self._check_seed(seed)
        if seed not in self._plans:
            self.record(seed)  # the subgoals and waypoints are those of the expert's episode
        self._plans.move_to_end(seed)
        return self._begin(seed)

    def subgoals(self) -> list[str]:
        """The subgoal texts of the current episode (those of ``record(seed).actions``)."""
        return list(self._plan()["subgoals"])

    def step(self, action: str) -> torch.Tensor:
        """Apply one primitive action (see the module docstring); return the next frame (3, H, W)."""
        if action not in self.actions:
            raise UserInputError(f"unknown path-retrace action {action!r}; expected one of {list(self.actions)}")
        if self._seed is None:
            raise UserInputError("PathRetraceTask.step() before reset(seed): call reset first")
        self._apply(action)
        return self._observe()

    def score(self) -> float:
        """Mean over the walk's waypoints (start included, turn-around point excluded) of the closest distance
        (map units) reached after the walk phase, i.e. at or after step ``phase1_steps`` since :meth:`reset` (the
        walk's own visits do not count; a policy that stopped earlier is judged by its last position). Lower is
        better (Table 2, "Game Navigation")."""
        plan = self._plan()
        after = np.asarray(self._trajectory[min(plan["phase1_steps"], len(self._trajectory) - 1):])[:, :2]
        targets = np.asarray(plan["waypoints"][:-1], dtype=np.float64)
        dist = np.linalg.norm(after[None, :, :] - targets[:, None, :], axis=-1)  # (waypoints, positions)
        return float(dist.min(axis=1).mean())

    def record(self, seed: int) -> Episode:
        """The scripted expert's episode ``seed``: the walk, then a closed-loop retrace (Sec. 4.2). It leaves the
        task at the end of that episode (:meth:`score` then gives the expert's score); call :meth:`reset` to play."""
        seed = self._check_seed(seed)
        rng = np.random.default_rng(stable_seed("path-retrace-walk", seed))
        rec = _Recording(self._begin(seed), self._trajectory[0][:2])
        for _ in range(self.segments):  # phase 1, walk: a waypoint after every forward chunk
            if not self._walk_segment(rec, rng, seed):
                break
        if len(rec.waypoints) < 2:
            raise RuntimeError(f"path-retrace episode {seed}: no walkable segment from {rec.waypoints[0]}")
        phase1_steps, phase1_chunks = len(rec.steps), len(rec.texts)
        targets = rec.waypoints[-2::-1]  # phase 2, retrace: back through the waypoints in reverse order
        for i, target in enumerate(targets):
            text = HOME_TEXT if i == len(targets) - 1 else RETRACE_TEXT
            self._run(rec, text, lambda n, t=target: self._expert(n, t))
        self._plans[seed] = {"subgoals": list(rec.texts), "waypoints": [list(w) for w in rec.waypoints],
                             "phase1_steps": phase1_steps}
        self._plans.move_to_end(seed)
        while len(self._plans) > 64:
            self._plans.popitem(last=False)
        score = self.score()
        info = {
            "task": self.name, "scenario": SCENARIO, "waypoints": [list(w) for w in rec.waypoints],
            "scored_waypoints": [list(w) for w in rec.waypoints[:-1]], "phase1_steps": phase1_steps,
            "phase1_chunks": phase1_chunks, "trajectory": [list(p) for p in self._trajectory],
            "trajectory_names": ["x", "y", "z", "angle"], "score": score, "expert_score": score,
            "metric": self.metric_name,
            "waypoint_radius": self.waypoint_radius,
        }
        return Episode(torch.stack(rec.frames), rec.texts, rec.steps, seed, first_frames=1, info=info, domain=self.name)

    def close(self) -> None:
        """Close the game."""
        if self._doom is not None:
            self._doom.close()
            self._doom = None

    def __enter__(self) -> PathRetraceTask:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ game

    @property
    def _game(self):
        if self._doom is None:
            raise UserInputError("this PathRetraceTask is closed; create a new one")
        return self._doom.game

    @staticmethod
    def _check_seed(seed: int) -> int:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise UserInputError(f"path-retrace seed must be an integer, got {seed!r}")
        return int(seed)

    def _plan(self) -> dict[str, Any]:
        if self._seed is None or self._seed not in self._plans:
            raise UserInputError("PathRetraceTask has no episode: call reset(seed) first")
        return self._plans[self._seed]

    def _tic(self, text: str, tics: int = 1) -> None:
        self._game.make_action(self._buttons[text], tics)

    def _pose(self) -> Pose:
        _, v = self._doom._state()  # x, y, z, angle, velocity x, velocity y
        return float(v[0]), float(v[1]), float(v[2]), float(v[3])

    def _observe(self) -> torch.Tensor:
        screen = self._game.get_state().screen_buffer.astype(np.float64) / 255.0  # (120, 160, 3)
        x = _area_resize(_area_resize(screen, self.resolution, 0), self.resolution, 1)  # (H, W, 3)
        return torch.from_numpy(np.ascontiguousarray(np.clip(x, 0.0, 1.0).transpose(2, 0, 1), dtype=np.float32))

    def _begin(self, seed: int) -> torch.Tensor:
        """New episode at the seeded integer start position and angle, standing still; returns the first frame."""
        game = self._game
        rng = np.random.default_rng(stable_seed("path-retrace-start", seed))
        angle = float(self.turn_degrees * int(rng.integers(0, round(360 / self.turn_degrees))))
        game.set_seed(stable_seed("path-retrace-game", seed) % (2**31))
        game.send_game_command(f"dmflags {NO_MONSTERS}")
        game.new_episode()
        self._tic("stay", WARMUP_TICS)
        for _ in range(100):  # a start on the floor (not on a crate)
            sx, sy = int(rng.integers(AREA[0], AREA[1] + 1)), int(rng.integers(AREA[2], AREA[3] + 1))
            game.send_game_command(f"warp {sx} {sy}")
            self._tic("stay")  # the frame right after a warp is stale
            self._tic("stay")
            x, y, z, _ = self._pose()
            if (x, y, z) == (sx, sy, 0.0):
                break
        else:
            raise RuntimeError(f"path-retrace episode {seed}: no start position on the floor")
        for _ in range(64):
            diff = _wrap(angle - self._pose()[3])
            if abs(diff) < 1e-6:
                break
            self._tic("turn left" if diff > 0 else "turn right")  # 11.25-degree turns: angles stay exact
        self._doom._settle(record=False)
        self._tic("stay")
        pose = self._pose()
        if pose[:2] != (sx, sy) or abs(_wrap(pose[3] - angle)) > 1e-6:
            raise RuntimeError(f"ViZDoom did not reach the start pose {(sx, sy, angle)} of seed {seed}: {pose}")
        self._seed = seed
        self._trajectory = [pose]
        return self._observe()

    def _apply(self, action: str) -> None:
        if action == "go forward":
            self._tic("go forward", FORWARD_TICS)
            self._tic("stay", GLIDE_TICS)     # most of the glide, without rendering
            self._doom._settle(record=False)  # the rest: the glide belongs to this step, no momentum is left over
            self._tic("stay")                 # the view bob of the last moving tic
        elif action in ("turn left", "turn right"):
            for _ in range(TURN_TICS):
                self._tic(action)
        else:
            self._tic("stay")
        self._trajectory.append(self._pose())

    # ------------------------------------------------------------------ expert

    def _run(self, rec: _Recording, text: str, policy: Callable[[int], str | None]) -> None:
        """One sub-task: the policy's steps (it gets the step count), padded with "stay" to whole chunks."""
        n = 0
        while (action := policy(n)) is not None:
            rec.frames.append(self.step(action))
            rec.steps.append(action)
            n += 1
        chunks = -(-n // self.chunk_frames)
        for _ in range(chunks * self.chunk_frames - n):
            rec.frames.append(self.step("stay"))
            rec.steps.append("stay")
        rec.texts.extend([text] * chunks)

    def _walk_segment(self, rec: _Recording, rng: np.random.Generator, seed: int) -> bool:
        """Turn (up to 90 degrees, wider only if nothing else fits), then 1-2 chunks of "go forward", each ending
        at a waypoint. Candidates whose planned end leaves :data:`AREA` are skipped; one whose walk is blocked
        is undone (the episode is replayed up to the segment) and the next is tried. False: none could be walked."""
        x, y, _, a = self._trajectory[-1]
        half = round(180 / self.turn_degrees)  # turn steps for 180 degrees
        usual = [(k, m) for k in range(-(half // 2), half // 2 + 1) if k for m in (1, 2)]
        wide = [(k, 1) for k in range(-half + 1, half + 1) if abs(k) > half // 2]
        reach = self.chunk_frames * PLAN_STEP_UNITS
        mark = rec.sizes()
        for k, m in [usual[i] for i in rng.permutation(len(usual))] + [wide[i] for i in rng.permutation(len(wide))]:
            heading = math.radians(a + k * self.turn_degrees)
            ex, ey = x + m * reach * math.cos(heading), y + m * reach * math.sin(heading)
            if not (AREA[0] <= ex <= AREA[1] and AREA[2] <= ey <= AREA[3]):
                continue
            turn = "turn left" if k > 0 else "turn right"
            self._run(rec, turn, lambda n, turn=turn, k=abs(k): turn if n < k else None)
            if self._walk_forward(rec, m):
                return True
            rec.truncate(mark)  # blocked: undo by replaying the episode's steps so far (the engine is deterministic)
            kept = self._trajectory[: len(rec.steps) + 1]
            self._begin(seed)
            for action in rec.steps:
                self._apply(action)
            if self._trajectory != kept:
                raise RuntimeError(f"path-retrace episode {seed}: replaying the walk did not reproduce it")
        return False

    def _walk_forward(self, rec: _Recording, chunks: int) -> bool:
        """``chunks`` chunks of "go forward"; False as soon as a step does not really move the player on the floor."""
        for _ in range(chunks):
            for _ in range(self.chunk_frames):
                rec.frames.append(self.step("go forward"))
                rec.steps.append("go forward")
                (x0, y0, z0, _), (x1, y1, z1, _) = self._trajectory[-2:]
                if math.hypot(x1 - x0, y1 - y0) < MIN_STEP_UNITS or z1 != z0:
                    return False
            rec.texts.append("go forward")
            rec.waypoints.append(self._trajectory[-1][:2])
        return True

    def _expert(self, n: int, target: tuple[float, float]) -> str | None:
        """Closed loop: turn towards ``target`` until within half a turn step, walk; stop within the radius."""
        x, y, _, a = self._trajectory[-1]
        if n >= MAX_LEG_STEPS or math.hypot(target[0] - x, target[1] - y) <= self.waypoint_radius:
            return None
        err = _wrap(math.degrees(math.atan2(target[1] - y, target[0] - x)) - a)
        if abs(err) > self.turn_degrees / 2 + 1e-6:
            return "turn left" if err > 0 else "turn right"
        return "go forward"
