"""Shard sets streamed through the webdataset pipeline: from ``http(s)://``, ``pipe:`` or any URL webdataset opens,
as well as from local folders (issue 15; guarantees per mode in docs/data-format.md, section 4).

A streamed shard set is the same folder (``manifest.json`` + ``shard-*.tar``) behind a URL: the manifest is read
first (through ``webdataset.gopen``) for the samples' action spans, sizes and checksums, then the tars stream
through ``webdataset``: shards are split by node (``split_by_node``) and by DataLoader worker
(``split_by_worker``), each sample is checked against the manifest (crc32, metadata) and cut into clips by the
same rules as the indexed reader (:class:`~slowfast_vgen.datamodules.shards.read.ClipCutter`), and clips pass a
shuffle buffer (``webdataset.shuffle``). A sample that fails its checks, or a shard that cannot be read, is
counted by key and reason (``bad`` of the dataset in the process that read it) and logged; nothing is
unpickled: members are JSON, video and ``.npy``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import webdataset as wds
from torch.utils.data import IterableDataset

from slowfast_vgen.datamodules.shards.read import ClipCutter, checked_meta, clip_starts
from slowfast_vgen.datamodules.shards.format import MANIFEST, BadSample, load_manifest, parse_manifest, sample_crc
from slowfast_vgen.datamodules.shards.write import FIRST_FRAME_ONLY_DOMAINS
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.seeds import stable_seed

log = logging.getLogger("slowfast_vgen.datamodules")


def is_url(location: Any) -> bool:
    """A shard location that webdataset opens (``scheme://...`` or ``pipe:...``) rather than a local folder."""
    return isinstance(location, str) and ("://" in location or location.startswith("pipe:"))


def read_remote_manifest(base: str) -> dict[str, Any]:
    """``{base}/manifest.json`` through ``webdataset.gopen``, checked as a local manifest is."""
    url = f"{base.rstrip('/')}/{MANIFEST}"
    try:
        with wds.gopen(url, "rb") as stream:
            data = stream.read()
    except (OSError, ValueError) as err:  # gopen raises OSError/IOError for a failed fetch
        raise UserInputError(f"shard set {base!r}: cannot read {url} ({' '.join(str(err).split())[:160]})") from None
    return parse_manifest(data, url, base)


class StreamingShardClipDataset(IterableDataset, ClipCutter):
    """Clips of shard sets at URLs (or local folders), streamed by webdataset; arguments as ``ShardClipDataset``
    plus ``shuffle`` (shards in a per-epoch order and a clip shuffle buffer of ``shuffle_buffer``)."""

    def __init__(self, bases: str | list[str], frames: int = 16, min_context: int = 1, max_context: int = 4,
                 resolution: Any = None, seed: int = 0, shuffle: bool = True, shuffle_buffer: int = 1000,
                 first_frame_only_domains: tuple[str, ...] | list[str] = FIRST_FRAME_ONLY_DOMAINS,
                 decode_video: bool = True) -> None:
        ClipCutter.__init__(self, frames, min_context, max_context, resolution, seed, first_frame_only_domains,
                            decode_video)
        bases = [bases] if isinstance(bases, str) else list(bases)
        if not bases:
            raise UserInputError("no shard location given")
        self.urls: list[str] = []
        self.entries: dict[str, dict[str, Any]] = {}  # key -> manifest sample entry
        for base in bases:
            manifest = read_remote_manifest(base) if is_url(base) else load_manifest(base)
            for shard in manifest["shards"]:
                self.urls.append(f"{base.rstrip('/')}/{shard['name']}")
                self.entries.update({s["key"]: s for s in shard["samples"]})
        self.num_clips = sum(len(clip_starts(e, frames, max_context, self.ffo_domains)) for e in self.entries.values())
        if not self.num_clips:
            raise UserInputError(f"shard set(s) {bases} hold no action spans to train on")
        self.shuffle, self.shuffle_buffer, self.epoch = shuffle, shuffle_buffer, 0
        self.bad: dict[str, str] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _on_error(self, err: Exception) -> bool:  # webdataset handler: count, log, go on
        self.bad[f"shard-stream-error-{len(self.bad)}"] = f"{type(err).__name__}: {err}"[:200]
        log.warning("shard stream: %s: %s (training goes on)", type(err).__name__, str(err)[:200])
        return True

    def _clips(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for raw in samples:
            key = raw.get("__key__", "")
            members = {k: v for k, v in raw.items() if not k.startswith("__")}
            entry = self.entries.get(key)
            try:
                if entry is None:
                    raise BadSample(key, "not in the manifest")
                if sample_crc(members) != entry["crc32"]:
                    raise BadSample(key, "corrupt: crc32 does not match the manifest")
                meta = checked_meta(entry, members)
                for g0, end, j in clip_starts(entry, self.frames, self.max_context, self.ffo_domains):
                    yield self.clip(entry, members, meta, g0, end, j, self.epoch)
            except BadSample as err:
                self.bad[err.key] = err.reason
                log.warning("bad sample skipped: %s: %s (training goes on)", err.key, err.reason)
            except Exception as err:  # noqa: BLE001 - an undecodable video must not stop training
                self.bad[key] = f"undecodable: {type(err).__name__}: {err}"[:200]
                log.warning("bad sample skipped: %s: %s (training goes on)", key, self.bad[key])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        urls = list(self.urls)
        if self.shuffle:  # the same shard order on every node and worker, a new one each epoch
            order = sorted(range(len(urls)), key=lambda k: stable_seed("stream-shards", self.seed, self.epoch, k))
            urls = [urls[k] for k in order]
        stages: list[Any] = [wds.SimpleShardList(urls), wds.split_by_node, wds.split_by_worker,
                             wds.tarfile_to_samples(handler=self._on_error), self._clips]
        if self.shuffle and self.shuffle_buffer > 1:
            stages.append(wds.shuffle(self.shuffle_buffer, seed=stable_seed("stream-clips", self.seed, self.epoch)))
        return iter(wds.DataPipeline(*stages))

