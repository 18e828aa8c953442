"""``sfvgen bench slow-fast``: outer-loop step time (Alg. 1b l.12-17) with per-sample Theta vs grouped by Theta.

Both ways train Phi on the same ``records`` records, each with its own frozen Theta_i:

* ``per_sample``: one batch of all records, each sample through its own LoRA
  (:meth:`slowfast_vgen.temp_lora.TempLoRA.per_sample`), one forward + backward;
* ``grouped``: one record per forward + backward with its Theta_i loaded into the LoRA (gradients
  accumulated, as ``Trainer(accumulate_grad_batches=records)`` does with ``records_per_batch: 1``).

Reported: seconds per record (medians over repeats, Adam step included) and their ratio.
"""

from __future__ import annotations

import json
import statistics
import time

import torch
from slowfast_vgen.errors import ArgumentParser

# preset -> (unet preset, frames per chunk, latent size) of the built-in world at 16 px / the small preset at 32 px
PRESETS = {"tiny": ("tiny", 4, 8), "small": ("small", 4, 16)}


def main(argv: list[str] | None = None) -> int:
    from slowfast_vgen.machine import machine
    from slowfast_vgen.models import HashTextEncoder, PixelShuffleAutoencoder, build_unet3d
    from slowfast_vgen.systems import SlowFastLoopSystem
    from slowfast_vgen.datamodules.slowfast_data import collate_records

    parser = ArgumentParser(prog="sfvgen bench slow-fast")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--records", type=int, default=4, help="records (different Theta_i) per optimizer step")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    unet_preset, frames, size = PRESETS[args.preset]
    torch.manual_seed(0)
    unet = build_unet3d(unet_preset)
    system = SlowFastLoopSystem(unet, PixelShuffleAutoencoder(), HashTextEncoder(embed_dim=unet.config.cross_attention_dim),
                                lr=1e-5, temp_lora={"preset": "paper", "rank": args.rank}, temporal_dropout=0.0).to(device)
    channels = unet.config.in_channels
    records = [{"x": torch.randn(channels, frames, size, size), "y": torch.randn(channels, frames, size, size),
                "action": "go left", "seed": i,
                "theta": {k: torch.randn_like(v).cpu() * 0.01 for k, v in system._theta().items()}}
               for i in range(args.records)]
    opt = system.configure_optimizers()

    def to_device(batch: dict) -> dict:
        return {**batch, "x": batch["x"].to(device), "y": batch["y"].to(device)}

    per_sample_batch = to_device(collate_records(records))
    grouped_batches = [to_device(collate_records([r])) for r in records]

    def per_sample() -> None:
        system.training_step(per_sample_batch, 0).backward()

    def grouped() -> None:
        for batch in grouped_batches:
            (system.training_step(batch, 0) / len(grouped_batches)).backward()

    system.log = lambda *a, **k: None  # no Trainer here
    times: dict[str, list[float]] = {"per_sample": [], "grouped": []}
    for step in range(args.warmup + args.steps):
        for name, fn in (("per_sample", per_sample), ("grouped", grouped)):  # alternate: load hits both alike
            t0 = time.perf_counter()
            fn()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= args.warmup:
                times[name].append((time.perf_counter() - t0) / args.records)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "bench": "slow-fast", "preset": args.preset, "device": str(device), "records_per_step": args.records,
        "lora_rank": args.rank, "chunk": {"frames": frames, "latent_size": size, "unet": unet_preset},
        "seconds_per_record": {k: round(v, 5) for k, v in med.items()},
        "all_runs": {k: [round(x, 5) for x in v] for k, v in times.items()},
        "grouped_over_per_sample": round(med["grouped"] / med["per_sample"], 3),
        "faster": min(med, key=med.get), "machine": machine(),
    }, indent=2))
    return 0
