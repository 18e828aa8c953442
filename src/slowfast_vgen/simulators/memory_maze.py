"""Memory Maze recorder: revisit episodes in 3D mazes with continuous physics (issue 37).

Memory Maze (Pasukonis et al. 2022, the ``memory-maze`` package) builds random mazes of 9x9 to 15x15 cells in
MuJoCo (dm_control) and renders 64x64 first-person frames of a rolling ball driven by 6 discrete actions at 4
steps per second. With ``global_observables`` the package also reports the agent's position (``agent_pos``, in
cells), its direction (``agent_dir``, a unit vector) and the layout (``maze_layout``, 1 = floor, row 0 at the
bottom). Measured on memory-maze 1.0.3: "go forward" moves 0.11, 0.22, then 0.25 cell per step; a turn is 14.1
then 18.4 degrees per step; both carry on for one step after they stop (0.08 cell, 2.9 degrees). The physics is
continuous, so a return is never exact: revisits are pairs of poses within stated tolerances.

A scripted agent plans on the maze grid (breadth-first search over the layout) and follows the path from cell
centre to cell centre with a heading controller that turns in place or goes straight (four of the six actions; the
recording's chunks are 4 frames named by their frames' actions, :func:`chunk_spans`), in one of these revisit
patterns:

* ``retrace``: out along a path, turn around, back the same way, turn to the start heading;
* ``loop``: around a cycle of the maze that encloses a wall, passing the cycle's first cell again on the heading
  it left it with, and on for two cells (revisits in the order of the first visit); the cycle starts at the
  start cell or at the nearest cell that lies on such a cycle;
* ``detour``: out, turn around, back to the start by a route that shares no cell with the way out, turn to the
  start heading;
* ``explore-return``: out, on to a place elsewhere, back to the start by the shortest path (which may retrace
  part of the way out), turn to the start heading.

A pattern that the maze cannot give (no cycle around a wall, no second route) falls back (loop -> detour ->
retrace) and the episode's ``note`` says so. Frame ``t`` is labelled with the action that produced it from frame
``t - 1`` (frame 0 has none), as in :mod:`slowfast_vgen.simulators.vizdoom`. Only turns have a reverse: "go
forward" has none, and that is the point of this benchmark (a way back shows new views).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import math
import os
from collections import deque
from typing import Any

import numpy as np

from slowfast_vgen.errors import UserInputError

MAZES = ("9x9", "11x11", "13x13", "15x15")
STEP_LIMITS = {"9x9": 1000, "11x11": 2000, "13x13": 3000, "15x15": 4000}  # the package's time limits x 4 Hz
FPS = 4.0  # memory_maze.tasks.DEFAULT_CONTROL_FREQ
# text -> the package's discrete action (memory_maze.tasks._memory_maze: noop, forward, left, right,
# forward + left, forward + right); combined texts follow `sfvgen data convert keylog` (" and ")
ACTIONS: dict[str, int] = {"stay": 0, "go forward": 1, "turn left": 2, "turn right": 3,
                           "go forward and turn left": 4, "go forward and turn right": 5}
# A chunk's action text is its frames' actions in order, one word each ("forward forward left left"): at 4 steps
# per second the agent changes action every two frames or so, so chunks of one action would be one or two frames
# long. The scripted agent turns in place or goes straight (never both), so four words describe every frame.
WORDS = {"stay": "stay", "go forward": "forward", "turn left": "left", "turn right": "right"}
UNDO = {"stay": "stay", "left": "right", "right": "left"}  # "forward" has no reverse
CHUNK_FRAMES = 4


def chunk_spans(labels: list[str | None], frames: int = CHUNK_FRAMES) -> list[tuple[int, int, str]]:
    """Per-frame labels (frame 0: None) -> ``(start, stop, text)`` chunks of ``frames`` frames from frame 1 (the
    last one shorter), each named by its frames' words (:data:`WORDS`)."""
    if frames < 1:
        raise UserInputError(f"chunk frames {frames}: expected >= 1")
    bad = sorted({t for t in labels[1:] if t not in WORDS})
    if bad:
        raise UserInputError(f"action {bad[0]!r} has no chunk word: expected one of {', '.join(WORDS)}")
    return [(a, min(a + frames, len(labels)), " ".join(WORDS[t] for t in labels[a:a + frames]))  # type: ignore[index]
            for a in range(1, len(labels), frames)]


