"""The TempLoRA callback under trainer.predict, `sfvgen generate`, and the demo report, on tiny weights."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from slowfast_vgen.callbacks import TempLoRA
from slowfast_vgen.datamodules.world import WorldRevisitDataset, collate_episode
from slowfast_vgen.simulators.world import revisit_episode
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.models import HashTextEncoder, PixelShuffleAutoencoder, build_unet3d
from slowfast_vgen.systems import SlowLearningSystem


def tiny_system():
    torch.manual_seed(0)
    return SlowLearningSystem(build_unet3d("tiny"), PixelShuffleAutoencoder(), HashTextEncoder(),
                              num_inference_steps=2, chunk_frames=2, context_frames=2)


def test_revisit_episode_ground_truth_is_exact():
    ep = revisit_episode(1, chunk_frames=2, chunks_out=3, min_gap=4)
    assert len(ep["actions"]) == 6 and ep["frames"].shape == (13, 3, 16, 16)
    assert ep["revisits"]
    for first, laters in ep["revisits"]:
        for j in laters:
            assert torch.equal(ep["positions"][first], ep["positions"][j])
            assert torch.equal(ep["frames"][first], ep["frames"][j]) and j - first >= 4


def test_action_following_scores_the_real_video_zero_and_a_frozen_one_badly():
    from slowfast_vgen.evaluation.revisit import action_following

    ep = revisit_episode(3, chunk_frames=2, chunks_out=3, min_gap=4)
    real = action_following(ep["frames"], ep["positions"], ep["world_size"])
    assert real["Motion MSE"] == 0.0 and real["Still MSE"] > 0.01
    frozen = ep["frames"][:1].expand_as(ep["frames"])  # ignores every action
    stuck = action_following(frozen, ep["positions"], ep["world_size"])
    assert stuck["Still MSE"] == 0.0 and stuck["Motion MSE"] > 0.01
    mirrored = (2 * ep["positions"][0] - ep["positions"]) % ep["world_size"]  # every step the other way
    backwards = action_following(ep["frames"], mirrored, ep["world_size"])
    assert backwards["Motion MSE"] > 0.01
    with pytest.raises(UserInputError, match="one position per frame"):
        action_following(ep["frames"], ep["positions"][:3], ep["world_size"])


def test_temp_lora_callback_during_predict_saves_memory_and_restores_the_base(tmp_path):
    system = tiny_system()
    before = {k: v.clone() for k, v in system.unet.state_dict().items()}
    loader = DataLoader(WorldRevisitDataset(2, chunk_frames=2, chunks_out=2, min_gap=4), batch_size=1,
                        collate_fn=collate_episode)
    callback = TempLoRA(rank=4, lr=1e-3, save_dir=str(tmp_path))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        callbacks=[callback])  # inference_mode left on
    out = trainer.predict(system, loader)
    assert callback.learner.diffusion is system.diffusion  # the model's own prediction type
    assert [o["video"].shape for o in out] == [(1, 9, 3, 16, 16)] * 2
    assert all(u is not None and not u.rolled_back for o in out for u in o["updates"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episode_00000.safetensors", "episode_00001.safetensors"]
    after = system.unet.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_generate_cli_writes_video_and_memory(tmp_path, monkeypatch):
    from slowfast_vgen.generate import main

    actions = tmp_path / "actions.txt"
    actions.write_text("go right\n# a comment\ngo left\n")
    code = main(["--actions", str(actions), "--steps", "2", "--rank", "4", "--steps-per-chunk", "2", "--draws", "3",
                 "--out", str(tmp_path / "v"),
                 "--memory-out", str(tmp_path / "m.safetensors"), "--weights", ""])
    assert code == 0
    assert (tmp_path / "v.mp4").stat().st_size > 0 and (tmp_path / "v.gif").stat().st_size > 0
    assert (tmp_path / "m.safetensors").is_file()
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.slow
def test_demo_writes_a_report_from_its_own_run(tmp_path):
    from slowfast_vgen.demo import main

    out = tmp_path / "demo"
    assert main(["--weights", str(tmp_path / "none.safetensors"), "--train-minutes", "0.02", "--episodes", "2",
                 "--chunks-out", "2", "--steps", "2", "--rank", "4", "--steps-per-chunk", "2", "--draws", "3",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    # the shipped memory configuration unless told otherwise (docs/memory.md, Search 15), unguided
    lora = results["settings"]["temp_lora"]
    assert lora["read_gate"] == 1.0 and lora["write"] == "rehearsal" and lora["turns"] and lora["steps_per_chunk"] == 2
    assert lora["preset"] == "episodic-lazy" and lora["reverse_actions"]["go left"] == "go right"  # the world's
    assert lora["lr_ratio"] == 8.0 and lora["write_where"] == "new-ground" and lora["lr"] == 1.5e-3
    assert lora["write_every"] == 3
    assert results["settings"]["guidance"] == {"image": 1.0, "text": 1.0}
    for episode in results["episodes"]:  # which chunks read Theta, and why (chunk 0: nothing written yet)
        assert 0 not in episode["theta_read_chunks_with"] and episode["recognition_with"][0] is None
        # the chunks of the way out wait (write_every 3) and are written before Theta is first read: 2 steps of 3
        assert episode["clip_passes_with"] == (6 if episode["theta_read_chunks_with"] else 0)
    assert set(results["summary"]) == {"without Temp-LoRA", "with Temp-LoRA"}
    assert len(results["episodes"]) == 2 and results["settings"]["steps"] == 2
    assert {"Motion MSE", "Still MSE", "Revisit PSNR", "Other PSNR"} <= set(results["summary"]["with Temp-LoRA"])
    memory = results["memory"]
    assert results["n_episodes"] == 2 and 0 <= memory["revisit_psnr_p"] <= 1
    floor, fast = memory["revisit_mse"]["floor_no_memory"], memory["revisit_mse"]["temp_lora"]
    assert memory["gap_closed"] == pytest.approx((floor - fast) / floor)
    spread = results["summary"]["with Temp-LoRA"]["Revisit MSE"]["std"]  # the floor / Temp-LoRA table has spreads
    assert memory["revisit_mse_std"]["temp_lora"] == spread and f"{fast:.4f} ± {spread:.4f}" in (out / "report.md").read_text()
    page = (out / "index.html").read_text()
    assert "Does Temp-LoRA remember?" in (out / "report.md").read_text() and "Gap closed" in page
    assert "SRC" in page and "episode_" in page and "Motion MSE" in page and (out / "similarity.png").stat().st_size > 1000
    assert len(list((out / "videos").glob("*.mp4"))) == 2 and len(list((out / "videos").glob("*.gif"))) == 2
    from PIL import Image

    (strip, _) = sorted((out / "videos").glob("*_frames.png"))  # real / without / with, frames across
    width, height = Image.open(strip).size  # 16-pixel frames + 1-pixel gaps, upscaled 4x
    assert height == 3 * 17 * 4 and width % (17 * 4) == 0 and width > 17 * 4 and "_frames.png" in page


CHEAP = ["--steps", "2", "--rank", "4", "--steps-per-chunk", "2", "--draws", "3"]  # episodic-gated, made cheap


def test_generate_with_the_memory_preset_makes_the_demos_frames(tmp_path):
    """`sfvgen generate --temp-lora episodic-gated` from a world episode's first frame and actions gives the frames
    the demo's generator (trainer.predict + the TempLoRA callback) makes for that episode and seed."""
    import numpy as np

    from slowfast_vgen.datamodules.world import WorldRevisitDataset
    from slowfast_vgen.evaluation.revisit import generate_episodes
    from slowfast_vgen.experiment import DEFAULT_CONFIG, DEFAULT_WEIGHTS, load_system
    from slowfast_vgen.generate import main
    from slowfast_vgen.io import to_uint8_frames
    from slowfast_vgen.seeds import stable_seed
    from slowfast_vgen.temp_lora import TempLoRASettings

    cli = load_system(str(DEFAULT_CONFIG), str(DEFAULT_WEIGHTS), ["--trainer.enable_checkpointing", "false"])
    system, hp = cli.model, cli.datamodule.hparams
    system.sampler.num_inference_steps = 2
    system.sampler.guidance_image = system.sampler.guidance_text = 1.0  # the preset's guidance, as the demo sets it
    world = {k: hp[k] for k in ("cells", "cell_size", "view_size", "speed")}
    gen = system.generator
    episodes = WorldRevisitDataset(1, seed=10_007, chunk_frames=gen.chunk_frames, chunks_out=2,
                                   min_gap=gen.chunk_frames + gen.context_frames, **world)
    settings = TempLoRASettings.build({"preset": "episodic-gated", "rank": 4, "steps_per_chunk": 2, "draws": 3},
                                      reverse_actions=WorldRevisitDataset.reverse_actions)
    (demo,) = generate_episodes(system, episodes, settings, progress=False)
    assert [u.read for u in demo["updates"]][:1] == [False] and any(u.read for u in demo["updates"])  # the gate acted
    actions = tmp_path / "actions.txt"
    actions.write_text("\n".join(episodes[0]["actions"]) + "\n")
    seed = stable_seed(system.hparams.seed, "predict", 0)  # the demo's seed for its episode 0
    assert main(["--actions", str(actions), "--world-episode", "10007", "--seed", str(seed), "--upscale", "1",
                 "--npy", "--out", str(tmp_path / "v"), "--temp-lora", "episodic-gated", *CHEAP]) == 0
    frames = np.load(tmp_path / "v.npy", allow_pickle=False)
    assert np.array_equal(frames, to_uint8_frames(demo["video"][0], 1))


