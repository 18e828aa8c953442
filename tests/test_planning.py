"""Inverse dynamics model (Sec. 3.4) on held-out episodes of the built-in world."""

import pytest
import torch

from slowfast_vgen.errors import UserInputError
from slowfast_vgen.planning.idm import InverseDynamicsModel, train_idm, world_idm_data


def test_idm_reaches_high_heldout_accuracy_on_the_world():
    train, vocab = world_idm_data(40, seed=0)
    heldout, _ = world_idm_data(10, seed=1)  # other worlds, other episodes
    result = train_idm(train, heldout, vocab, steps=250)
    # "stay" vs a move is ambiguous only on a uniform view; the world has no large uniform areas at 16 px
    assert result.heldout_accuracy >= 0.9, result
    video = torch.cat([heldout[0][:5, 0], heldout[0][4:5, 1]])  # 6 consecutive frames of one episode
    assert result.model.infer(video) == [vocab[i] for i in heldout[1][:5].tolist()]


def test_idm_input_checks():
    with pytest.raises(UserInputError, match="at least 2"):
        InverseDynamicsModel(["go"])
    with pytest.raises(UserInputError, match=r"\(B, 2, C, H, W\)"):
        InverseDynamicsModel(["a", "b"])(torch.zeros(1, 3, 3, 8, 8))
