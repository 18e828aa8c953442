"""D_s, the slow-fast loop's dataset (Algorithm 1b, l.8): records (X_i, X_{i+1}, action, Theta_i) that the inner loop
wrote to safetensors files, their batches, and the resumable loader the loop datamodules hand to the outer loop.

The records are made by :meth:`slowfast_vgen.systems.SlowFastLoopSystem.build_slow_dataset`; this module only reads
them (data, never code), so that the datamodules need not import the systems."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from slowfast_vgen.datamodules.common import ResumableDataLoader


class SlowDataset(Dataset):
    """D_s on disk: records (episode file, chunk i) -> X_i, X_{i+1}, action, Theta_i."""

    def __init__(self, records: list[tuple[str, int]]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from safetensors import safe_open

        path, i = self.records[index]
        meta = json.loads(Path(path).with_suffix(".json").read_text())
        with safe_open(path, "pt") as f:  # data only; reads this record's tensors, not the whole episode's
            prefix = f"theta.{i}."
            theta = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
            x, y = f.get_tensor(f"x.{i}"), f.get_tensor(f"x.{i + 1}")
        return {"x": x, "y": y, "action": meta["actions"][i], "theta": theta, "seed": int(meta["seed"]) * 1000 + i}


def collate_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Records of D_s -> a batch: x, y stacked (B, C, F, h, w); actions, seeds and Theta_i as lists.

    X_0 (the episode's first frame) is shorter than later chunks: contexts are cut to the shortest one in
    the batch by dropping their oldest frames (the convention of ``MixedLengthCollate``); targets of recorded
    episodes (chunks end with their action) are cut to the shortest by keeping their first frames."""
    n = min(r["x"].shape[1] for r in records)
    m = min(r["y"].shape[1] for r in records)
    return {"x": torch.stack([r["x"][:, r["x"].shape[1] - n :] for r in records]),
            "y": torch.stack([r["y"][:, :m] for r in records]),
            "action": [r["action"] for r in records], "seed": [r["seed"] for r in records],
            "theta": [r["theta"] for r in records]}


def slow_fast_dataloader(system: Any, episodes: Dataset, epoch: int, num_workers: int = 0) -> DataLoader:
    """D_s of this epoch (``system.build_slow_dataset``: the inner loop of a
    :class:`slowfast_vgen.systems.SlowFastLoopSystem`), shuffled, ``records_per_batch`` records per batch; its position is saved in
    checkpoints, so a loop stopped mid-epoch resumes exactly (same batches, same order)."""
    data = system.build_slow_dataset(episodes, epoch)
    if system.hparams.records_repeat > 1:
        data = SlowDataset(data.records * system.hparams.records_repeat)
    loader = ResumableDataLoader(data, batch_size=system.hparams.records_per_batch, shuffle=True, seed=0,
                                 num_workers=num_workers, collate_fn=collate_records)
    loader.sampler.set_epoch(epoch)
    return loader
