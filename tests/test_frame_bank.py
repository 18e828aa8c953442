"""The frame memory keyed by pose (generation/frame_bank.py, callbacks/frame_bank.py, `sfvgen demo --memory
frame-bank`), on tiny weights."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from slowfast_vgen.callbacks import FrameBank
from slowfast_vgen.datamodules.world import WorldRevisitDataset, collate_episode
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.generation import PoseFrameBank
from test_generation_tools import tiny_system


def latents(*values: float) -> torch.Tensor:
    """(1, 2, f, 2, 2) latents, frame k filled with values[k]."""
    return torch.tensor(values).view(1, 1, -1, 1, 1).expand(1, 2, -1, 2, 2).clone()


def test_a_frame_back_at_a_place_that_left_the_window_is_found_with_its_first_visit():
    # frames 0-5 go out along x, 6-7 turn away (another heading), frame 9 is back at frame 1's pose
    positions = np.array([[x, 0.0] for x in (0, 1, 2, 3, 4, 5, 5, 5, 7, 1, 9, 9)])
    angles = np.array([0, 0, 0, 0, 0, 0, 90, 180, 0, 0, 0, 0], dtype=float)
    bank = PoseFrameBank(positions, angles, position_tolerance=0.25, angle_tolerance=15)
    bank.remember(0, latents(*range(8)))  # frames 0-7 as generated
    context = latents(6, 7)  # f_p = 2: frames 6 and 7
    assert bank.recall(8, 4, context) == (1, 1)  # frame 8 + 1 is at frame 1's place
    shown = bank.show(context, 1, 9)
    assert torch.equal(shown[:, :, -1], latents(1)[:, :, 0]) and torch.equal(shown[:, :, 0], context[:, :, 0])
    assert torch.equal(context, latents(6, 7)) and bank.recalled == [(9, 1)]  # the video's own context untouched
    assert bank.recall(10, 2, context) == (2, None)  # places never seen before
    # a place whose only earlier frame is still in the window (frame 7): nothing to recall
    near = PoseFrameBank(positions, angles, 0.25, 15)
    near.match[1, 9] = near.match[9, 1] = False
    near.match[7, 9] = near.match[9, 7] = True
    near.remember(0, latents(*range(8)))
    assert near.recall(8, 4, context) == (4, None)
    # the same place at another heading is another view
    turned = PoseFrameBank(positions, np.where(np.arange(12) == 9, 90.0, angles), 0.25, 15)
    turned.remember(0, latents(*range(8)))
    assert turned.recall(8, 4, context) == (4, None)
    with pytest.raises(UserInputError, match="poses for 12 frames"):
        bank.remember(10, latents(1, 2, 3))
    with pytest.raises(UserInputError, match=r"positions must be \(T, k\)"):
        PoseFrameBank(positions[:, 0], None, 0.0)


def test_frame_bank_callback_splits_a_chunk_where_it_comes_back_and_shows_the_first_visit():
    system = tiny_system()
    episodes = WorldRevisitDataset(3, chunk_frames=2, chunks_out=2, min_gap=4)
    loader = DataLoader(episodes, batch_size=1, collate_fn=collate_episode)
    calls, sample = [], system.generator.sampler.sample

    def spy(denoise, context, n, text, null, generator):
        calls.append((system.generator.frame_bank, context.clone(), n))
        return sample(denoise, context, n, text, null, generator)

    system.generator.sampler.sample = spy
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[FrameBank()])
    out = trainer.predict(system, loader)
    assert system.generator.frame_bank is None  # removed after predict
    banks = list(dict.fromkeys(bank for bank, _, _ in calls))
    assert len(banks) == 3  # one per episode
    reads = 0
    for e, (bank, o) in enumerate(zip(banks, out)):
        positions, frame = episodes[e]["positions"], 1  # frame 0 given
        assert o["video"].shape[1] == len(bank) and len(bank.frames) == len(bank)  # every frame kept, none twice
        recalled = dict(bank.recalled)
        for _, shown, n in (c for c in calls if c[0] is bank):
            if frame in recalled:  # sampled from the first visit of its place, as generated
                k = recalled[frame]
                assert torch.equal(shown[:, :, -1], bank.frames[k]) and torch.equal(positions[k], positions[frame])
                assert k < frame - 2  # not in the window
            frame += n
        assert frame == len(bank)  # the parts add up to the episode
        assert o["recalled_chunks"] == sorted({(j - 1) // 2 for j in recalled})
        reads += len(recalled)
    assert reads  # the world's episodes come back: some frames were read from the bank


def test_frame_bank_needs_poses_and_a_whole_episode():
    from slowfast_vgen.callbacks.frame_bank import episode_bank

    with pytest.raises(UserInputError, match="episode 'e7' has no poses"):
        episode_bank({"episode": "e7", "poses": torch.zeros(0)})
    system = tiny_system()
    system.generator.frame_bank = PoseFrameBank(np.zeros((5, 2)), None, 0.0)
    with pytest.raises(UserInputError, match="frame bank needs the episode from its first frames"):
        next(system.generator.stream(None, ["go right"], context_latents=torch.zeros(1, 12, 2, 8, 8)))


@pytest.mark.slow
def test_demo_with_the_frame_bank_names_it_in_the_report(tmp_path):
    from slowfast_vgen.demo import main

    out = tmp_path / "demo"
    assert main(["--weights", str(tmp_path / "none.safetensors"), "--train-minutes", "0.02", "--episodes", "2",
                 "--chunks-out", "2", "--steps", "2", "--memory", "frame-bank", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["memory"] == "frame-bank" and "temp_lora" not in results["settings"]
    assert all(e["clip_passes_with"] is None and e["recalled_chunks_with"] for e in results["episodes"])
    report = (out / "report.md").read_text()
    assert "Does the frame bank remember?" in report and "Does Temp-LoRA" not in report
    assert "| with the frame bank |" in report and "with the frame bank" in (out / "index.html").read_text()
