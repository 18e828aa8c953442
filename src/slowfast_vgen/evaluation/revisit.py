"""The revisit benchmark: generate episodes that leave a place and come back, with and without Temp-LoRA,
and measure consistency (SRC, SCuts) and fidelity at revisited frames against the real environment.

Generation goes through ``trainer.predict`` with the :class:`slowfast_vgen.callbacks.TempLoRA` callback,
exactly as a user would run it.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from slowfast_vgen.callbacks import FrameBank, TempLoRA
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.metrics import LPIPS, PSNR, SSIM, SceneCuts, SceneRevisitConsistency
from slowfast_vgen.metrics.lpips import nearest_upsample


@dataclass
class EpisodeResult:
    """One generated episode and its scores."""

    seed: int
    video: torch.Tensor  # (T, C, H, W) generated, first frame included
    real: torch.Tensor  # (T, C, H, W) the environment's frames
    revisits: list[tuple[int, list[int]]]
    scores: dict[str, float] = field(default_factory=dict)
    similarity: list[tuple[int, float]] = field(default_factory=list)  # (frame, cos sim to its first visit)
    rollbacks: int = 0
    read_chunks: list[int] | None = None  # chunks that generation applied Theta to (``read_gate``); None: no memory
    recognition: list[float | None] | None = None  # ``read_gate``: each chunk's recognition ratio (None: inf / not gated)
    pattern: str | None = None  # the recorded episode's revisit pattern (Memory Maze: retrace, loop, ...), if any
    clip_passes: int | None = None  # the memory's writes: clips passed forward + backward (None: no memory)
    recalled_chunks: list[int] | None = None  # chunks a frame bank showed an earlier frame (None: no frame bank)


class EpisodeLines(L.Callback):
    """Prints ``episode i/n: s`` to stderr after each generated episode (long benchmarks run in the background)."""

    def __init__(self, total: int) -> None:
        self.total, self.start = total, time.perf_counter()

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        print(f"episode {batch_idx + 1}/{self.total}: {time.perf_counter() - self.start:.0f} s", file=sys.stderr,
              flush=True)


def generate_episodes(system: L.LightningModule, episodes: Any, temp_lora: Any, progress: bool = True,
                      frame_bank: bool = False) -> list[dict]:
    """``trainer.predict`` over an episode dataset; ``temp_lora``: the TempLoRA callback's settings (a
    :class:`slowfast_vgen.temp_lora.TempLoRASettings` or a dict), or None: without Temp-LoRA; ``frame_bank``: with
    the :class:`slowfast_vgen.callbacks.FrameBank` callback (a memory of frames keyed by pose)."""
    from slowfast_vgen.datamodules.world import collate_episode

    callbacks: list[L.Callback] = [TempLoRA(temp_lora)] if temp_lora is not None else []
    if frame_bank:
        callbacks.append(FrameBank())
    if progress and not sys.stderr.isatty():  # a log file gets the bar only at the end: a line per episode instead
        callbacks.append(EpisodeLines(len(episodes)))
    trainer = L.Trainer(
        accelerator="auto", devices=1, logger=False, callbacks=callbacks, enable_progress_bar=progress,
        enable_model_summary=False, inference_mode=False,
    )
    loader = DataLoader(episodes, batch_size=1, collate_fn=collate_episode)
    # predict's bar moves per episode; the generator's per chunk, in a terminal only (in a notebook it would write
    # into Lightning's rich console, which renders through IPython's display and recurses)
    shown, system.generator.progress = system.generator.progress, progress and sys.stderr.isatty()
    try:
        return trainer.predict(system, dataloaders=loader)
    finally:
        system.generator.progress = shown


def score_episodes(outputs: list[dict], episodes: Any, src: SceneRevisitConsistency,
                   chunk_frames: int | None = None, context_frames: int | None = None) -> list[EpisodeResult]:
    """Scores of each generated episode. With ``chunk_frames`` and ``context_frames`` (how the video was
    generated) also the memory scores: ``Revisit PSNR`` / ``Revisit MSE`` on the revisited pixels that left the
    context window, against the first visit as generated (:mod:`slowfast_vgen.evaluation.memory`), and
    ``Other PSNR``, the action-following error (Motion MSE) of the frames that are not later visits as a PSNR:
    what memory may damage elsewhere."""
    from slowfast_vgen.evaluation.memory import revisit_frame_score, revisit_memory_score

    results = []
    from slowfast_vgen.datamodules.common import check_episode

    lpips = LPIPS()  # x100, per frame pair, mean over the pairs

    def lpips_of(frames: torch.Tensor, reference: torch.Tensor) -> float:
        lpips.reset()
        lpips.update(nearest_upsample(frames)[None], nearest_upsample(reference)[None])
        return float(lpips.compute())

    for out, ep in zip(outputs, (episodes[i] for i in range(len(episodes)))):
        check_episode(ep, chunk_frames, where=f"episode {ep.get('episode', ep.get('seed'))}")
        video, real = out["video"][0], ep["frames"]
        revisits = [(i, list(js)) for i, js in ep["revisits"] if js]
        later = sorted(j for _, js in revisits for j in js)
        cuts = SceneCuts()
        cuts.update(video[None])
        scores = {"SRC": math.nan, "SCuts": math.nan, "PSNR": math.nan, "SSIM": math.nan, "LPIPS": math.nan}
        similarity = []
        if later:  # a recorded episode may have no frame that needs memory: its revisit scores are NaN
            psnr, ssim = PSNR(max_db=100.0), SSIM()
            psnr.update(video[later][None], real[later][None])
            ssim.update(video[later][None], real[later][None])
            ((src_score, _),) = src.video_scores(video[None], [revisits])
            feats = {}
            index = sorted({i for i, _ in revisits} | set(later))
            for k, f in zip(index, src.embed(video[index])):
                feats[k] = f
            similarity = [(j, float(torch.nn.functional.cosine_similarity(feats[i], feats[j], dim=0)))
                          for i, js in revisits for j in js]
            scores.update({"SRC": 100 * src_score, "PSNR": float(psnr.compute()), "SSIM": float(ssim.compute()),
                           "LPIPS": lpips_of(video[later], real[later])})
        scores["SCuts"] = float(cuts.compute())
        if "positions" in ep:  # the built-in world: the camera of every pixel is known
            following = action_following(video, ep["positions"], ep["world_size"])  # decoded: already in [0, 1]
            if chunk_frames is not None and context_frames is not None:
                memory = revisit_memory_score(video, revisits, ep["positions"], ep["world_size"], chunk_frames,
                                              context_frames)
                other = action_following(video, ep["positions"], ep["world_size"], skip=set(later))["Motion MSE"]
                following.update({k: memory[k] for k in ("Revisit PSNR", "Revisit MSE")},
                                 **{"Other PSNR": min(100.0, 10 * math.log10(1 / max(other, 1e-10)))})
        else:  # recorded episodes: revisits are whole frames at a matching pose; "Other PSNR" is fidelity
            memory = revisit_frame_score(video, revisits)
            revisited = set(later)
            others = [t for t in range(1, video.shape[0]) if t not in revisited]
            other = float(((video[others].float() - real[others].float()) ** 2).mean())
            pairs = [(i, j) for i, js in revisits for j in js]  # LPIPS of each later visit against its first one
            following = {"Revisit PSNR": memory["Revisit PSNR"], "Revisit MSE": memory["Revisit MSE"],
                         "Revisit LPIPS": lpips_of(video[[j for _, j in pairs]], video[[i for i, _ in pairs]])
                         if pairs else math.nan,
                         "Other PSNR": min(100.0, 10 * math.log10(1 / max(other, 1e-10)))}
        updates = [u for u in out.get("updates", []) if u is not None]
        results.append(EpisodeResult(
            seed=int(ep["seed"]), video=video, real=real, revisits=revisits,
            scores={**scores, **following},
            similarity=sorted(similarity), rollbacks=sum(u.rolled_back for u in updates),
            read_chunks=[u.chunk for u in updates if u.read] if updates else None,
            recognition=[u.recognition if math.isfinite(u.recognition) else None for u in updates] if updates else None,
            pattern=ep.get("pattern"), clip_passes=sum(u.clip_passes for u in updates) if updates else None,
            recalled_chunks=out.get("recalled_chunks"),
        ))
    return results


def action_following(video: torch.Tensor, positions: torch.Tensor, world_size: int,
                     skip: set[int] | frozenset[int] = frozenset()) -> dict[str, float]:
    """Does the video move as its actions say? Mean squared error of each frame against the previous frame
    moved by the camera step between them ("Motion MSE": the real video scores 0), and against the previous
    frame unmoved ("Still MSE": what a model that ignores the action would score), on the pixels both frames
    show. Needs only the camera positions, so the content a model invents for unseen places is not held
    against it (it cannot know it); ``video`` (T, C, V, V), ``positions`` (T, 2) as (x, y) on a torus;
    frames in ``skip`` are not scored.
    """
    if video.shape[0] != positions.shape[0] or video.shape[0] < 2:
        raise UserInputError(f"action_following: need >= 2 frames and one position per frame, got {video.shape[0]} "
                             f"frames and {positions.shape[0]} positions")
    view = video.shape[-1]
    motion, still = [], []
    for t in range(1, video.shape[0]):
        if t in skip:
            continue
        dx, dy = ((int(positions[t, k]) - int(positions[t - 1, k]) + world_size // 2) % world_size - world_size // 2
                  for k in range(2))
        if abs(dx) >= view or abs(dy) >= view:
            continue  # no overlap: nothing to check
        # pixel (r, c) of frame t shows what pixel (r + dy, c + dx) of frame t - 1 showed
        rows, cols = slice(max(0, -dy), view - max(0, dy)), slice(max(0, -dx), view - max(0, dx))
        prev_rows, prev_cols = slice(max(0, dy), view - max(0, -dy)), slice(max(0, dx), view - max(0, -dx))
        now = video[t, :, rows, cols].float()
        motion.append(float(((now - video[t - 1, :, prev_rows, prev_cols].float()) ** 2).mean()))
        still.append(float(((now - video[t - 1, :, rows, cols].float()) ** 2).mean()))
    if not motion:
        raise UserInputError("action_following: no two consecutive frames overlap (camera steps >= the view size)")
    return {"Motion MSE": statistics.fmean(motion), "Still MSE": statistics.fmean(still)}


def summarize(results: list[EpisodeResult]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation over episodes of each score (``n``: episodes that have it; a recorded
    episode with no frame that needs memory has no revisit scores)."""
    out = {}
    for key in results[0].scores:
        values = [r.scores[key] for r in results if not math.isnan(r.scores[key])]
        out[key] = {"mean": statistics.fmean(values) if values else math.nan,
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}
    return out


def paired_difference(with_lora: list[EpisodeResult], without: list[EpisodeResult], key: str) -> dict[str, float]:
    """Per-episode difference (with - without): mean, std, n, a t statistic of the mean and its two-sided
    p-value (paired t-test, n - 1 degrees of freedom; NaN below 2 episodes). Episodes where either score is NaN
    are left out (``n`` counts the pairs used)."""
    from scipy.stats import t as student_t

    diffs = [a.scores[key] - b.scores[key] for a, b in zip(with_lora, without)]
    diffs = [d for d in diffs if not math.isnan(d)]  # episodes without the score (nothing to revisit)
    if not diffs:
        return {"mean": math.nan, "std": math.nan, "n": 0, "t": math.nan, "p": math.nan}
    mean = statistics.fmean(diffs)
    std = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    t = mean / (std / math.sqrt(len(diffs))) if std > 0 else (math.inf if mean else 0.0)
    if len(diffs) < 2:
        p = math.nan
    else:
        p = 1.0 if t == 0 else float(2 * student_t.sf(abs(t), len(diffs) - 1)) if math.isfinite(t) else 0.0
    return {"mean": mean, "std": std, "n": len(diffs), "t": t, "p": p}