def chunk_reverses(frames: int = CHUNK_FRAMES) -> dict[str, str]:
    """The reverse of every chunk text that has one (turns and stops only): the words backwards, each undone."""
    out: dict[str, str] = {}
    for n in range(1, frames + 1):
        for words in itertools.product(UNDO, repeat=n):
            out[" ".join(words)] = " ".join(UNDO[w] for w in reversed(words))
    return out


PATTERNS = ("retrace", "loop", "detour", "explore-return")
FALLBACK = {"loop": "detour", "detour": "retrace"}

# Revisits (grid units: one cell = 1.0, i.e. 2 m): frame t revisits frame s < t when the positions are within
# POSITION_TOLERANCE and the headings within ANGLE_TOLERANCE degrees, and the agent has been away in between (a
# frame between them is farther than AWAY_DISTANCE from frame s's position or turned more than AWAY_ANGLE from its
# heading). A forward step is 0.25 cell and a turn 18.4 degrees, so a pass through a pose comes within half a step.
POSITION_TOLERANCE = 0.25
ANGLE_TOLERANCE = 15.0
AWAY_DISTANCE = 1.0
AWAY_ANGLE = 90.0
ROUTE_CELLS = 3  # a revisit is "retraced" when the agent came back through the cells it left by (up to 3)

# The heading controller (measured kinematics above)
TURN_STEP = 18.4  # degrees per turn step
REACH, REACH_LAST = 0.3, 0.12  # a cell centre is reached within this distance (the last one of a leg: closer)
TURN_IN_PLACE = 12.0  # heading error (degrees) above which the agent turns (half a turn step and a margin)
OUT_CELLS = (3, 7)  # cells from the start to the far end of the way out (explore-return: 2-5, then 3-8 on)
WAYPOINT_STEPS = 40  # steps allowed to reach one cell centre

Cell = tuple[int, int]  # (row, col) of the layout: row = floor(y), col = floor(x)
Legs = list[tuple]  # ("follow", [cells]) | ("turn around",) | ("turn to start",)


def load_tasks() -> Any:
    """``memory_maze.tasks``, rendering headless (``MUJOCO_GL=egl`` unless set); a one-line error if missing."""
    os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco / dm_control are imported
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # old gym prints a notice on import
            from memory_maze import tasks
    except ImportError as err:
        raise UserInputError(f"the Memory Maze recorder needs memory-maze and gym ({err}): "
                             "pip install 'slowfast-vgen[maze]'") from None
    logging.getLogger("absl").addFilter(_quiet_resets)  # once: the same filter is not added twice
    return tasks


def _quiet_resets(record: logging.LogRecord) -> bool:
    return "Cannot set velocity" not in record.getMessage()  # dm_control warns at every reset of the rolling ball


def wrap(angle: Any) -> Any:
    """Angles in degrees (floats or arrays) -> [-180, 180)."""
    return (angle + 180.0) % 360.0 - 180.0


def pose_of(obs: dict[str, Any]) -> tuple[float, float, float]:
    """(x, y, angle): ``agent_pos`` in cells, the heading of ``agent_dir`` in degrees (counterclockwise from +x)."""
    (x, y), (dx, dy) = obs["agent_pos"], obs["agent_dir"]
    return float(x), float(y), math.degrees(math.atan2(dy, dx))


def _corner(a: Cell, b: Cell, c: Cell) -> bool:
    return (b[0] - a[0], b[1] - a[1]) != (c[0] - b[0], c[1] - b[1])


def cell_of(x: float, y: float, layout: np.ndarray) -> Cell:
    return min(max(int(y), 0), layout.shape[0] - 1), min(max(int(x), 0), layout.shape[1] - 1)


# -- the grid ------------------------------------------------------------------------------------------------
def bfs(layout: np.ndarray, start: Cell, blocked: set[Cell] | frozenset = frozenset()) -> dict[Cell, Cell | None]:
    """Parents of every floor cell reachable from ``start`` (4-neighbours), avoiding ``blocked``."""
    parent: dict[Cell, Cell | None] = {start: None}
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        for n in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if (0 <= n[0] < layout.shape[0] and 0 <= n[1] < layout.shape[1] and layout[n] and n not in parent
                    and n not in blocked):
                parent[n] = (r, c)
                queue.append(n)
    return parent


def shortest_path(layout: np.ndarray, a: Cell, b: Cell, blocked: set[Cell] | frozenset = frozenset()
                  ) -> list[Cell] | None:
    parent = bfs(layout, a, blocked)
    if b not in parent:
        return None
    path = [b]
    while path[-1] != a:
        path.append(parent[path[-1]])  # type: ignore[arg-type]
    return path[::-1]


