"""The slow-fast learning loop (paper Sec. 3.3, Algorithm 1b) as a LightningModule.

Every epoch ("while not converged", l.1):

* inner loop (l.2-11), :meth:`SlowFastLoopSystem.build_slow_dataset`: for each episode, Theta_0^e is
  initialised and, for every chunk i, the triple (X_i, X_{i+1}, Theta_i) joins D_s *before* Theta is
  updated by fast learning on X_i (+) X_{i+1} with Phi fixed (l.8-9). Theta snapshots and latents are
  written to safetensors files (one per episode), so D_s can exceed memory and a stopped loop resumes
  without recomputing finished episodes;
* outer loop (l.12-17), ``training_step``: Phi + Theta_i predicts X_{i+1} from X_i (masked conditional
  diffusion loss, Eq. 1-2, with the chunk's action), Theta_i frozen, Phi updated.

A batch holds ``records_per_batch`` records. With one record per batch ("grouped by Theta"), Theta_i is
loaded into the LoRA before the step; with several, each sample uses its own frozen Theta_i through the
functional per-sample LoRA of :meth:`slowfast_vgen.temp_lora.TempLoRA.per_sample` (``sfvgen bench slow-fast``
measures both). Under DDP, each rank runs the inner loop on its share of the episodes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch.utils.data import Dataset

from slowfast_vgen.datamodules.common import check_episode
from slowfast_vgen.datamodules.slowfast_data import SlowDataset
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.io import atomic_path
from slowfast_vgen.temp_lora import ADAPTER, TempLoRA, TempLoRASettings
from slowfast_vgen.systems.slow import SlowLearningSystem


class SlowFastLoopSystem(SlowLearningSystem):
    """Algorithm 1b on top of :class:`SlowLearningSystem` (same networks, diffusion and arguments).

    Extra args: ``memory_dir`` (D_s files); ``temp_lora``: the inner loop's fast learner, a
    :class:`slowfast_vgen.temp_lora.TempLoRASettings` as a dict that may start from a ``preset`` (``{preset: paper}``,
    ``{preset: episodic, steps_per_chunk: 10}``), so that Phi learns to read the memory that the learner used at
    inference writes; ``records_per_batch``: records with different Theta_i per outer batch (per-sample LoRA);
    ``records_repeat``: passes over D_s per epoch (the inner loop costs far more than an outer step, so each D_s
    can serve several).
    """

    def __init__(
        self,
        *args: Any,
        memory_dir: str = "runs/slowfast/memory",
        temp_lora: dict[str, Any] | None = None,
        records_per_batch: int = 1,
        records_repeat: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if records_per_batch < 1 or records_repeat < 1:
            raise UserInputError(f"records_per_batch and records_repeat must be >= 1, got {records_per_batch}, "
                                 f"{records_repeat}")
        self.memory_dir = Path(memory_dir)
        self.learner = TempLoRA(self.unet, self.diffusion, TempLoRASettings.build(temp_lora or {"preset": "paper"}))
        self.theta_names = [n for n, _ in self.unet.named_parameters() if ".lora_" in n and ADAPTER in n]
        self._set_theta_trainable(False)

    # -- Alg. 1b l.2-11: the inner (fast) loop prepares D_s --------------------------------------------
    @torch.no_grad()
    def build_slow_dataset(self, episodes: Dataset, epoch: int, progress: bool = True) -> SlowDataset:
        """Run fast learning over every episode with Phi fixed; return D_s (files under memory_dir/epoch_N)."""
        from tqdm.auto import tqdm

        folder = self.memory_dir / f"epoch_{epoch:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        null = self.encode_text([""])
        rank, world = _rank_and_world()
        paths = [folder / f"episode_{e:05d}.safetensors" for e in range(len(episodes))]
        self._set_theta_trainable(True)
        try:
            mine = range(rank, len(episodes), world)  # DDP: each rank learns its share of the episodes
            for e in tqdm(mine, desc=f"inner loop (epoch {epoch})", disable=not progress or rank != 0):
                if not paths[e].with_suffix(".json").is_file():  # resume: finished episodes are not recomputed
                    self._fast_learn_episode(episodes[e], paths[e], null)
        finally:
            self._set_theta_trainable(False)  # the outer loop loads each record's frozen Theta_i
        if world > 1:
            torch.distributed.barrier()
        records: list[tuple[str, int]] = []
        for path in paths:
            meta = json.loads(path.with_suffix(".json").read_text())
            records += [(str(path), i) for i in range(meta["chunks"] - 1)]
        return SlowDataset(records)

    def _set_theta_trainable(self, trainable: bool) -> None:
        for p in self._theta().values():
            p.requires_grad_(trainable)

    def _fast_learn_episode(self, episode: dict[str, Any], path: Path, null: torch.Tensor) -> None:
        from slowfast_vgen.generation.long_video import chunk_action

        frames = episode["frames"]
        f_g = self.generator.chunk_frames
        check_episode(episode, f_g, where=f"episode {episode.get('episode', episode.get('seed'))}")
        # a chunk is f_g frames, or (text, n) in a recorded episode (chunks end where its actions do)
        actions, lengths = zip(*(chunk_action(a, f_g) for a in episode["actions"])) if episode["actions"] else ((), ())
        actions = list(actions)
        z = self.encode_video(frames[None].to(self.device))  # (1, C, T, h, w)
        # X_0 = the first frame(s), X_i = chunk i of the episode (l.5)
        first = z.shape[2] - sum(lengths)
        if first < 1:
            raise UserInputError(f"episode of {z.shape[2]} frames cannot hold {len(actions)} chunks of "
                                 f"{sum(lengths)} frames and a first frame")
        ends = [first + sum(lengths[: k + 1]) for k in range(len(lengths))]
        chunks = [z[:, :, :first]] + [z[:, :, e - n : e] for e, n in zip(ends, lengths)]
        self.learner.reset()  # l.6: Theta_0^e
        tensors: dict[str, torch.Tensor] = {}
        for i in range(len(chunks) - 1):
            self.learner.write_waiting()  # write_every: Theta_i is used by the outer loop, so it holds X_0..X_i
            for name, value in self._theta().items():  # l.8: record Theta_i BEFORE it sees X_{i+1}
                tensors[f"theta.{i}.{name}"] = value.detach().to("cpu", copy=True)
            reverse = self.learner.reverse_action(actions[i])
            self.learner.update(chunks[i], chunks[i + 1], null, text=self.encode_text([actions[i]]),  # l.9: Phi fixed
                                reverse_text=None if reverse is None else self.encode_text([reverse]))
        for i, chunk in enumerate(chunks):
            tensors[f"x.{i}"] = chunk[0].detach().to("cpu", copy=True).contiguous()  # (C, F, h, w)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))
        # chunk i (i >= 1) was produced by action i - 1; record (X_i, X_{i+1}) is driven by action i
        meta = {"chunks": len(chunks), "actions": actions, "seed": int(episode.get("seed", 0))}
        with atomic_path(path.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps(meta))

    def _theta(self) -> dict[str, torch.Tensor]:
        params = dict(self.unet.named_parameters())
        return {n: params[n] for n in self.theta_names}

    def load_theta(self, theta: dict[str, torch.Tensor]) -> None:
        """Put Theta_i into the LoRA (frozen: never a parameter of the outer-loop optimizer)."""
        with torch.no_grad():
            for name, value in self._theta().items():
                value.copy_(theta[name].to(value.device, value.dtype))

    # -- Alg. 1b l.12-17: the outer (slow) loop ----------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x, y, thetas = batch["x"], batch["y"], batch["theta"]  # (B, C, F, h, w), B records
        z0 = torch.cat([x, y], dim=2)  # X_i clean context, X_{i+1} to predict (l.15)
        n_ctx = torch.full((x.shape[0],), x.shape[2], device=z0.device)
        seeds = self.sample_seeds(batch, self.current_epoch)
        text, null = self.encode_text(list(batch["action"])), self.encode_text([""] * x.shape[0])

        def loss_fn() -> torch.Tensor:
            return self.diffusion.training_loss(self.denoise, z0, n_ctx, text, null, seeds)[0]

        if len(thetas) == 1:  # grouped by Theta: load it into the LoRA (l.14: Phi_i^e = Phi + Theta_i^e)
            self.load_theta(thetas[0])
            loss = loss_fn()
        else:  # each sample with its own frozen Theta_i (functional per-sample LoRA)
            with self.learner.per_sample([{k: v.to(self.device) for k, v in t.items()} for t in thetas]):
                loss = loss_fn()
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # l.16: fix Theta_i^e, update Phi only
        phi = [p for n, p in self.unet.named_parameters() if n not in set(self.theta_names)]
        return torch.optim.Adam(phi, lr=self.hparams.lr, betas=tuple(self.hparams.betas),
                                weight_decay=self.hparams.weight_decay)



def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
