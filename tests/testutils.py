"""Helpers imported by tests (a module name of its own: `conftest` is ambiguous across test folders)."""

from __future__ import annotations

import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def world_shards(root, seeds=(0, 1), chunk_frames=2, chunks_out=3):
    """Revisit episodes of the built-in world written as a recording (frames, per-frame actions, poses in the
    samples' gt); returns the world's episodes."""
    import torch

    from slowfast_vgen.datamodules.shardset import ShardSetWriter
    from slowfast_vgen.simulators.world import revisit_episode

    writer = ShardSetWriter(root, "test-world", {}, video="mp4-lossless")
    episodes = []
    for seed in seeds:
        ep = revisit_episode(seed, chunk_frames=chunk_frames, chunks_out=chunks_out, min_gap=1)
        frames = (ep["frames"].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
        spans = [(1 + c * chunk_frames, 1 + (c + 1) * chunk_frames, a) for c, a in enumerate(ep["actions"])]
        poses = [[float(x), float(y), 0.0, 0.0] for x, y in ep["positions"].tolist()]
        writer.write_episode(f"world-{seed}", iter(frames), 8.0, spans, "game", False,
                             lambda a, b, poses=poses: {"pose_names": ["x", "y", "z", "angle"], "pose": poses[a:b]})
        episodes.append(ep)
    writer.finish()
    return episodes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

