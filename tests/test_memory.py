"""Memory diagnostics and the revisit score on the pixels that need memory (issue 13), on tiny weights."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from slowfast_vgen.simulators.world import revisit_episode
from slowfast_vgen.diffusion import MaskedDiffusion
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.evaluation.memory import (
    chunk_contexts,
    measure_memory,
    memory_masks,
    revisit_memory_score,
    write_memory,
)
from slowfast_vgen.lora import TempLoRA
from slowfast_vgen.models import HashTextEncoder, PixelShuffleAutoencoder, build_unet3d
from slowfast_vgen.systems import SlowLearningSystem


def episode(seed: int = 3) -> dict:
    return revisit_episode(seed, chunk_frames=2, chunks_out=2, cells=4, cell_size=8, view_size=16, speed=4, min_gap=4)


def tiny_system() -> SlowLearningSystem:
    torch.manual_seed(0)
    unet = build_unet3d("tiny")
    system = SlowLearningSystem(unet, PixelShuffleAutoencoder(), HashTextEncoder(embed_dim=unet.config.cross_attention_dim),
                                diffusion=MaskedDiffusion(prediction_type="v_prediction"), chunk_frames=2,
                                context_frames=2)
    return system.eval()


def test_chunk_contexts_follow_the_generator():
    ctx = chunk_contexts(7, chunk_frames=3, context_frames=2)
    assert ctx[1] == ctx[3] == [0] and ctx[4] == ctx[6] == [2, 3]


def test_memory_masks_mark_exactly_what_the_context_never_showed():
    # camera moves right by 4 px a frame on a 64-px torus, 16-px view; frame 3's chunk sees frames 1, 2
    pos = torch.tensor([[0, 0], [4, 0], [8, 0], [12, 0]])
    (m,) = memory_masks(pos, 64, 16, [3], chunk_frames=1, context_frames=2).values()
    # frame 3 shows x 12..27; frames 1, 2 show x 4..23: columns 12..15 of frame 3 (x 24..27) are unseen
    assert m[:, 12:].all() and not m[:, :12].any()
    # wrapping: frame 3 at x 60 shows 60..63, 0..11; context at 0 shows 0..15: only the first 4 columns unseen
    wrap = torch.tensor([[0, 0], [0, 0], [0, 0], [60, 0]])
    (m,) = memory_masks(wrap, 64, 16, [3], chunk_frames=1, context_frames=2).values()
    assert m[:, :4].all() and not m[:, 4:].any()
    with pytest.raises(UserInputError, match="frame 0"):
        memory_masks(pos, 64, 16, [0], chunk_frames=1, context_frames=2)


def test_revisit_score_is_perfect_for_the_real_video_and_bad_for_a_shuffled_one():
    ep = episode()
    assert ep["revisits"], "the episode must revisit places"
    real = revisit_memory_score(ep["frames"], ep["revisits"], ep["positions"], ep["world_size"], 2, 2)
    assert real["Revisit MSE"] == 0 and real["Revisit PSNR"] == 100 and real["memory pixels"] > 0
    wrong = ep["frames"].clone()
    later = [j for _, js in ep["revisits"] for j in js]
    wrong[later] = ep["frames"][later].roll(5, dims=-1)  # the returning frames show other content
    bad = revisit_memory_score(wrong, ep["revisits"], ep["positions"], ep["world_size"], 2, 2)
    assert bad["Revisit MSE"] > 0.01 and bad["Revisit PSNR"] < 30
    with pytest.raises(UserInputError, match="positions"):
        revisit_memory_score(ep["frames"][:-1], ep["revisits"], ep["positions"], ep["world_size"], 2, 2)


@pytest.mark.parametrize("lr", [0.0, 3e-3])
def test_written_is_positive_after_updates_and_zero_at_learning_rate_zero(lr):
    system, ep = tiny_system(), episode()
    learner = TempLoRA(system.unet, system.diffusion, rank=4, lr=lr, steps_per_chunk=4, draws=2)
    try:
        write_memory(learner, system, ep)
        out = measure_memory(learner, system, ep, unseen=episode(4), timesteps=(200, 700))
    finally:
        learner.remove()
    if lr == 0:
        assert out["written"] == 0 and out["read"] == 0 and out["damage_unseen"] == 0
    else:
        assert out["written"] > 0.01
    assert set(out) >= {"written", "return_eq3", "read", "damage_context", "damage_unseen"}


def test_damage_is_zero_after_a_reset():
    system, ep = tiny_system(), episode()
    learner = TempLoRA(system.unet, system.diffusion, rank=4, lr=3e-3, steps_per_chunk=4)
    try:
        write_memory(learner, system, ep)
        assert measure_memory(learner, system, ep, unseen=episode(4), timesteps=(500,))["damage_unseen"] != 0
        learner.reset()
        out = measure_memory(learner, system, ep, unseen=episode(4), timesteps=(500,))
    finally:
        learner.remove()
    assert out["damage_unseen"] == 0 and out["damage_context"] == 0 and out["written"] == 0


def test_memory_guided_diagnostics_read_theta_as_generation_does():
    """With memory guidance, the sampler-regime numbers use Phi + w (Theta's change in Eq. 3's regime); the Eq. 3
    numbers do not change; a reset Theta reads and damages nothing either way."""
    system, ep = tiny_system(), episode()
    learner = TempLoRA(system.unet, system.diffusion, rank=4, lr=3e-3, steps_per_chunk=4)
    try:
        write_memory(learner, system, ep)
        direct = measure_memory(learner, system, ep, unseen=episode(4), timesteps=(300, 700))
        learner.settings = dataclasses.replace(learner.settings, memory_guidance=2.0)
        guided = measure_memory(learner, system, ep, unseen=episode(4), timesteps=(300, 700))
        learner.reset()
        nothing = measure_memory(learner, system, ep, unseen=episode(4), timesteps=(300, 700))
    finally:
        learner.remove()
    assert guided["written"] == direct["written"] and guided["return_eq3"] == direct["return_eq3"]
    assert guided["read"] != direct["read"] and guided["damage_unseen"] != direct["damage_unseen"]
    assert nothing["read"] == nothing["damage_context"] == nothing["damage_unseen"] == 0


def test_gated_diagnostics_read_theta_only_inside_the_read_range():
    system, ep = tiny_system(), episode()
    learner = TempLoRA(system.unet, system.diffusion, rank=4, lr=3e-3, steps_per_chunk=4)
    try:
        write_memory(learner, system, ep)
        direct = measure_memory(learner, system, ep, unseen=episode(4), timesteps=(300, 700))
        learner.settings = dataclasses.replace(learner.settings, read_timestep_range=(500, 1000))
        gated = measure_memory(learner, system, ep, unseen=episode(4), timesteps=(300, 700))
    finally:
        learner.remove()
    assert gated["written"] == direct["written"] and gated["return_eq3"] == direct["return_eq3"]
    assert gated["read_by_timestep"][300] == 0 and gated["read_by_timestep"][700] == direct["read_by_timestep"][700]
    assert direct["read_by_timestep"][300] != 0


def test_read_by_timestep_is_each_noise_levels_own_read():
    """The read at a timestep is what measuring at that timestep alone gives (its noise does not depend on the
    others), and the overall read pools the timesteps' losses."""
    system, ep = tiny_system(), episode()
    learner = TempLoRA(system.unet, system.diffusion, rank=4, lr=3e-3, steps_per_chunk=4)
    try:
        write_memory(learner, system, ep)
        both = measure_memory(learner, system, ep, timesteps=(300, 800))
        alone = {t: measure_memory(learner, system, ep, timesteps=(t,)) for t in (300, 800)}
    finally:
        learner.remove()
    assert set(both["read_by_timestep"]) == {300, 800}
    for t in (300, 800):
        assert both["read_by_timestep"][t] == pytest.approx(alone[t]["read"], rel=1e-9)
        assert alone[t]["read_by_timestep"] == {t: pytest.approx(alone[t]["read"], rel=1e-9)}
    assert both["read_by_timestep"][300] != both["read_by_timestep"][800]
    on = sum(alone[t]["loss"]["memory"][0] for t in (300, 800))
    off = sum(alone[t]["loss"]["memory"][1] for t in (300, 800))
    assert both["read"] == pytest.approx(1 - on / off, rel=1e-9)


