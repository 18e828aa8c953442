"""Temp-LoRA's rehearsal and recognition gate on free-text actions with reversals declared by the data (issue 35)."""

from __future__ import annotations

import json

import torch

from slowfast_vgen.datamodules.recorded import RecordedRevisitDataset
from slowfast_vgen.datamodules.world import collate_episode
from slowfast_vgen.diffusion import MaskedDiffusion
from slowfast_vgen.models import HashTextEncoder, PixelShuffleAutoencoder, build_unet3d
from slowfast_vgen.systems import SlowLearningSystem
from slowfast_vgen.temp_lora import TempLoRA, TempLoRASettings, read_reverse_actions
from testutils import world_shards

OUT = ["walk west along the blocks", "keep walking west", "carry on going west"]
DECLARED = {"walk west along the blocks": "walk east along the blocks", "keep walking west": "keep walking east",
            "carry on going west": "carry on going east"}
# the way back is told in other words than the declared reverses: no action text repeats word for word
BACK = ["carry on going east now", "keep walking east now", "walk east along the blocks again"]


def test_free_text_actions_rehearse_their_declared_reverse_and_the_gate_opens_at_the_turn(tmp_path):
    (tmp_path / "reverse.json").write_text(json.dumps({**DECLARED, **{v: k for k, v in DECLARED.items()}}))
    declared = read_reverse_actions(tmp_path / "reverse.json")
    world_shards(tmp_path / "shards", seeds=(0,), chunk_frames=2, chunks_out=3, texts=OUT + BACK,
                 reverse_actions=declared)
    episodes = RecordedRevisitDataset(tmp_path / "shards", None, chunk_frames=2, context_frames=2)
    assert episodes.reverse_actions == declared  # read back from the manifest
    episode = collate_episode([episodes[0]])
    assert [a for a, _ in episode["actions"]] == OUT + BACK

    torch.manual_seed(0)
    unet = build_unet3d("tiny")
    system = SlowLearningSystem(unet, PixelShuffleAutoencoder(), HashTextEncoder(embed_dim=unet.config.cross_attention_dim),
                                diffusion=MaskedDiffusion(prediction_type="v_prediction"), chunk_frames=2,
                                context_frames=2, num_inference_steps=2).eval()
    settings = TempLoRASettings.build({"preset": "episodic-gated", "rank": 4, "steps_per_chunk": 1, "draws": 64,
                                       "read_text_match": 0.8}, reverse_actions=episodes.reverse_actions)
    learner = system.generator.temp_lora = TempLoRA(system.unet, system.diffusion, settings)
    chunks = list(system.generator.stream(episode["first"], episode["actions"], seed=0))

    # the rehearsal's clips carry the actions' texts and, turned back or reversed, their declared reverses
    encode = system.text_encoder
    clips = learner.write.clips(learner.episode, *learner.episode.clip, torch.device("cpu"), torch.float32)
    texts = [tx for _, tx in clips]
    for action in OUT:
        assert any(torch.equal(tx, encode([DECLARED[action]])) for tx in texts)
    # the paraphrased way back has no declared reverse: its reversed copies are under the empty prompt, and it has
    # no turn-back clips
    allowed = [encode([t]) for t in [*OUT, *BACK, *declared.values(), ""]]
    assert all(any(torch.equal(tx, a) for a in allowed) for tx in texts)
    # the turn: its context is where the rehearsed turn-back clip under "carry on going east" starts, and its
    # action, a paraphrase, is nearest that text: recognised exactly, Theta read; the outward chunks are not
    turn = chunks[len(OUT)].update
    assert turn.read and turn.recognition == 0.0
    assert not any(c.update.read for c in chunks[: len(OUT)])


def test_without_declared_reversals_the_run_says_turn_back_clips_are_off(tmp_path, capsys):
    from slowfast_vgen.demo import main

    world_shards(tmp_path / "shards", seeds=(0, 1), chunk_frames=4, chunks_out=1, texts=["walk west", "walk east"])
    code = main(["--shards", str(tmp_path / "shards"), "--pose-tolerance", "0", "--episodes", "2", "--steps", "1",
                 "--rank", "4", "--steps-per-chunk", "1", "--draws", "2", "--out", str(tmp_path / "demo")])
    assert code == 0
    assert "without turn-back clips" in capsys.readouterr().out
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert results["settings"]["temp_lora"]["reverse_actions"] is None
