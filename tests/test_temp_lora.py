"""Fast learning with Temp-LoRA (Sec. 3.2, Eq. 3, Alg. 1a): the invariants of issue 4 on tiny weights."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from slowfast_vgen.diffusion import ChunkSampler, MaskedDiffusion
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.generation import LongVideoGenerator
from slowfast_vgen.temp_lora import TempLoRA
from slowfast_vgen.models import HashTextEncoder, PixelShuffleAutoencoder, build_unet3d
from slowfast_vgen.seeds import stable_seed

ACTIONS = ["go left", "go left", "go up"]


def make(temp_lora: bool, **lora_kwargs):
    torch.manual_seed(0)
    unet = build_unet3d("tiny").eval()
    diffusion = MaskedDiffusion()
    learner = TempLoRA(unet, diffusion, rank=4, lr=1e-3, **lora_kwargs) if temp_lora else None
    sampler = ChunkSampler(diffusion.scheduler_config(), num_inference_steps=3)
    gen = LongVideoGenerator(unet, PixelShuffleAutoencoder(), HashTextEncoder(), sampler, chunk_frames=3,
                             context_frames=2, temp_lora=learner)
    return gen, learner


def first_frames():
    return torch.rand(1, 2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def base_state(unet):
    return {k: v.clone() for k, v in unet.state_dict().items() if "lora_" not in k}


def test_zero_b_first_chunk_equals_the_generator_without_temp_lora():
    plain, _ = make(False)
    with_lora, learner = make(True)
    assert all(float(m.lora_B["temp_lora"].weight.abs().max()) == 0 for m in learner.lora_layers())
    a = next(plain.stream(first_frames(), ACTIONS, seed=3))
    b = next(with_lora.stream(first_frames(), ACTIONS, seed=3))
    assert torch.equal(a.latents, b.latents)
    # ... and the chunks after it differ, because Theta has learned
    a2 = list(plain.stream(first_frames(), ACTIONS, seed=3))[-1]
    b2 = list(with_lora.stream(first_frames(), ACTIONS, seed=3))[-1]
    assert not torch.equal(a2.latents, b2.latents)


def test_only_lora_parameters_change_during_an_episode():
    gen, learner = make(True)
    before = base_state(gen.unet)
    lora_before = [p.detach().clone() for p in learner.params]
    chunks = list(gen.stream(first_frames(), ACTIONS * 2))
    assert all(c.update is not None and not c.update.rolled_back for c in chunks)
    after = base_state(gen.unet)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(a, p) for a, p in zip(lora_before, learner.params))
    assert all(p.grad is None for p in gen.unet.parameters())  # no stray gradients on Phi


def test_update_trains_on_the_concatenated_fully_noised_text_free_sequence():
    gen, learner = make(True)
    seen = []
    handle = gen.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[0].clone(), args[1].clone(), kwargs["encoder_hidden_states"].clone()))
        if torch.is_grad_enabled() else None, with_kwargs=True,
    )
    context, generated = torch.randn(1, 12, 2, 8, 8), torch.randn(1, 12, 3, 8, 8)
    null = gen.text_encoder([""])
    record = learner.update(context, generated, null, text=gen.text_encoder(["go left"]))
    handle.remove()
    (noisy, t, text), = seen
    assert noisy.shape == (1, 12, 5, 8, 8)  # X_i (+) Y_i along frames
    assert torch.equal(text, null)  # no action text
    assert int(t[0]) == record.timesteps[0]
    z0 = torch.cat([context, generated], dim=2)
    g = torch.Generator().manual_seed(stable_seed("temp-lora", learner.settings.seed, 0))
    t_ref = torch.randint(0, 1000, (1,), generator=g)
    noise = torch.randn(z0.shape, generator=g)
    assert torch.equal(t, t_ref)
    assert torch.allclose(noisy, learner.diffusion.add_noise(z0, noise, t))  # every frame noised, none clean
    assert not torch.equal(noisy[:, :, :2], context)


def test_original_variant_keeps_input_clean_and_uses_text():
    gen, learner = make(True, variant="original")
    seen = []
    handle = gen.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[0].clone(), kwargs["encoder_hidden_states"].clone())), with_kwargs=True
    )
    context, generated = torch.randn(1, 12, 2, 8, 8), torch.randn(1, 12, 3, 8, 8)
    text = gen.text_encoder(["go left"])
    learner.update(context, generated, gen.text_encoder([""]), text=text)
    handle.remove()
    (noisy, cond), = seen
    assert torch.equal(noisy[:, :, :2], context) and torch.equal(cond, text)


def test_reset_between_episodes_restores_the_base_model_exactly():
    gen, learner = make(True)
    plain, _ = make(False)
    list(gen.stream(first_frames(), ACTIONS))
    learner.reset()
    a = list(plain.stream(first_frames(), ACTIONS[:1], seed=5))[0]
    b = list(gen.stream(first_frames(), ACTIONS[:1], seed=5))[0]
    assert torch.equal(a.latents, b.latents)


def test_remove_gives_back_the_base_modules():
    torch.manual_seed(0)
    unet = build_unet3d("tiny").eval()
    reference = copy.deepcopy(unet)
    learner = TempLoRA(unet, MaskedDiffusion(), rank=4)
    learner.remove()
    assert [type(m) for m in unet.modules()] == [type(m) for m in reference.modules()]
    assert unet.state_dict().keys() == reference.state_dict().keys()


def test_saved_memory_reloads_to_identical_outputs(tmp_path):
    gen, learner = make(True)
    list(gen.stream(first_frames(), ACTIONS))
    path = learner.save(tmp_path / "world.safetensors", extra={"context": torch.ones(2)})
    continued = list(gen.stream(first_frames(), ["go down"] * 2, seed=9))
    gen2, learner2 = make(True)
    extra = learner2.load(path)
    assert torch.equal(extra["context"], torch.ones(2)) and learner2.chunks_seen == 3
    again = list(gen2.stream(first_frames(), ["go down"] * 2, seed=9))
    for a, b in zip(continued, again):  # same outputs, and the same updates (Adam state restored too)
        assert torch.equal(a.latents, b.latents)
    with pytest.raises(UserInputError, match="rank"):
        make(True)[1].__class__(build_unet3d("tiny"), MaskedDiffusion(), rank=8).load(path)


def test_exploding_or_non_finite_updates_are_rolled_back():
    gen, learner = make(True)
    list(gen.stream(first_frames(), ACTIONS))
    good = [p.detach().clone() for p in learner.params]
    context = torch.randn(1, 12, 2, 8, 8)
    bad = torch.full((1, 12, 3, 8, 8), float("nan"))
    record = learner.update(context, bad, gen.text_encoder([""]))
    assert record.rolled_back and "non-finite" in record.reason
    assert all(torch.equal(a, p) for a, p in zip(good, learner.params))
    settings = learner.settings
    learner.settings = dataclasses.replace(settings, explode_factor=1e-9)  # any gradient now explodes vs the median
    record = learner.update(context, torch.randn(1, 12, 3, 8, 8), gen.text_encoder([""]))
    assert record.rolled_back and "median" in record.reason
    assert all(torch.equal(a, p) for a, p in zip(good, learner.params))
    learner.settings = settings
    assert not list(gen.stream(first_frames(), ACTIONS[:1]))[0].update.rolled_back  # generation goes on


def test_no_local_variant_samples_from_the_whole_sequence():
    gen, learner = make(True, variant="no-local")
    list(gen.stream(first_frames(), ACTIONS * 2))
    assert learner.episode.frames().shape[2] == 2 + 3 * 6


def test_bad_settings_are_clear_errors():
    with pytest.raises(UserInputError, match="variant"):
        TempLoRA(build_unet3d("tiny"), MaskedDiffusion(), variant="best")
    with pytest.raises(UserInputError, match="target_modules"):
        TempLoRA(build_unet3d("tiny"), MaskedDiffusion(), target_modules=["no_such_layer"])
    gen, _ = make(True)
    with pytest.raises(UserInputError, match="one episode at a time"):
        next(gen.stream(torch.rand(2, 2, 3, 16, 16), ACTIONS))


def test_merged_sampling_matches_and_restores_phi_exactly():
    gen, _ = make(True)
    list(gen.stream(first_frames(), ACTIONS))  # Theta != 0 now
    before = base_state(gen.unet)
    unmerged = list(gen.stream(first_frames(), ["go down"], seed=4))[0]
    gen2, _ = make(True)
    list(gen2.stream(first_frames(), ACTIONS))  # the same Theta, learned the same way
    gen2.merge_for_sampling = True
    merged = list(gen2.stream(first_frames(), ["go down"], seed=4))[0]
    torch.testing.assert_close(merged.latents, unmerged.latents, rtol=1e-4, atol=1e-4)
    after = base_state(gen2.unet)
    assert all(torch.equal(before[k], after[k]) for k in before)  # Phi bit-identical after merging
    learner, n_layers = gen2.temp_lora, len(gen2.temp_lora.lora_layers())
    with learner.merged():  # plain base layers stand in for the LoRA wrappers: a UNet call costs Phi's
        assert n_layers > 0 and not learner.lora_layers()
    assert len(learner.lora_layers()) == n_layers


def test_diffusion_is_required_and_is_the_models_own():
    """No silent epsilon default: the learner must train with the model's diffusion (its prediction type)."""
    with pytest.raises(TypeError):
        TempLoRA(build_unet3d("tiny"), rank=4)  # the argument is required: no default
    with pytest.raises(UserInputError, match="diffusion.*prediction type"):
        TempLoRA(build_unet3d("tiny"), None, rank=4)
    v = MaskedDiffusion(prediction_type="v_prediction")
    learner = TempLoRA(build_unet3d("tiny"), v, rank=4)
    assert learner.diffusion is v and learner.diffusion.prediction_type == "v_prediction"