def encloses_wall(layout: np.ndarray, cycle: list[Cell]) -> bool:
    """Does the closed chain of cells ``cycle`` enclose a wall cell? (flood fill from outside the grid)."""
    h, w = layout.shape
    ring = {(r + 1, c + 1) for r, c in cycle}  # in a grid padded by one cell
    outside, queue = {(0, 0)}, deque([(0, 0)])
    while queue:
        r, c = queue.popleft()
        for n in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= n[0] < h + 2 and 0 <= n[1] < w + 2 and n not in outside and n not in ring:
                outside.add(n)
                queue.append(n)
    return any(not layout[r, c] and (r + 1, c + 1) not in outside for r in range(h) for c in range(w))


def _far_cells(layout: np.ndarray, start: Cell, rng: np.random.Generator, lo: int, hi: int) -> list[Cell]:
    """Cells ``lo``..``hi`` steps from ``start`` in a random order (the farthest ones if none is that far)."""
    depth = {start: 0}
    for cell, parent in bfs(layout, start).items():  # BFS order: parents come first
        if parent is not None:
            depth[cell] = depth[parent] + 1
    cells = [c for c, d in depth.items() if lo <= d <= hi] or [c for c, d in depth.items() if d == max(depth.values())]
    return [cells[i] for i in rng.permutation(len(cells))]


# -- the patterns ----------------------------------------------------------------------------------------------
def plan_retrace(layout: np.ndarray, start: Cell, rng: np.random.Generator, out_cells: tuple[int, int]) -> Legs:
    out = shortest_path(layout, start, _far_cells(layout, start, rng, *out_cells)[0])
    return [("follow", out), ("turn around",), ("follow", out[::-1]), ("turn to start",)]


def plan_detour(layout: np.ndarray, start: Cell, rng: np.random.Generator, out_cells: tuple[int, int]) -> Legs | None:
    for goal in _far_cells(layout, start, rng, *out_cells):
        out = shortest_path(layout, start, goal)
        back = shortest_path(layout, goal, start, blocked=set(out[1:-1]))
        if back is not None and len(out) > 2:
            return [("follow", out), ("turn around",), ("follow", back), ("turn to start",)]
    return None


def cycle_around_wall(layout: np.ndarray, entry: Cell, rng: np.random.Generator
                      ) -> tuple[list[Cell], list[Cell]] | None:
    """The shortest found cycle through ``entry`` that encloses a wall, as (way out, way back), or None."""
    found = []
    for goal in bfs(layout, entry):
        out = shortest_path(layout, entry, goal)
        if len(out) < 3:
            continue
        back = shortest_path(layout, goal, entry, blocked=set(out[1:-1]))
        if back is not None and encloses_wall(layout, out + back[1:-1]):
            found.append((len(out) + len(back), out, back))
    if not found:
        return None
    shortest = [f for f in found if f[0] == min(f[0] for f in found)]
    _, out, back = shortest[int(rng.integers(len(shortest)))]
    return out, back


def plan_loop(layout: np.ndarray, start: Cell, rng: np.random.Generator, out_cells: tuple[int, int]) -> Legs | None:
    for entry in bfs(layout, start):  # nearest first
        cycle = cycle_around_wall(layout, entry, rng)
        if cycle is not None:
            out, back = cycle
            approach = [("follow", shortest_path(layout, start, entry))] if entry != start else []
            return approach + [("follow", out), ("follow", back), ("follow", out[:3])]
    return None


def plan_explore_return(layout: np.ndarray, start: Cell, rng: np.random.Generator, out_cells: tuple[int, int]) -> Legs:
    lo, hi = out_cells
    out = shortest_path(layout, start, _far_cells(layout, start, rng, max(1, lo - 1), max(1, hi - 2))[0])
    elsewhere = [c for c in _far_cells(layout, out[-1], rng, lo, hi + 1) if c not in out] or [out[0]]
    on = shortest_path(layout, out[-1], elsewhere[0])
    return [("follow", out), ("follow", on), ("follow", shortest_path(layout, on[-1], start)), ("turn to start",)]


PLANNERS = {"retrace": plan_retrace, "loop": plan_loop, "detour": plan_detour, "explore-return": plan_explore_return}


