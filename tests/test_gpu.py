"""The CUDA paths (issue 16), marked ``gpu``: skipped with a reason on a machine without CUDA (conftest.py).

Run them on a GPU machine with ``pytest -m gpu`` (README, "Tests"). ``SFVGEN_GPU_TESTS_ON_CPU=1`` runs the same
code on the CPU (bfloat16 where the GPU tests use float16) to check the tests themselves without a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import lightning as L
import pytest
import torch

pytestmark = pytest.mark.gpu
ON_CPU = os.environ.get("SFVGEN_GPU_TESTS_ON_CPU") == "1"
DEVICE = torch.device("cpu" if ON_CPU else "cuda")
HALF = torch.bfloat16 if ON_CPU else torch.float16


def tiny_system(lr: float = 1e-3):
    from slowfast_vgen.models import HashTextEncoder, PixelShuffleAutoencoder, build_unet3d
    from slowfast_vgen.systems import SlowLearningSystem

    torch.manual_seed(0)
    return SlowLearningSystem(build_unet3d("tiny"), PixelShuffleAutoencoder(), HashTextEncoder(), lr=lr)


def test_a_16_mixed_slow_learning_step_lowers_nothing_to_nan(tmp_path):
    from slowfast_vgen.datamodules.world import WorldDataModule

    system = tiny_system()
    before = {k: v.clone() for k, v in system.unet.state_dict().items()}
    trainer = L.Trainer(
        max_steps=3, accelerator="cpu" if ON_CPU else "gpu", devices=1, precision="bf16-mixed" if ON_CPU else "16-mixed",
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        limit_val_batches=0, default_root_dir=str(tmp_path),
    )
    trainer.fit(system, WorldDataModule(batch_size=2, train_samples=6, frames=6, min_frames=4, view_size=16))
    assert trainer.global_step == 3
    after = system.unet.state_dict()
    assert all(after[k].dtype == torch.float32 for k in after)  # mixed precision: float32 master weights
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k].cpu()) for k in before)  # it learned


def test_temp_lora_update_keeps_a_float32_theta_on_a_half_precision_unet():
    from slowfast_vgen.diffusion import MaskedDiffusion
    from slowfast_vgen.temp_lora import TempLoRA
    from slowfast_vgen.models import build_unet3d

    torch.manual_seed(0)
    unet = build_unet3d("tiny").to(DEVICE, HALF)
    learner = TempLoRA(unet, MaskedDiffusion(), rank=4, lr=1e-3)
    z = torch.randn(1, 12, 4, 8, 8, device=DEVICE, dtype=HALF)
    null = torch.randn(1, 4, 32, device=DEVICE)
    before = [p.detach().clone() for p in learner.params]
    records = [learner.update(z[:, :, :2], z[:, :, 2:], null) for _ in range(2)]
    assert not any(r.rolled_back for r in records), [r.reason for r in records]
    assert all(torch.isfinite(torch.tensor(r.loss)) for r in records)
    assert {p.dtype for p in learner.params} == {torch.float32} and {p.device.type for p in learner.params} == {DEVICE.type}
    assert all(not torch.equal(a, p) for a, p in zip(before, learner.params))
    assert {p.dtype for n, p in unet.named_parameters() if "lora_" not in n} == {HALF}  # Phi untouched in half


def test_trainer_predict_with_the_temp_lora_callback_generates_on_the_device():
    from slowfast_vgen.callbacks import TempLoRA
    from slowfast_vgen.datamodules.world import WorldRevisitDataset, collate_episode
    from torch.utils.data import DataLoader

    system = tiny_system()
    system.sampler.num_inference_steps = 2
    callback = TempLoRA(rank=4, lr=1e-3)
    trainer = L.Trainer(accelerator="cpu" if ON_CPU else "gpu", devices=1, logger=False, callbacks=[callback],
                        enable_progress_bar=False, enable_model_summary=False, inference_mode=False)
    episodes = WorldRevisitDataset(2, seed=0, chunk_frames=system.generator.chunk_frames, chunks_out=1, view_size=16)
    outputs = trainer.predict(system, dataloaders=DataLoader(episodes, batch_size=1, collate_fn=collate_episode))
    assert len(outputs) == 2
    assert next(system.unet.parameters()).device.type == DEVICE.type
    assert callback.learner is not None and callback.learner.history  # Theta was updated after chunks
    for out, ep in zip(outputs, episodes):
        video = out["video"][0]  # (T, C, H, W): the first frame, then every chunk
        assert video.shape == ep["frames"].shape and torch.isfinite(video).all()


def test_bench_temp_lora_at_the_small_preset():
    cmd = [sys.executable, "-m", "slowfast_vgen.cli", "bench", "temp-lora", "--preset", "small", "--chunks", "3",
           "--steps", "2", "--merge", "--device", DEVICE.type, "--dtype", "bfloat16" if ON_CPU else "float16"]
    result = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    assert result["device"] == DEVICE.type and result["time_ratio"] > 0 and result["memory_ratio"] > 0
    assert result["with_temp_lora"]["chunks"] == 3