def test_cheaper_updates_train_fewer_frames_or_layers_and_checkpointing_changes_nothing(monkeypatch):
    z = torch.randn(1, 12, 6, 8, 8, generator=torch.Generator().manual_seed(0))
    null = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(1))

    def learner(**kw):
        torch.manual_seed(0)
        unet = build_unet3d("tiny").eval()
        return unet, TempLoRA(unet, MaskedDiffusion(), rank=4, lr=1e-2, seed=0, **kw)

    unet, short = learner(update_frames=3)
    seen = []
    hook = unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[2]))
    short.update(z[:, :, :2], z[:, :, 2:], null)
    hook.remove()
    assert seen == [3]  # the last 3 of the 6 frames of X_i (+) Y_i

    _, decoder = learner(target_modules=r"up_blocks.*(to_q|to_k|to_v|to_out\.0)")
    names = [n for n, m in decoder.unet.named_modules() if m in decoder.lora_layers()]
    assert names and all(n.startswith("up_blocks.") for n in names)

    thetas = []
    for checkpointing in (False, True):
        _, full = learner(checkpointing=checkpointing)
        initial = [p.detach().clone() for p in full.params]
        for _ in range(2):
            record = full.update(z[:, :, :2], z[:, :, 2:], null)
        thetas.append(([p.detach().clone() for p in full.params], record.loss))
    (a, loss_a), (b, loss_b) = thetas
    # recomputed per layer (every ResNet / transformer / temporal layer of a block), not per block
    import torch.utils.checkpoint as tuc

    unet, full = learner(checkpointing=True)
    calls, original = [], tuc.checkpoint
    monkeypatch.setattr(tuc, "checkpoint", lambda fn, *a, **k: calls.append(fn) or original(fn, *a, **k))
    full.update(z[:, :, :2], z[:, :, 2:], null)
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    layers = [m for b in blocks for c in b.children() if isinstance(c, torch.nn.ModuleList) for m in c]
    assert len(calls) == len(layers) > len(blocks)
    assert all(getattr(fn, "__self__", None) in layers for fn in calls)
    assert abs(loss_a - loss_b) < 1e-6 and all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b))
    assert all(not torch.equal(x, y) for x, y in zip(a, initial))  # it learned: not a comparison of untouched weights
    with pytest.raises(UserInputError, match="update_frames >= 0"):
        learner(update_frames=-1)


