"""SceneCuts on spliced clips with known hard cuts, and agreement with the ``scenedetect`` command line."""

from __future__ import annotations

import csv
import subprocess
import sys

import av
import numpy as np
import pytest
import torch

from slowfast_vgen.errors import UserInputError
from slowfast_vgen.metrics import SceneCuts


def write_lossless_mp4(path, video: np.ndarray, fps: int = 30) -> None:
    """(T, 3, H, W) float in [0, 1] -> H.264 RGB, CRF 0 (bit-exact when decoded by OpenCV)."""
    frames = (video * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)  # (T, H, W, 3) RGB
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        stream.options = {"crf": "0", "preset": "ultrafast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def cli_cuts(path, out_dir) -> list[int]:
    """Cut frames (0-based first frames of scenes 2..N) from `scenedetect ... detect-adaptive list-scenes`.

    ``-m 15``: the command line's own default minimum scene length is 0.6 s (18 frames at 30 fps), the
    Python API's (``AdaptiveDetector``, which SCuts uses) is 15 frames.
    """
    subprocess.run(
        [sys.executable, "-m", "scenedetect", "-q", "-i", str(path), "-o", str(out_dir), "-m", "15",
         "detect-adaptive", "list-scenes", "-s", "-f", "scenes.csv"],
        check=True, timeout=120,
    )
    with open(out_dir / "scenes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [int(row["Start Frame"]) - 1 for row in rows[1:]]  # the CSV counts frames from 1


def test_finds_exactly_the_spliced_cuts(make_spliced):
    video, cuts = make_spliced((20, 20, 20))
    single, no_cuts = make_spliced((60,))
    metric = SceneCuts()
    assert metric.cuts_per_video(torch.from_numpy(video)[None]) == [cuts] == [[20, 40]]
    assert no_cuts == [] and metric.cuts_per_video(torch.from_numpy(single)[None]) == [[]]
    metric.update(torch.stack([torch.from_numpy(video), torch.from_numpy(single)]))  # 2 cuts + 0 cuts
    assert metric.compute().item() == pytest.approx(1.0)
    assert metric.protocol()["adaptive_threshold"] == 3.0 and metric.protocol()["min_scene_len"] == 15


def test_min_scene_len_suppresses_short_scenes(make_spliced):
    video, _ = make_spliced((20, 10, 20))  # the middle scene is shorter than 15 frames
    assert SceneCuts().cuts_per_video(torch.from_numpy(video)[None]) == [[20]]
    assert SceneCuts(min_scene_len=5).cuts_per_video(torch.from_numpy(video)[None]) == [[20, 30]]


@pytest.mark.parametrize("size", [(96, 128), (240, 320)])  # 320 wide exercises the auto-downscale path
def test_agrees_with_scenedetect_cli(make_spliced, tmp_path, size):
    video, cuts = make_spliced((20, 17, 25), h=size[0], w=size[1])
    path = tmp_path / "video.mp4"
    write_lossless_mp4(path, video)
    ours = SceneCuts().cuts_per_video(torch.from_numpy(video)[None])[0]
    assert ours == cuts
    assert cli_cuts(path, tmp_path) == ours


def test_validation():
    with pytest.raises(UserInputError, match="window_width"):
        SceneCuts(window_width=0)
    with pytest.raises(UserInputError, match=r"\[0, 1\]"):
        SceneCuts().update(torch.full((1, 20, 3, 32, 32), 2.0))
