"""Helpers imported by tests (a module name of its own: `conftest` is ambiguous across test folders)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]


def world_shards(root, seeds=(0, 1), chunk_frames=2, chunks_out=3, texts=None, reverse_actions=None):
    """Revisit episodes of the built-in world written as a recording (frames, per-frame actions, poses in the
    samples' gt); returns the world's episodes. ``texts``: the action text of each chunk (free text) instead of the
    world's; ``reverse_actions``: the reversals the manifest declares."""
    import torch

    from slowfast_vgen.datamodules.shards.write import ShardSetWriter
    from slowfast_vgen.simulators.world import revisit_episode

    writer = ShardSetWriter(root, "test-world", {}, video="mp4-lossless", reverse_actions=reverse_actions)
    episodes = []
    for seed in seeds:
        ep = revisit_episode(seed, chunk_frames=chunk_frames, chunks_out=chunks_out, min_gap=1)
        frames = (ep["frames"].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
        spans = [(1 + c * chunk_frames, 1 + (c + 1) * chunk_frames, texts[c] if texts else a)
                 for c, a in enumerate(ep["actions"])]
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



def sfvgen_in_one_process(cases: dict[str, list[str]], cwd) -> dict[str, SimpleNamespace]:
    """Each command line of ``cases`` through ``slowfast_vgen.cli.main`` in one child process (tests/cli_driver.py:
    one import of torch and Lightning for all); per case its ``returncode``, ``stdout`` and ``stderr``."""
    cwd = Path(cwd)
    (cwd / "cli_cases.json").write_text(json.dumps(cases))
    env = {k: v for k, v in os.environ.items() if k != "SFVGEN_DEBUG"}
    run = subprocess.run([sys.executable, str(REPO / "tests" / "cli_driver.py"), "cli_cases.json", "cli_results.json"],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return {case: SimpleNamespace(**r) for case, r in json.loads((cwd / "cli_results.json").read_text()).items()}