def test_one_settings_object_for_the_learner_the_callback_and_the_loop():
    from slowfast_vgen.callbacks import TempLoRA as TempLoRACallback
    from slowfast_vgen.temp_lora import PRESETS, TempLoRASettings

    with pytest.raises(UserInputError, match=r"\['colour'\] are not known"):
        TempLoRACallback(colour="red")  # at construction, not when predict starts
    with pytest.raises(UserInputError, match="loss_guard >= 0"):
        TempLoRACallback({"rank": 4, "loss_guard": -1.0})  # a YAML mapping
    with pytest.raises(UserInputError, match="preset 'best' is not known"):
        TempLoRACallback({"preset": "best"})
    callback = TempLoRACallback({"rank": 4}, lr=1e-3)  # options over settings
    assert callback.settings == TempLoRASettings(rank=4, lr=1e-3)
    learner = TempLoRA(build_unet3d("tiny"), MaskedDiffusion(), callback.settings, seed=3)
    assert (learner.settings.rank, learner.settings.lr, learner.settings.seed) == (4, 1e-3, 3)
    # a preset by name, fields over it: the same object the commands build from --temp-lora
    gated = TempLoRACallback({"preset": "episodic-gated", "steps_per_chunk": 2}).settings
    assert gated == TempLoRASettings(**{**PRESETS["episodic-gated"], "steps_per_chunk": 2})


