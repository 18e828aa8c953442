"""The batch contract between datamodules and Lightning systems, and the mixed-length collate.

Every datamodule yields samples (dicts) with:

* ``video``: float tensor ``(T, C, H, W)`` in [0, 1]: ``n_context`` clean past frames, then the frames to
  generate (``T = f_p + f_g``, at most the context window, 32 in the paper);
* ``action``: the free-text action that drives the generated frames (e.g. ``"go left"``);
* ``n_context``: int, f_p >= 1 (= 1 for first-frame-only domains, paper Sec. 3.1.2 "Robot");
* ``seed``: int, unique per sample of the dataset; systems derive the sample's diffusion noise from it
  (mixed with the epoch), so training is reproducible across restarts and process counts;
* optionally ``latents``: ``(C, F, h, w)`` precomputed by the frozen autoencoder (latent cache).

:class:`MixedLengthCollate` batches them: ``video`` -> ``(B, T, C, H, W)``, ``n_context`` and ``seed`` ->
``(B,)`` long tensors, ``action`` -> list of B strings, after cropping every sample of the batch to one
length drawn in ``[min_frames, max_frames]`` (paper App. C.1: mixed lengths inside a 32-frame window).

**The episode contract** (one long video with its action stream; :func:`check_episode`): what the built-in
world (``simulators.world.revisit_episode``), recorded shard episodes (``datamodules.recorded``), the planning
tasks (``planning.tasks.Episode.as_dict``) produce, and what long-video generation (``predict``), the revisit
benchmark, the tables and the slow-fast loop (Alg. 1b) consume. A dict with

* ``frames``: float ``(T, C, H, W)`` in [0, 1], the real video; ``first``: its first ``k >= 1`` frames (the
  start the generator is given);
* ``actions``: one per chunk after ``first``: a text (a chunk of ``chunk_frames`` frames) or ``(text, n)`` (a
  chunk of ``n`` frames, where a recording's actions change), so ``k + sum(n) == T``;
* ``seed``: int, the episode's number (the generation seed derives from it);
* optional: ``revisits`` (pairs ``(i, [j, ...])``: frame j shows the place of earlier frame i), ``positions`` or
  ``poses`` (one row per frame), ``fps`` (frames per second), ``domain`` (e.g. ``"world"``, ``"vizdoom"``),
  ``episode`` (a name), ``pattern`` (a recording's revisit pattern, e.g. Memory Maze's ``loop``: the revisit
  benchmark's statistics are split by it), task extras (``steps``, ``info``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from slowfast_vgen.errors import UserInputError
from slowfast_vgen.seeds import stable_seed  # noqa: F401 (the datamodules' seeds)


EPISODE_KEYS = ("first", "frames", "actions", "seed")


def check_episode(ep: Any, chunk_frames: int | None = None, where: str = "episode") -> Any:
    """Check ``ep`` against the episode contract (module docstring); return it unchanged.

    ``chunk_frames``: the length of a chunk whose action is a bare text (needed to check the total length when
    some are). Every failure is one :class:`UserInputError` naming the key, the value and what was expected.
    """
    if not hasattr(ep, "keys"):
        raise UserInputError(f"{where}: expected a dict with {list(EPISODE_KEYS)}, got {type(ep).__name__}")
    missing = [k for k in EPISODE_KEYS if k not in ep]
    if missing:
        raise UserInputError(f"{where}: missing {missing}; an episode holds {list(EPISODE_KEYS)} "
                             f"(the episode contract, datamodules/common.py)")
    frames, first = ep["frames"], ep["first"]
    if not (torch.is_tensor(frames) and frames.ndim == 4 and frames.is_floating_point()):
        shape = tuple(frames.shape) if torch.is_tensor(frames) else type(frames).__name__
        raise UserInputError(f"{where}: frames must be a float (T, C, H, W) tensor in [0, 1], got {shape}")
    t = frames.shape[0]
    if not (torch.is_tensor(first) and first.ndim == 4 and 1 <= first.shape[0] <= t
            and first.shape[1:] == frames.shape[1:]):
        shape = tuple(first.shape) if torch.is_tensor(first) else type(first).__name__
        raise UserInputError(f"{where}: first must be the first k >= 1 frames, (k, {', '.join(map(str, frames.shape[1:]))}), "
                             f"got {shape}")
    lengths = []
    for c, a in enumerate(ep["actions"]):
        if isinstance(a, str):
            lengths.append(chunk_frames)
        elif isinstance(a, (tuple, list)) and len(a) == 2 and isinstance(a[0], str) and int(a[1]) >= 1:
            lengths.append(int(a[1]))
        else:
            raise UserInputError(f"{where}: actions[{c}] = {a!r}; expected a text or (text, frames >= 1)")
    if None not in lengths and first.shape[0] + sum(lengths) != t:
        raise UserInputError(f"{where}: {first.shape[0]} first frame(s) + chunks of {sum(lengths)} frames != the "
                             f"{t} frames of the episode")
    for i, js in ep.get("revisits") or []:
        bad = [j for j in js if not 0 <= int(i) < int(j) < t]
        if bad:
            raise UserInputError(f"{where}: revisit pair ({i}, {bad}) outside 0 <= first visit < later visit < {t}")
    for key in ("positions", "poses"):
        rows = ep.get(key)
        if rows is not None and len(rows) not in (0, t):
            raise UserInputError(f"{where}: {key} has {len(rows)} rows for {t} frames (one per frame, or none)")
    fps = ep.get("fps")
    if fps is not None and not (isinstance(fps, (int, float)) and fps > 0):
        raise UserInputError(f"{where}: fps = {fps!r}; expected a positive number")
    if ep.get("domain") is not None and not isinstance(ep["domain"], str):
        raise UserInputError(f"{where}: domain = {ep['domain']!r}; expected a name")
    return ep


class MixedLengthCollate:
    """Stack samples after cropping the batch to a common length in ``[min_frames, max_frames]``.

    The length is a function of the batch's sample seeds, so it is reproducible. Each sample drops its
    oldest context frames first and only then generated frames from the end, keeping ``n_context >= 1``:
    the generated frames stay those that the sample's action produced (cropping only from the end would
    turn context frames of the previous action into "generated" frames labelled with this one).
    """

    def __init__(self, min_frames: int | None = None, max_frames: int | None = None) -> None:
        if min_frames is not None and max_frames is not None and min_frames > max_frames:
            raise UserInputError(f"min_frames ({min_frames}) must be <= max_frames ({max_frames})")
        if min_frames is not None and min_frames < 2:
            raise UserInputError(f"min_frames must be >= 2 (one context + one generated frame), got {min_frames}")
        self.min_frames, self.max_frames = min_frames, max_frames

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise UserInputError("MixedLengthCollate: empty batch")
        shortest = min(s["video"].shape[0] for s in samples)
        hi = min(shortest, self.max_frames or shortest)
        lo = min(hi, self.min_frames or hi)
        length = lo + stable_seed(*[int(s["seed"]) for s in samples]) % (hi - lo + 1)
        return stack_samples([crop_sample(s, length) for s in samples])


def crop_sample(sample: dict[str, Any], length: int) -> dict[str, Any]:
    """Crop to ``length`` frames: oldest context frames first, then generated frames from the end."""
    n_context = int(sample["n_context"])
    keep_gen = min(sample["video"].shape[0] - n_context, length - 1)
    first = n_context - (length - keep_gen)  # frames dropped from the start
    out = {**sample, "video": sample["video"][first : first + length], "n_context": length - keep_gen}
    if "latents" in sample:
        out["latents"] = sample["latents"][:, first : first + length]  # (C, F, h, w)
    if "frame" in sample:
        out["frame"] = int(sample["frame"]) + first
    return out


def stack_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Samples of equal length -> a batch (tensors stacked, other keys as lists)."""
    batch: dict[str, Any] = {
        "video": torch.stack([s["video"] for s in samples]),  # (B, T, C, H, W)
        "n_context": torch.tensor([int(s["n_context"]) for s in samples]),  # (B,)
        "seed": torch.tensor([int(s["seed"]) for s in samples], dtype=torch.long),  # (B,)
        "action": [str(s["action"]) for s in samples],
    }
    if all("latents" in s for s in samples):
        batch["latents"] = torch.stack([s["latents"] for s in samples])  # (B, C, F, h, w)
    for key in samples[0]:
        if key not in batch and key != "latents":
            batch[key] = [s[key] for s in samples]  # extra metadata (domain, episode, ...) as lists
    return batch


class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` (shuffled per epoch from ``seed``) that works without a process group too.

    Being a ``DistributedSampler``, Lightning leaves it in place under DDP instead of wrapping it and calls its
    ``set_epoch``; the rank split is the usual one, so each sample of an epoch is seen once across ranks.
    """

    def __init__(self, dataset: Dataset, shuffle: bool = True, seed: int = 0) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        super().__init__(
            dataset,
            num_replicas=None if distributed else 1,
            rank=None if distributed else 0,
            shuffle=shuffle,
            seed=seed,
        )


class ResumableDataLoader(StatefulDataLoader):
    """torchdata's ``StatefulDataLoader`` over a :class:`ResumableSampler`: its position in the epoch is saved in
    Lightning checkpoints (Lightning checkpoints stateful loaders natively) and restored on resume, where the
    next iteration fast-forwards the sampler past the batches already trained on, without loading them, in the
    main process or in workers (exact resume; tests/test_slow_training.py)."""

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=batch_size, sampler=ResumableSampler(dataset, shuffle, seed), **kwargs)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "sampler_epoch": int(self.sampler.epoch)}  # outside Lightning too

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.sampler.set_epoch(int(state.pop("sampler_epoch", self.sampler.epoch)))
        super().load_state_dict(state)