def test_memory_saved_after_a_chunk_continues_as_an_uninterrupted_run(tmp_path):
    """--memory-out after chunk 2, --memory-in for chunks 3-4: the frames of one uninterrupted run (Theta, Adam,
    the rehearsed episode and the sampler's noise all carried over)."""
    import numpy as np

    from slowfast_vgen.generate import main

    acts = ["go right", "go right", "go left", "go left"]
    for name, lines in (("all", acts), ("first", acts[:2]), ("rest", acts[2:])):
        (tmp_path / f"{name}.txt").write_text("\n".join(lines) + "\n")
    common = ["--upscale", "1", "--npy", "--seed", "5", *CHEAP]
    assert main(["--actions", str(tmp_path / "all.txt"), "--out", str(tmp_path / "all"), *common]) == 0
    assert main(["--actions", str(tmp_path / "first.txt"), "--out", str(tmp_path / "first"),
                 "--memory-out", str(tmp_path / "m.safetensors"), *common]) == 0
    assert main(["--actions", str(tmp_path / "rest.txt"), "--out", str(tmp_path / "rest"),
                 "--memory-in", str(tmp_path / "m.safetensors"), *common]) == 0
    whole, before, after = (np.load(tmp_path / f"{n}.npy") for n in ("all", "first", "rest"))
    assert np.array_equal(whole[: len(before)], before)
    assert np.array_equal(whole[len(before):], after[1:])  # after[0]: the saved context's last frame, decoded
    # the memory carried the episode: a learner that forgot it would rehearse less and diverge
    from safetensors import safe_open

    with safe_open(tmp_path / "m.safetensors", "pt") as f:
        assert {"episode.frames", "episode.text", "extra.context", "extra.sampler_state"} <= set(f.keys())