def test_read_gate_applies_theta_only_to_chunks_whose_start_the_memory_recognises():
    """A gate that admits nothing is the no-memory arm (Theta still written); one that admits everything is the
    ungated generator; recognition is 0 where a rehearsed clip under the action starts at the context exactly."""
    kw = dict(write="rehearsal", reverse=True, turns=True, draws=4, clean_context=2, text_condition="action",
              reverse_actions={"go left": "go right", "go right": "go left", "go up": "go down"})
    plain, _ = make(False)
    no_memory = [c.latents for c in plain.stream(first_frames(), ACTIONS, seed=3)]
    ungated = [c.latents for c in make(True, **kw)[0].stream(first_frames(), ACTIONS, seed=3)]
    closed = list(make(True, read_gate=1e-30, **kw)[0].stream(first_frames(), ACTIONS, seed=3))
    assert all(torch.equal(c.latents, z) for c, z in zip(closed, no_memory))
    assert [c.update.read for c in closed] == [False] * 3 and closed[-1].update.loss > 0  # written, never read
    assert not torch.equal(ungated[-1], no_memory[-1])  # ... so the gate withheld a Theta that changes the video
    opened = list(make(True, read_gate=1e30, **kw)[0].stream(first_frames(), ACTIONS, seed=3))
    assert all(torch.equal(c.latents, z) for c, z in zip(opened[:2], ungated[:2]))
    # nothing written before the first chunk, and no clip rehearsed under "go up" before the third: not read
    assert [c.update.read for c in opened] == [False, True, False]
    assert [c.update.recognition for c in opened][::2] == [float("inf")] * 2
    _, learner = make(True, read_gate=1.0, **kw)
    dim = learner.unet.config.cross_attention_dim
    null, left, right = (torch.full((1, 2, dim), v) for v in (0.0, 1.0, 2.0))
    frames = torch.randn(1, learner.unet.config.in_channels, 8, 4, 4)
    recognition = lambda context, text: learner.read.recognition(learner.episode, context, text)  # noqa: E731
    assert recognition(frames[:, :, :2], left) == float("inf")  # nothing written yet
    learner.update(frames[:, :, :2], frames[:, :, 2:5], null, left, right)
    learner.update(frames[:, :, 3:5], frames[:, :, 5:8], null, left, right)
    here = frames[:, :, 6:8]  # the context at the end: the turn back from here under "go right" is rehearsed
    assert recognition(here, right) == 0.0
    assert recognition(here, left) > 0.3  # the same place under the outward action: not a clip it holds
    assert recognition(torch.randn_like(here) * 3, right) > 0.3  # a place never seen
    with pytest.raises(UserInputError, match="options of write 'rehearsal'"):
        TempLoRA(build_unet3d("tiny"), MaskedDiffusion(), read_gate=0.5)