def test_loss_guard_rolls_back_a_diverging_update_that_the_gradient_guard_lets_through():
    from slowfast_vgen.experiment import DEFAULT_CONFIG, DEFAULT_WEIGHTS
    from slowfast_vgen.experiment import load_system

    # the shipped demo model (tiny preset): lr 3e-2 x 10 steps doubles the update's own loss (0.08 -> 0.16)
    system = load_system(str(DEFAULT_CONFIG), str(DEFAULT_WEIGHTS), ["--trainer.enable_checkpointing", "false"]).model
    ep = revisit_episode(3, chunk_frames=4, chunks_out=1, min_gap=8)
    kwargs = dict(rank=8, lr=3e-2, steps_per_chunk=10, explode_factor=math.inf)
    for guard in (1e9, 1.5):  # 1e9: measured, never rolled back
        learner = TempLoRA(system.unet, system.diffusion, loss_guard=guard, **kwargs)
        try:
            (record,) = write_memory(learner, system, ep)
            b_weights = [m.lora_B["temp_lora"].weight.detach().clone() for m in learner.lora_layers()]
        finally:
            learner.remove()
        assert record.loss_after > 1.5 * record.loss_before, "the update must diverge for this test to mean anything"
        if guard == 1.5:
            assert record.rolled_back and "rose" in record.reason
            assert all(float(b.abs().max()) == 0 for b in b_weights)  # back to Theta_0
        else:
            assert not record.rolled_back and any(float(b.abs().max()) > 0 for b in b_weights)


