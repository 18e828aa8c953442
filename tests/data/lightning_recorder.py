"""A LightningModule that records which clips each rank trains on (imported only by the Lightning DDP test)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch


class RecordingModule(L.LightningModule):
    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.items: list[int] = []

    def training_step(self, batch, _):
        self.items += [int(i) for i in batch["item"]]
        return (self.w * batch["video"].mean()).sum() + self.w.square().sum()

    def on_train_epoch_end(self) -> None:
        Path(self.out_dir, f"rank{self.global_rank}-epoch{self.current_epoch}.json").write_text(json.dumps(self.items))
        self.items = []

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