# -- revisits --------------------------------------------------------------------------------------------------
def been_away(dist: np.ndarray, turn: np.ndarray | None, away_distance: float | None = AWAY_DISTANCE,
              away_angle: float | None = AWAY_ANGLE) -> np.ndarray:
    """``(T, T)`` bool: ``[s, t]`` is true when ``s < t`` and some frame ``u``, ``s < u < t``, is away from frame
    ``s``'s pose (``dist[s, u] > away_distance`` or ``turn[s, u] > away_angle``; None: that test is off).

    ``dist`` (T, T): distances between the frames' positions; ``turn`` (T, T) or None: their heading differences in
    degrees. The revisit benchmark on recorded shards applies the same rule (``datamodules.recorded``).
    """
    T = len(dist)
    away = np.zeros((T, T), dtype=bool)  # away[s, u]: frame u is away from frame s's pose
    if away_distance is not None:
        away |= dist > away_distance
    if away_angle is not None and turn is not None:
        away |= turn > away_angle
    later = np.triu(np.ones((T, T), dtype=bool), 1)
    first_away = np.where((away & later).any(1), (away & later).argmax(1), T)  # (T,) first u > s away from s
    return later & (first_away[:, None] < np.arange(T)[None])


def find_revisits(poses: np.ndarray, cells: list[Cell] | None = None) -> list[dict[str, Any]]:
    """Revisit pairs of an episode's poses ``(T, 3)`` (x, y in cells, angle in degrees); see the module constants.

    One entry per revisiting frame ``t``: ``{"frame": t, "of_frame": s, "distance", "angle_error", "retraced"}``
    with ``s`` the earliest frame it revisits; ``retraced`` (with ``cells``): the agent came back to ``t`` through
    the cells it had left ``s`` by, in reverse order (a time-reversed way back).
    """
    pos, ang = poses[:, :2], poses[:, 2]
    dist = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1))  # (T, T)
    turn = np.abs(wrap(ang[:, None] - ang[None]))  # (T, T)
    near = (dist <= POSITION_TOLERANCE) & (turn <= ANGLE_TOLERANCE)
    valid = near & been_away(dist, turn)  # valid[s, t]
    out = []
    for t in np.flatnonzero(valid.any(0)):
        s = int(valid[:, t].argmax())
        out.append({"frame": int(t), "of_frame": s, "distance": round(float(dist[s, t]), 4),
                    "angle_error": round(float(turn[s, t]), 3),
                    **({"retraced": _retraced(cells, s, int(t))} if cells is not None else {})})
    return out


def _route(cells: list[Cell], i: int, step: int) -> list[Cell]:
    """The first ROUTE_CELLS cells entered after leaving frame ``i``'s cell, forward (step 1) or back in time (-1)."""
    route, here, j = [], cells[i], i + step
    while 0 <= j < len(cells) and len(route) < ROUTE_CELLS:
        if cells[j] != here:
            here = cells[j]
            route.append(here)
        j += step
    return route


def _retraced(cells: list[Cell], s: int, t: int) -> bool:
    left, came = _route(cells, s, 1), _route(cells, t, -1)
    k = min(len(left), len(came))
    return k > 0 and left[:k] == came[:k]


# -- the recorder ----------------------------------------------------------------------------------------------
class _Stop(Exception):
    """The episode stops early (step budget, or the agent is stuck): the reason is its message."""


