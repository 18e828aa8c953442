"""Data for the planning tasks (paper Sec. 4.2): recorded expert episodes of a task environment.

* :class:`TaskEpisodes`: ``num_episodes`` expert episodes (seeds ``first_seed``, ``first_seed + 1``, ...),
  recorded once and kept in memory (small frames), in the built-in world's episode layout.
* :class:`TaskClipDataModule`: slow learning (Sec. 3.1) on <chunk i, subgoal text, chunk i + 1> clips of those
  episodes, in the batch contract of :mod:`slowfast_vgen.datamodules.common`.
* :class:`TaskLoopDataModule`: the episodes for the slow-fast loop (Alg. 1b; the system's inner loop turns
  them into D_s every epoch).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from slowfast_vgen.datamodules.common import MixedLengthCollate, ResumableDataLoader, stable_seed
from slowfast_vgen.errors import UserInputError


class TaskEpisodes(Dataset):
    """Expert episodes of a registered planning task (``slowfast_vgen.planning.tasks.TASKS``)."""

    def __init__(self, task: str, num_episodes: int, first_seed: int = 0, progress: bool = False,
                 **task_kwargs: Any) -> None:
        from slowfast_vgen.planning.tasks import make_task

        if num_episodes < 1:
            raise UserInputError(f"num_episodes must be >= 1, got {num_episodes}")
        self.task_name, self.first_seed = task, first_seed
        env = make_task(task, **task_kwargs)
        try:
            self.episodes = [env.record(first_seed + i) for i in
                             tqdm(range(num_episodes), desc=f"recording {task}", disable=not progress)]
        finally:
            env.close()

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.episodes[index].as_dict()


class TaskClipDataset(Dataset):
    """Every (episode, chunk i) of recorded episodes as a clip: chunk i (context; the first frame for i = 0),
    then chunk i + 1 generated under subgoal i."""

    def __init__(self, episodes: TaskEpisodes) -> None:
        self.episodes = episodes
        self.index = [(e, i) for e, ep in enumerate(episodes.episodes) for i in range(len(ep.actions))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        e, i = self.index[index]
        ep = self.episodes.episodes[e]
        f, first = ep.chunk_frames, ep.first_frames
        start = 0 if i == 0 else first + (i - 1) * f  # context: the first frame(s), or chunk i - 1
        stop = first + (i + 1) * f
        return {"video": ep.frames[start:stop], "n_context": (first if i == 0 else f), "action": ep.actions[i],
                "seed": stable_seed("task-clip", ep.seed, i), "episode": ep.seed, "chunk": i}


class TaskClipDataModule(L.LightningDataModule):
    """Slow learning on a planning task's expert episodes (train seeds from ``first_seed``; validation on
    ``val_episodes`` further seeds)."""

    def __init__(self, task: str = "world-retrace", num_episodes: int = 64, val_episodes: int = 4,
                 first_seed: int = 0, batch_size: int = 8, task_kwargs: dict[str, Any] | None = None,
                 num_workers: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if not hasattr(self, "train_set"):
            self.train_set = TaskClipDataset(TaskEpisodes(h.task, h.num_episodes, h.first_seed, progress=True,
                                                          **(h.task_kwargs or {})))
            self.val_set = TaskClipDataset(TaskEpisodes(h.task, h.val_episodes, h.first_seed + h.num_episodes,
                                                        **(h.task_kwargs or {})))

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True,
                                   seed=stable_seed("task-train", self.hparams.first_seed),
                                   collate_fn=MixedLengthCollate(), num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, collate_fn=MixedLengthCollate())


class TaskLoopDataModule(L.LightningDataModule):
    """Episodes of a planning task for the slow-fast loop (use ``Trainer(reload_dataloaders_every_n_epochs=1)``)."""

    def __init__(self, task: str = "world-retrace", num_episodes: int = 16, first_seed: int = 0,
                 task_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if not hasattr(self, "episodes"):
            self.episodes = TaskEpisodes(h.task, h.num_episodes, h.first_seed, progress=True, **(h.task_kwargs or {}))

    def train_dataloader(self) -> DataLoader:
        from slowfast_vgen.datamodules.slowfast_data import slow_fast_dataloader

        return slow_fast_dataloader(self.trainer.lightning_module, self.episodes, self.trainer.current_epoch)

