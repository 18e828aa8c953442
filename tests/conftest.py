"""Shared tiny fixtures: every test builds models of a few hundred kB and runs in seconds on 2 cores."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_system():
    from slowfast_vgen.models import HashTextEncoder, PixelShuffleAutoencoder, build_unet3d
    from slowfast_vgen.systems import SlowLearningSystem

    torch.manual_seed(0)
    return SlowLearningSystem(
        build_unet3d("tiny"), PixelShuffleAutoencoder(), HashTextEncoder(), lr=1e-3, num_inference_steps=4
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
