"""The slow-fast learning loop (Alg. 1b) on tiny weights."""

from __future__ import annotations

import lightning as L
import torch
from safetensors.torch import load_file

from slowfast_vgen.datamodules.world import WorldLoopDataModule
from slowfast_vgen.models import HashTextEncoder, PixelShuffleAutoencoder, build_unet3d
from slowfast_vgen.systems import SlowFastLoopSystem


def make(tmp_path):
    torch.manual_seed(0)
    return SlowFastLoopSystem(build_unet3d("tiny"), PixelShuffleAutoencoder(), HashTextEncoder(), lr=1e-3,
                              chunk_frames=2, context_frames=2, memory_dir=str(tmp_path / "mem"), lora_rank=4,
                              lora_lr=1e-2, temporal_dropout=0.0)


def data():
    return WorldLoopDataModule(num_episodes=2, chunk_frames=2, chunks_out=1)


def test_inner_loop_records_theta_before_each_update(tmp_path):
    system = make(tmp_path)
    d = data()
    slow = system.build_slow_dataset(d.episodes, epoch=0, progress=False)
    assert len(slow) == 2 * 2  # 2 episodes x (3 chunks - 1) records
    rec0, rec1 = slow[0], slow[1]
    assert all(float(v.abs().max()) == 0 for k, v in rec0["theta"].items() if "lora_B" in k)  # Theta_0: B = 0
    # Theta_1 = Theta_0 after one fast-learning update on X_0 (+) X_1, replayed here by hand
    system.learner.reset()
    system._set_theta_trainable(True)
    system.learner.update(rec0["x"][None], rec0["y"][None], system.encode_text([""]))
    for name, value in system._theta().items():
        assert torch.equal(value.detach(), rec1["theta"][name]), name
    assert torch.equal(rec1["x"], rec0["y"])  # X_{i+1} of record i is X_i of record i + 1


def test_outer_loop_changes_only_phi_and_never_theta(tmp_path):
    system = make(tmp_path)
    phi0 = {k: v.clone() for k, v in system.unet.state_dict().items() if ".lora_" not in k}
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, reload_dataloaders_every_n_epochs=1)
    seen = []
    orig = system.load_theta
    system.load_theta = lambda theta: (seen.append({k: v.clone() for k, v in theta.items()}), orig(theta))[1]
    trainer.fit(system, data())
    # after the last step, the LoRA still holds exactly the last loaded Theta_i: no outer-loop step touched it
    for name, value in system._theta().items():
        assert torch.equal(value.detach(), seen[-1][name])
    phi1 = {k: v for k, v in system.unet.state_dict().items() if ".lora_" not in k}
    assert any(not torch.equal(phi0[k], phi1[k]) for k in phi0)  # Phi learned
    # the stored Theta files are untouched by the outer loop
    stored = load_file(str(tmp_path / "mem" / "epoch_0000" / "episode_00000.safetensors"))
    assert all(torch.isfinite(v).all() for v in stored.values())


def test_inner_loop_resumes_without_recomputing_finished_episodes(tmp_path):
    system = make(tmp_path)
    d = data()
    system.build_slow_dataset(d.episodes, epoch=0, progress=False)
    files = sorted((tmp_path / "mem" / "epoch_0000").glob("*.safetensors"))
    stamps = [f.stat().st_mtime_ns for f in files]
    files[1].unlink()  # as if the loop had stopped during episode 1
    files[1].with_suffix(".json").unlink()
    again = system.build_slow_dataset(d.episodes, epoch=0, progress=False)
    assert files[0].stat().st_mtime_ns == stamps[0] and files[1].is_file() and len(again) == 4