def test_update_options_are_checked():
    unet = build_unet3d("tiny")
    for bad in (dict(draws=0), dict(clean_context=-1), dict(timestep_range=[500, 100]), dict(loss_guard=-1.0),
                dict(variant="original", reverse=True)):
        with pytest.raises(UserInputError):
            TempLoRA(unet, MaskedDiffusion(), **bad)


def test_paired_difference_p_value_matches_scipy():
    from scipy.stats import ttest_rel

    from slowfast_vgen.evaluation.revisit import EpisodeResult, paired_difference

    a, b = [0.3, 0.1, 0.5, 0.2, 0.45], [0.1, 0.15, 0.2, 0.0, 0.3]
    mk = lambda v: [EpisodeResult(seed=i, video=None, real=None, revisits=[], scores={"x": x}) for i, x in enumerate(v)]  # noqa: E731
    d = paired_difference(mk(a), mk(b), "x")
    ref = ttest_rel(a, b)
    assert d["t"] == pytest.approx(ref.statistic) and d["p"] == pytest.approx(ref.pvalue) and d["n"] == 5


def test_reversed_clips_get_the_reverse_action_and_replay_windows_their_own_text():
    unet = build_unet3d("tiny")
    learner = TempLoRA(unet, MaskedDiffusion(), rank=4, lr=1e-3, draws=4, replay=True, reverse=True, clean_context=2,
                       text_condition="action", reverse_actions={"go left": "go right"})
    assert learner.reverse_action("go left") == "go right" and learner.reverse_action("jump") is None
    dim = unet.config.cross_attention_dim
    null, left, right = (torch.full((1, 2, dim), v) for v in (0.0, 1.0, 2.0))
    z = torch.randn(1, unet.config.in_channels, 2, 8, 8)
    learner.update(z[:, :, :1], z[:, :, 1:], null, left, right)
    clips, n_clean, t, noise, cond = learner._batch(z, 1, 0, null, left, torch.Generator().manual_seed(0), (left, right))
    assert clips.shape[0] == 4 and (n_clean == 1).all()  # clean_context clamped to leave a frame to learn
    # the episode so far is z itself: every replay window is z, and odd draws run backwards at step 0
    assert torch.equal(clips[0], z[0]) and torch.equal(clips[1], z[0].flip(1)) and torch.equal(clips[2], z[0])
    assert torch.equal(cond[0], left[0])
    assert torch.equal(cond[1], right[0]) and torch.equal(cond[3], right[0]) and torch.equal(cond[2], left[0])
    plain = TempLoRA(build_unet3d("tiny"), MaskedDiffusion(), rank=4, draws=2, reverse=True)  # Eq. 3: no text at all
    assert plain.reverse_action("go left") is None
    *_, cond = plain._batch(z, 1, 0, null, left, torch.Generator().manual_seed(0), (null, null))
    assert torch.equal(cond, null.expand(2, 2, dim))


