"""Under 2-process DDP (gloo, CPU) every metric equals its single-process value on the same data.

The videos are split unevenly (3 on rank 0, 2 on rank 1); torchmetrics sums the states across ranks.
FVD uses a cheap stand-in detector here (the reduction does not depend on the detector; the I3D itself is
tested in test_metrics_i3d.py).
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from slowfast_vgen.metrics import FVD, LPIPS, PSNR, SSIM, SceneCuts, SceneRevisitConsistency

WORLD = 2


def build_metrics() -> dict[str, object]:
    detector = nn.Sequential(nn.AdaptiveAvgPool3d((1, 2, 2)), nn.Flatten())  # (N, 3, T, R, R) -> (N, 12)
    return {
        "fvd": FVD(feature_extractor=detector, feature_dim=12, resolution=32),
        "psnr": PSNR(),
        "ssim": SSIM(),
        "lpips": LPIPS(),
        "scuts": SceneCuts(),
        "src": SceneRevisitConsistency(backbone="alexnet", resolution=32),
    }


def run_metrics(data: dict, indices: list[int]) -> dict[str, float]:
    metrics = build_metrics()
    for i in indices:
        sl = slice(i, i + 1)
        metrics["fvd"].update(data["real"][sl], real=True)
        metrics["fvd"].update(data["fake"][sl], real=False)
        for name in ("psnr", "ssim", "lpips"):
            metrics[name].update(data["fake"][sl], data["real"][sl])
        metrics["scuts"].update(data["spliced"][sl])
        metrics["src"].update(data["fake"][sl], [data["revisits"][i]])
    return {name: float(m.compute()) for name, m in metrics.items()}


def _worker(rank: int, port: int, data_path: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        data = torch.load(data_path, weights_only=True)
        n = data["real"].shape[0]
        values = run_metrics(data, list(range(rank, n, WORLD)))  # 3 videos on rank 0, 2 on rank 1
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(values, f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_data(make_spliced) -> dict:
    g = torch.Generator().manual_seed(0)
    real = torch.rand(5, 16, 3, 32, 32, generator=g)
    fake = (real + 0.2 * torch.randn(real.shape, generator=g)).clamp(0, 1)
    fake[:, 1::2] = fake[:, :1]  # make some revisits similar
    layouts = [(40,), (20, 20), (16, 16, 16), (20, 20), (40,)]  # 0, 1, 2, 1, 0 cuts
    spliced = torch.stack([torch.from_numpy(make_spliced(l, h=32, w=32)[0][:40]) for l in layouts])
    revisits = [[[0, [3, 5]]], [[1, [2]], [0, [7]]], [], [[2, [9, 15]]], [[0, [1]]]]
    return {"real": real, "fake": fake, "spliced": spliced, "revisits": revisits}


@pytest.mark.slow  # ~15 s unloaded, mostly starting two interpreters; more on a busy machine
def test_ddp_matches_single_process(tmp_path, make_spliced):
    data = make_data(make_spliced)
    data_path = tmp_path / "data.pt"
    torch.save(data, data_path)
    expected = run_metrics(data, list(range(5)))
    mp.spawn(_worker, args=(_free_port(), str(data_path), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-6, abs=1e-9), (rank, name)
    assert expected["scuts"] == pytest.approx(4 / 5)
