"""``sfvgen bench <name>``: benchmarks that print JSON (recorded in docs/benchmarks.md, never timed tests).

* ``train-step``: seconds per optimisation step of :class:`SlowLearningSystem` under a Lightning Trainer
  and of a bare PyTorch loop over the same UNet, loss and batch; the difference is framework overhead.
* ``temp-lora``, ``data``, ``metrics``, ``slow-fast``, ``memory`` (Temp-LoRA's written / read / damage):
  delegated to their packages.
"""

from __future__ import annotations

import importlib
import json
import statistics
import time

import torch

from slowfast_vgen.errors import ArgumentParser, UserInputError
from slowfast_vgen.machine import machine

DELEGATED = {
    "temp-lora": "slowfast_vgen.generation.bench:main",
    "data": "slowfast_vgen.datamodules.prep.bench:main",
    "metrics": "slowfast_vgen.metrics.bench:main",
    "slow-fast": "slowfast_vgen.systems.bench:main",
    "memory": "slowfast_vgen.evaluation.memory:main",
}
# preset -> (unet preset, batch size, frames, frame size)
TRAIN_PRESETS = {"tiny": ("tiny", 2, 8, 16), "small": ("small", 4, 8, 32)}


def _system_and_batch(preset: str, device: torch.device):
    from slowfast_vgen.datamodules.common import MixedLengthCollate
    from slowfast_vgen.datamodules.world import WorldClipDataset
    from slowfast_vgen.models import HashTextEncoder, PixelShuffleAutoencoder, build_unet3d
    from slowfast_vgen.systems import SlowLearningSystem

    unet_preset, batch_size, frames, size = TRAIN_PRESETS[preset]
    torch.manual_seed(0)
    unet = build_unet3d(unet_preset)
    text = HashTextEncoder(embed_dim=unet.config.cross_attention_dim)
    system = SlowLearningSystem(unet, PixelShuffleAutoencoder(), text, lr=1e-4, temporal_dropout=0.0)
    data = WorldClipDataset(batch_size, frames=frames, view_size=size, cell_size=size // 2)
    batch = MixedLengthCollate()([data[i] for i in range(batch_size)])
    return system.to(device), batch


def bare_loop_seconds(preset: str, steps: int, warmup: int, device: torch.device) -> float:
    """The same work as SlowLearningSystem.training_step, in a hand-written loop."""
    system, batch = _system_and_batch(preset, device)
    system.train()
    opt = system.configure_optimizers()
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    times = []
    for step in range(steps + warmup):
        t0 = time.perf_counter()
        loss = system.diffusion_loss(batch, epoch=0, cfg_dropout=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


def lightning_seconds(preset: str, steps: int, warmup: int, device: torch.device) -> float:
    import lightning as L

    system, batch = _system_and_batch(preset, device)

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, module, b, i):
            if trainer.global_step == warmup:
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, out, b, i):
            if device.type == "cuda":
                torch.cuda.synchronize()
            self.t1 = time.perf_counter()

    clock = Clock()
    trainer = L.Trainer(
        max_steps=steps + warmup, accelerator=device.type, devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[clock],
    )
    loader = torch.utils.data.DataLoader([batch] * (steps + warmup), batch_size=None)
    trainer.fit(system, loader)
    return (clock.t1 - clock.t0) / steps


def train_step(argv: list[str]) -> int:
    parser = ArgumentParser(prog="sfvgen bench train-step")
    parser.add_argument("--preset", default="tiny", choices=sorted(TRAIN_PRESETS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs; the median is reported")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    bare, light = [], []
    for _ in range(args.repeats):  # alternate so that load from other processes hits both alike
        bare.append(bare_loop_seconds(args.preset, args.steps, args.warmup, device))
        light.append(lightning_seconds(args.preset, args.steps, args.warmup, device))
    b, lt = statistics.median(bare), statistics.median(light)
    b_min, lt_min = min(bare), min(light)
    unet_preset, batch_size, frames, size = TRAIN_PRESETS[args.preset]
    print(json.dumps({
        "bench": "train-step", "preset": args.preset, "device": str(device),
        "batch": {"size": batch_size, "frames": frames, "pixels": size, "unet": unet_preset},
        "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
        "seconds_per_step": {"lightning": round(lt, 5), "bare_pytorch": round(b, 5)},
        "all_runs": {"lightning": [round(x, 5) for x in light], "bare_pytorch": [round(x, 5) for x in bare]},
        "framework_overhead": round(lt / b - 1, 4),
        "framework_overhead_of_fastest_runs": round(lt_min / b_min - 1, 4),
        "machine": machine(),
    }, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    names = ["train-step", *DELEGATED]
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: sfvgen bench {" + ",".join(names) + "} [options]")
        return 0
    name, rest = argv[0], argv[1:]
    if name == "train-step":
        return train_step(rest)
    if name in DELEGATED:
        module, func = DELEGATED[name].split(":")
        try:
            target = getattr(importlib.import_module(module), func)
        except ModuleNotFoundError as err:
            raise UserInputError(f"bench {name!r} is not available in this version ({err.name} missing)") from None
        return int(target(rest) or 0)
    raise UserInputError(f"unknown benchmark {name!r}; expected one of {names}")
