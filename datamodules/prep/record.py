"""``sfvgen data record``: ViZDoom revisit episodes (:mod:`slowfast_vgen.simulators.vizdoom`) written as a shard set
with per-frame poses and the exact revisits in each sample's ground truth."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from slowfast_vgen.datamodules.shards.write import ShardSetWriter, StopWriting
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.seeds import stable_seed
from slowfast_vgen.simulators.vizdoom import (  # noqa: F401 (re-exported)
    ACTIONS, POLICIES, REVERSE, TURN_STEP, DoomRecorder, plan_leave,
)


def action_spans(labels: list[str | None]) -> list[tuple[int, int, str]]:
    """Per-frame action labels (frame t: the action that produced it; None: none) -> ``(start, stop, text)`` spans
    of consecutive frames under one action, as :meth:`ShardSetWriter.write_episode` takes them."""
    spans: list[tuple[int, int, str]] = []
    for t, text in enumerate(labels):
        if text is None:
            continue
        if spans and spans[-1][2] == text and spans[-1][1] == t:
            spans[-1] = (spans[-1][0], t + 1, text)
        else:
            spans.append((t, t + 1, text))
    return spans


def write_episodes(writer: ShardSetWriter, names: list[str], record: Callable[[int, str], None],
                   progress: bool = True) -> dict[str, Any]:
    """Call ``record(i, name)`` (which writes episode ``name`` with ``writer``) for each episode not written yet,
    then finish the set; returns the manifest. ``--limit-shards`` or an error leave a resumable partial set."""
    from tqdm import tqdm

    try:
        for i, name in enumerate(tqdm(names, unit="episode", disable=not progress, file=sys.stderr,
                                      dynamic_ncols=True)):
            if not writer.episode_done(name):
                record(i, name)
        return writer.finish()
    except StopWriting:
        writer.abort()
        return writer.manifest
    except BaseException:
        writer.abort()
        raise


def record_shards(
    out: str | Path,
    episodes: int = 100,
    policy: str = "mixed",
    seed: int = 0,
    loops: int = 1,
    scenario: str = "my_way_home",
    doom_map: str = "map01",
    resolution: str = "160x120",
    video: str = "mp4-lossless",
    shard_bytes: int = 64 << 20,
    segment_frames: int = 1024,
    overlap: int = 16,
    limit_shards: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Record ``episodes`` revisit episodes straight into a shard set (resumable); returns a summary."""
    if policy not in POLICIES:
        raise UserInputError(f"policy {policy!r}: expected one of {POLICIES}")
    if episodes < 1 or loops < 1:
        raise UserInputError(f"episodes and loops must be >= 1, got {episodes} and {loops}")
    options = {"episodes": episodes, "policy": policy, "seed": seed, "loops": loops, "scenario": scenario,
               "map": doom_map, "resolution": resolution, "shard_bytes": shard_bytes}
    writer = ShardSetWriter(out, "vizdoom", options, video=video, segment_frames=segment_frames, overlap=overlap,
                            shard_bytes=shard_bytes, limit_shards=limit_shards, overwrite=overwrite,
                            reverse_actions=REVERSE)
    summary: dict[str, Any] = {"out": str(out), "episodes": episodes, "resumed_samples": writer.resumed_samples}
    if writer.already_complete:
        return {**summary, "complete": True, "note": "already complete; nothing to do"}
    t0 = time.perf_counter()
    recorder = DoomRecorder(scenario, doom_map, resolution, seed)
    counts = {"frames": 0, "revisits": 0, "exact_revisits": 0}

    def record(i: int, name: str) -> None:
        recorder.game.set_seed(stable_seed("doom-episode", seed, i) % (2**31))
        ep = recorder.record_episode(policy, np.random.default_rng(stable_seed("doom-policy", seed, i)), loops)
        poses = np.round(ep["poses"], 4).tolist()

        def gt(start: int, stop: int) -> dict[str, Any]:
            return {"pose_names": ["x", "y", "z", "angle"], "pose": poses[start:stop],
                    "revisits": [r for r in ep["revisits"] if start <= r["frame"] < stop]}

        writer.write_episode(name, iter(ep["frames"]), 35.0, action_spans(ep["labels"]), "game", False, gt,
                             {"scenario": scenario, "map": doom_map, "policy": policy})
        counts["frames"] += len(ep["frames"])
        counts["revisits"] += len(ep["revisits"])
        counts["exact_revisits"] += sum(r["exact"] for r in ep["revisits"])

    try:
        manifest = write_episodes(writer, [f"doom-{seed}-{i:05d}" for i in range(episodes)], record, progress)
    finally:
        recorder.close()
    return {**summary, "complete": bool(manifest["complete"]), "seconds": round(time.perf_counter() - t0, 2),
            **counts, **{k: manifest[k] for k in ("num_shards", "num_samples", "num_episodes")}}
