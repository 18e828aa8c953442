"""Run by tests/test_fsdp.py under ``torch.distributed.run --nproc_per_node 2`` (gloo, CPU): Temp-LoRA and the
long-video generator on a UNet sharded by FSDP2 (``fully_shard``), against the same on an unsharded copy."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from slowfast_vgen.diffusion import ChunkSampler, MaskedDiffusion
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.generation import LongVideoGenerator
from slowfast_vgen.temp_lora import TempLoRA
from slowfast_vgen.models import HashTextEncoder, PixelShuffleAutoencoder, build_unet3d

ACTIONS = ["go left", "go up", "go right"]


def shard(unet):
    for block in [*unet.down_blocks, *unet.up_blocks]:
        fully_shard(block)
    fully_shard(unet)


def episode(unet, learner, rank, merge=False):
    diffusion = MaskedDiffusion()
    gen = LongVideoGenerator(unet, PixelShuffleAutoencoder(), HashTextEncoder(),
                             ChunkSampler(diffusion.scheduler_config(), num_inference_steps=2), chunk_frames=2,
                             context_frames=2, temp_lora=learner, merge_for_sampling=merge)
    first = torch.rand(1, 2, 3, 16, 16, generator=torch.Generator().manual_seed(rank))  # each rank its own episode
    return list(gen.stream(first, ACTIONS, seed=rank))


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    unet, reference = build_unet3d("tiny").eval(), build_unet3d("tiny").eval()
    reference.load_state_dict(unet.state_dict())
    shard(unet)
    learner = TempLoRA(unet, MaskedDiffusion(), rank=4, lr=1e-3, seed=0)  # after the wrapping: Theta per rank
    sharded = episode(unet, learner, rank)
    learner.reset()
    sharded_merge_asked = episode(unet, learner, rank, merge=True)  # falls back to unmerged
    plain = episode(reference, TempLoRA(reference, MaskedDiffusion(), rank=4, lr=1e-3, seed=0), rank)
    out = {
        "rank": rank, "sharded": learner.sharded,
        "theta_is_local": not any(type(p).__name__ == "DTensor" for p in learner.params),
        "max_diff": max(float((a.latents - b.latents).abs().max()) for a, b in zip(sharded, plain)),
        "max_diff_merge_asked": max(float((a.latents - b.latents).abs().max()) for a, b in zip(sharded_merge_asked, sharded)),
        "updates": [c.update.rolled_back for c in sharded], "losses": [c.update.loss for c in sharded],
        "plain_losses": [c.update.loss for c in plain],
    }
    late = build_unet3d("tiny").eval()  # wrapped after Temp-LoRA was injected: a clear error, not a stale Theta
    late_learner = TempLoRA(late, MaskedDiffusion(), rank=4, lr=1e-3, seed=0)
    shard(late)
    try:
        episode(late, late_learner, rank)
        out["late_wrap_error"] = None
    except UserInputError as err:
        out["late_wrap_error"] = str(err)
    # One file per rank: the two ranks' stdout lines can interleave into one line (seen on CI).
    target = Path(sys.argv[1]) / f"rank{rank}.json"
    target.with_suffix(".tmp").write_text(json.dumps(out))
    target.with_suffix(".tmp").replace(target)
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
