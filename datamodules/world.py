"""Datasets and datamodules of the built-in world (:mod:`slowfast_vgen.simulators.world`): training clips, the
revisit episodes of the benchmark and the slow-fast loop's episodes."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from slowfast_vgen.datamodules.common import MixedLengthCollate, ResumableDataLoader, stable_seed
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.simulators.world import ACTIONS, PALETTE, REVERSE, World, revisit_episode  # noqa: F401 (re-exported)


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
        self.val_set = WorldClipDataset(val_samples, seed=stable_seed("val", seed), **common)
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


class WorldRevisitDataset(Dataset):
    """``num_episodes`` revisit episodes (seeds ``seed``, ``seed + 1``, ...) for ``trainer.predict``."""

    reverse_actions = REVERSE  # the world's actions are reversible: each one's reverse retraces its views

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
        from slowfast_vgen.datamodules.slowfast_data import slow_fast_dataloader

        epoch = self.trainer.current_epoch
        return slow_fast_dataloader(self.trainer.lightning_module, self.episodes_of_epoch(epoch), epoch)
