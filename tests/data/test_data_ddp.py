"""Under 2-process DDP (gloo, CPU), every clip of an epoch is seen exactly once across ranks and workers, and
every rank runs the same number of steps, although the shards hold uneven sample counts."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from datautils import make_dataset
from slowfast_vgen.datamodules.prep.build import build_shards
from slowfast_vgen.datamodules.common import MixedLengthCollate
from slowfast_vgen.datamodules.shards.read import ShardClipDataset, ShardCollate
from slowfast_vgen.datamodules.shards.loader import ShardDataLoader, ShardSampler
from slowfast_vgen.datamodules.shards.format import load_manifest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uneven_shards(root: Path) -> Path:
    vdir, actions, _, _ = make_dataset(root, videos=3, frames=26)
    build_shards(vdir, actions, root / "shards", video="npy", segment_frames=7, overlap=2, shard_bytes=70_000,
                 progress=False)
    return root / "shards"


def _rank_main(rank: int, world: int, port: int, shards: str, out: str, num_workers: int, batch: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # What ShardDataModule.train_dataloader builds (the module itself is tested under Lightning DDP below;
        # importing Lightning in each spawned process would triple this test's time).
        dataset = ShardClipDataset(shards, frames=6, max_context=2, seed=5)
        workers = dict(num_workers=num_workers, multiprocessing_context="fork", persistent_workers=True)
        loader = ShardDataLoader(dataset, batch_size=batch, shuffle=True, seed=5, shuffle_buffer=8,
                                 collate_fn=ShardCollate(MixedLengthCollate(max_frames=6)),
                                 **(workers if num_workers else {}))
        assert isinstance(loader.sampler, ShardSampler) and loader.sampler.num_replicas == world
        result = {"len": len(loader), "epochs": []}
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            batches = [[int(i) for i in b["item"]] for b in loader]
            result["epochs"].append(batches)
        gathered: list = [None] * world
        dist.all_gather_object(gathered, result)
        if rank == 0:
            Path(out).write_text(json.dumps({"ranks": gathered, "items": len(dataset)}))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("num_workers, batch", [(0, 5), (2, 3)])
def test_two_process_ddp_sees_each_clip_exactly_once(tmp_path, num_workers, batch):
    shards = uneven_shards(tmp_path)
    counts = [s["num_samples"] for s in load_manifest(shards)["shards"]]
    assert len(set(counts)) > 1  # uneven shards
    out = tmp_path / "result.json"
    mp.spawn(_rank_main, args=(2, free_port(), str(shards), str(out), num_workers, batch), nprocs=2, join=True)
    result = json.loads(out.read_text())
    n, ranks = result["items"], result["ranks"]
    assert n % (2 * batch) != 0  # the split is not trivially even
    for epoch in (0, 1):
        per_rank = [r["epochs"][epoch] for r in ranks]
        assert len(per_rank[0]) == len(per_rank[1]) == ranks[0]["len"]  # same number of steps on both ranks
        seen = [i for batches in per_rank for b in batches for i in b]
        assert sorted(seen) == list(range(n))  # each clip exactly once across ranks and workers
        assert all(len(b) >= 1 for batches in per_rank for b in batches)
    assert ranks[0]["epochs"][0] != ranks[0]["epochs"][1]  # reshuffled each epoch


@pytest.mark.slow
def test_lightning_ddp_keeps_the_shard_sampler(tmp_path):
    """Lightning must not replace the sampler under DDP (it is a DistributedSampler), so the guarantee holds."""
    import lightning as L

    from lightning_recorder import RecordingModule
    from slowfast_vgen.datamodules.shards.datamodule import ShardDataModule

    shards = uneven_shards(tmp_path)
    dm = ShardDataModule(str(shards), batch_size=3, frames=6, max_context=2, num_workers=1, seed=2)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(RecordingModule(str(tmp_path)), datamodule=dm)
    dm.setup("fit")
    for epoch in (0, 1):
        seen = [i for r in (0, 1) for i in json.loads((tmp_path / f"rank{r}-epoch{epoch}.json").read_text())]
        assert sorted(seen) == list(range(len(dm.train_set)))
