"""Streaming long-video generation from a first frame and a stream of text actions (Sec. 3.2, Alg. 1a).

Chunks are generated in latent space one after another, each conditioned on the previous chunk's clean
latents (no decode/re-encode between chunks). With a :class:`TempLoRA` learner attached, Theta is
updated after every chunk on the concatenated input and output latents (Alg. 1a lines 11-14) before
the next chunk is generated with Phi + Theta. Only the current context is kept, so memory does not grow
with the video's length; chunks are handed out as they are made (``stream``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from slowfast_vgen.diffusion.sampling import ChunkSampler
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.generation.frame_bank import PoseFrameBank
from slowfast_vgen.temp_lora import TempLoRA, UpdateRecord
from slowfast_vgen.models import FrameAutoencoder, TextEncoder, check_video, unet_output

log = logging.getLogger(__name__)


@dataclass
class Chunk:
    """One generated chunk: its index, action, new latents (B, C, f_g, h, w) and pixels (B, f_g, C, H, W)."""

    index: int
    action: str
    latents: torch.Tensor
    video: torch.Tensor | None
    update: UpdateRecord | None
    sampler_state: torch.Tensor | None = None  # the sampling noise generator's state after this chunk
    recalled: int | None = None  # the frame a frame bank showed the model for this chunk (None: none)


def chunk_action(item: str | tuple[str, int] | list, chunk_frames: int) -> tuple[str, int]:
    """``"text"`` -> (text, chunk_frames); ``(text, n)`` -> (text, n) with n >= 1 checked."""
    if isinstance(item, str):
        return item, chunk_frames
    try:
        text, n = item
        n = int(n)
    except (TypeError, ValueError):
        raise UserInputError(f"chunk action {item!r}: expected a text or (text, n_frames)") from None
    if not isinstance(text, str) or n < 1:
        raise UserInputError(f"chunk action {item!r}: expected a text and n_frames >= 1")
    return text, n


class LongVideoGenerator:
    """Generate arbitrarily long action-driven videos chunk by chunk, optionally with Temp-LoRA memory.

    Args:
        unet, autoencoder, text_encoder: the slow-learning networks (Phi); the UNet may carry a Temp-LoRA.
        sampler: the chunk sampler (DPM-Solver, three-way guidance).
        chunk_frames: f_g, frames generated per chunk.
        context_frames: f_p, clean frames conditioning each chunk (the last ones generated); default f_g.
        temp_lora: the fast learner, or None for "without Temp-LoRA".
        single_frame_context: Table 4's "wo chunk input": condition on the last frame only.
        merge_for_sampling: sample with Theta merged into the weights (faster; extra memory for copies of
            the wrapped weights; outputs equal up to float rounding).

    ``frame_bank`` (an attribute, None by default): one episode's memory of frames keyed by pose
    (:class:`PoseFrameBank`), set per episode by the :class:`~slowfast_vgen.callbacks.FrameBank` callback.
    """

    def __init__(
        self,
        unet: nn.Module,
        autoencoder: FrameAutoencoder,
        text_encoder: TextEncoder,
        sampler: ChunkSampler,
        chunk_frames: int = 8,
        context_frames: int | None = None,
        temp_lora: TempLoRA | None = None,
        single_frame_context: bool = False,
        merge_for_sampling: bool = False,
    ) -> None:
        if chunk_frames < 1:
            raise UserInputError(f"chunk_frames must be >= 1, got {chunk_frames}")
        self.unet, self.autoencoder, self.text_encoder, self.sampler = unet, autoencoder, text_encoder, sampler
        self.chunk_frames = chunk_frames
        self.context_frames = 1 if single_frame_context else (context_frames or chunk_frames)
        self.temp_lora = temp_lora
        self.frame_bank: PoseFrameBank | None = None
        self.merge_for_sampling = merge_for_sampling
        self.on_chunk_end: list[Callable[[Chunk], None]] = []
        self.progress = False  # a bar per video (chunk i of n, seconds of sampling and of the update), for callers
        # such as trainer.predict whose own bar moves once per video

    def denoise(self, z_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return unet_output(self.unet, z_t, t, text)

    @torch.no_grad()
    def stream(
        self,
        first: torch.Tensor,
        actions: Iterable[str | tuple[str, int]],
        seed: int = 0,
        decode: bool = True,
        progress: bool | None = None,
        context_latents: torch.Tensor | None = None,
        sampler_state: torch.Tensor | None = None,
    ) -> Iterator[Chunk]:
        """Yield chunks for ``actions`` after ``first`` (B, T0, C, H, W) pixels in [0, 1].

        An action is a text (a chunk of ``chunk_frames`` frames) or ``(text, n_frames)``: recorded episodes
        change action at any frame, and their chunks end where the action does (the model is trained on mixed
        clip lengths, Sec. 3.1). ``context_latents`` (B, C, f, h, w) continues a stopped world instead of encoding ``first``,
        and ``sampler_state`` (a chunk's ``sampler_state``) continues its noise where it stopped. ``progress``: a bar
        per chunk (default: the generator's ``progress``).
        """
        bank = self.frame_bank
        if bank is not None and context_latents is not None:
            raise UserInputError("a frame bank needs the episode from its first frames (their poses are its frames "
                                 "0, 1, ...): continuing a stopped world with context_latents is not supported")
        if context_latents is None:
            check_video(first, "first frames")
            context_latents = self.autoencoder.encode(first)  # Alg. 1a l.1: X_0 = VAE_ENCODE(X_0)
        if bank is not None:
            bank.remember(0, context_latents)
        frame = context_latents.shape[2]  # the index of the next frame to generate
        device = context_latents.device
        b = context_latents.shape[0]
        if self.temp_lora is not None and b != 1:
            raise UserInputError(f"Temp-LoRA memory is per episode: generate one episode at a time, got batch {b}")
        null = self.text_encoder([""]).to(device)
        generator = torch.Generator(device=device).manual_seed(seed)
        context = context_latents[:, :, -self.context_frames :]
        sharded = self.temp_lora is not None and self.temp_lora.sharded
        if sharded and self.merge_for_sampling:
            log.warning("merge_for_sampling is off: the UNet is sharded by FSDP, Theta is applied unmerged")
        if sampler_state is not None:  # a continued world draws what the uninterrupted one would have
            generator.set_state(sampler_state)
        bar = tqdm(actions, desc="chunks", unit="chunk", leave=False,
                   disable=not (self.progress if progress is None else progress))
        for i, item in enumerate(bar):
            action, n_frames = chunk_action(item, self.chunk_frames)
            text = self.text_encoder([action] * b).to(device)  # Alg. 1a l.7: C_i from the user
            read, recognition = False, math.nan
            looked = time.perf_counter()
            if self.temp_lora is not None:  # the read policy: Phi + Theta (l.8), or Phi alone where it withholds Theta
                read, recognition = self.temp_lora.reads(context, text)  # (with write_every: chunks waiting written)
                self.temp_lora.set_enabled(read)
            start = time.perf_counter()  # the sampling's; the lookup (and a write before reading) counts as update
            merge = read and self.merge_for_sampling and not sharded
            with self.temp_lora.merged() if merge else contextlib.nullcontext():
                if bank is None:
                    z = self.sampler.sample(self.denoise, context, n_frames, text, null, generator)  # l.8
                    new = z[:, :, context.shape[2] :]  # Y_i, (B, C, f_g, h, w)
                    recalled = None
                else:
                    new, recalled = self.sample_with_bank(bank, frame, context, n_frames, text, null, generator)
            frame += n_frames
            sampled = time.perf_counter()
            update = None
            if self.temp_lora is not None:  # Alg. 1a l.11-14
                self.temp_lora.set_enabled(True)  # the update trains Theta, read or not
                back = self.temp_lora.reverse_action(action)
                back_text = None if back is None else self.text_encoder([back] * b).to(device)
                update = self.temp_lora.update(context, new, null, text, back_text, recognised=read)
                update.read, update.recognition = read, recognition
                updated = time.perf_counter() - sampled + start - looked
                bar.set_postfix_str(f"sampling {sampled - start:.1f} s, update {updated:.1f} s"
                                    + (", Theta read" if read else "") + ("" if update.written else ", not written"),
                                    refresh=False)
            chunk = Chunk(i, action, new, self.autoencoder.decode(new) if decode else None, update,
                          generator.get_state(), recalled)
            for hook in self.on_chunk_end:
                hook(chunk)
            yield chunk
            context = torch.cat([context, new], dim=2)[:, :, -self.context_frames :]  # l.5: X_{i+1} <- Y_i

    def sample_with_bank(self, bank: PoseFrameBank, frame: int, context: torch.Tensor, n_frames: int,
                         text: torch.Tensor, null: torch.Tensor, generator: torch.Generator,
                         ) -> tuple[torch.Tensor, int | None]:
        """A chunk's new latents (frames ``frame`` ...) sampled in parts, split where a frame comes back to a place
        that has left the window, which is sampled with the first visit as its newest context frame
        (:mod:`slowfast_vgen.generation.frame_bank`); and the first frame shown (None: none)."""
        parts, recalled, window, done = [], None, context, 0
        while done < n_frames:
            offset, k = bank.recall(frame + done, n_frames - done, window)
            shown = window
            if offset == 0:  # this frame is back at a place the window does not show
                shown = bank.show(window, k, frame + done)
                recalled = k if recalled is None else recalled
                offset = n_frames - done
            z = self.sampler.sample(self.denoise, shown, offset, text, null, generator)
            part = z[:, :, window.shape[2] :]
            bank.remember(frame + done, part)
            parts.append(part)
            window = torch.cat([window, part], dim=2)[:, :, -context.shape[2] :]
            done += offset
        return torch.cat(parts, dim=2), recalled

    def generate(self, first: torch.Tensor, actions: Iterable[str | tuple[str, int]], seed: int = 0, progress: bool = False) -> torch.Tensor:
        """The whole video (B, T0 + n * f_g, C, H, W) on the CPU: the first frames, then every chunk."""
        parts = [first.cpu()]
        parts += [c.video.cpu() for c in self.stream(first, actions, seed=seed, progress=progress)]
        return torch.cat(parts, dim=1)
