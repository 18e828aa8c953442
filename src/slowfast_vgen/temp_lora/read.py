"""Read policies: whether generation applies Theta to the next chunk (Phi + Theta) or samples with Phi alone.

* :class:`ReadAlways`: the paper (Alg. 1a l.8: every chunk is generated with Phi + Theta).
* :class:`ReadWhereRecognised` (beyond the paper; docs/memory.md, Search 12): a key / value lookup over the
  rehearsal's clips. Theta is applied only when the memory holds a clip that starts where the chunk starts, under
  (nearly) the chunk's action; elsewhere new ground is made by Phi alone, so content the memory does not hold is not
  bent towards content it does.
"""

from __future__ import annotations

import math

import torch

from slowfast_vgen.temp_lora.write import Episode, RehearsalWrite


class ReadAlways:
    def __call__(self, episode: Episode, context: torch.Tensor, text: torch.Tensor | None) -> tuple[bool, float]:
        return True, math.nan


class ReadWhereRecognised:
    """Read Theta where :meth:`recognition` is below ``gate``.

    Args:
        gate: the largest recognition ratio that reads (1: nearer than the median rehearsed clip).
        text_match: only the clips under the text nearest the chunk's action are looked at, and only if that
            text's similarity to the action (:func:`text_similarity`) is at least ``text_match`` (1: the same text, as discrete
            actions repeat; lower: free-text actions that are paraphrased, never repeated word for word).
        rehearsal: the write policy whose clips are looked up.
        by_text: the clips carry their actions' texts (``text_condition="action"``); else frames alone decide.
    """

    def __init__(self, gate: float, text_match: float, rehearsal: RehearsalWrite, by_text: bool) -> None:
        self.gate, self.text_match, self.rehearsal, self.by_text = gate, text_match, rehearsal, by_text

    def __call__(self, episode: Episode, context: torch.Tensor, text: torch.Tensor | None) -> tuple[bool, float]:
        recognition = self.recognition(episode, context, text)
        return recognition < self.gate, recognition

    def recognition(self, episode: Episode, context: torch.Tensor, text: torch.Tensor | None = None) -> float:
        """How well the memory knows where the next chunk starts: the mean squared distance from ``context``
        (B, C, f, h, w; its last frames) to the beginning of the nearest rehearsed clip under the chunk's action,
        over the median distance to the beginnings of all of them. Near 0: the memory holds a clip that starts here
        under this action (a return along a written path); near 1 or above: it does not (new ground, or the same
        ground under another action). ``inf`` before any chunk was written, or when no clip's text matches."""
        if not len(episode) or episode.clip is None:
            return math.inf
        length, n_input = episode.clip
        k = min(context.shape[2], n_input)
        if k == 0:
            return math.inf
        parts = self.rehearsal.clips(episode, length, n_input, context.device, context.dtype, last=True)
        if not parts:
            return math.inf
        query = context[:, :, -k:]
        dist = torch.stack([((clip[:, :, :k] - query) ** 2).mean() for clip, _ in parts])
        candidates = torch.ones(len(parts), dtype=torch.bool, device=dist.device)
        if self.by_text and text is not None:
            sims = torch.stack([text_similarity(tx, text) for _, tx in parts]).to(dist.device)
            best = sims.max()
            if best < self.text_match - 1e-6:
                return math.inf
            candidates = sims >= best - 1e-6  # the clips under the nearest text (the same text, when it repeats)
        nearest = dist[candidates].min()
        return float(nearest / dist.median().clamp_min(1e-12))


def text_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - |a - b|^2 / (|a|^2 + |b|^2) of two text embeddings: 1 only for the same text, 0 for orthogonal ones of
    equal norm, -1 for opposite ones (unlike the cosine, a rescaled embedding is another text)."""
    if a.shape != b.shape:
        return torch.tensor(-1.0)
    a, b = a.flatten().float(), b.flatten().float()
    return 1 - (a - b).pow(2).sum() / (a.pow(2).sum() + b.pow(2).sum()).clamp_min(1e-12)
