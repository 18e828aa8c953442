"""A Temp-LoRA memory on disk (``--memory-out`` / ``--memory-in``): one safetensors file, data and never code.

It holds Theta, its optimizer's state, the episode that the write and read policies use (frames and texts), the chunk
waiting to be written (``write_every``) and the caller's ``extra`` tensors (e.g. the generator's context and sampler
state), so that a continued world rehearses, recognises and samples what the uninterrupted one would have.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from slowfast_vgen.errors import UserInputError
from slowfast_vgen.io import atomic_path, read_safetensors
from slowfast_vgen.temp_lora.write import Episode, Waiting


def save_memory(learner: Any, path: str | Path, extra: dict[str, torch.Tensor] | None = None) -> Path:
    from safetensors.torch import save_file

    s = learner.settings
    meta = {"rank": s.rank, "target_modules": list(s.target_modules) if not isinstance(s.target_modules, str)
            else s.target_modules, "chunks_seen": learner.chunks_seen, "settings": json.dumps(asdict(s), default=str)}
    tensors = {f"lora.{k}": v for k, v in learner.lora.state_dict().items()}
    for i, p in enumerate(learner.params):  # the optimizer's state ("adam" in the keys: files of earlier versions)
        tensors.update({f"adam.{i}.{k}": torch.as_tensor(v) for k, v in learner.optimizer.state.get(p, {}).items()})
    tensors.update({f"episode.{k}": v for k, v in learner.episode.state_tensors().items()})
    w = learner.waiting  # write_every: the chunks not written yet, written by the continued world
    if w is not None:
        meta["waiting"] = {"n_input": w.n_input, "chunk": w.chunk, "count": w.count}
        tensors.update({f"waiting.{k}": getattr(w, k).clone() for k in ("clip", "text", "cond", "null")
                        if getattr(w, k) is not None})  # each in its own storage (safetensors refuses shared ones)
    tensors.update({f"extra.{k}": v for k, v in (extra or {}).items()})
    with atomic_path(Path(path)) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"temp_lora": json.dumps(meta)})
    return Path(path)


def load_memory(learner: Any, path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    tensors, metadata = read_safetensors(path, "Temp-LoRA memory")
    try:
        meta = json.loads(metadata.get("temp_lora", "{}"))
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or "rank" not in meta:
        raise UserInputError(f"Temp-LoRA memory {str(path)!r} has no Temp-LoRA metadata; expected a file written "
                             f"by --memory-out (TempLoRA.save)")
    s = learner.settings
    targets = s.target_modules if isinstance(s.target_modules, str) else list(s.target_modules)
    if meta.get("rank") != s.rank or meta.get("target_modules") != targets:
        raise UserInputError(f"Temp-LoRA memory {path.name}: rank {meta.get('rank')} on "
                             f"{meta.get('target_modules')}; this learner has rank {s.rank} on {targets}")
    device = learner.params[0].device
    learner.lora.load_state_dict({k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("lora.")})
    learner.optimizer = learner._optimizer()
    for i, p in enumerate(learner.params):
        state = {k.split(".", 2)[2]: v if k.endswith(".step") else v.to(device)  # Adam keeps `step` on the CPU
                 for k, v in tensors.items() if k.startswith(f"adam.{i}.")}
        if state:
            learner.optimizer.state[p] = state
    learner.chunks_seen = int(meta.get("chunks_seen", 0))
    episode = learner.episode = Episode()
    episode.load_tensors({k[8:]: v for k, v in tensors.items() if k.startswith("episode.")}, device)
    learner.waiting, learner.caught_up = None, None
    if meta.get("waiting"):
        w = meta["waiting"]
        part = {k: tensors[f"waiting.{k}"].to(device) if f"waiting.{k}" in tensors else None
                for k in ("clip", "text", "cond", "null")}
        learner.waiting = Waiting(part["clip"], int(w["n_input"]), part["text"], part["cond"], part["null"],
                                  int(w["chunk"]), int(w["count"]))
    return {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
