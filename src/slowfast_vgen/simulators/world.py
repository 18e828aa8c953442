"""The built-in action-driven world: a procedural scrolling map seen through a small camera window.

Nothing to download, exact revisits, ground truth for every frame. Each world is a torus-shaped map of
coloured blocks fixed by a seed; the camera moves ``speed`` pixels per frame under text actions
("go left", "go right", "go up", "go down", "stay"). Places outside the current view are not in the
context window, so a model without memory must invent them again when it comes back: the setting that
Temp-LoRA's episodic memory addresses (paper Sec. 3.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from slowfast_vgen.errors import UserInputError
from slowfast_vgen.seeds import stable_seed

ACTIONS: dict[str, tuple[int, int]] = {
    "go left": (-1, 0),
    "go right": (1, 0),
    "go up": (0, -1),
    "go down": (0, 1),
    "stay": (0, 0),
}


REVERSE = {"go left": "go right", "go right": "go left", "go up": "go down", "go down": "go up", "stay": "stay"}


# Eight well separated colours (RGB in [0, 1]).
PALETTE = np.array(
    [
        [0.90, 0.20, 0.20], [0.20, 0.70, 0.25], [0.20, 0.35, 0.90], [0.95, 0.85, 0.20],
        [0.85, 0.40, 0.85], [0.20, 0.80, 0.85], [0.95, 0.55, 0.15], [0.15, 0.15, 0.20],
    ],
    dtype=np.float32,
)


@dataclass
class World:
    """One procedural map; ``render`` returns the camera view at a position (wrapping around)."""

    seed: int
    cells: int = 8
    cell_size: int = 8
    view_size: int = 16

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        grid = rng.integers(0, len(PALETTE), size=(self.cells, self.cells))
        big = np.repeat(np.repeat(grid, self.cell_size, 0), self.cell_size, 1)  # (M, M) colour indices
        self.map = PALETTE[big].transpose(2, 0, 1).copy()  # (3, M, M)
        self.size = self.cells * self.cell_size

    def render(self, x: int, y: int) -> np.ndarray:
        rows = (y + np.arange(self.view_size)) % self.size
        cols = (x + np.arange(self.view_size)) % self.size
        return self.map[:, rows][:, :, cols]  # (3, V, V)

    def rollout(self, x: int, y: int, actions: list[str], speed: int) -> tuple[np.ndarray, np.ndarray]:
        """Apply one action per frame from (x, y); returns frames (T, 3, V, V) and positions (T, 2)."""
        frames, positions = [], []
        for a in actions:
            if a not in ACTIONS:
                raise UserInputError(f"unknown action {a!r}; expected one of {sorted(ACTIONS)}")
            dx, dy = ACTIONS[a]
            x, y = (x + dx * speed) % self.size, (y + dy * speed) % self.size
            frames.append(self.render(x, y))
            positions.append((x, y))
        return np.stack(frames), np.array(positions)


def revisit_episode(
    seed: int,
    chunk_frames: int = 4,
    chunks_out: int = 3,
    cells: int = 8,
    cell_size: int = 8,
    view_size: int = 16,
    speed: int = 2,
    min_gap: int = 8,
) -> dict:
    """An episode that leaves its start and comes back along the same path (the revisit benchmark).

    Returns the first frame ``first`` (1, C, V, V), the chunk-level ``actions`` (``chunks_out`` times a move,
    then as many times its reverse), the real frames ``frames`` (T, C, V, V) including the first one,
    ``positions`` (T, 2) on a torus of side ``world_size``, and ``revisits``: groups (first visit, [later
    visits]) of frame indices at the same position, at least ``min_gap`` frames apart (beyond the context
    window, so memory is needed).
    """
    rng = np.random.default_rng(stable_seed("revisit", seed))
    world = World(seed=int(rng.integers(1 << 31)), cells=cells, cell_size=cell_size, view_size=view_size)
    x, y = (int(v) for v in rng.integers(0, world.size, size=2))
    move = ["go left", "go right", "go up", "go down"][int(rng.integers(4))]
    actions = [move] * chunks_out + [REVERSE[move]] * chunks_out
    frames, positions = world.rollout(x, y, [a for a in actions for _ in range(chunk_frames)], speed)
    frames = np.concatenate([world.render(x, y)[None], frames])
    positions = np.concatenate([[[x, y]], positions])
    groups: dict[int, list[int]] = {}
    for j, pos in enumerate(positions.tolist()):
        i = next(k for k, p in enumerate(positions.tolist()) if p == pos)
        if j - i >= min_gap:
            groups.setdefault(i, []).append(j)
    return {
        "first": torch.from_numpy(frames[:1]),
        "actions": actions,
        "frames": torch.from_numpy(frames),
        "positions": torch.from_numpy(positions),
        "revisits": sorted(groups.items()),
        "seed": seed,
        "world_size": world.size,
        "domain": "world",
    }
