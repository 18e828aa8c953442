"""Inverse dynamics model for video planning (paper Sec. 3.4, following Du et al. 2023).

Two consecutive frames -> the action that leads from the first to the second, over a fixed vocabulary of
text actions. Used to turn a generated video plan into executable actions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from slowfast_vgen.errors import UserInputError


class InverseDynamicsModel(nn.Module):
    """(B, 2, C, H, W) frame pairs in [0, 1] -> (B, len(actions)) logits."""

    def __init__(self, actions: Sequence[str], channels: int = 3, width: int = 32) -> None:
        super().__init__()
        if len(actions) < 2:
            raise UserInputError(f"InverseDynamicsModel needs at least 2 actions, got {list(actions)}")
        self.actions = list(actions)
        c = 3 * channels  # frame t, frame t+1, and their difference
        self.net = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, len(self.actions)),
        )

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        if pairs.ndim != 5 or pairs.shape[1] != 2:
            raise UserInputError(f"expected frame pairs (B, 2, C, H, W), got {tuple(pairs.shape)}")
        a, b = pairs[:, 0], pairs[:, 1]  # (B, C, H, W)
        return self.net(torch.cat([a, b, b - a], dim=1))

    @torch.no_grad()
    def infer(self, video: torch.Tensor) -> list[str]:
        """A video (T, C, H, W) -> the T-1 actions between its consecutive frames."""
        pairs = torch.stack([video[:-1], video[1:]], dim=1)  # (T-1, 2, C, H, W)
        return [self.actions[i] for i in self(pairs).argmax(1).tolist()]


@dataclass
class IDMResult:
    model: InverseDynamicsModel
    train_accuracy: float
    heldout_accuracy: float
    steps: int


def frame_pairs(videos: Sequence[torch.Tensor], actions: Sequence[Sequence[str]], vocab: Sequence[str]):
    """Videos (T, C, H, W) with per-transition actions (T-1 strings) -> pairs (N, 2, C, H, W), labels (N,)."""
    index = {a: i for i, a in enumerate(vocab)}
    pairs, labels = [], []
    for video, acts in zip(videos, actions):
        if len(acts) != video.shape[0] - 1:
            raise UserInputError(f"a video of {video.shape[0]} frames needs {video.shape[0] - 1} actions, got {len(acts)}")
        pairs.append(torch.stack([video[:-1], video[1:]], dim=1))
        labels.append(torch.tensor([index[a] for a in acts]))
    return torch.cat(pairs), torch.cat(labels)


def train_idm(
    train: tuple[torch.Tensor, torch.Tensor], heldout: tuple[torch.Tensor, torch.Tensor], vocab: Sequence[str],
    steps: int = 300, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
) -> IDMResult:
    """Fit the IDM on (pairs, labels) and report accuracy on held-out pairs."""
    torch.manual_seed(seed)
    model = InverseDynamicsModel(vocab, channels=train[0].shape[2])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(train[1]), (batch_size,), generator=g)
        loss = nn.functional.cross_entropy(model(train[0][idx]), train[1][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = [float((model(x).argmax(1) == y).float().mean()) for x, y in (train, heldout)]
    return IDMResult(model, acc[0], acc[1], steps)


def world_idm_data(num_episodes: int, seed: int, frames: int = 16, **world_kwargs):
    """Random-action rollouts of the built-in world: (pairs, labels) and the action vocabulary."""
    import numpy as np

    from slowfast_vgen.seeds import stable_seed
    from slowfast_vgen.simulators.world import ACTIONS, World

    vocab = list(ACTIONS)
    videos, actions = [], []
    for e in range(num_episodes):
        rng = np.random.default_rng(stable_seed("idm", seed, e))
        world = World(seed=int(rng.integers(1 << 31)), **{k: v for k, v in world_kwargs.items() if k != "speed"})
        acts = [vocab[int(i)] for i in rng.integers(0, len(vocab), size=frames - 1)]
        x, y = (int(v) for v in rng.integers(0, world.size, size=2))
        seq, _ = world.rollout(x, y, acts, world_kwargs.get("speed", 2))
        videos.append(torch.from_numpy(np.concatenate([world.render(x, y)[None], seq])))
        actions.append(acts)
    return frame_pairs(videos, actions, vocab), vocab
