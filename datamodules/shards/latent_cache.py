"""Latent cache: encode every segment of a shard set once with the frozen autoencoder, train from latents.

The cache is itself a shard set (``kind: "latents"``) whose samples keep the source metadata and video and
add ``<key>.latents.npy`` ``(C, F, h, w)`` (one latent frame per pixel frame, float16 by default). Its
directory name is derived from the source manifest's checksum, the autoencoder's weights and the resolution,
so a changed source, autoencoder or resolution gets a new cache instead of stale latents. Frames are resized
and center-cropped to ``resolution`` before encoding (deterministic, so cached latents match decoded video).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slowfast_vgen.datamodules.shards.read import _ShardSets, _video_member, frames_to_tensor
from slowfast_vgen.datamodules.shards.format import MANIFEST, BadSample
from slowfast_vgen.datamodules.shards.write import ShardSetWriter, StopWriting
from slowfast_vgen.datamodules.shards.videoio import decode_frames, npy_bytes, parse_size
from slowfast_vgen.errors import UserInputError

DTYPES = {"float16": np.float16, "float32": np.float32}


def autoencoder_tag(autoencoder: Any) -> str:
    """A short hash of the autoencoder's class, scalar attributes and weights."""
    h = hashlib.sha256(type(autoencoder).__qualname__.encode())
    for name in ("latent_channels", "downscale", "scale", "scaling_factor", "sample_posterior"):
        h.update(f"{name}={getattr(autoencoder, name, None)!r};".encode())
    for name, tensor in sorted(autoencoder.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def cache_dir(cache_root: str | Path, source: str | Path, autoencoder: Any, resolution: Any, dtype: str) -> Path:
    """Where the latents of ``source`` live under ``cache_root`` for this autoencoder/resolution/dtype."""
    manifest = Path(source) / MANIFEST
    if not manifest.is_file():
        raise UserInputError(f"{manifest} not found; expected a shard set")
    res = parse_size(resolution)
    h = hashlib.sha256(manifest.read_bytes())
    h.update(f"{autoencoder_tag(autoencoder)};{res};{dtype}".encode())
    return Path(cache_root) / f"{Path(source).resolve().name}-{h.hexdigest()[:12]}"


@torch.no_grad()
def cache_latents(source: str | Path, cache_root: str | Path, autoencoder: Any, resolution: Any = None,
                  dtype: str = "float16", frames_per_call: int = 32, keep_video: bool = True,
                  limit_shards: int | None = None) -> Path:
    """Encode ``source`` into its cache directory (resumable; a complete cache is reused). Returns the directory."""
    if autoencoder is None:
        raise UserInputError("the latent cache needs an autoencoder")
    if dtype not in DTYPES:
        raise UserInputError(f"latent dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    out = cache_dir(cache_root, source, autoencoder, resolution, dtype)
    res = parse_size(resolution)
    sets = _ShardSets(source)
    options = {"source": str(Path(source).resolve()), "autoencoder": autoencoder_tag(autoencoder),
               "resolution": res if not isinstance(res, tuple) else list(res), "dtype": dtype}
    writer = ShardSetWriter(out, "latents", options, shard_bytes=sets.manifests[0]["shards"][0]["bytes"]
                            if sets.manifests[0]["shards"] else 256 << 20, limit_shards=limit_shards)
    if writer.already_complete:
        return out
    device = next((p.device for p in autoencoder.parameters()), torch.device("cpu"))
    skipped: dict[str, str] = {}
    try:
        for s, (_, entry) in enumerate(sets.samples):
            if entry["key"] in writer.done_keys:
                continue
            try:
                _, members, meta = sets.read(s)
                member = _video_member(meta, members)
                if member is None:
                    raise BadSample(entry["key"], "missing member: no video")
                video = frames_to_tensor(decode_frames(member, members[member]), res)  # (T, 3, H, W)
            except BadSample as err:
                skipped[err.key] = err.reason
                continue
            except Exception as err:  # noqa: BLE001 - undecodable video: skip, report in the manifest
                skipped[entry["key"]] = f"undecodable: {type(err).__name__}: {err}"[:200]
                continue
            latents = torch.cat([autoencoder.encode(chunk[None].to(device))[0].float().cpu()
                                 for chunk in video.split(frames_per_call)], dim=1)  # (C, F, h, w)
            meta["latents"] = {"member": "latents.npy", "autoencoder": options["autoencoder"],
                               "resolution": list(video.shape[-2:]), "shape": list(latents.shape), "dtype": dtype}
            keep = {member: members[member]} if keep_video else {}
            writer.write_sample(meta, {**keep, "latents.npy": npy_bytes(latents.numpy().astype(DTYPES[dtype]))})
        writer.manifest["episodes"] = sets.manifests[0].get("episodes", {})
        writer.finish({"skipped": skipped})
    except StopWriting:
        writer.abort()
    except BaseException:
        writer.abort()
        raise
    return out
