"""Bad data is skipped, counted and reported by key; every intact sample still arrives exactly once."""

from __future__ import annotations

import io
import json
import logging
import tarfile

import pytest

from datautils import make_dataset, video_frames
from slowfast_vgen.datamodules.prep.build import build_shards
from slowfast_vgen.datamodules.shards.datamodule import ShardDataModule
from slowfast_vgen.datamodules.shards.format import (
    ShardWriter,
    load_manifest,
    new_manifest,
    sample_summary,
    verify_shards,
    write_manifest,
)
from slowfast_vgen.datamodules.shards.videoio import encode_video, json_bytes
from slowfast_vgen.errors import UserInputError


def crafted_set(root):
    """A shard set whose samples pass the checksums but are unusable (and one good sample)."""
    frames = video_frames(5, 10, 32, 48)
    _, mp4, desc = encode_video(frames, 10.0, "mp4")
    base = {"episode": "x", "start_frame": 0, "overlap": 0, "frames": 10, "height": 32, "width": 48, "fps": 10.0,
            "domain": "generic", "actions": [[0, 10, "go left"]], "video": desc}
    samples = {
        "good": ({}, mp4),
        "undecodable": ({}, b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8),
        "nofps": ({"fps": None}, mp4),
        "outside": ({"actions": [[0, 10, "go left"], [8, 30, "go right"]]}, mp4),
    }
    manifest = new_manifest("test", {})
    writer = ShardWriter(root, on_shard=manifest["shards"].append)
    for seg, (key, (change, video)) in enumerate(samples.items()):
        meta = {**base, "key": key, "segment": seg, **change}
        if meta["fps"] is None:
            del meta["fps"]
        summary = sample_summary({**meta, "fps": 1.0})
        writer.write(key, {"json": json_bytes(meta), "mp4": video}, summary)
    writer.close()
    manifest["complete"] = True
    write_manifest(root, manifest)