def test_consolidate_rehearses_every_window_reversed_and_turned_back_under_its_texts():
    unet = build_unet3d("tiny")
    learner = TempLoRA(unet, MaskedDiffusion(), rank=4, lr=1e-3, draws=64, consolidate=True, reverse=True, turns=True,
                       clean_context=2, text_condition="action", reverse_actions={"go left": "go right"})
    dim = unet.config.cross_attention_dim
    null, left, right = (torch.full((1, 2, dim), v) for v in (0.0, 1.0, 2.0))
    frames = torch.randn(1, unet.config.in_channels, 6, 8, 8)  # an episode of 6 frames: 2 + 2 + 2
    learner.update(frames[:, :, :2], frames[:, :, 2:4], null, left, right)  # chunk 0: X (+) Y = frames 0-3
    learner.update(frames[:, :, 2:4], frames[:, :, 4:6], null, left, right)  # chunk 1: frames 2-5
    z0 = frames[:, :, 2:6]
    clips, n_clean, _, _, cond = learner._batch(z0, 2, 0, null, left, torch.Generator().manual_seed(0), (left, right))
    # windows of 4 frames start at 0, 1, 2 (the last is the chunk's own clip, first); each also reversed and turned
    # back: its last 2 frames, then the 2 before them backwards
    f = frames[0]
    expected = [f[:, 2:6]]
    for s in range(3):
        w = f[:, s : s + 4]
        expected += ([w] if s < 2 else []) + [w.flip(1), torch.cat([w[:, 2:], w[:, 1:3].flip(1)], 1)]
    assert clips.shape[0] == len(expected) == 9 and (n_clean == 2).all()
    assert all(torch.equal(c, e) for c, e in zip(clips, expected))
    texts = [left] + [left, right, right, left, right, right, right, right]
    assert all(torch.equal(c, t[0]) for c, t in zip(cond, texts))  # forwards: the action; back: its reverse
    capped = TempLoRA(build_unet3d("tiny"), MaskedDiffusion(), rank=4, draws=3, consolidate=True, reverse=True)
    capped.update(frames[:, :, :2], frames[:, :, 2:4], null)
    capped.update(frames[:, :, 2:4], frames[:, :, 4:6], null)
    clips, *_ = capped._batch(z0, 2, 0, null, null, torch.Generator().manual_seed(0), (null, null))
    assert clips.shape[0] == 3 and torch.equal(clips[0], z0[0])  # at most `draws` clips, the chunk's own always in
    with pytest.raises(UserInputError, match="turns.*consolidate"):
        TempLoRA(build_unet3d("tiny"), MaskedDiffusion(), turns=True)


def test_bench_memory_prints_written_read_damage(tmp_path, capsys):
    import json

    from slowfast_vgen.evaluation.memory import main

    out = tmp_path / "memory.json"
    assert main(["--episodes", "1", "--chunks-out", "1", "--updates-per-chunk", "2", "--timesteps", "100", "900",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["summary"]) >= {"written", "read", "damage_context", "damage_unseen"}
    assert result["timesteps"] == [100, 900] and set(result["summary"]["read_by_timestep"]) == {"100", "900"}
    assert result["lora"]["text_condition"] == "action" and result["lora"]["reverse_actions"]["go left"] == "go right"
    assert json.loads(capsys.readouterr().out)["bench"] == "memory"
    with pytest.raises(UserInputError, match=r"--timesteps \[100, 1000\].*\[0, 1000\)"):
        main(["--episodes", "1", "--chunks-out", "1", "--timesteps", "100", "1000"])


def test_novelty_gate_skips_a_chunk_that_theta_already_explains():
    torch.manual_seed(0)
    unet = build_unet3d("tiny")
    null = torch.zeros(1, 2, unet.config.cross_attention_dim)
    learner = TempLoRA(unet, MaskedDiffusion(), rank=8, lr=1e-2, steps_per_chunk=20, novelty_gate=0.95,
                       explode_factor=math.inf)
    z = torch.randn(1, unet.config.in_channels, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    first = learner.update(z[:, :, :2], z[:, :, 2:], null)
    assert not first.skipped and first.memory_ratio == 1.0  # Theta_0 == 0: nothing is remembered yet
    before = [p.detach().clone() for p in learner.params]
    again = learner.update(z[:, :, :2], z[:, :, 2:], null)  # the same clip: Theta explains it now
    assert again.skipped and again.memory_ratio < 0.95 and "already remembered" in again.reason
    assert all(torch.equal(a, p) for a, p in zip(before, learner.params))  # nothing written
