"""Sample-level splitting over ranks and workers, bad-sample reports, exact resume (no Lightning import).

Splitting. The manifest lists every sample, so the split is done on clip indices, not on shard files (a
split over files cannot balance uneven shard counts). :class:`ShardSampler` (a ``DistributedSampler``,
which Lightning leaves in place under DDP) orders all clips for the epoch -- shards in a seeded random order,
then a shuffle buffer over that stream, so each process reads few shards at a time -- gives each rank a
contiguous block whose sizes differ by at most one, and lays the block out as the same number of batches on
every rank (some batches one sample shorter; padding slots are dropped by the collate). DataLoader workers
take whole batches in turn. So every clip of an epoch is read exactly once across ranks and workers, and every
rank runs the same number of steps.

Bad data. A bad sample (truncated shard, flipped bits, missing member, undecodable video, missing metadata key,
actions outside the video) is skipped by the collate and counted; :class:`ShardDataLoader` logs the bad keys
with their reasons at the end of the epoch (``loader.report``), and the first one of an epoch as it is met. In the
rare case that every sample of a batch is bad, the batch is refilled with one readable clip (counted as ``filled``)
so that ranks stay in step; the refill searches the whole set (skipping samples already known bad), so a corrupt
region of any length does not end the epoch. Only an epoch with no readable sample at all stops with
:class:`UserInputError`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from slowfast_vgen.datamodules.common import stable_seed
from slowfast_vgen.datamodules.shards.read import ShardCollate
from slowfast_vgen.errors import UserInputError

log = logging.getLogger("slowfast_vgen.datamodules")


class ShardSampler(DistributedSampler):
    """Yields ``(epoch, clip index)`` for this rank, ``num_batches * batch_size`` slots, ``-1`` for padding."""

    def __init__(self, dataset: Dataset, shard_sizes: list[int], batch_size: int, shuffle: bool = True,
                 seed: int = 0, shuffle_buffer: int = 1000, num_replicas: int | None = None,
                 rank: int | None = None) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None and not distributed:
            num_replicas, rank = 1, 0
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        if batch_size < 1:
            raise UserInputError(f"batch_size must be >= 1, got {batch_size}")
        if sum(shard_sizes) != len(dataset):
            raise ValueError(f"shard sizes sum to {sum(shard_sizes)}, dataset has {len(dataset)} items")
        self.shard_sizes, self.batch_size, self.shuffle_buffer = list(shard_sizes), batch_size, shuffle_buffer

    @property
    def num_batches(self) -> int:
        return math.ceil(math.ceil(len(self.dataset) / self.num_replicas) / self.batch_size)

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def epoch_order(self) -> np.ndarray:
        """All clip indices in this epoch's order (the same on every rank)."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        rng = np.random.default_rng(stable_seed("shard-order", self.seed, self.epoch))
        ends = np.cumsum(self.shard_sizes)
        stream = np.concatenate([np.arange(ends[k] - self.shard_sizes[k], ends[k])
                                 for k in rng.permutation(len(self.shard_sizes))])
        size = min(self.shuffle_buffer, n)
        if size <= 1:
            return stream
        # A shuffle buffer over the shard stream, as a streaming reader would apply it.
        buf, out, draws = list(stream[:size]), np.empty(n, dtype=np.int64), rng.integers(0, size, n - size)
        for t, x in enumerate(stream[size:].tolist()):
            j = draws[t]
            out[t], buf[j] = buf[j], x
        out[n - size :] = rng.permutation(np.array(buf, dtype=np.int64))
        return out

    def rank_slots(self) -> list[int]:
        order = self.epoch_order()
        base, extra = divmod(len(order), self.num_replicas)
        lo = self.rank * base + min(self.rank, extra)
        mine = order[lo : lo + base + (self.rank < extra)].tolist()
        nb, b = self.num_batches, self.batch_size
        q, r = divmod(len(mine), nb)
        slots, pos = [], 0
        for k in range(nb):
            c = q + (k < r)  # c <= batch_size because len(mine) <= nb * batch_size
            slots += mine[pos : pos + c] + [-1] * (b - c)
            pos += c
        return slots

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, i) for i in self.rank_slots()])