def remove_member(path, name):
    with tarfile.open(path) as tar:
        kept = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.name != name]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, data in kept:
            tar.addfile(m, io.BytesIO(data))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupted_shards_are_skipped_counted_and_reported(tmp_path, caplog, num_workers):
    vdir, actions, truth, rows = make_dataset(tmp_path, videos=4, frames=30)
    main = tmp_path / "main"
    build_shards(vdir, actions, main, video="npy", segment_frames=8, overlap=2, shard_bytes=150_000, progress=False)
    crafted_set(tmp_path / "extra")
    manifest = load_manifest(main)
    shards = manifest["shards"]
    assert len(shards) >= 4 and all(len(s["samples"]) >= 2 for s in shards[:3])
    bad = {}
    # 1. truncation: cut shard 0 inside its second sample
    s0 = shards[0]
    cut = s0["samples"][1]["members"]["frames.npy"][0] + 100
    data = (main / s0["name"]).read_bytes()
    (main / s0["name"]).write_bytes(data[:cut])
    bad.update({s["key"]: "truncated shard" for s in s0["samples"][1:]})
    # 2. bit flip inside the frames of shard 1's first sample
    s1 = shards[1]
    off, size = s1["samples"][0]["members"]["frames.npy"]
    data = bytearray((main / s1["name"]).read_bytes())
    data[off + size // 2] ^= 0x04
    (main / s1["name"]).write_bytes(bytes(data))
    bad[s1["samples"][0]["key"]] = "checksum mismatch"
    # 3. a missing member in shard 2 (offsets of the following samples move)
    s2 = shards[2]
    remove_member(main / s2["name"], s2["samples"][0]["key"] + ".frames.npy")
    bad[s2["samples"][0]["key"]] = "missing member"
    # 4-6. undecodable video, missing metadata key, actions outside the video (crafted set)
    bad.update({"undecodable": "undecodable", "nofps": "missing key 'fps'", "outside": "outside the video"})

    dm = ShardDataModule([str(main), str(tmp_path / "extra")], batch_size=3, frames=6, max_context=2,
                         num_workers=num_workers)
    dm.setup("fit")
    ds = dm.train_set
    expected = sorted(i for i in range(len(ds)) if ds.key(i) not in bad)
    loader = dm.train_dataloader()
    with caplog.at_level(logging.WARNING, logger="slowfast_vgen.datamodules"):
        got = [int(i) for batch in loader for i in batch["item"]]
    report = loader.report
    # Every intact clip arrives, exactly once, except the clips that refill an all-bad batch (counted).
    assert sorted(set(got)) == expected and len(got) == len(expected) + len(report.filled)
    assert set(report.bad) == set(bad)
    for key, reason in bad.items():
        assert reason in report.bad[key][0], (key, report.bad[key])
    assert sum(c for _, c in report.bad.values()) == len(ds) - len(expected)
    assert report.good == len(got)
    assert set(report.by_reason()) == {"truncated shard", "checksum mismatch", "missing member", "undecodable",
                                       "bad metadata"}
    assert f"skipped {len(bad)} bad samples" in caplog.text and "nofps: bad metadata: missing key 'fps'" in caplog.text
    assert dm.bad_samples.keys() == bad.keys()
    # verify names the same samples (deep: decodes too)
    found = verify_shards(main, deep=True)["problems"] + verify_shards(tmp_path / "extra", deep=True)["problems"]
    assert all(any(f"sample {k}:" in p for p in found) for k in bad)


def test_all_bad_batch_is_refilled_so_ranks_stay_in_step(tmp_path):
    crafted_set(tmp_path / "extra")
    dm = ShardDataModule(str(tmp_path / "extra"), batch_size=1, frames=6, max_context=2, shuffle_buffer=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == len(dm.train_set)
    assert all(key == "good" for b in batches for key in b["key"])
    assert set(loader.report.bad) == {"undecodable", "nofps", "outside"} and loader.report.filled


def test_entirely_unreadable_set_stops_with_a_clear_error(tmp_path):
    vdir, actions, _, _ = make_dataset(tmp_path, videos=2)
    build_shards(vdir, actions, tmp_path / "s", video="npy", segment_frames=8, overlap=2, shard_bytes=30_000,
                 progress=False)
    for shard in load_manifest(tmp_path / "s")["shards"]:
        path = tmp_path / "s" / shard["name"]
        path.write_bytes(path.read_bytes()[:700])  # every shard truncated inside its first sample
    with pytest.raises(UserInputError, match=r"no readable sample in shard set .*truncated shard"):
        ShardDataModule(str(tmp_path / "s")).setup("fit")
    dm = ShardDataModule(str(tmp_path / "s"), probe_samples=0)  # no probe: the epoch itself stops
    dm.setup("fit")
    with pytest.raises(UserInputError, match="no readable sample"):
        list(dm.train_dataloader())
    (tmp_path / "s" / "manifest.json").write_text(json.dumps({"format": "sfvgen-shards", "version": 99}))
    with pytest.raises(UserInputError, match="version 99 is not supported"):
        ShardDataModule(str(tmp_path / "s")).setup("fit")


@pytest.mark.slow
def test_a_partly_corrupt_set_at_scale_never_ends_the_epoch(tmp_path, caplog):
    """3 shards, 64 bytes flipped in one, another truncated to 30 %: a run of bad clips far longer than any retry
    window. The epoch reads every intact clip once, names every bad sample, and warns at the first one."""
    vdir, actions, _, _ = make_dataset(tmp_path, videos=150, frames=20, height=16, width=16)
    build_shards(vdir, actions, tmp_path / "s", video="npy", segment_frames=12, overlap=2, shard_bytes=10_000_000,
                 progress=False)
    shards = load_manifest(tmp_path / "s")["shards"]
    assert len(shards) == 3, [s["num_samples"] for s in shards]
    flipped, cut = tmp_path / "s" / shards[0]["name"], tmp_path / "s" / shards[2]["name"]
    data = bytearray(flipped.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    flipped.write_bytes(bytes(data))
    cut.write_bytes(cut.read_bytes()[: int(0.3 * cut.stat().st_size)])
    report = verify_shards(tmp_path / "s")
    bad = {p.split(": ")[0][len("sample "):] for p in report["problems"] if p.startswith("sample ")}
    assert len(bad) == report["bad_samples"] > 0

    dm = ShardDataModule(str(tmp_path / "s"), batch_size=4, frames=6, max_context=2, shuffle_buffer=0)
    dm.setup("fit")
    ds = dm.train_set
    bad_clips = [i for i in range(len(ds)) if ds.key(i) in bad]
    run, longest = 0, 0
    for i in range(len(ds)):  # the longest run of bad clips in index (= reading) order within a shard
        run = run + 1 if ds.key(i) in bad else 0
        longest = max(longest, run)
    assert longest > 256, longest
    loader = dm.train_dataloader()
    with caplog.at_level(logging.WARNING, logger="slowfast_vgen.datamodules"):
        batches = list(loader)
    report = loader.report
    assert len(batches) == len(loader)  # the epoch ran to its end
    got = [int(i) for b in batches for i in b["item"]]  # clip indices
    intact = {i for i in range(len(ds)) if ds.key(i) not in bad}
    refills = [i for b in batches for i, k in zip(b["item"], b["key"]) if k in report.filled]
    assert set(got) == intact and len(got) == len(intact) + len(report.filled) and set(refills) <= intact
    assert set(report.bad) == bad and sum(c for _, c in report.bad.values()) >= len(bad_clips)  # + refill reads
    assert "bad sample skipped:" in caplog.text and f"skipped {len(bad)} bad samples" in caplog.text


def test_the_epochs_bad_samples_reach_the_logger(tmp_path):
    import csv

    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from slowfast_vgen.models import HashTextEncoder, PixelShuffleAutoencoder, build_unet3d
    from slowfast_vgen.systems import SlowLearningSystem

    crafted_set(tmp_path / "extra")
    dm = ShardDataModule(str(tmp_path / "extra"), batch_size=1, frames=6, max_context=2, shuffle_buffer=0,
                         resolution=16)
    system = SlowLearningSystem(build_unet3d("tiny"), PixelShuffleAutoencoder(), HashTextEncoder())
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=CSVLogger(tmp_path / "logs"), limit_val_batches=0,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(system, dm)
    rows = list(csv.DictReader(open(next((tmp_path / "logs").rglob("metrics.csv")))))
    assert [float(r["data/bad_samples"]) for r in rows if r.get("data/bad_samples")] == [3.0]
