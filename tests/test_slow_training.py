"""Slow learning under Lightning: exact resume, and DDP (2 gloo processes) == 1 process."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from testutils import free_port
from slowfast_vgen.datamodules.world import WorldDataModule


class LossRecorder(L.Callback):
    def __init__(self):
        self.losses = {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = float(outputs["loss"])


def make_system():
    from slowfast_vgen.models import HashTextEncoder, PixelShuffleAutoencoder, build_unet3d
    from slowfast_vgen.systems import SlowLearningSystem

    torch.manual_seed(0)
    return SlowLearningSystem(build_unet3d("tiny"), PixelShuffleAutoencoder(), HashTextEncoder(), lr=1e-3)


def fit(max_steps, root, ckpt_path=None, every=None):
    rec = LossRecorder()
    callbacks = [rec]
    if every:
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=root, every_n_train_steps=every, save_top_k=-1))
    trainer = L.Trainer(
        max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, callbacks=callbacks, default_root_dir=root, enable_checkpointing=bool(every),
    )
    dm = WorldDataModule(batch_size=2, train_samples=10, frames=6, min_frames=4, view_size=16)
    trainer.fit(make_system(), dm, ckpt_path=ckpt_path)
    return rec.losses


def test_exact_resume_reproduces_the_uninterrupted_loss_curve(tmp_path):
    # 5 batches per epoch: the stop at step 3 is mid-epoch, and the run crosses an epoch boundary.
    full = fit(7, tmp_path / "a")
    fit(3, tmp_path / "b", every=3)
    (ckpt,) = (tmp_path / "b").glob("*step=3.ckpt")
    resumed = fit(7, tmp_path / "c", ckpt_path=str(ckpt))
    assert sorted(resumed) == [4, 5, 6, 7]
    assert [resumed[s] for s in (4, 5, 6, 7)] == [full[s] for s in (4, 5, 6, 7)]
    # frozen networks are not stored in checkpoints (they come from their own source)
    assert not any(k.startswith(("autoencoder.", "text_encoder.")) for k in torch.load(ckpt, weights_only=True)["state_dict"])


class RankLossFile(L.Callback):
    """Writes each rank's per-step losses to a JSON file (spawned processes cannot return objects)."""

    def __init__(self, folder):
        self.folder, self.losses = str(folder), {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = float(outputs["loss"])

    def on_train_end(self, trainer, module):
        with open(f"{self.folder}/rank{trainer.global_rank}.json", "w") as f:
            json.dump({"losses": self.losses, "seeds": None}, f)


def fit_ddp(folder, devices, batch_size):
    from slowfast_vgen.models import HashTextEncoder, PixelShuffleAutoencoder, build_unet3d
    from slowfast_vgen.systems import SlowLearningSystem

    torch.manual_seed(0)
    # Dropout masks depend on how the batch is split, so they are off for this equivalence check.
    system = SlowLearningSystem(
        build_unet3d("tiny"), PixelShuffleAutoencoder(), HashTextEncoder(), lr=1e-3, temporal_dropout=0.0
    )
    dm = WorldDataModule(batch_size=batch_size, train_samples=12, frames=5, view_size=16)
    strategy = "auto" if devices == 1 else L.pytorch.strategies.DDPStrategy(
        start_method="spawn", process_group_backend="gloo"
    )
    trainer = L.Trainer(
        max_steps=3, accelerator="cpu", devices=devices, strategy=strategy, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
        callbacks=[RankLossFile(folder)],
    )
    trainer.fit(system, dm)
    return [json.load(open(f"{folder}/rank{r}.json"))["losses"] for r in range(devices)]


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_with_the_same_global_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (single,) = fit_ddp(tmp_path / "one", devices=1, batch_size=4)
    ranks = fit_ddp(tmp_path / "two", devices=2, batch_size=2)
    for step in ("1", "2", "3"):  # step 2 and 3 also check that the averaged gradients were the same
        assert abs((ranks[0][step] + ranks[1][step]) / 2 - single[step]) < 1e-5, (step, ranks, single)
    assert ranks[0]["1"] != ranks[1]["1"]  # the ranks really saw different samples


def _csv_losses(root):
    import csv

    (path,) = root.glob("runs/slow_tiny/csv/version_*/metrics.csv")
    return {int(r["step"]): r["train/loss"] for r in csv.DictReader(path.open()) if r.get("train/loss")}


@pytest.mark.slow
def test_kill_9_then_ckpt_path_last_resumes_the_same_curve_in_the_same_logger_version(tmp_path):
    """`sfvgen fit --ckpt_path last` after a SIGKILL: the loss curve equals an uninterrupted run's, logged into
    the stopped run's version with its earlier rows kept. Every run is a fresh `sfvgen` process with one thread
    (in this process, earlier tests' state could change the last digits); the uninterrupted and the killed run
    go side by side. With no checkpoint to resume: tests/test_bad_inputs.py."""
    import os
    import subprocess
    import sys

    from testutils import REPO

    logger = ("{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {save_dir: runs/slow_tiny, name: csv, "
              "flush_logs_every_n_steps: 1}}")
    every = "{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {save_last: true, every_n_train_steps: 3}}"
    kill = "{class_path: killat.KillAt, init_args: {step: 5}}"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}

    def fit(folder, *extra, callbacks=(every,)):
        folder.mkdir(exist_ok=True)
        args = [sys.executable, "-m", "slowfast_vgen.cli", "fit", "-c", str(REPO / "experiments" / "slow_tiny.yaml"),
                "--trainer.max_steps", "8", "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1",
                "--trainer.logger", logger, "--trainer.callbacks", f"[{', '.join(callbacks)}]", *extra]
        return subprocess.Popen(args, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def done(proc):
        out, err = proc.communicate(timeout=300)
        return proc.returncode, out, err

    full, killed = fit(tmp_path / "full"), fit(tmp_path / "stopped", callbacks=(every, kill))
    (full_rc, _, full_err), (killed_rc, _, killed_err) = done(full), done(killed)
    assert full_rc == 0, full_err[-2000:]
    assert killed_rc == -9, killed_err[-2000:]
    assert 3 <= max(_csv_losses(tmp_path / "stopped")) < 7  # it died mid-run, after the step-3 checkpoint
    resumed_rc, resumed_out, resumed_err = done(fit(tmp_path / "stopped", "--ckpt_path", "last"))
    assert resumed_rc == 0, resumed_err[-2000:]
    assert "logging into version_0" in resumed_out
    assert _csv_losses(tmp_path / "stopped") == _csv_losses(tmp_path / "full")
    assert len(list((tmp_path / "stopped").glob("runs/slow_tiny/csv/version_*"))) == 1