class EpochReport:
    """Bad samples of one epoch on one rank: ``bad[key] = [reason, clips]``; ``good`` clips; ``filled`` keys."""

    def __init__(self, epoch: int, rank: int) -> None:
        self.epoch, self.rank, self.good, self.filled = epoch, rank, 0, []
        self.bad: dict[str, list[Any]] = {}

    def add_bad(self, pairs: list[tuple[str, str]]) -> None:
        for key, reason in pairs:
            self.bad.setdefault(key, [reason, 0])[1] += 1

    def by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for reason, _ in self.bad.values():
            kind = reason.split(":")[0]  # reasons read "<kind>: <details>"
            out[kind] = out.get(kind, 0) + 1
        return out

    def summary(self) -> str:
        keys = "; ".join(f"{k}: {r}" for k, (r, _) in sorted(self.bad.items())[:50])
        more = f" (+{len(self.bad) - 50} more)" if len(self.bad) > 50 else ""
        return (f"epoch {self.epoch} rank {self.rank}: {self.good} clips read; skipped {len(self.bad)} bad samples "
                f"({sum(c for _, c in self.bad.values())} clips) {self.by_reason()}: {keys}{more}"
                + (f"; {len(self.filled)} all-bad batches refilled" if self.filled else ""))


class ShardDataLoader(StatefulDataLoader):
    """torchdata's ``StatefulDataLoader`` over a shard dataset with :class:`ShardSampler`: exact mid-epoch resume as
    ``ResumableDataLoader`` (the sampler is fast-forwarded past the batches already trained on), plus the report
    of bad samples and the refill of all-bad batches."""

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, shuffle_buffer: int = 1000,
                 collate_fn: Any = None, **kwargs: Any) -> None:
        sampler = ShardSampler(dataset, dataset.shard_sizes, batch_size, shuffle, seed, shuffle_buffer)
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn or ShardCollate(),
                         **kwargs)
        self._batches = 0
        self._resumed_batches = 0  # batches of this epoch already trained on, from a checkpoint
        self.report: EpochReport | None = None

    def __iter__(self) -> Iterator[Any]:
        epoch = int(self.sampler.epoch)
        self._batches, self._resumed_batches = self._resumed_batches, 0
        report = self.report = EpochReport(epoch, int(self.sampler.rank))
        for batch in super().__iter__():
            self._batches += 1
            pairs = batch.pop("bad_samples", [])
            if pairs and not report.bad:  # the first of the epoch, as it is met: a short run says so too
                log.warning("bad sample skipped: %s: %s (training goes on; every bad key is reported at the end of "
                            "the epoch)", *pairs[0])
            report.add_bad(pairs)
            if batch.pop("__empty__", False):
                batch = self._fill(epoch, report)
            report.good += len(batch["action"]) if isinstance(batch.get("action"), list) else 1
            yield batch
        if report.bad:
            log.warning("bad samples skipped: %s", report.summary())
        if report.good == len(report.filled) and report.bad:
            raise UserInputError(f"no readable sample in the shard set: {report.summary()}")

    def _fill(self, epoch: int, report: EpochReport) -> dict[str, Any]:
        """A batch of one readable clip for a batch whose samples were all bad (keeps ranks in step)."""
        n = len(self.dataset)
        start = stable_seed("fill", epoch, self._batches) % n
        key_of = getattr(self.dataset, "key", None)
        for t in range(n):  # the whole set if need be: a corrupt region may be longer than any fixed window
            i = (start + t) % n
            if key_of is not None and key_of(i) in report.bad:
                continue  # a sample already known bad: its other clips are bad too, do not read it again
            sample = self.dataset[(epoch, i)]
            if "__bad__" in sample:
                report.add_bad([(sample["__bad__"], sample["reason"])])
                continue
            report.filled.append(sample.get("key"))
            batch = self.collate_fn([sample])
            batch.pop("bad_samples", None)
            return batch
        raise UserInputError(f"no readable sample in the shard set: {report.summary()}")

    def state_dict(self) -> dict[str, Any]:
        # the epoch (outside Lightning nobody else restores it) and the batch count (the refill's seeds need it)
        return {**super().state_dict(), "sampler_epoch": int(self.sampler.epoch), "sfvgen_batches": int(self._batches)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.sampler.set_epoch(int(state.pop("sampler_epoch", self.sampler.epoch)))
        self._resumed_batches = int(state.pop("sfvgen_batches", 0))
        super().load_state_dict(state)
