"""The LightningDataModule that trains from shard sets, on one process or many (DDP), exactly once per epoch.

Shard locations that are URLs (``http(s)://...``, ``pipe:...``) stream through the webdataset pipeline
(:mod:`slowfast_vgen.datamodules.shards.stream`); local folders use the indexed reader, which keeps the guarantees
of docs/data-format.md (exactly once across ranks and workers, exact mid-epoch resume).

See :mod:`slowfast_vgen.datamodules.shards.loader` for how clips are split across ranks and workers and how bad
samples are reported, and :mod:`slowfast_vgen.datamodules.shards.read` for how clips are cut from episodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset

from slowfast_vgen.datamodules.common import MixedLengthCollate
from slowfast_vgen.datamodules.shards.read import (
    ShardClipDataset,
    ShardCollate,
    ShardEpisodeDataset,
)
from slowfast_vgen.datamodules.shards.loader import EpochReport, ShardDataLoader, ShardSampler
from slowfast_vgen.datamodules.shards.stream import StreamingShardClipDataset, is_url
from slowfast_vgen.datamodules.shards.write import FIRST_FRAME_ONLY_DOMAINS
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.seeds import stable_seed

__all__ = ["EpochReport", "ShardDataLoader", "ShardDataModule", "ShardSampler", "probe"]


def _first(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return samples[0]


def _roots(shards: str | Path | list[str | Path] | None) -> list[Path]:
    if shards is None:
        return []
    return [Path(shards)] if isinstance(shards, (str, Path)) else [Path(s) for s in shards]


class ShardDataModule(L.LightningDataModule):
    """Train/val clips from shard sets (``sfvgen data build`` / ``record``), optionally from cached latents.

    ``latent_cache``: a directory; ``prepare_data`` encodes every segment once with the frozen ``autoencoder``
    (at ``resolution``) into a shard set there, and training reads latents instead of decoding video (the
    ``video`` of a sample is then an empty ``(T, 3, 0, 0)`` placeholder unless ``decode_video=True``).
    """

    def __init__(
        self,
        train_shards: str | list[str],
        val_shards: str | list[str] | None = None,
        batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
        frames: int = 16,
        min_frames: int | None = None,
        min_context: int = 1,
        max_context: int = 4,
        resolution: int | tuple[int, int] | str | None = None,
        shuffle_buffer: int = 1000,
        first_frame_only_domains: tuple[str, ...] | list[str] = FIRST_FRAME_ONLY_DOMAINS,
        latent_cache: str | None = None,
        autoencoder: Any = None,
        latent_dtype: str = "float16",
        decode_video: bool | None = None,
        probe_samples: int = 8,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["autoencoder"])
        self.autoencoder = autoencoder
        self.collate = ShardCollate(MixedLengthCollate(min_frames=min_frames, max_frames=frames))
        self.train_set: ShardClipDataset | None = None
        self.val_set: ShardClipDataset | None = None
        self._train_loader: ShardDataLoader | None = None

    def set_autoencoder(self, autoencoder: Any) -> None:
        """Give the frozen autoencoder used for the latent cache (e.g. from the system's ``setup``)."""
        self.autoencoder = autoencoder

    def _split_roots(self, split: str) -> list[Path]:
        roots = _roots(self.hparams.train_shards if split == "train" else self.hparams.val_shards)
        if not self.hparams.latent_cache:
            return roots
        from slowfast_vgen.datamodules.shards.latent_cache import cache_dir

        if self.autoencoder is None:
            raise UserInputError("latent_cache is set but no autoencoder was given (ShardDataModule(autoencoder=...) "
                                 "or set_autoencoder())")
        return [cache_dir(self.hparams.latent_cache, r, self.autoencoder, self.hparams.resolution,
                          self.hparams.latent_dtype) for r in roots]

    def prepare_data(self) -> None:
        if not self.hparams.latent_cache:
            return
        from slowfast_vgen.datamodules.shards.latent_cache import cache_latents

        for split in ("train", "val"):
            for root in _roots(self.hparams.train_shards if split == "train" else self.hparams.val_shards):
                cache_latents(root, self.hparams.latent_cache, self.autoencoder, self.hparams.resolution,
                              self.hparams.latent_dtype)

    def _streaming(self, split: str) -> bool:
        locations = self.hparams.train_shards if split == "train" else self.hparams.val_shards
        locations = [locations] if isinstance(locations, str) else list(locations or [])
        if any(is_url(x) for x in locations):
            if self.hparams.latent_cache:
                raise UserInputError("latent_cache works on local shard folders; streamed shards (URLs) decode video")
            return True
        return False

    def _dataset(self, split: str) -> ShardClipDataset:
        h = self.hparams
        decode = h.decode_video if h.decode_video is not None else not h.latent_cache
        seed = h.seed if split == "train" else stable_seed("val", h.seed)
        if self._streaming(split):  # URLs: the webdataset pipeline (docs/data-format.md: what holds in this mode)
            locations = h.train_shards if split == "train" else h.val_shards
            return StreamingShardClipDataset(locations, frames=h.frames, min_context=h.min_context,
                                             max_context=h.max_context, resolution=h.resolution,
                                             seed=seed,
                                             shuffle=split == "train", shuffle_buffer=h.shuffle_buffer,
                                             first_frame_only_domains=h.first_frame_only_domains, decode_video=decode)
        ds = ShardClipDataset(self._split_roots(split), frames=h.frames, min_context=h.min_context,
                              max_context=h.max_context, resolution=h.resolution,
                              seed=seed,
                              first_frame_only_domains=h.first_frame_only_domains, decode_video=decode)
        probe(ds, h.probe_samples)
        return ds

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = self._dataset("train")
        if self.val_set is None and self.hparams.val_shards is not None:
            self.val_set = self._dataset("val")

    def _loader(self, dataset: Dataset, shuffle: bool, batch_size: int | None = None,
                collate: Any = None) -> ShardDataLoader:
        h = self.hparams
        if isinstance(dataset, StreamingShardClipDataset):
            return StreamingShardLoader(dataset, batch_size=batch_size or h.batch_size, collate_fn=collate or self.collate,
                                        num_workers=h.num_workers)
        return ShardDataLoader(dataset, batch_size=batch_size or h.batch_size, shuffle=shuffle, seed=h.seed,
                               shuffle_buffer=h.shuffle_buffer, collate_fn=collate or self.collate,
                               num_workers=h.num_workers, persistent_workers=h.num_workers > 0)

    def train_dataloader(self) -> ShardDataLoader:
        if self.train_set is None:
            self.setup("fit")
        self._train_loader = self._loader(self.train_set, shuffle=True)
        return self._train_loader

    def val_dataloader(self) -> ShardDataLoader | list:
        if self.hparams.val_shards is None:
            return []
        self.setup("validate")
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> ShardDataLoader | list:
        return self.val_dataloader()

    def episode_dataloader(self, split: str = "train", shuffle: bool = True) -> ShardDataLoader:
        """Whole episodes, one per batch (a dict, not batched), split across ranks/workers (paper Alg. 1b)."""
        roots = _roots(self.hparams.train_shards if split == "train" else self.hparams.val_shards)
        return self._loader(ShardEpisodeDataset(roots, self.hparams.resolution), shuffle, batch_size=1,
                            collate=ShardCollate(_first))

    @property
    def bad_samples(self) -> dict[str, list[Any]]:
        """``{key: [reason, clips]}`` of the last (or current) training epoch on this rank."""
        if isinstance(self._train_loader, StreamingShardLoader):  # seen by this process (all of them: 0 workers)
            return {k: [reason, None] for k, reason in self._train_loader.dataset.bad.items()}
        report = self._train_loader.report if self._train_loader is not None else None
        return dict(report.bad) if report is not None else {}


class StreamingShardLoader(DataLoader):
    """A DataLoader over a :class:`StreamingShardClipDataset`: each iteration is the next epoch (a new shard order
    and shuffle), set in the main process before the workers start. Batches drop bad samples as the indexed
    loader's do (``ShardCollate``). Not resumable mid-epoch: a resumed run starts its epoch again."""

    def __init__(self, dataset: StreamingShardClipDataset, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self._epoch = 0

    def __iter__(self) -> Any:
        self.dataset.set_epoch(self._epoch)
        self._epoch += 1
        for batch in super().__iter__():
            batch.pop("bad_samples", None)  # counted by the dataset
            if batch.pop("__empty__", False):
                continue
            yield batch


def probe(dataset: ShardClipDataset, samples: int = 8) -> None:
    """Stop early on an unreadable set: load the first clip of ``samples`` samples spread over the set, and if
    none loads, of every other sample until one does; raises UserInputError when no sample is readable."""
    if samples <= 0:
        return
    firsts = np.unique(dataset.items[:, 0], return_index=True)[1]  # first clip of each sample
    spread = firsts[np.linspace(0, len(firsts) - 1, min(samples, len(firsts))).round().astype(int)]
    reasons = []
    for i in list(dict.fromkeys(spread.tolist() + firsts.tolist())):
        out = dataset[int(i)]
        if "__bad__" not in out:
            return
        reasons.append(f"{out['__bad__']}: {out['reason']}")
    roots = ", ".join(str(r) for r in dataset.sets.roots)
    raise UserInputError(f"no readable sample in shard set {roots} ({len(reasons)} samples tried): "
                         f"{'; '.join(reasons[:3])}")