class MazeRecorder:
    """Records Memory Maze revisit episodes: one fresh environment per episode, seeded by its maze seed."""

    def __init__(self, maze: str = "9x9", max_steps: int = 600, out_cells: tuple[int, int] = OUT_CELLS) -> None:
        if maze not in MAZES:
            raise UserInputError(f"maze {maze!r}: expected one of {', '.join(MAZES)}")
        if not 1 <= out_cells[0] <= out_cells[1]:
            raise UserInputError(f"out_cells {out_cells}: expected (shortest, longest) way out in cells, 1 <= shortest "
                                 "<= longest")
        if not 1 <= max_steps < STEP_LIMITS[maze]:
            raise UserInputError(f"max_steps {max_steps}: expected 1 .. {STEP_LIMITS[maze] - 1} (the {maze} maze's "
                                 f"time limit)")
        self.maze, self.max_steps, self.out_cells = maze, max_steps, tuple(out_cells)
        self.make_task = getattr(load_tasks(), f"memory_maze_{maze}")

    def make_env(self, maze_seed: int) -> Any:
        """The dm_env of ``maze_seed`` (maze, start and targets), with poses and layout, without the target-colour
        border (frames show the maze only)."""
        try:
            return self.make_task(seed=maze_seed, global_observables=True, target_color_in_image=False)
        except Exception as err:  # noqa: BLE001 - an OpenGL back end that fails to start
            raise UserInputError(f"Memory Maze failed to start with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}: {err} "
                                 "(headless rendering needs libEGL, or MUJOCO_GL=osmesa with libOSMesa)") from None

    def record_episode(self, pattern: str, maze_seed: int, rng: np.random.Generator) -> dict[str, Any]:
        """One episode: frames ``(T, 64, 64, 3)``, labels, poses ``(T, 3)``, cells, revisits and what happened."""
        if pattern not in PLANNERS:
            raise UserInputError(f"pattern {pattern!r}: expected one of {', '.join(PATTERNS)}")
        env = self.make_env(maze_seed)
        try:
            obs = env.reset().observation
            layout = np.asarray(obs["maze_layout"], dtype=np.uint8)
            self.env = env
            self.frames, self.poses, self.labels = [], [], [None]
            self._observe(obs)
            start = cell_of(*self.poses[0][:2], layout)
            done, note, legs = pattern, "", PLANNERS[pattern](layout, start, rng, self.out_cells)
            while legs is None:  # the maze cannot give this pattern
                fallback = FALLBACK[done]
                missing = "cycle around a wall" if done == "loop" else "second route"
                note += f"{'; ' if note else ''}no {missing}: {fallback}"
                done, legs = fallback, PLANNERS[fallback](layout, start, rng, self.out_cells)
            complete = True
            try:
                for leg in legs:
                    if leg[0] == "follow":
                        self._follow(leg[1])
                    else:
                        self._turn_to(self.poses[0][2] if leg[0] == "turn to start" else self.poses[-1][2] + 180.0)
            except _Stop as stop:
                complete, note = False, f"{note}{'; ' if note else ''}{stop}"
        finally:
            env.close()
        poses = np.round(np.asarray(self.poses), 4)  # (T, 3): the revisits are computed from the stored poses
        cells = [cell_of(x, y, layout) for x, y, _ in poses]
        return {"frames": np.stack(self.frames), "labels": self.labels, "poses": poses, "cells": cells,
                "revisits": find_revisits(poses, cells), "pattern": done, "requested": pattern,
                "complete": complete, "note": note, "layout": layout, "maze_seed": int(maze_seed)}

    def _observe(self, obs: dict[str, Any]) -> None:
        self.frames.append(np.array(obs["image"], dtype=np.uint8))  # (64, 64, 3), copied
        self.poses.append(pose_of(obs))

    def _act(self, text: str) -> None:
        if len(self.labels) > self.max_steps:
            raise _Stop(f"stopped at the step budget ({self.max_steps})")
        self.labels.append(text)
        self._observe(self.env.step(ACTIONS[text]).observation)

    def _follow(self, cells: list[Cell]) -> None:
        """Drive through the centres of ``cells[1:]`` (``cells[0]`` is where the agent is); stop at the centre of a
        corner and of the last cell (braking: the ball rolls on for up to 0.2 cell)."""
        for k in range(1, len(cells)):
            (r, c), stop = cells[k], k == len(cells) - 1 or _corner(cells[k - 1], cells[k], cells[k + 1])
            for _ in range(WAYPOINT_STEPS):
                x, y, angle = self.poses[-1]
                dx, dy = c + 0.5 - x, r + 0.5 - y
                distance, error = math.hypot(dx, dy), wrap(math.degrees(math.atan2(dy, dx)) - angle)
                speed = math.dist(self.poses[-1][:2], self.poses[-2][:2]) if len(self.poses) > 1 else 0.0
                if stop and speed > 0.02 and distance < max(REACH_LAST, 1.5 * speed):
                    self._act("stay")  # brake before the centre
                    continue
                if distance < (REACH_LAST if stop else REACH):
                    break
                # turn in place or go straight, never both: each frame has one of four actions, so a chunk's
                # text (its frames' words, CHUNK_WORDS) is exact
                if abs(error) > TURN_IN_PLACE:
                    self._act("turn left" if error > 0 else "turn right")  # counterclockwise is left (y is up)
                else:
                    self._act("go forward")
            else:
                raise _Stop(f"stuck on the way to cell {(r, c)}")

    def _turn_to(self, angle: float) -> None:
        """Turn in place to within half a turn step of ``angle``, then one step to let the turn settle."""
        for _ in range(int(360 / TURN_STEP) + 2):
            error = wrap(angle - self.poses[-1][2])
            if abs(error) <= TURN_STEP / 2:
                break
            self._act("turn left" if error > 0 else "turn right")
        self._act("stay")

