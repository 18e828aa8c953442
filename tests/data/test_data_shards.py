"""Shard format: codecs, writer (temporary name + rename, manifest offsets/checksums), webdataset compatibility,
verify."""

from __future__ import annotations

import hashlib
import json
import tarfile

import numpy as np
import pytest

from datautils import video_frames
from slowfast_vgen.datamodules.prep import cli
from slowfast_vgen.datamodules.shards.format import ShardReader, ShardWriter, load_manifest, verify_shards
from slowfast_vgen.datamodules.shards.write import ShardSetWriter
from slowfast_vgen.datamodules.shards.videoio import decode_frames, encode_video, load_npy, npy_bytes, npy_slice
from slowfast_vgen.errors import UserInputError


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


# Lossy floors for the tiny saturated fixture (worst case for chroma subsampling); measured 29.6 / 31.5 dB.
@pytest.mark.parametrize("kind, pix_fmt, min_psnr", [("npy", "yuv420p", None), ("mp4-lossless", "yuv420p", None),
                                                     ("mp4", "yuv420p", 28.0), ("mp4", "yuv444p", 30.0)])
def test_codecs_round_trip_and_window_seek(kind, pix_fmt, min_psnr):
    frames = video_frames(0, 40, 32, 48)
    ext, data, desc = encode_video(frames, 10.0, kind, gop=8, pix_fmt=pix_fmt)
    full = decode_frames(ext, data)
    if min_psnr is None:
        assert np.array_equal(full, frames)
    else:
        assert psnr(full, frames) > min_psnr
    for start, stop in [(0, 5), (3, 19), (8, 16), (17, 40), (39, 40)]:  # windows across keyframes (gop 8)
        assert np.array_equal(decode_frames(ext, data, start, stop), full[start:stop])


def test_npy_never_unpickles_and_slices():
    arr = np.arange(2 * 5 * 3, dtype=np.float16).reshape(2, 5, 3)
    data = npy_bytes(arr)
    assert np.array_equal(load_npy(data), arr)
    assert np.array_equal(npy_slice(data, 1, 4, axis=1), arr[:, 1:4])
    obj = np.array([{"a": 1}], dtype=object)
    import io

    buf = io.BytesIO()
    np.save(buf, obj, allow_pickle=True)
    with pytest.raises(ValueError):
        load_npy(buf.getvalue())
    with pytest.raises(ValueError):
        npy_slice(buf.getvalue())


def test_writer_temporary_name_rename_and_offsets(tmp_path):
    done = []
    writer = ShardWriter(tmp_path, max_bytes=3000, on_shard=done.append)
    payloads = {f"s{i}": {"json": json.dumps({"i": i}).encode(), "frames.npy": bytes([i]) * (700 + i)}
                for i in range(5)}
    writer.write("s0", payloads["s0"], {"n": 0})
    assert [p.name for p in tmp_path.iterdir()] == ["shard-000000.tar.tmp"]  # in progress: temporary name
    for i in range(1, 5):
        writer.write(f"s{i}", payloads[f"s{i}"], {"n": i})
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"shard-00000{k}.tar" for k in range(len(done))]
    assert len(done) >= 2 and sum(e["num_samples"] for e in done) == 5
    for entry in done:
        path = tmp_path / entry["name"]
        assert entry["bytes"] == path.stat().st_size
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        raw = path.read_bytes()
        for sample in entry["samples"]:
            for ext, (off, size) in sample["members"].items():
                assert raw[off : off + size] == payloads[sample["key"]][ext]
        with tarfile.open(path) as tar:  # a plain tar, members <key>.<ext>, json first
            names = tar.getnames()
        assert names[0].endswith(".json") and all("." in n for n in names)


def test_webdataset_reads_our_shards(tmp_path, small_dataset):
    wds = pytest.importorskip("webdataset")
    frames = video_frames(1, 12, 16, 16)
    writer = ShardSetWriter(tmp_path / "s", "test", {}, video="npy", segment_frames=8, overlap=2)
    writer.write_episode("ep0", iter(frames), 10.0, [(0, 12, "go left")], "test")
    writer.finish()
    manifest = load_manifest(tmp_path / "s")
    urls = [str(tmp_path / "s" / s["name"]) for s in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == ["ep0--s00000", "ep0--s00001"]
    meta = json.loads(samples[1]["json"])
    assert meta["overlap"] == 2 and meta["start_frame"] == 6
    assert np.array_equal(load_npy(samples[1]["frames.npy"]), frames[6:12])


def test_verify_ok_then_detects_problems(tmp_path):
    root = tmp_path / "s"
    writer = ShardSetWriter(root, "test", {}, video="npy", segment_frames=6, overlap=1, shard_bytes=4000)
    writer.write_episode("ep0", iter(video_frames(2, 30, 16, 16)), 10.0, [(0, 30, "go left")], "test")
    writer.finish()
    report = verify_shards(root, deep=True)
    assert report["ok"] and report["samples"] == 5 and report["shards"] >= 3, report
    assert cli.main(["verify", str(root)]) == 0
    manifest = load_manifest(root)
    # Flip one bit inside the second sample's frames.
    shard = manifest["shards"][1]
    off, _ = shard["samples"][0]["members"]["frames.npy"]
    data = bytearray((root / shard["name"]).read_bytes())
    data[off + 200] ^= 0x10
    (root / shard["name"]).write_bytes(bytes(data))
    (root / "shard-000099.tar.tmp").write_bytes(b"partial")
    (root / manifest["shards"][-1]["name"]).unlink()
    report = verify_shards(root)
    assert not report["ok"]
    text = "\n".join(report["problems"])
    assert f"{shard['name']}: sha256 mismatch" in text
    assert f"sample {shard['samples'][0]['key']}: checksum mismatch" in text
    assert "shard-000099.tar.tmp: not in the manifest (unfinished shard)" in text
    assert f"{manifest['shards'][-1]['name']}: missing" in text
    assert cli.main(["verify", str(root)]) == 1


def test_reader_finds_members_after_tar_rewrite(tmp_path):
    """Offsets change when a tar is rewritten; the reader rescans headers and still checks crc32."""
    root = tmp_path / "s"
    writer = ShardSetWriter(root, "test", {}, video="npy", segment_frames=6, overlap=0)
    writer.write_episode("ep0", iter(video_frames(3, 18, 16, 16)), 10.0, [(0, 18, "go left")], "test")
    writer.finish()
    manifest = load_manifest(root)
    shard = manifest["shards"][0]
    path = root / shard["name"]
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        import io

        tar.addfile(tarfile.TarInfo("zzz.pad"), io.BytesIO(b""))  # shifts every offset by one header
        for m, data in members:
            tar.addfile(m, io.BytesIO(data))
    reader = ShardReader(root)
    for sample in shard["samples"]:
        assert set(reader.read(shard, sample)) == {"json", "frames.npy"}


def test_load_manifest_errors(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(UserInputError, match="manifest.json not found"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(UserInputError, match="not valid JSON"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(UserInputError, match="format is 'other'"):
        load_manifest(tmp_path)
