"""The shard DataModule: sample-level split, determinism, clip cutting, resize, resume, latent cache, episodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datautils import make_dataset
from slowfast_vgen.datamodules.prep.build import build_shards
from slowfast_vgen.datamodules.shards.datamodule import ShardDataModule, ShardSampler
from slowfast_vgen.datamodules.shards.read import ShardClipDataset, ShardEpisodeDataset, episode_chunks
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.models.autoencoder import PixelShuffleAutoencoder


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("dm")
    vdir, actions, truth, rows = make_dataset(root, videos=3, frames=30)
    build_shards(vdir, actions, root / "shards", video="npy", segment_frames=12, overlap=4, shard_bytes=40_000,
                 progress=False)
    build_shards(vdir, actions, root / "robot", video="npy", domain="robot", segment_frames=12, overlap=4,
                 progress=False)
    return root, truth, rows


def items(batches):
    return [int(i) for b in batches for i in b["item"]]


@pytest.mark.parametrize("n, shard_sizes", [(23, [5, 2, 9, 7]), (8, [8]), (2, [1, 1]), (40, [13, 0, 27])])
@pytest.mark.parametrize("world, batch", [(1, 4), (2, 3), (3, 4), (4, 1)])
def test_sampler_splits_at_sample_level_evenly(n, shard_sizes, world, batch):
    data = list(range(n))
    per_rank = [list(ShardSampler(data, shard_sizes, batch, shuffle=True, seed=3, shuffle_buffer=4,
                                  num_replicas=world, rank=r)) for r in range(world)]
    assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) % batch == 0  # same number of steps
    real = [i for p in per_rank for _, i in p if i >= 0]
    assert sorted(real) == data  # every sample exactly once across ranks
    if n >= world * len(per_rank[0]) // batch:  # enough samples for one per batch
        for p in per_rank:
            for k in range(0, len(p), batch):
                assert any(i >= 0 for _, i in p[k : k + batch])
    sampler = ShardSampler(data, shard_sizes, batch, shuffle=True, seed=3, shuffle_buffer=4)
    first = [i for _, i in sampler]
    sampler.set_epoch(1)
    assert first != [i for _, i in sampler] or n <= 2  # a new order each epoch


def test_shuffle_buffer_keeps_shard_locality():
    sizes = [50] * 20
    sampler = ShardSampler(list(range(1000)), sizes, 10, shuffle=True, seed=0, shuffle_buffer=16)
    order = [i for _, i in sampler]
    shards_in_window = [len({i // 50 for i in order[k : k + 50]}) for k in range(0, 1000, 50)]
    assert np.mean(shards_in_window) < 4  # mostly one or two shards at a time
    full = ShardSampler(list(range(1000)), sizes, 10, shuffle=True, seed=0, shuffle_buffer=10_000)
    assert np.mean([len({i // 50 for i in [i for _, i in full][k : k + 50]}) for k in range(0, 1000, 50)]) > 10


def test_deterministic_given_seed_and_workers(shards):
    root, _, _ = shards
    kw = dict(batch_size=4, frames=8, min_context=1, max_context=4, seed=7)
    a = ShardDataModule(str(root / "shards"), **kw)
    b = ShardDataModule(str(root / "shards"), num_workers=2, **kw)
    a.setup("fit")
    b.setup("fit")
    ba, bb = list(a.train_dataloader()), list(b.train_dataloader())
    assert items(ba) == items(bb) and sorted(items(ba)) == list(range(len(a.train_set)))
    for x, y in zip(ba, bb, strict=True):
        assert torch.equal(x["video"], y["video"]) and torch.equal(x["n_context"], y["n_context"])
    assert len({int(n) for b in ba for n in b["n_context"]}) > 1  # mixed f_p
    c = ShardDataModule(str(root / "shards"), **{**kw, "seed": 8})
    c.setup("fit")
    assert items(list(c.train_dataloader())) != items(ba)


def test_clips_generate_only_their_action_and_first_frame_only(shards):
    root, truth, rows = shards
    ds = ShardClipDataset(root / "shards", frames=8, min_context=2, max_context=4)
    for i in range(len(ds)):
        s = ds.load(i)
        assert 1 <= s["n_context"] < s["video"].shape[0] <= 8
    robot = ShardClipDataset(root / "robot", frames=8, min_context=2, max_context=4)
    assert all(robot.load(i)["n_context"] == 1 for i in range(len(robot)))  # paper Sec. 3.1.2: f_p = 1
    dm = ShardDataModule(str(root / "shards"), batch_size=3, frames=8, min_frames=3, max_context=4,
                         first_frame_only_domains=["generic"])
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["n_context"].tolist() == [1, 1, 1] and 3 <= batch["video"].shape[1] <= 8


def test_resize_and_crop_to_model_resolution(shards):
    root, truth, _ = shards
    for res, shape in [(16, (16, 24)), ((16, 16), (16, 16)), ("20x40", (20, 40))]:
        s = ShardClipDataset(root / "shards", frames=6, resolution=res).load(0)
        assert tuple(s["video"].shape[-2:]) == shape and 0 <= float(s["video"].min()) <= float(s["video"].max()) <= 1


def test_resume_mid_epoch_continues_exactly(shards):
    root, _, _ = shards
    kw = dict(batch_size=3, frames=8, seed=1)
    dm = ShardDataModule(str(root / "shards"), **kw)
    dm.setup("fit")
    full = list(dm.train_dataloader())
    loader = dm.train_dataloader()
    head = []
    for batch in loader:
        head.append(batch)
        if len(head) == 2:
            break
    state = loader.state_dict()  # torchdata's StatefulDataLoader state, plus the epoch and the batch count
    assert state["sampler_epoch"] == 0 and state["sfvgen_batches"] == 2 and state["_num_yielded"] == 2
    dm2 = ShardDataModule(str(root / "shards"), **kw)
    dm2.setup("fit")
    loader2 = dm2.train_dataloader()
    loader2.load_state_dict(state)
    assert items(head + list(loader2)) == items(full)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_latent_cache_encodes_once_and_matches_the_autoencoder(shards, tmp_path, dtype):
    root, truth, _ = shards
    ae = PixelShuffleAutoencoder(factor=2)
    dm = ShardDataModule(str(root / "shards"), batch_size=4, frames=8, latent_cache=str(tmp_path / "cache"),
                         autoencoder=ae, latent_dtype=dtype, decode_video=True)
    dm.prepare_data()
    manifests = list((tmp_path / "cache").glob("*/manifest.json"))
    assert len(manifests) == 1
    stamp = manifests[0].stat().st_mtime_ns
    dm.prepare_data()  # reused, not encoded again
    assert manifests[0].stat().st_mtime_ns == stamp
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    expected = ae.encode(batch["video"])  # (B, C, F, h, w)
    assert batch["latents"].shape == expected.shape == (4, 12, batch["video"].shape[1], 16, 24)
    if dtype == "float32":
        assert torch.equal(batch["latents"], expected)
    else:
        assert torch.allclose(batch["latents"], expected, atol=1e-3)
    lean = ShardDataModule(str(root / "shards"), batch_size=2, frames=8, latent_cache=str(tmp_path / "cache"),
                           autoencoder=ae, latent_dtype=dtype)
    lean.setup("fit")
    b = next(iter(lean.train_dataloader()))
    assert b["video"].shape[-2:] == (0, 0) and b["latents"].shape[2] == b["video"].shape[1]  # no pixels decoded
    with pytest.raises(UserInputError, match="no autoencoder"):
        ShardDataModule(str(root / "shards"), latent_cache=str(tmp_path / "c2")).setup("fit")


def test_whole_episodes_for_the_slow_fast_loop(shards):
    root, truth, rows = shards
    ds = ShardEpisodeDataset(root / "shards")
    assert len(ds) == 3
    for i in range(3):
        ep = ds.load(i)
        ref = torch.from_numpy(truth[ep["episode"]]).permute(0, 3, 1, 2).float() / 255
        assert torch.equal(ep["video"], ref)  # segments joined, overlaps removed
        expected = [(round(r["start"] * 10), round(r["end"] * 10), r["action"])
                    for r in rows if r["video"].startswith(ep["episode"] + ".")]
        assert ep["actions"] == expected
        chunks = episode_chunks(ep, 2)
        assert all(b - a <= 2 for a, b, _ in chunks) and chunks[0][0] == 0 and chunks[-1][1] == len(ref)
    dm = ShardDataModule(str(root / "shards"), num_workers=1)
    got = [ep["episode"] for ep in dm.episode_dataloader()]
    assert sorted(got) == sorted(truth)
