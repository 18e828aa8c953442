"""Resumable writing of a whole shard set: episodes -> segments -> samples -> shards, manifest after each shard.

Used by ``sfvgen data build``, the ViZDoom recorder and the latent cache. An episode is cut into segments of
``segment_frames`` frames; each segment after the first also stores the last ``overlap`` frames of the
previous one (context only), so that a chunk pair can be cut from one sample. Resuming: samples of closed
shards (listed in the manifest) are skipped; an episode whose samples are all there is not decoded again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from slowfast_vgen.datamodules.shards.format import (
    MANIFEST,
    ShardWriter,
    check_key,
    load_manifest,
    meta_problem,
    new_manifest,
    sample_summary,
    write_manifest,
)
from slowfast_vgen.datamodules.shards.videoio import encode_video, json_bytes, resize_uint8
from slowfast_vgen.errors import UserInputError

FIRST_FRAME_ONLY_DOMAINS = ("robot",)  # paper Sec. 3.1.2: f_p = 1 for robot datasets


class StopWriting(Exception):
    """Raised inside a writer after ``limit_shards`` shards; the set is left partial and resumable."""


def segment_key(episode: str, segment: int) -> str:
    return f"{episode}--s{segment:05d}"


def clip_actions(actions: list[tuple[int, int, str]], start: int, stop: int) -> list[list[Any]]:
    """Episode-frame spans ``[a, b)`` clipped to ``[start, stop)`` and shifted to segment frames."""
    out = []
    for a, b, text in actions:
        lo, hi = max(a, start), min(b, stop)
        if lo < hi:
            out.append([lo - start, hi - start, text])
    return out


class ShardSetWriter:
    """Write episodes into a shard set at ``root``; resumes a partial set written with the same options."""

    def __init__(self, root: str | Path, kind: str, options: dict[str, Any], video: str = "mp4", crf: int = 18,
                 gop: int = 16, segment_frames: int = 256, overlap: int = 16, shard_bytes: int = 256 << 20,
                 limit_shards: int | None = None, size: tuple[int, int] | int | None = None,
                 overwrite: bool = False, pix_fmt: str = "yuv420p", reverse_actions: dict[str, str] | None = None) -> None:
        if segment_frames < 2 or not 0 <= overlap < segment_frames:
            raise UserInputError(f"need segment_frames >= 2 and 0 <= overlap < segment_frames, got "
                                 f"{segment_frames} and {overlap}")
        self.root = Path(root)
        self.video, self.crf, self.gop, self.size, self.pix_fmt = video, crf, gop, size, pix_fmt
        self.segment_frames, self.overlap, self.limit_shards = segment_frames, overlap, limit_shards
        options = {**options, "video": video, "crf": crf, "gop": gop, "pix_fmt": pix_fmt,
                   "segment_frames": segment_frames, "overlap": overlap,
                   "size": list(size) if isinstance(size, tuple) else size}
        self.already_complete = False
        if (self.root / MANIFEST).exists() and overwrite:
            for path in list(self.root.glob("*.tar")) + list(self.root.glob("*.tar.tmp")) + [self.root / MANIFEST]:
                path.unlink()
        if (self.root / MANIFEST).exists():
            self.manifest = load_manifest(self.root, require_complete=False)
            if self.manifest.get("kind") != kind or self.manifest.get("options") != options:
                raise UserInputError(
                    f"{self.root} holds a shard set written with other options ({self.manifest.get('options')}); "
                    "use the same options to resume, another output directory, or --overwrite")
            self.already_complete = bool(self.manifest.get("complete"))
        else:
            if self.root.exists() and any(self.root.glob("*.tar")):
                raise UserInputError(f"{self.root} holds .tar files but no {MANIFEST}; choose an empty directory")
            self.manifest = new_manifest(kind, options)
        if reverse_actions:  # declared with the data: the reverse of each action (Temp-LoRA's turn-back clips)
            self.manifest["reverse_actions"] = dict(reverse_actions)
        # A stop can leave an unfinished .tmp shard, or a renamed shard the manifest does not list yet: redo both.
        listed = {s["name"] for s in self.manifest["shards"]}
        if self.root.exists():
            stale = [p for p in self.root.glob("*.tar") if p.name not in listed]
            for path in list(self.root.glob("*.tar.tmp")) + stale:
                path.unlink()
        self.done_keys = {s["key"] for shard in self.manifest["shards"] for s in shard["samples"]}
        self.resumed_samples = len(self.done_keys)
        self._pending_episodes: dict[str, dict[str, Any]] = {}
        self.shards_this_run = 0
        self.samples_this_run = 0
        self.writer = ShardWriter(self.root, max_bytes=shard_bytes, first_index=len(self.manifest["shards"]),
                                  on_shard=self._on_shard)

    def _on_shard(self, entry: dict[str, Any]) -> None:
        self.manifest["shards"].append(entry)
        self.manifest["episodes"].update(self._pending_episodes)
        self._pending_episodes = {}
        write_manifest(self.root, self.manifest)
        self.shards_this_run += 1
        if self.limit_shards is not None and self.shards_this_run >= self.limit_shards:
            raise StopWriting

    def episode_done(self, episode: str) -> bool:
        info = self.manifest["episodes"].get(episode)
        return info is not None and all(segment_key(episode, k) in self.done_keys for k in range(info["segments"]))

    def write_episode(
        self,
        episode: str,
        frames: Iterable[np.ndarray],
        fps: float,
        actions: list[tuple[int, int, str]],
        domain: str,
        first_frame_only: bool = False,
        gt: Callable[[int, int], dict[str, Any]] | None = None,
        source: dict[str, Any] | None = None,
    ) -> dict[str, int]:
        """Cut ``frames`` (uint8 ``(H, W, 3)`` each) into segments and write them.

        ``actions`` are ``(start_frame, end_frame, text)`` in episode frames; ``gt(start, stop)`` returns the
        ground truth of episode frames ``[start, stop)`` for the segment's metadata. Returns counts.
        """
        check_key(episode + "--s00000")
        seg, buf, start = 0, [], 0  # buf holds episode frames [start, start + len(buf))
        for frame in frames:
            buf.append(frame)
            own_end = (seg + 1) * self.segment_frames
            if start + len(buf) == own_end:
                self._write_segment(episode, seg, start, buf, fps, actions, domain, first_frame_only, gt, source)
                keep = min(self.overlap, len(buf))
                start, buf, seg = own_end - keep, buf[len(buf) - keep :], seg + 1
        total = start + len(buf)
        if total > seg * self.segment_frames or seg == 0:
            if total == 0:
                raise UserInputError(f"episode {episode}: the video has no frames")
            self._write_segment(episode, seg, start, buf, fps, actions, domain, first_frame_only, gt, source)
            seg += 1
        dropped = sum(1 for a, _, _ in actions if a >= total)
        clipped = sum(1 for a, b, _ in actions if a < total < b)
        self._pending_episodes[episode] = {"segments": seg, "frames": total}
        return {"segments": seg, "frames": total, "dropped_actions": dropped, "clipped_actions": clipped}

    def _write_segment(self, episode, seg, start, buf, fps, actions, domain, first_frame_only, gt, source) -> None:
        key = segment_key(episode, seg)
        if key in self.done_keys:
            return
        overlap = 0 if seg == 0 else seg * self.segment_frames - start
        arr = resize_uint8(np.stack(buf), self.size)  # (T, H, W, 3)
        if self.video == "mp4" and self.pix_fmt == "yuv420p":
            arr = arr[:, : arr.shape[1] // 2 * 2, : arr.shape[2] // 2 * 2]  # yuv420p needs even sides
        ext, data, desc = encode_video(arr, fps, self.video, crf=self.crf, gop=self.gop, pix_fmt=self.pix_fmt)
        meta = {
            "key": key, "episode": episode, "segment": seg, "start_frame": start, "overlap": overlap,
            "frames": len(arr), "height": int(arr.shape[1]), "width": int(arr.shape[2]), "fps": float(fps),
            "domain": domain, "first_frame_only": bool(first_frame_only),
            "actions": clip_actions(actions, start, start + len(arr)), "video": desc,
        }
        if source:
            meta["source"] = source
        if gt is not None:
            meta["gt"] = gt(start, start + len(arr))
        problem = meta_problem(meta)
        assert problem is None, problem
        self.writer.write(key, {"json": json_bytes(meta), ext: data}, sample_summary(meta))
        self.samples_this_run += 1

    def write_sample(self, meta: dict[str, Any], members: dict[str, bytes]) -> None:
        """Write one prepared sample (``members`` without ``json``; used by the latent cache)."""
        if meta["key"] in self.done_keys:
            return
        self.writer.write(meta["key"], {"json": json_bytes(meta), **members}, sample_summary(meta))
        self.samples_this_run += 1

    def finish(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Close the last shard and mark the set complete."""
        self.limit_shards = None
        self.writer.close()
        self.manifest["episodes"].update(self._pending_episodes)
        self._pending_episodes = {}
        if extra:
            self.manifest.update(extra)
        self.manifest["complete"] = True
        write_manifest(self.root, self.manifest)
        return self.manifest

    def abort(self) -> None:
        """Stop now: drop the unfinished shard; closed shards stay listed (resumable)."""
        self.writer.abort()
        if self.manifest["shards"] or os.path.exists(self.root / MANIFEST):
            write_manifest(self.root, self.manifest)