def test_new_ground_writes_skip_recognised_chunks_and_lora_plus_trains_b_faster():
    """write_where="new-ground": a chunk the read policy recognised is kept in the episode but not trained on (Theta
    and the optimizer's state unchanged, no UNet call); lr_ratio (LoRA+) gives B matrices their own, higher rate."""
    kw = dict(write="rehearsal", reverse=True, turns=True, draws=4, clean_context=2, text_condition="action",
              reverse_actions={"go left": "go right", "go right": "go left"}, read_gate=1.0, write_where="new-ground")
    _, learner = make(True, lr_ratio=8.0, **kw)
    assert sorted(g["lr"] for g in learner.optimizer.param_groups) == [1e-3, 8e-3]
    b = learner.lora.is_b()
    assert all(is_b == (".lora_B." in n) for is_b, (n, _) in zip(b, (
        (n, p) for n, p in learner.unet.named_parameters() if ".lora_" in n)))
    dim = learner.unet.config.cross_attention_dim
    null, left, right = (torch.full((1, 2, dim), v) for v in (0.0, 1.0, 2.0))
    frames = torch.randn(1, learner.unet.config.in_channels, 8, 4, 4)
    before = [p.detach().clone() for p in learner.params]
    first = learner.update(frames[:, :, :2], frames[:, :, 2:5], null, left, right)
    assert first.written and any(not torch.equal(a, p) for a, p in zip(before, learner.params))
    kept = [p.detach().clone() for p in learner.params]
    state = {k: v.clone() for k, v in learner.optimizer.state[learner.params[0]].items() if torch.is_tensor(v)}
    calls = []
    handle = learner.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    skipped = learner.update(frames[:, :, 3:5], frames[:, :, 5:8], null, left, right, recognised=True)
    handle.remove()
    assert not skipped.written and not calls and len(learner.episode) == 8  # in the episode, not written
    assert all(torch.equal(a, p) for a, p in zip(kept, learner.params))
    assert all(torch.equal(v, learner.optimizer.state[learner.params[0]][k]) for k, v in state.items())
    _, every = make(True, **{**kw, "write_where": "every-chunk"})  # the paper's Alg. 1a: written even where recognised
    assert every.update(frames[:, :, :2], frames[:, :, 2:5], null, left, right, recognised=True).written
    with pytest.raises(UserInputError, match="needs read_gate"):
        TempLoRA(build_unet3d("tiny"), MaskedDiffusion(), write_where="new-ground")
    with pytest.raises(UserInputError, match="lr_ratio > 0"):
        TempLoRA(build_unet3d("tiny"), MaskedDiffusion(), lr_ratio=0)


def test_write_every_k_writes_waiting_chunks_together_and_before_theta_is_read():
    """write_every=2: the first chunk of new ground waits (no UNet call), the second writes both (the rehearsal draws
    from every window of the episode); a chunk left waiting is written before Theta is read, and that write is the
    record of the chunk that read it. Every write counts its clip-passes."""
    kw = dict(write="rehearsal", reverse=True, turns=True, draws=4, clean_context=2, text_condition="action",
              reverse_actions={"go left": "go right", "go right": "go left"}, read_gate=1.0, write_where="new-ground",
              steps_per_chunk=3)
    _, learner = make(True, write_every=2, **kw)
    dim = learner.unet.config.cross_attention_dim
    null, left, right = (torch.full((1, 2, dim), v) for v in (0.0, 1.0, 2.0))
    frames = torch.randn(1, learner.unet.config.in_channels, 11, 4, 4)
    calls = []
    handle = learner.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    waiting = learner.update(frames[:, :, :2], frames[:, :, 2:5], null, left, right)
    assert not waiting.written and not calls and waiting.clip_passes == 0 and len(learner.episode) == 5
    pair = learner.update(frames[:, :, 3:5], frames[:, :, 5:8], null, left, right)
    assert pair.written and len(calls) == 3 and learner.waiting is None
    assert pair.clip_passes == 3 * 4  # 3 steps of the chunk's own clip and 3 drawn from the episode
    alone = learner.update(frames[:, :, 6:8], frames[:, :, 8:11], null, left, right)
    assert not alone.written and learner.waiting is not None
    before = [p.detach().clone() for p in learner.params]
    read, _ = learner.reads(frames[:, :, 9:11], right)  # the turn back from the end: recognised, so Theta is read ...
    assert read and learner.waiting is None and any(not torch.equal(a, p) for a, p in zip(before, learner.params))
    record = learner.update(frames[:, :, 9:11], frames[:, :, 6:9].flip(2), null, right, left, recognised=True)
    assert record.written and record.chunk == 3 and record.clip_passes == 12  # ... after the waiting chunk is written
    assert learner.write_waiting() is None  # nothing waits
    learner.update(frames[:, :, 8:10], frames[:, :, 5:8].flip(2), null, right, left)  # new ground: waits ...
    assert learner.write_waiting().clip_passes == 12 and learner.waiting is None  # ... until Theta is used elsewhere
    handle.remove()
    with pytest.raises(UserInputError, match="write_every > 1 needs"):
        TempLoRA(build_unet3d("tiny"), MaskedDiffusion(), write_every=2)
