"""Write policies: what each Temp-LoRA update step trains on (the clean clips, their clean frames, their text).

* :class:`ChunkWrite` is Algorithm 1a l.11: the chunk's own X_i (+) Y_i. With Table 4's variants: ``temp-lora``
  (Eq. 3: the whole clip noised, no text), ``original`` (clean input, noised output, the action's text), ``no-local``
  (a window drawn from the whole video so far instead of the local input / output).
* :class:`RehearsalWrite` (beyond the paper; docs/memory.md, Search 11): the chunk's clip and the episode so far,
  every window of the clip's length, each also reversed in time and followed by the way back from its end, under the
  actions' texts. Written one chunk at a time Theta forgets what earlier chunks wrote; rehearsed jointly it is read.

Both keep the episode they need in an :class:`Episode` (latents on the CPU; it grows with the video).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch

from slowfast_vgen.errors import UserInputError

log = logging.getLogger(__name__)

Clip = tuple[torch.Tensor, torch.Tensor]  # (clean latents (B, C, F, h, w), text (B, tokens, dim))


class Episode:
    """The episode written so far: its latent frames and, per frame, the text of its action and of the action's
    reverse (None: no reverse declared for it)."""

    def __init__(self, null: torch.Tensor | None = None) -> None:
        self.pieces: list[torch.Tensor] = []  # (B, C, f, h, w) on the CPU, in time order
        self.texts: list[tuple[torch.Tensor, torch.Tensor | None]] = []  # one (text, reverse text) per frame
        self.null = null  # the empty prompt, for reversed clips whose reverse is not known
        self.clip: tuple[int, int] | None = None  # (frames, input frames) of the last update's clip

    def __len__(self) -> int:
        return len(self.texts)

    def append(self, context: torch.Tensor, generated: torch.Tensor, text: torch.Tensor,
               reverse: torch.Tensor | None, null: torch.Tensor) -> None:
        """Chunk i's frames: X_0 (+) Y_0 for the first chunk, then Y_i (X_i is the end of what is there)."""
        new = generated.detach().cpu() if self.pieces else torch.cat([context, generated], 2).detach().cpu()
        self.pieces.append(new)
        self.texts += [(text, reverse)] * new.shape[2]
        self.null = null

    def frames(self) -> torch.Tensor:
        return torch.cat(self.pieces, dim=2)  # (B, C, F_total, h, w)

    def window(self, length: int, g: torch.Generator, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A window of ``length`` frames drawn uniformly from the episode (Table 4's "no-local"), and its text."""
        seq = self.frames()
        start = int(torch.randint(0, seq.shape[2] - length + 1, (1,), generator=g))
        return seq[:, :, start : start + length].to(like.device, like.dtype), self.texts[start + length - 1][0]

    # -- saved with the memory (--memory-out), so that a continued world rehearses what came before ------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        if not self.pieces:
            return {}
        rev = [r for _, r in self.texts]
        known = torch.tensor([r is not None for r in rev])
        fwd = torch.cat([t for t, _ in self.texts])  # (F, tokens, dim)
        return {"frames": self.frames(), "text": fwd, "reverse_text": torch.stack(
            [(r if r is not None else torch.zeros_like(self.texts[0][0]))[0] for r in rev]), "reverse_known": known,
            "null": self.null, "clip": torch.tensor(self.clip or (0, 0))}

    def load_tensors(self, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        if "frames" not in tensors:
            return
        self.pieces = [tensors["frames"]]
        fwd, rev, known = (tensors[k].to(device) for k in ("text", "reverse_text", "reverse_known"))
        self.texts = [(fwd[i : i + 1], rev[i : i + 1] if known[i] else None) for i in range(fwd.shape[0])]
        self.null = tensors["null"].to(device)
        clip = tuple(int(v) for v in tensors["clip"])
        self.clip = clip if clip[0] else None


class Waiting(NamedTuple):
    """``write_every``: the last chunk of new ground not written yet (the arguments of its write) and how many wait."""

    clip: torch.Tensor
    n_input: int
    text: torch.Tensor | None
    cond: torch.Tensor
    null: torch.Tensor
    chunk: int
    count: int


class ChunkWrite:
    """Alg. 1a l.11: each step trains on X_i (+) Y_i (Table 4's variants; see the module's docstring)."""

    def __init__(self, variant: str, clean_context: int) -> None:
        self.variant, self.clean_context = variant, clean_context
        self.needs_episode = variant == "no-local"

    def batch(self, episode: Episode, clip: torch.Tensor, n_input: int, text: torch.Tensor | None,
              cond: torch.Tensor, null: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, int, torch.Tensor]:
        """(clean clips (N, C, F, h, w), clean leading frames, text (N, tokens, dim)) of one step."""
        b = clip.shape[0]
        if self.variant == "no-local":
            return episode.window(clip.shape[2], g, clip)[0], 0, null.expand(b, *null.shape[1:])
        if self.variant == "original":  # clean input, noised output, with text (Eq. 1)
            if text is None:
                raise UserInputError("Temp-LoRA variant 'original' needs the action text of the chunk")
            return clip, n_input, text
        # Eq. 3: the whole clip noised (clean_context 0), under the empty prompt (or the action's text)
        return clip, min(self.clean_context, clip.shape[2] - 1), cond.expand(b, *cond.shape[1:])


class RehearsalWrite:
    """Each step trains on the chunk's clip and at most ``draws - 1`` clips of the episode so far (:meth:`clips`)."""

    needs_episode = True

    def __init__(self, draws: int, reverse: bool, turns: bool, clean_context: int) -> None:
        self.draws, self.reverse, self.turns, self.clean_context = draws, reverse, turns, clean_context
        self._unknown: set[int] = set()

    def batch(self, episode: Episode, clip: torch.Tensor, n_input: int, text: torch.Tensor | None,
              cond: torch.Tensor, null: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, int, torch.Tensor]:
        parts = self.clips(episode, clip.shape[2], n_input, clip.device, clip.dtype)
        if len(parts) > self.draws - 1:  # a random subset; the chunk's own clip is always in
            keep = torch.randperm(len(parts), generator=g)[: self.draws - 1].sort().values
            parts = [parts[int(i)] for i in keep]
        parts = [(clip, cond)] + parts
        clips = torch.cat([p for p, _ in parts])  # (N, C, F, h, w)
        texts = torch.cat([tx.expand(p.shape[0], *tx.shape[1:]) for p, tx in parts])
        return clips, min(self.clean_context, clips.shape[2] - 1), texts

    def clips(self, episode: Episode, length: int, n_input: int, device, dtype, last: bool = False) -> list[Clip]:
        """(clip, text) for every window of ``length`` frames in the episode so far: forwards under the action of its
        last frame (the last window only with ``last``: the chunk's own clip is added apart), reversed (``reverse``,
        under the reverse action of its first frame) and followed by its turn back (``turns``: the window's last
        ``n_input`` frames, then the ``length - n_input`` frames before them backwards, under the reverse action of
        its last frame; left out where that action has no declared reverse)."""
        seq = episode.frames()
        n_gen = length - n_input
        parts = []
        for start in range(seq.shape[2] - length + 1):
            end = start + length - 1
            window = seq[:, :, start : end + 1].to(device, dtype)
            if last or end < seq.shape[2] - 1:
                parts.append((window, episode.texts[end][0]))
            if self.reverse:
                back_text = episode.texts[start][1]
                parts.append((window.flip(2), episode.null if back_text is None else back_text))
            if self.turns and n_input >= 1:  # Alg. 1a's X_i (+) Y_i for "go back from here"
                back_text = episode.texts[end][1]
                if back_text is None:
                    self._note_unknown(end)
                    continue
                back = torch.cat([window[:, :, length - n_input :], window[:, :, length - 1 - n_gen : length - 1].flip(2)], 2)
                parts.append((back, back_text))
        return parts

    def _note_unknown(self, frame: int) -> None:
        if not self._unknown:
            log.warning("Temp-LoRA: an action of this episode has no declared reverse; its turn-back clips are left "
                        "out of the rehearsal (declare reversals with the data or --reverse-actions FILE)")
        self._unknown.add(frame)
