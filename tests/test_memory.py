"""Memory diagnostics and the revisit score on the pixels that need memory (issue 13), on tiny weights."""

from __future__ import annotations

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
from slowfast_vgen.temp_lora import TempLoRA, TempLoRASettings
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
    learner = TempLoRA(system.unet, system.diffusion, rank=4, lr=lr, steps_per_chunk=4, write="rehearsal", draws=2)
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
    for bad in (dict(draws=0), dict(clean_context=-1), dict(read_text_match=2.0), dict(loss_guard=-1.0),
                dict(variant="original", reverse=True), dict(variant="original", write="rehearsal"),
                dict(write="chunk", turns=True), dict(write="everything")):
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


def rehearsal_batch(learner, z0, n_input, text, g):
    """The batch the learner's write policy builds for the chunk whose clip is ``z0``."""
    return learner.write.batch(learner.episode, z0, n_input, text, text, learner.episode.null, g)


def test_rehearsal_covers_every_window_reversed_and_turned_back_under_its_texts():
    unet = build_unet3d("tiny")
    learner = TempLoRA(unet, MaskedDiffusion(), rank=4, lr=1e-3, draws=64, write="rehearsal", reverse=True, turns=True,
                       clean_context=2, text_condition="action", reverse_actions={"go left": "go right"})
    assert learner.reverse_action("go left") == "go right" and learner.reverse_action("jump") is None
    dim = unet.config.cross_attention_dim
    null, left, right = (torch.full((1, 2, dim), v) for v in (0.0, 1.0, 2.0))
    frames = torch.randn(1, unet.config.in_channels, 6, 8, 8)  # an episode of 6 frames: 2 + 2 + 2
    learner.update(frames[:, :, :2], frames[:, :, 2:4], null, left, right)  # chunk 0: X (+) Y = frames 0-3
    learner.update(frames[:, :, 2:4], frames[:, :, 4:6], null, left, right)  # chunk 1: frames 2-5
    z0 = frames[:, :, 2:6]
    clips, n_clean, cond = rehearsal_batch(learner, z0, 2, left, torch.Generator().manual_seed(0))
    # windows of 4 frames start at 0, 1, 2 (the last is the chunk's own clip, first); each also reversed and turned
    # back: its last 2 frames, then the 2 before them backwards
    f = frames[0]
    expected = [f[:, 2:6]]
    for s in range(3):
        w = f[:, s : s + 4]
        expected += ([w] if s < 2 else []) + [w.flip(1), torch.cat([w[:, 2:], w[:, 1:3].flip(1)], 1)]
    assert clips.shape[0] == len(expected) == 9 and n_clean == 2
    assert all(torch.equal(c, e) for c, e in zip(clips, expected))
    texts = [left] + [left, right, right, left, right, right, right, right]
    assert all(torch.equal(c, t[0]) for c, t in zip(cond, texts))  # forwards: the action; back: its reverse
    capped = TempLoRA(build_unet3d("tiny"), MaskedDiffusion(), rank=4, draws=3, write="rehearsal", reverse=True)
    capped.update(frames[:, :, :2], frames[:, :, 2:4], null)
    capped.update(frames[:, :, 2:4], frames[:, :, 4:6], null)
    clips, *_ = rehearsal_batch(capped, z0, 2, null, torch.Generator().manual_seed(0))
    assert clips.shape[0] == 3 and torch.equal(clips[0], z0[0])  # at most `draws` clips, the chunk's own always in
    with pytest.raises(UserInputError, match="options of write 'rehearsal'"):
        TempLoRA(build_unet3d("tiny"), MaskedDiffusion(), turns=True)


def test_an_action_without_a_declared_reverse_has_no_turn_back_clips(caplog):
    """No reversal known: the reversed copy is under the empty prompt, the turn back is left out, and it is said."""
    unet = build_unet3d("tiny")
    settings = dict(rank=4, draws=64, write="rehearsal", reverse=True, turns=True, text_condition="action")
    with caplog.at_level("WARNING"):
        learner = TempLoRA(unet, MaskedDiffusion(), **settings)
    assert "without turn-back clips" in caplog.text and learner.settings.turn_back_note()
    dim = unet.config.cross_attention_dim
    null, left = torch.zeros(1, 2, dim), torch.ones(1, 2, dim)
    frames = torch.randn(1, unet.config.in_channels, 6, 8, 8)
    learner.update(frames[:, :, :2], frames[:, :, 2:4], null, left, None)  # no reverse text: none declared
    learner.update(frames[:, :, 2:4], frames[:, :, 4:6], null, left, None)
    clips, _, cond = rehearsal_batch(learner, frames[:, :, 2:6], 2, left, torch.Generator().manual_seed(0))
    assert clips.shape[0] == 1 + 2 + 3  # own + 2 earlier windows + 3 reversed, no turn back
    f = frames[0]
    assert torch.equal(clips[2], f[:, 0:4].flip(1)) and torch.equal(cond[2], null[0])
    declared = TempLoRASettings.build(settings, reverse_actions={"go left": "go right"})
    assert not declared.turn_back_note()


def test_bench_memory_prints_written_read_damage(tmp_path, capsys):
    import json

    from slowfast_vgen.evaluation.memory import main

    out = tmp_path / "memory.json"
    assert main(["--episodes", "1", "--chunks-out", "1", "--steps-per-chunk", "2", "--draws", "2", "--timesteps",
                 "100", "900", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["summary"]) >= {"written", "read", "damage_context", "damage_unseen"}
    assert result["timesteps"] == [100, 900] and set(result["summary"]["read_by_timestep"]) == {"100", "900"}
    assert result["lora"]["text_condition"] == "action" and result["lora"]["reverse_actions"]["go left"] == "go right"
    assert json.loads(capsys.readouterr().out)["bench"] == "memory"
    with pytest.raises(UserInputError, match=r"--timesteps \[100, 1000\].*\[0, 1000\)"):
        main(["--episodes", "1", "--chunks-out", "1", "--timesteps", "100", "1000"])


