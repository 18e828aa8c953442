"""One episode contract (datamodules/common.py): every producer's episodes pass it, bad ones fail with the key."""

from __future__ import annotations

import pytest
import torch

from testutils import world_shards
from slowfast_vgen.datamodules.common import check_episode
from slowfast_vgen.errors import UserInputError


def test_every_producer_makes_contract_episodes(tmp_path):
    from slowfast_vgen.datamodules.planning import TaskEpisodes
    from slowfast_vgen.datamodules.recorded import RecordedRevisitDataset, ShardLoopDataModule
    from slowfast_vgen.simulators.world import revisit_episode

    world = revisit_episode(3, chunk_frames=4, chunks_out=2, min_gap=1)
    assert check_episode(world, 4) is world and world["domain"] == "world"
    world_shards(tmp_path / "shards", chunk_frames=2, chunks_out=2)
    recorded = RecordedRevisitDataset(tmp_path / "shards", chunk_frames=2, context_frames=2, pose_tolerance=0)[0]
    check_episode(recorded)  # (text, n) actions: the total is checked without chunk_frames
    assert recorded["domain"] and recorded["fps"] > 0 and recorded["revisits"]
    loop = ShardLoopDataModule(str(tmp_path / "shards"), chunk_frames=2).episodes[1]
    check_episode(loop)
    task = TaskEpisodes("world-retrace", 1)[0]
    check_episode(task, 4)
    assert task["domain"] == "world-retrace"


def test_bad_episodes_name_the_key_and_the_value():
    good = {"first": torch.zeros(1, 3, 4, 4), "frames": torch.zeros(9, 3, 4, 4), "actions": ["go left", "go right"],
            "seed": 0, "revisits": [(0, [8])], "positions": torch.zeros(9, 2), "fps": 8.0, "domain": "world"}
    check_episode(good, 4)
    for change, match in [
        ({"frames": None}, "frames must be a float"),
        ({"frames": torch.zeros(9, 3, 4, 4, dtype=torch.uint8)}, "frames must be a float"),
        ({"first": torch.zeros(1, 1, 4, 4)}, r"first must be .*\(k, 3, 4, 4\)"),
        ({"actions": ["go left", 7]}, r"actions\[1\] = 7"),
        ({"actions": ["go left"]}, r"1 first frame\(s\) \+ chunks of 4 frames != the 9 frames"),
        ({"actions": [("go left", 4), ("stay", 3)]}, "chunks of 7 frames"),
        ({"revisits": [(3, [2])]}, r"revisit pair \(3, \[2\]\)"),
        ({"revisits": [(0, [9])]}, "< 9"),
        ({"positions": torch.zeros(5, 2)}, "positions has 5 rows for 9 frames"),
        ({"fps": 0}, "fps = 0"),
        ({"domain": 3}, "domain = 3"),
    ]:
        with pytest.raises(UserInputError, match=match):
            check_episode({**good, **change}, 4)
    with pytest.raises(UserInputError, match=r"missing \['seed'\]"):
        check_episode({k: v for k, v in good.items() if k != "seed"})
    with pytest.raises(UserInputError, match="expected a dict"):
        check_episode([1, 2])
