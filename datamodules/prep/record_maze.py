"""``sfvgen data record --env memory-maze``: Memory Maze revisit episodes
(:mod:`slowfast_vgen.simulators.memory_maze`) written as a shard set, with per-frame poses and cells, the revisit
pairs and the episode's pattern and maze seed in each sample's ground truth.

Train and test splits come from disjoint maze seeds: episode ``i`` of ``--seed k`` uses maze seed
``k * SEEDS_PER_RECORDING + i`` (:func:`maze_seed`), so two recordings with different ``--seed`` never share a
maze seed (``--seed 0`` for train, ``--seed 1`` for test).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from slowfast_vgen.datamodules.prep.record import write_episodes
from slowfast_vgen.datamodules.shards.write import ShardSetWriter
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.seeds import stable_seed
from slowfast_vgen.simulators import memory_maze as mm

SEEDS_PER_RECORDING = 1_000_000  # maze seeds k * 1e6 ... k * 1e6 + episodes - 1 belong to --seed k
MAX_SEED = (2**32 - 1) // SEEDS_PER_RECORDING - 1  # numpy's RandomState takes seeds below 2**32


def maze_seed(seed: int, episode: int) -> int:
    """The maze seed (``memory_maze.tasks.memory_maze_9x9(seed=...)``) of ``episode`` in the recording ``seed``."""
    return seed * SEEDS_PER_RECORDING + episode


def layout_hash(layout: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(layout, dtype=np.uint8).tobytes()).hexdigest()[:12]


def parse_patterns(patterns: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"loop,detour"`` or a list -> pattern names (checked)."""
    names = [p.strip() for p in patterns.split(",")] if isinstance(patterns, str) else list(patterns)
    bad = [p for p in names if p not in mm.PATTERNS]
    if bad or not names:
        raise UserInputError(f"pattern {(bad or [''])[0]!r}: expected one or more of {', '.join(mm.PATTERNS)} "
                             "(comma-separated)")
    return names


def _ground_truth(ep: dict[str, Any], maze: str) -> Any:
    poses, cells = ep["poses"].tolist(), [list(c) for c in ep["cells"]]
    revisits = [{**r, "pattern": ep["pattern"]} for r in ep["revisits"]]
    episode = {"pattern": ep["pattern"], "requested_pattern": ep["requested"], "complete": ep["complete"],
               "note": ep["note"],
               "maze": {"size": maze, "seed": ep["maze_seed"], "hash": layout_hash(ep["layout"]),
                        "layout": ["".join(".#"[1 - v] for v in row) for row in ep["layout"]]},
               "tolerance": {"position": mm.POSITION_TOLERANCE, "angle": mm.ANGLE_TOLERANCE,
                             "away_distance": mm.AWAY_DISTANCE, "away_angle": mm.AWAY_ANGLE}}

    def gt(start: int, stop: int) -> dict[str, Any]:
        return {"pose_names": ["x", "y", "angle"], "pose": poses[start:stop], "cell": cells[start:stop],
                "revisits": [r for r in revisits if start <= r["frame"] < stop], **episode}

    return gt


def record_maze_shards(
    out: str | Path,
    episodes: int = 100,
    patterns: str | list[str] = ",".join(mm.PATTERNS),
    seed: int = 0,
    maze: str = "9x9",
    max_steps: int = 600,
    video: str = "mp4-lossless",
    shard_bytes: int = 64 << 20,
    segment_frames: int = 1024,
    overlap: int = 16,
    limit_shards: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Record ``episodes`` Memory Maze episodes (patterns in turn) straight into a shard set (resumable)."""
    names = parse_patterns(patterns)
    if episodes < 1 or episodes > SEEDS_PER_RECORDING:
        raise UserInputError(f"episodes {episodes}: expected 1 .. {SEEDS_PER_RECORDING}")
    if not 0 <= seed <= MAX_SEED:
        raise UserInputError(f"seed {seed}: expected 0 .. {MAX_SEED} for Memory Maze (maze seeds are seed x "
                             f"{SEEDS_PER_RECORDING} + episode)")
    recorder = mm.MazeRecorder(maze, max_steps)  # checks maze and max_steps, imports the package
    options = {"env": "memory-maze", "episodes": episodes, "patterns": names, "seed": seed, "maze": maze,
               "max_steps": max_steps, "shard_bytes": shard_bytes}
    writer = ShardSetWriter(out, "memory-maze", options, video=video, segment_frames=segment_frames, overlap=overlap,
                            shard_bytes=shard_bytes, limit_shards=limit_shards, overwrite=overwrite,
                            reverse_actions=mm.chunk_reverses())
    summary: dict[str, Any] = {"out": str(out), "episodes": episodes, "resumed_samples": writer.resumed_samples}
    if writer.already_complete:
        return {**summary, "complete": True, "note": "already complete; nothing to do"}
    t0 = time.perf_counter()
    counts, by_pattern, notes = {"frames": 0, "steps": 0}, {}, []

    def record(i: int, name: str) -> None:
        rng = np.random.default_rng(stable_seed("maze-policy", seed, i))
        ep = recorder.record_episode(names[i % len(names)], maze_seed(seed, i), rng)
        writer.write_episode(name, iter(ep["frames"]), mm.FPS, mm.chunk_spans(ep["labels"]), "game", False,
                             _ground_truth(ep, maze), {"env": "memory-maze", "maze": maze,
                                                       "maze_seed": ep["maze_seed"], "pattern": ep["pattern"]})
        counts["frames"] += len(ep["frames"])
        counts["steps"] += len(ep["frames"]) - 1
        row = by_pattern.setdefault(ep["pattern"], {"episodes": 0, "revisits": 0, "not_retraced": 0})
        row["episodes"] += 1
        row["revisits"] += len(ep["revisits"])
        row["not_retraced"] += sum(not r["retraced"] for r in ep["revisits"])
        if ep["note"]:
            notes.append(f"{name}: {ep['requested']}: {ep['note']}")

    manifest = write_episodes(writer, [f"maze{maze}-{seed}-{i:05d}" for i in range(episodes)], record, progress)
    seconds = time.perf_counter() - t0
    return {**summary, "complete": bool(manifest["complete"]), "seconds": round(seconds, 2), **counts,
            "steps_per_second": round(counts["steps"] / seconds, 2), "patterns": by_pattern, "notes": notes,
            **{k: manifest[k] for k in ("num_shards", "num_samples", "num_episodes")}}
