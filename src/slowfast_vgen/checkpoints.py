"""Lightning checkpoints as data: reading them safely (``torch.load(weights_only=True)``, one-line errors), the
UNet weights (Phi) in them, and ``sfvgen export`` (checkpoint -> safetensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slowfast_vgen.errors import ArgumentParser, UserInputError


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """A Lightning checkpoint as data (``torch.load(weights_only=True)``: a file that holds code is refused),
    with a one-line error naming the file for a missing, torn or foreign one."""
    import pickle

    import torch

    if not Path(path).is_file():
        raise UserInputError(f"{what} {str(path)!r} not found; expected a Lightning .ckpt file")
    try:
        # data only, never code; memory-mapped, so that a check before Lightning's own load costs little
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:  # torch's message is a page; keep the line that says what it met
        detail = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        unsafe = next((ln for ln in detail if "unsupported global" in ln.lower()), None)
        reason = (f"it holds objects other than tensors and plain data, refused ({unsafe[:120]})" if unsafe
                  else "corrupt or not a checkpoint (" + next((ln for ln in detail if ln.startswith("Unsupported")),
                                                             "unreadable pickle")[:120] + ")")
        raise UserInputError(f"{what} {str(path)!r}: {reason}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UserInputError(f"{what} {str(path)!r} is corrupt or not a checkpoint "
                             f"({type(err).__name__}: {str(err).strip().splitlines()[0][:120]})") from None
    if not isinstance(checkpoint, dict):
        raise UserInputError(f"{what} {str(path)!r} holds a {type(checkpoint).__name__}; expected a Lightning checkpoint")
    return checkpoint


def unet_state_from_checkpoint(path: str) -> dict[str, Any]:
    """The ``unet.*`` weights of a Lightning checkpoint, prefix removed (read with ``weights_only=True``).

    A slow-fast loop checkpoint holds Phi plus whichever Theta_i was loaded last: only Phi is kept, under the
    plain UNet's names (peft's ``base_layer`` wrapping removed)."""
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise UserInputError(f"checkpoint {path!r} has no state_dict; expected a Lightning checkpoint")
    unet = {k[len("unet."):].replace(".base_layer.", "."): v.contiguous()
            for k, v in checkpoint["state_dict"].items() if k.startswith("unet.") and ".lora_" not in k}
    if not unet:
        raise UserInputError(f"{path}: no `unet.*` weights; expected a SlowLearningSystem checkpoint")
    return {"unet": unet, "global_step": checkpoint.get("global_step"), "epoch": checkpoint.get("epoch"),
            "prediction_type": checkpoint.get("prediction_type")}


def export_main(argv: list[str] | None = None) -> int:
    """``sfvgen export CKPT OUT.safetensors``: the UNet weights of a Lightning checkpoint, as safetensors."""
    from safetensors.torch import save_file

    from slowfast_vgen.io import atomic_path

    parser = ArgumentParser(prog="sfvgen export", description=export_main.__doc__)
    parser.add_argument("ckpt")
    parser.add_argument("out")
    args = parser.parse_args(argv)
    checkpoint = unet_state_from_checkpoint(args.ckpt)
    unet = checkpoint["unet"]
    meta = {"global_step": str(checkpoint["global_step"]), "epoch": str(checkpoint["epoch"])}
    if checkpoint["prediction_type"]:  # checked when the weights are loaded into a system
        meta["prediction_type"] = checkpoint["prediction_type"]
    with atomic_path(args.out) as tmp:
        save_file(unet, str(tmp), metadata=meta)
    print(f"{args.out}: {len(unet)} tensors, {sum(v.numel() for v in unet.values()):,} parameters, step {meta['global_step']}")
    return 0
