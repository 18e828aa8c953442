"""The built-in action-driven world: a procedural scrolling map seen through a small camera window.

Nothing to download, exact revisits, ground truth for every frame. Each world is a torus-shaped map of
coloured blocks fixed by a seed; the camera moves ``speed`` pixels per frame under text actions
("go left", "go right", "go up", "go down", "stay"). Places outside the current view are not in the
context window, so a model without memory must invent them again when it comes back: the setting that
Temp-LoRA's episodic memory addresses (paper Sec. 3.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from slowfast_vgen.datamodules.common import MixedLengthCollate, ResumableDataLoader, stable_seed
from slowfast_vgen.errors import UserInputError

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


class WorldClipDataset(Dataset):
    """Chunk pairs <past frames, action, next frames> from random worlds; sample ``i`` is fixed by (seed, i).

    The ``n_context`` past frames were produced by a previous action, the rest by ``action``.
    """

    def __init__(
        self,
        num_samples: int = 1024,
        seed: int = 0,
        frames: int = 8,
        min_context: int = 1,
        max_context: int = 4,
        num_worlds: int = 100_000,
        cells: int = 8,
        cell_size: int = 8,
        view_size: int = 16,
        speed: int = 2,
    ) -> None:
        if not 1 <= min_context <= max_context < frames:
            raise UserInputError(
                f"need 1 <= min_context ({min_context}) <= max_context ({max_context}) < frames ({frames})"
            )
        self.num_samples, self.seed, self.frames = num_samples, seed, frames
        self.min_context, self.max_context, self.num_worlds = min_context, max_context, num_worlds
        self.world_kwargs = dict(cells=cells, cell_size=cell_size, view_size=view_size)
        self.speed = speed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        seed = stable_seed("world-clip", self.seed, index)
        rng = np.random.default_rng(seed)
        world = World(seed=int(rng.integers(self.num_worlds)), **self.world_kwargs)
        x, y = (int(v) for v in rng.integers(0, world.size, size=2))
        names = list(ACTIONS)
        prev, action = names[rng.integers(len(names))], names[rng.integers(len(names))]
        n_context = int(rng.integers(self.min_context, self.max_context + 1))
        acts = [prev] * n_context + [action] * (self.frames - n_context)
        frames, _ = world.rollout(x, y, acts, self.speed)
        return {"video": torch.from_numpy(frames), "action": action, "n_context": n_context, "seed": seed}


class WorldDataModule(L.LightningDataModule):
    """The built-in world as a LightningDataModule (train/val/test splits use disjoint seeds)."""

    def __init__(
        self,
        batch_size: int = 4,
        num_workers: int = 0,
        train_samples: int = 4096,
        val_samples: int = 64,
        seed: int = 0,
        frames: int = 8,
        min_frames: int | None = None,
        min_context: int = 1,
        max_context: int = 4,
        cells: int = 8,
        cell_size: int = 8,
        view_size: int = 16,
        speed: int = 2,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        common = dict(
            frames=frames, min_context=min_context, max_context=max_context, cells=cells,
            cell_size=cell_size, view_size=view_size, speed=speed,
        )
        self.train_set = WorldClipDataset(train_samples, seed=seed, **common)
        self.val_set = WorldClipDataset(val_samples, seed=seed + 1_000_003, **common)
        self.collate = MixedLengthCollate(min_frames=min_frames, max_frames=frames)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return ResumableDataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            seed=self.hparams.seed,
            num_workers=self.hparams.num_workers,
            collate_fn=self.collate,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)


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
    }


class WorldRevisitDataset(Dataset):
    """``num_episodes`` revisit episodes (seeds ``seed``, ``seed + 1``, ...) for ``trainer.predict``."""

    def __init__(self, num_episodes: int = 4, seed: int = 10_000, **episode_kwargs) -> None:
        self.num_episodes, self.seed, self.episode_kwargs = num_episodes, seed, episode_kwargs

    def __len__(self) -> int:
        return self.num_episodes

    def __getitem__(self, index: int) -> dict:
        return revisit_episode(self.seed + index, **self.episode_kwargs)


def collate_episode(samples: list[dict]) -> dict:
    """Episodes are generated one at a time (Temp-LoRA memory is per episode): batch size 1."""
    if len(samples) != 1:
        raise UserInputError(f"episodes are generated one at a time; got a batch of {len(samples)}")
    (s,) = samples
    return {**s, "first": s["first"][None], "frames": s["frames"][None]}  # (1, T, C, H, W)


class WorldLoopDataModule(L.LightningDataModule):
    """Episodes of the built-in world for the slow-fast loop (Alg. 1b): each epoch, the system's inner loop
    turns them into D_s (use ``Trainer(reload_dataloaders_every_n_epochs=1)``).

    ``fresh_episodes``: epoch ``e`` gets episodes ``first_episode_seed + e * num_episodes`` onwards, so that Phi
    cannot store a fixed set of worlds in its own weights and must read them from Theta (the revisit benchmark
    uses seeds from 10,000; keep ``first_episode_seed`` clear of them)."""

    def __init__(self, num_episodes: int = 8, first_episode_seed: int = 20_000, chunk_frames: int = 4, chunks_out: int = 3,
                 cells: int = 8, cell_size: int = 8, view_size: int = 16, speed: int = 2,
                 fresh_episodes: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.episodes = self.episodes_of_epoch(0)

    def episodes_of_epoch(self, epoch: int) -> WorldRevisitDataset:
        h = self.hparams
        first = h.first_episode_seed + (epoch * h.num_episodes if h.fresh_episodes else 0)
        return WorldRevisitDataset(h.num_episodes, seed=first, chunk_frames=h.chunk_frames, chunks_out=h.chunks_out,
                                   cells=h.cells, cell_size=h.cell_size, view_size=h.view_size, speed=h.speed)

    def train_dataloader(self) -> DataLoader:
        from slowfast_vgen.systems.slowfast import slow_fast_dataloader

        epoch = self.trainer.current_epoch
        return slow_fast_dataloader(self.trainer.lightning_module, self.episodes_of_epoch(epoch), epoch)
