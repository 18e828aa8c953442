"""`sfvgen data` and `sfvgen bench data` entry points."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from datautils import make_dataset
from slowfast_vgen.datamodules.prep import bench, cli
from slowfast_vgen.datamodules.prep.build import build_shards
from slowfast_vgen.datamodules.shards.format import load_manifest
from slowfast_vgen.errors import UserInputError


def test_bench_prints_clips_per_second_per_worker(capsys):
    assert bench.main(["--preset", "tiny"]) == 0
    out = json.loads(capsys.readouterr().out)
    got = {(r["resolution"], r["storage"]): r for r in out["results"]}
    assert {("64x64", "mp4"), ("256x256", "mp4"), ("256x256", "npy"), ("256x256", "latents")} <= set(got)
    assert all(r["frames"] == 16 and r["clips_per_s"] > 0 for r in out["results"])
    assert out["estimate"]["workers_per_gpu"] >= 1


def test_cache_latents_cli(tmp_path, capsys):
    vdir, actions, _, _ = make_dataset(tmp_path, videos=1)
    build_shards(vdir, actions, tmp_path / "s", video="npy", progress=False)
    assert cli.main(["cache-latents", str(tmp_path / "s"), str(tmp_path / "cache"), "--autoencoder",
                     "pixelshuffle:4", "--resolution", "16x32"]) == 0
    path = json.loads(capsys.readouterr().out)["cache"]
    sample = load_manifest(path)["shards"][0]["samples"][0]
    assert set(sample["members"]) == {"json", "frames.npy", "latents.npy"}
    with pytest.raises(UserInputError, match="expected pixelshuffle"):
        cli.make_autoencoder("vqgan")


def test_module_entry_point_prints_one_line_and_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "slowfast_vgen.datamodules.prep.cli", "verify", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr


def test_record_rejects_bad_arguments():
    with pytest.raises(UserInputError, match="invalid choice: 'greedy'"):
        cli.main(["record", "out", "--policy", "greedy"])
    with pytest.raises(UserInputError, match="expected a positive integer, got '0'"):
        cli.main(["record", "out", "--episodes", "0"])
