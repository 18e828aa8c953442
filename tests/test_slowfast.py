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
                              chunk_frames=2, context_frames=2, memory_dir=str(tmp_path / "mem"), temp_lora={"rank": 4,
                              "lr": 1e-2}, temporal_dropout=0.0)


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


def random_thetas(system, n, scale=0.05):
    g = torch.Generator().manual_seed(1)
    return [{k: torch.randn(v.shape, generator=g) * scale for k, v in system._theta().items()} for _ in range(n)]


def test_per_sample_lora_equals_applying_each_theta_alone(tmp_path):
    system = make(tmp_path)
    unet, thetas = system.unet, random_thetas(system, 3)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 12, 4, 8, 8, generator=g)
    t, cond = torch.tensor([10, 500, 900]), torch.randn(3, 1, unet.config.cross_attention_dim, generator=g)
    with system.learner.per_sample(thetas):
        out = unet(x, t, encoder_hidden_states=cond).sample
        out.square().mean().backward()
    batched_grads = {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None}
    assert not any(".lora_" in n for n in batched_grads)  # Theta is frozen: gradients reach Phi only
    unet.zero_grad()
    for b in range(3):
        system.load_theta(thetas[b])  # Theta_b alone, sample b alone
        alone = unet(x[b : b + 1], t[b : b + 1], encoder_hidden_states=cond[b : b + 1]).sample
        torch.testing.assert_close(out[b : b + 1], alone, rtol=1e-4, atol=1e-5)
        (alone.square().sum() / out.numel()).backward()  # the same mean, split by sample
    for name, grad in batched_grads.items():
        torch.testing.assert_close(grad, dict(unet.named_parameters())[name].grad, rtol=1e-3, atol=1e-6)
    system.load_theta(thetas[0])  # sample 1 under Theta_0 is a different output: the check above has teeth
    assert (unet(x[1:2], t[1:2], encoder_hidden_states=cond[1:2]).sample - out[1:2]).abs().max() > 1e-3


def fit_loop(tmp_path, run, max_steps=-1, max_epochs=2, ckpt_path=None, save=None, **kwargs):
    torch.manual_seed(0)
    system = SlowFastLoopSystem(build_unet3d("tiny"), PixelShuffleAutoencoder(), HashTextEncoder(), lr=1e-3,
                                chunk_frames=2, context_frames=2, memory_dir=str(tmp_path / run / "mem"), temp_lora={"rank": 4,
                                "lr": 1e-2}, temporal_dropout=0.0, **kwargs)
    # a checkpoint is written as training writes it (mid-epoch, at step `save`)
    callbacks = [L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / run, every_n_train_steps=save)] if save else []
    trainer = L.Trainer(max_steps=max_steps, max_epochs=max_epochs, accelerator="cpu", logger=False,
                        enable_checkpointing=bool(save), callbacks=callbacks, enable_progress_bar=False,
                        enable_model_summary=False, reload_dataloaders_every_n_epochs=1, default_root_dir=str(tmp_path / run))
    trainer.fit(system, data(), ckpt_path=ckpt_path)
    return trainer, {k: v for k, v in system.unet.state_dict().items() if ".lora_" not in k}


def test_stopped_loop_resumes_to_the_same_phi(tmp_path):
    # 2 episodes x 2 records, 2 records per batch (per-sample Theta): 2 steps per epoch, 2 epochs
    _, full = fit_loop(tmp_path, "full", records_per_batch=2)
    trainer, stopped = fit_loop(tmp_path, "stop", max_steps=3, save=3, records_per_batch=2)
    assert trainer.global_step == 3  # stopped mid-epoch 1, after the inner loop of epoch 1 ran
    (ckpt,) = (tmp_path / "stop").glob("*step=3.ckpt")
    # resume in a fresh folder: the inner loop recomputes D_s of epoch 1 from the checkpointed Phi
    trainer, resumed = fit_loop(tmp_path, "resume", ckpt_path=str(ckpt), records_per_batch=2)
    assert trainer.global_step == 4
    for name, value in full.items():
        assert torch.equal(value, resumed[name]), name
    assert any(not torch.equal(stopped[k], full[k]) for k in full)  # the last step did change Phi


def test_gradient_checkpointing_on_a_unet3d_is_a_clear_error():
    import pytest

    from slowfast_vgen.errors import UserInputError
    from slowfast_vgen.systems import SlowLearningSystem

    with pytest.raises(UserInputError, match="UNet3DConditionModel does not support it"):
        SlowLearningSystem(build_unet3d("tiny"), PixelShuffleAutoencoder(), HashTextEncoder(), gradient_checkpointing=True)


def test_inner_loop_runs_the_memory_learner_with_each_chunks_action_and_its_reverse(tmp_path):
    from slowfast_vgen.simulators.world import REVERSE

    system = SlowFastLoopSystem(build_unet3d("tiny"), PixelShuffleAutoencoder(), HashTextEncoder(), chunk_frames=2,
                                context_frames=2, memory_dir=str(tmp_path / "mem"), temporal_dropout=0.0,
                                temp_lora=dict(preset="episodic", rank=4, lr=1e-2, steps_per_chunk=1, draws=2,
                                               reverse_actions=REVERSE))
    seen = []
    update = system.learner.update
    system.learner.update = lambda *a, **kw: (seen.append(kw), update(*a, **kw))[1]
    episode = data().episodes[0]
    system.build_slow_dataset([episode], epoch=0, progress=False)
    assert len(seen) == len(episode["actions"])
    for kw, action in zip(seen, episode["actions"]):  # chunk i + 1 was made by action i, reversed by its reverse
        assert torch.equal(kw["text"], system.encode_text([action]))
        assert torch.equal(kw["reverse_text"], system.encode_text([REVERSE[action]]))
    import pytest

    from slowfast_vgen.errors import UserInputError

    with pytest.raises(UserInputError, match=r"\['colour'\] are not known"):
        SlowFastLoopSystem(build_unet3d("tiny"), PixelShuffleAutoencoder(), HashTextEncoder(), temp_lora={"colour": 1})


def test_fresh_episodes_give_every_epoch_new_worlds():
    fixed, fresh = data(), WorldLoopDataModule(num_episodes=2, chunk_frames=2, chunks_out=1, fresh_episodes=True)
    assert fixed.episodes_of_epoch(3)[0]["seed"] == fixed.episodes_of_epoch(0)[0]["seed"] == 20_000
    assert [fresh.episodes_of_epoch(e)[i]["seed"] for e in (0, 1) for i in (0, 1)] == [20_000, 20_001, 20_002, 20_003]
