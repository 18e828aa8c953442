"""Shard sets streamed from a URL through the webdataset pipeline (issue 15): a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading

import pytest
import torch

from datautils import make_dataset
from slowfast_vgen.datamodules.prep.build import build_shards
from slowfast_vgen.datamodules.shards.datamodule import ShardDataModule
from slowfast_vgen.datamodules.shards.stream import StreamingShardClipDataset, is_url
from slowfast_vgen.errors import UserInputError


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no request lines in the test output
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A shard set built by `sfvgen data build`, served over HTTP; yields (url, local folder)."""
    root = tmp_path_factory.mktemp("stream")
    vdir, actions, _, _ = make_dataset(root, videos=3, frames=30)
    build_shards(vdir, actions, root / "www" / "shards", video="npy", segment_frames=12, overlap=4,
                 shard_bytes=40_000, progress=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root / "www")))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root / "www"
    server.shutdown()


def seeds(batches):
    return sorted(int(s) for b in batches for s in b["seed"])


def test_a_streamed_epoch_holds_every_clip_of_the_indexed_one_once(served):
    url, www = served
    assert is_url(f"{url}/shards") and is_url("pipe:cat x.tar") and not is_url(str(www / "shards"))
    kw = dict(batch_size=4, frames=8, min_context=1, max_context=4, seed=7)
    local, streamed = ShardDataModule(str(www / "shards"), **kw), ShardDataModule(f"{url}/shards", **kw)
    local.setup("fit")
    streamed.setup("fit")
    assert isinstance(streamed.train_set, StreamingShardClipDataset)
    assert streamed.train_set.num_clips == len(local.train_set) and len(streamed.train_set.urls) > 1
    loader = streamed.train_dataloader()
    first, second = list(loader), list(loader)
    assert seeds(first) == seeds(local.train_dataloader()) == seeds(second)  # each clip once per epoch
    assert [int(s) for b in first for s in b["seed"]] != [int(s) for b in second for s in b["seed"]]  # reshuffled
    assert not streamed.bad_samples


def test_a_short_fit_streams_from_http(served):
    import lightning as L

    from slowfast_vgen.models import HashTextEncoder, PixelShuffleAutoencoder, build_unet3d
    from slowfast_vgen.systems import SlowLearningSystem

    url, _ = served
    torch.manual_seed(0)
    system = SlowLearningSystem(build_unet3d("tiny"), PixelShuffleAutoencoder(), HashTextEncoder(), lr=1e-3)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(system, ShardDataModule(f"{url}/shards", batch_size=2, frames=6, max_context=2, resolution=16))
    assert trainer.global_step == 3


def test_a_corrupt_streamed_sample_is_skipped_and_named(served, tmp_path):
    url, www = served
    import json

    copy = www / "corrupt"
    shutil.copytree(www / "shards", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    shard = manifest["shards"][0]
    sample = shard["samples"][0]
    offset, size = sample["members"]["json"]
    path = copy / shard["name"]
    raw = bytearray(path.read_bytes())
    raw[offset + size // 2] ^= 0xFF  # one flipped byte inside the metadata member
    path.write_bytes(bytes(raw))
    dm = ShardDataModule(f"{url}/corrupt", batch_size=4, frames=8, seed=7)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    keys = {k for b in batches for k in b["key"]}
    assert sample["key"] not in keys and len(keys) == len(manifest["samples"] if "samples" in manifest else
                                                          [s for sh in manifest["shards"] for s in sh["samples"]]) - 1
    assert "crc32" in dm.bad_samples[sample["key"]][0]
    with pytest.raises(UserInputError, match="cannot read"):
        StreamingShardClipDataset(f"{url}/missing")
