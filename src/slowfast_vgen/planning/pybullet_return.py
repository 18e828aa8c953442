"""Object-return planning task on PyBullet (the paper's RLBench cube-return task, Sec. 4.2, Table 2).

Two cubes (red, blue) lie on a table seen by a fixed top-down camera. A kinematic gripper moves one grid step per
primitive action, ``grasp`` attaches the cube under it with a fixed constraint and lifts it, ``release`` drops it.
An episode first moves each cube somewhere else (phase 1), then puts every moved cube back where it was (phase 2):
the original positions are no longer visible in phase 2, so solving it from video needs episodic memory.
The metric (Table 2, "Robot Manipulation"): mean distance of the cubes to their original positions, in metres.

Physics is real (gravity, friction, contacts, a constraint that drags the held cube); the scene is small so that
recording one episode takes a fraction of a second on a CPU (``p.DIRECT`` client, TinyRenderer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from slowfast_vgen.errors import UserInputError
from slowfast_vgen.planning.tasks import Episode

ACTIONS: tuple[str, ...] = ("move left", "move right", "move forward", "move backward", "grasp", "release", "stay")
MOVES: dict[str, tuple[int, int]] = {"move left": (-1, 0), "move right": (1, 0),
                                     "move forward": (0, 1), "move backward": (0, -1)}
DIRECTION_WORDS: dict[tuple[int, int], str] = {(-1, 0): "left", (1, 0): "right", (0, 1): "forward", (0, -1): "backward"}
CUBES: tuple[str, ...] = ("red", "blue")
CUBE_RGBA: tuple[tuple[float, float, float, float], ...] = ((0.9, 0.1, 0.1, 1.0), (0.1, 0.25, 0.95, 1.0))
GRIPPER_OPEN_RGBA = (1.0, 1.0, 1.0, 1.0)      # white when open
GRIPPER_CLOSED_RGBA = (1.0, 0.45, 0.0, 1.0)   # orange when closed: grasp/release are visible with nothing held
TABLE_RGBA = (0.25, 0.25, 0.25, 1.0)  # darker than everything on it: a move has one sign pattern per direction

GRID = 0.05            # metres per primitive move
CUBE_HALF = 0.035      # cube half size (7 cm cubes)
CUBE_MASS = 0.2        # kg
FRICTION = 0.8
LIFT = 0.02            # a grasped cube is held this far above the table
GRIPPER_HALF = 0.025   # flat square gripper, drawn above the cubes (no collision shape)
GRIPPER_Z = 2 * CUBE_HALF + LIFT + 0.01
REACH = 0.045          # grasp takes a cube whose centre is this close (in the table plane) to the gripper
HOME = (0, -5)         # gripper start cell
CUBE_CELLS = 4         # original cube cells in [-4, 4]^2 (x 5 cm)
MOVED_CELLS = 5        # moved cubes stay in [-5, 5]^2
GRIPPER_CELLS = 6      # the gripper is clamped to [-6, 6]^2
JITTER = 0.01          # cubes lie within 1 cm of a grid point (their offset to the gripper is kept while carried)
VIEW_HALF = 0.32       # the camera sees the table square [-0.32, 0.32]^2
CAMERA_HEIGHT = 1.0
DT = 1.0 / 240.0


@dataclass(frozen=True)
class SubTask:
    """One sub-task of the scripted decomposition; it spans ceil(steps / chunk_frames) subgoal chunks."""

    kind: str              # "reach", "grasp", "carry", "return", "release"
    cube: int              # index into CUBES
    text: str              # the subgoal text of each of its chunks
    steps: int             # planned primitive steps (the rest of its chunks is "stay")
    phase: int             # 1 = move the cubes, 2 = return them
    target: tuple[int, int] | None = None  # cube target cell for "carry"


@dataclass(frozen=True)
class Plan:
    """The seeded scene and the scripted decomposition (a pure function of the seed)."""

    cells: tuple[tuple[int, int], ...]          # cube grid cells
    positions: tuple[tuple[float, float], ...]  # cube original positions (x, y) in metres
    order: tuple[int, ...]                      # which cube is moved first
    moves: tuple[tuple[tuple[int, int], int], ...]  # per cube: (direction, number of cells)
    subtasks: tuple[SubTask, ...]


def _chebyshev(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(abs(a[0] - b[0]), abs(a[1] - b[1]))


def make_plan(seed: int) -> Plan:
    """Random non-overlapping cubes, a collision-free carry per cube, and the sub-tasks that move and return them."""
    rng = np.random.default_rng([seed, 7331])
    while True:
        cells = [tuple(int(v) for v in rng.integers(-CUBE_CELLS, CUBE_CELLS + 1, size=2)) for _ in CUBES]
        if _chebyshev(cells[0], cells[1]) < 3:
            continue
        order = tuple(int(i) for i in rng.permutation(len(CUBES)))
        now = list(cells)
        moves: dict[int, tuple[tuple[int, int], int]] = {}
        for i in order:
            options = []
            for d in DIRECTION_WORDS:
                for n in (3, 4, 5):
                    path = [(now[i][0] + k * d[0], now[i][1] + k * d[1]) for k in range(n + 1)]
                    if max(abs(path[-1][0]), abs(path[-1][1])) > MOVED_CELLS:
                        continue
                    # the held cube is lifted only 2 cm: centres >= 2 cells apart (>= 8 cm with jitter, cubes are 7 cm)
                    if all(_chebyshev(c, now[j]) >= 2 for c in path for j in range(len(CUBES)) if j != i):
                        options.append((d, n))
            if not options:
                break
            d, n = options[int(rng.integers(len(options)))]
            moves[i] = (d, n)
            now[i] = (now[i][0] + n * d[0], now[i][1] + n * d[1])
        if len(moves) == len(CUBES):
            break
    jitter = rng.uniform(-JITTER, JITTER, size=(len(CUBES), 2))
    positions = tuple((c[0] * GRID + float(j[0]), c[1] * GRID + float(j[1])) for c, j in zip(cells, jitter))

    subtasks: list[SubTask] = []
    gripper = HOME
    here = list(cells)

    def go(i: int, phase: int) -> None:
        nonlocal gripper
        steps = abs(here[i][0] - gripper[0]) + abs(here[i][1] - gripper[1])
        if steps:
            subtasks.append(SubTask("reach", i, f"reach the {CUBES[i]} cube", steps, phase))
        gripper = here[i]
        subtasks.append(SubTask("grasp", i, f"pick up the {CUBES[i]} cube", 1, phase))

    for i in order:
        go(i, 1)
        (dx, dy), n = moves[i]
        here[i] = (here[i][0] + n * dx, here[i][1] + n * dy)
        gripper = here[i]
        subtasks.append(SubTask("carry", i, f"carry the {CUBES[i]} cube {DIRECTION_WORDS[(dx, dy)]}", n, 1, here[i]))
        subtasks.append(SubTask("release", i, f"put down the {CUBES[i]} cube", 1, 1))
    for i in reversed(order):
        go(i, 2)
        n = moves[i][1]
        here[i] = cells[i]
        gripper = here[i]
        subtasks.append(SubTask("return", i, f"carry the {CUBES[i]} cube back to where it was", n, 2))
        subtasks.append(SubTask("release", i, f"put the {CUBES[i]} cube back", 1, 2))
    return Plan(tuple(cells), positions, order, tuple(moves[i] for i in range(len(CUBES))), tuple(subtasks))


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UserInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class ObjectReturnTask:
    """Move two cubes away, then put them back where they were (Sec. 4.2, Table 2 "Robot Manipulation").

    Implements :class:`~slowfast_vgen.planning.tasks.PlanningTask`. One ``p.DIRECT`` PyBullet client per object;
    use it as a context manager or call :meth:`close`.
    """

    name = "object-return"
    actions: tuple[str, ...] = ACTIONS
    metric_name = "cube distance to original position (m)"

    def __init__(self, resolution: int = 32, chunk_frames: int = 4, substeps: int = 16) -> None:
        import pybullet

        self.resolution = _check_int("resolution", resolution, 8)
        self.chunk_frames = _check_int("chunk_frames", chunk_frames, 1)
        self.substeps = _check_int("substeps", substeps, 4)
        self._p = pybullet
        self._client: int | None = pybullet.connect(pybullet.DIRECT)
        self._plan: Plan | None = None
        fov = math.degrees(2 * math.atan(VIEW_HALF / CAMERA_HEIGHT))
        self._view = pybullet.computeViewMatrix([0, 0, CAMERA_HEIGHT], [0, 0, 0], [0, 1, 0])
        self._projection = pybullet.computeProjectionMatrixFOV(fov, 1.0, 0.5, CAMERA_HEIGHT + 0.5)

    # ----------------------------------------------------------------------------------------- simulator
    def _call(self, fn: str, *args: Any, **kwargs: Any) -> Any:
        if self._client is None:
            raise UserInputError(f"{self.name} task is closed; create a new ObjectReturnTask")
        return getattr(self._p, fn)(*args, physicsClientId=self._client, **kwargs)

    def _build(self, plan: Plan) -> None:
        p = self._p
        self._call("resetSimulation")
        self._call("setGravity", 0, 0, -9.81)
        # erp 0.8: the fixed constraint tracks the gripper within a substep, so a released cube lands where it is put
        self._call("setPhysicsEngineParameter", fixedTimeStep=DT, erp=0.8, deterministicOverlappingPairs=1)
        table_half = [0.6, 0.6, 0.02]
        self._table = self._call(
            "createMultiBody", 0, self._call("createCollisionShape", p.GEOM_BOX, halfExtents=table_half),
            self._call("createVisualShape", p.GEOM_BOX, halfExtents=table_half, rgbaColor=TABLE_RGBA),
            [0, 0, -table_half[2]])
        self._call("changeDynamics", self._table, -1, lateralFriction=FRICTION)
        self._cubes = []
        half = [CUBE_HALF] * 3
        for (x, y), rgba in zip(plan.positions, CUBE_RGBA):
            body = self._call(
                "createMultiBody", CUBE_MASS, self._call("createCollisionShape", p.GEOM_BOX, halfExtents=half),
                self._call("createVisualShape", p.GEOM_BOX, halfExtents=half, rgbaColor=rgba), [x, y, CUBE_HALF])
            self._call("changeDynamics", body, -1, lateralFriction=FRICTION)
            self._cubes.append(body)
        self._cell = HOME
        self._gripper = self._call(
            "createMultiBody", 0, -1,
            self._call("createVisualShape", p.GEOM_BOX, halfExtents=[GRIPPER_HALF, GRIPPER_HALF, 0.004],
                       rgbaColor=GRIPPER_OPEN_RGBA),
            self._gripper_xyz(HOME))
        self._closed = False
        self._held: int | None = None
        self._constraint: int | None = None
        for _ in range(self.substeps):
            self._call("stepSimulation")

    @staticmethod
    def _gripper_xyz(cell: tuple[int, int]) -> list[float]:
        return [cell[0] * GRID, cell[1] * GRID, GRIPPER_Z]

    def _render(self) -> torch.Tensor:
        r = self.resolution
        image = self._call("getCameraImage", r, r, self._view, self._projection, renderer=self._p.ER_TINY_RENDERER)
        rgb = np.asarray(image[2], dtype=np.uint8).reshape(r, r, 4)[:, :, :3]
        return torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32) / 255.0)

    def cube_positions(self) -> list[tuple[float, float]]:
        """Current (x, y) of every cube, in metres (order of ``CUBES``)."""
        return [tuple(float(v) for v in self._call("getBasePositionAndOrientation", b)[0][:2]) for b in self._cubes]

    def _cube_z(self, i: int) -> float:
        return float(self._call("getBasePositionAndOrientation", self._cubes[i])[0][2])

    # ------------------------------------------------------------------------------------------ protocol
    def reset(self, seed: int) -> torch.Tensor:
        """Build the scene of episode ``seed`` from scratch (identical state for the same seed); first frame."""
        seed = _check_int("seed", seed, 0)
        plan = make_plan(seed)
        self._build(plan)
        self._plan, self._seed = plan, seed
        return self._render()

    def _require_reset(self) -> Plan:
        if self._plan is None:
            raise UserInputError(f"{self.name}: call reset(seed) before using the episode")
        return self._plan

    def subgoals(self) -> list[str]:
        """One text per chunk of ``chunk_frames`` steps: the scripted decomposition of the current episode."""
        return [s.text for s in self._require_reset().subtasks for _ in range(self._chunks(s))]

    def _chunks(self, subtask: SubTask) -> int:
        return -(-subtask.steps // self.chunk_frames)

    def step(self, action: str) -> torch.Tensor:
        """Apply one primitive action (``actions``) over ``substeps`` physics steps; return the next frame."""
        if action not in self.actions:
            raise UserInputError(f"unknown action {action!r} for {self.name}; expected one of {list(self.actions)}")
        self._require_reset()
        start = self._gripper_xyz(self._cell)
        if action in MOVES:
            dx, dy = MOVES[action]
            x = min(max(self._cell[0] + dx, -GRIPPER_CELLS), GRIPPER_CELLS)
            y = min(max(self._cell[1] + dy, -GRIPPER_CELLS), GRIPPER_CELLS)
            self._cell = (x, y)
        elif action == "grasp" and not self._closed:
            self._closed = True
            self._call("changeVisualShape", self._gripper, -1, rgbaColor=GRIPPER_CLOSED_RGBA)
            self._attach(start)
        elif action == "release" and self._closed:
            self._closed = False
            self._call("changeVisualShape", self._gripper, -1, rgbaColor=GRIPPER_OPEN_RGBA)
            if self._constraint is not None:
                self._call("removeConstraint", self._constraint)
                self._constraint, self._held = None, None
        end = self._gripper_xyz(self._cell)
        glide = self.substeps - max(2, self.substeps // 3)  # move with a smooth profile, then hold still
        for s in range(self.substeps):
            if end != start:
                u = min(1.0, (s + 1) / glide)
                u = u * u * (3 - 2 * u)
                xyz = [a + (b - a) * u for a, b in zip(start, end)]
                self._call("resetBasePositionAndOrientation", self._gripper, xyz, [0, 0, 0, 1])
            self._call("stepSimulation")
        return self._render()

    def _attach(self, gripper_xyz: list[float]) -> None:
        """Fixed constraint from the gripper to the nearest resting cube within reach, lifting it by ``LIFT``."""
        best, best_d = None, REACH
        for i, (x, y) in enumerate(self.cube_positions()):
            d = math.hypot(x - gripper_xyz[0], y - gripper_xyz[1])
            if d <= best_d and self._cube_z(i) < CUBE_HALF + LIFT:
                best, best_d = i, d
        if best is None:
            return
        x, y = self.cube_positions()[best]
        offset = [x - gripper_xyz[0], y - gripper_xyz[1], CUBE_HALF + LIFT - gripper_xyz[2]]
        self._constraint = self._call("createConstraint", self._gripper, -1, self._cubes[best], -1,
                                      self._p.JOINT_FIXED, [0, 0, 0], offset, [0, 0, 0])
        self._call("changeConstraint", self._constraint, maxForce=200.0)
        self._held = best

    def score(self) -> float:
        """Mean distance (m, table plane) between each cube and its original position (lower is better)."""
        plan = self._require_reset()
        return float(np.mean([math.dist(now, orig) for now, orig in zip(self.cube_positions(), plan.positions)]))

    # ------------------------------------------------------------------------------------------- expert
    def _expert_action(self, subtask: SubTask) -> str:
        """Closed-loop scripted policy for one sub-task (reads the simulator state)."""
        i = subtask.cube
        if subtask.kind == "grasp":
            return "stay" if self._closed else "grasp"
        if subtask.kind == "release":
            return "release" if self._closed else "stay"
        x, y = self.cube_positions()[i]
        here = (round(x / GRID), round(y / GRID))
        if subtask.kind == "reach":
            delta = (here[0] - self._cell[0], here[1] - self._cell[1])
        elif subtask.kind == "carry":
            delta = (subtask.target[0] - here[0], subtask.target[1] - here[1])
        else:  # return: back to the original position (remembered, no longer visible)
            ox, oy = self._require_reset().positions[i]
            delta = (round((ox - x) / GRID), round((oy - y) / GRID))
        if delta[0]:
            return "move right" if delta[0] > 0 else "move left"
        if delta[1]:
            return "move forward" if delta[1] > 0 else "move backward"
        return "stay"

    def record(self, seed: int) -> Episode:
        """The scripted expert's episode ``seed``; leaves the simulator in its final state."""
        frames = [self.reset(seed)]
        plan = self._require_reset()
        steps: list[str] = []
        moved: list[tuple[float, float]] | None = None
        phase1_steps = 0
        for subtask in plan.subtasks:
            if subtask.phase == 2 and moved is None:
                moved, phase1_steps = self.cube_positions(), len(steps)
            for _ in range(self._chunks(subtask) * self.chunk_frames):
                action = self._expert_action(subtask)
                frames.append(self.step(action))
                steps.append(action)
        info = {
            "cubes": list(CUBES), "order": [CUBES[i] for i in plan.order],
            "carries": [[DIRECTION_WORDS[d], n] for d, n in plan.moves],  # per cube: direction, grid steps
            "original_positions": [list(p) for p in plan.positions], "moved_positions": [list(p) for p in moved],
            "final_positions": [list(p) for p in self.cube_positions()], "expert_score": self.score(),
            "phase1_steps": phase1_steps, "phase1_chunks": phase1_steps // self.chunk_frames,
            "resolution": self.resolution, "metric": self.metric_name,
        }
        return Episode(torch.stack(frames), self.subgoals(), steps, seed, first_frames=1, info=info, domain=self.name)

    # ------------------------------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Disconnect the PyBullet client (idempotent)."""
        if self._client is not None:
            try:
                self._p.disconnect(physicsClientId=self._client)
            finally:
                self._client = None

    def __enter__(self) -> ObjectReturnTask:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
