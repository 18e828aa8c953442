"""Scene Revisit Consistency: revisit format, cosine similarity, backbone choice and missing weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

from slowfast_vgen.errors import ModelNotAvailableError, UserInputError
from slowfast_vgen.metrics import SceneRevisitConsistency


@pytest.fixture
def no_torch_hub_cache(tmp_path, monkeypatch):
    """Make sure no cached torchvision ResNet-18 is picked up from the real torch hub directory."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


def test_offline_backbone_and_exact_revisits(no_torch_hub_cache, make_spliced):
    video, _ = make_spliced((20, 20), h=48, w=64)  # frames 0-19 scene A, 20-39 scene B
    video = torch.from_numpy(video)
    video[30] = video[5]  # an exact revisit of frame 5
    metric = SceneRevisitConsistency(resolution=64)
    assert metric.backbone_name == "alexnet" and metric.protocol()["backbone"] == "alexnet"
    metric.update(video[None], [[(5, [30])]])
    assert metric.compute().item() == pytest.approx(100.0, abs=1e-4)
    # revisiting a different scene scores lower than revisiting the same scene
    same, other = SceneRevisitConsistency(resolution=64), SceneRevisitConsistency(resolution=64)
    same.update(video[None], [[(0, [3, 6])]])
    other.update(video[None], [[(0, [25, 35])]])
    assert other.compute() < same.compute() < 100.0


def test_score_is_mean_cosine_per_video_then_over_videos(no_torch_hub_cache, videos):
    preds, _ = videos  # (3, 4, 3, 32, 40)
    metric = SceneRevisitConsistency(resolution=32)
    revisits = [[(0, [1, 3])], [], [(1, [2]), (0, [3])]]  # the second video has no revisits: skipped
    metric.update(preds, revisits)
    feats = [metric.embed(v) for v in preds]  # (T, D) per video
    cos = lambda b, i, j: F.cosine_similarity(feats[b][i], feats[b][j], dim=0).item()  # noqa: E731
    expected = 100 * ((cos(0, 0, 1) + cos(0, 0, 3)) / 2 + (cos(2, 1, 2) + cos(2, 0, 3)) / 2) / 2
    assert metric.compute().item() == pytest.approx(expected, rel=1e-5)
    assert metric.protocol()["num_videos"] == 2 and metric.protocol()["num_pairs"] == 4


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_resnet18_from_local_weights(tmp_path, no_torch_hub_cache, suffix, videos):
    state = torchvision.models.resnet18(weights=None).state_dict()  # random init stands in for ImageNet
    path = tmp_path / f"resnet18{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    metric = SceneRevisitConsistency(resnet18_weights=str(path), resolution=32)
    assert metric.backbone_name == "resnet18"
    assert metric.embed(videos[0][0]).shape == (4, 512)
    metric.update(videos[0][:1], [[(0, [2])]])
    assert -100 <= metric.compute().item() <= 100


def test_missing_resnet18_weights_error(no_torch_hub_cache):
    with pytest.raises(ModelNotAvailableError, match=r"resnet18-f37072fd\.pth.*resnet18_weights"):
        SceneRevisitConsistency(backbone="resnet18")
    with pytest.raises(ModelNotAvailableError, match="nope.pt"):
        SceneRevisitConsistency(resnet18_weights="/nonexistent/nope.pt")


@pytest.mark.parametrize(
    "revisits,match",
    [
        ([[(0, [1])]], "one entry per video"),
        ([[(0, [1])], [(0, [9])]], r"in \[0, 4\)"),
        ([[(2, [1])], []], "after the first"),
        ([[(0, 1)], []], "first_visit_frame"),
    ],
)
def test_revisit_validation(no_torch_hub_cache, videos, revisits, match):
    metric = SceneRevisitConsistency(backbone="alexnet", resolution=32)
    with pytest.raises(UserInputError, match=match):
        metric.update(videos[0][:2], revisits)
