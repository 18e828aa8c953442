"""Converters: generic timestamped actions, EPIC-KITCHENS-style narrations, keyboard/mouse logs -> text actions."""

from __future__ import annotations

import json

import pytest

from datautils import video_frames, write_video
from slowfast_vgen.datamodules.prep import cli
from slowfast_vgen.datamodules.prep.build import build_shards, read_action_file
from slowfast_vgen.datamodules.prep.convert import convert_epic, convert_generic, keylog_to_actions, parse_time
from slowfast_vgen.datamodules.shards.format import load_manifest
from slowfast_vgen.errors import UserInputError


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_parse_time():
    assert parse_time("00:01:02.250", "x") == 62.25 and parse_time("1:02.5", "x") == 62.5 and parse_time(3, "x") == 3
    with pytest.raises(UserInputError, match="x: time 'soon'"):
        parse_time("soon", "x")


def test_generic_layout_then_build(tmp_path):
    src = tmp_path / "src"
    write_video(src / "a.mp4", video_frames(0, 30, 16, 16), fps=10)  # 3 s
    write_video(src / "sub" / "b.mp4", video_frames(1, 20, 16, 16), fps=10)
    write_video(src / "c.mp4", video_frames(2, 10, 16, 16), fps=10)  # no sidecar: reported, not an error
    (src / "a.actions.txt").write_text("# start [end] action\n0 go left\n1.0 turn right\n00:02.0 2.5 go forward\n")
    (src / "sub" / "b.csv").write_text("start,end,action\n0,1,open the door\n1,2,walk through\n")
    s = convert_generic(src, tmp_path / "actions.jsonl")
    assert s["rows"] == 5 and s["unlabelled"] == ["c.mp4"]
    got = rows(tmp_path / "actions.jsonl")
    assert [(r["video"], r["start"], r["end"], r["action"]) for r in got[:3]] == [
        ("a.mp4", 0.0, 1.0, "go left"), ("a.mp4", 1.0, 2.0, "turn right"), ("a.mp4", 2.0, 2.5, "go forward")]
    assert got[3]["video"] == "sub/b.mp4"
    read_action_file(tmp_path / "actions.jsonl")  # valid input for build
    summary = build_shards(src, tmp_path / "actions.jsonl", tmp_path / "shards", video="npy", progress=False)
    assert summary["num_episodes"] == 2 and load_manifest(tmp_path / "shards")["num_actions"] == 5
    (src / "a.actions.txt").write_text("2 1 oops\n")
    with pytest.raises(UserInputError, match=r"a\.actions\.txt:1: end \(1\.0\) must be greater"):
        convert_generic(src, tmp_path / "x.jsonl")


def test_epic_kitchens_narrations(tmp_path):
    videos = tmp_path / "EPIC" / "P01" / "videos"
    write_video(videos / "P01_01.MP4", video_frames(0, 40, 16, 16), fps=10)
    csv = tmp_path / "EPIC_100_train.csv"
    csv.write_text(
        "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
        "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n"
        "P01_01_0,P01,P01_01,00:00:00.50,00:00:00.20,00:00:01.50,12,90,open door,open,3,door,8,['door'],[8]\n"
        "P01_01_1,P01,P01_01,00:00:01.00,00:00:01.00,00:00:03.90,60,234,take  cup,take,0,cup,13,['cup'],[13]\n"
        "P09_02_0,P09,P09_02,00:00:00.50,00:00:00.20,00:00:01.50,12,90,wash pan,wash,2,pan,9,['pan'],[9]\n")
    s = convert_epic(csv, tmp_path / "EPIC", tmp_path / "epic.jsonl")
    assert s["rows"] == 2 and s["missing_videos"] == ["P09_02"]
    got = rows(tmp_path / "epic.jsonl")
    assert got[1] == {"video": "P01/videos/P01_01.MP4", "start": 1.0, "end": 3.9, "action": "take cup",
                      "domain": "human"}
    b = build_shards(tmp_path / "EPIC", tmp_path / "epic.jsonl", tmp_path / "shards", video="npy", progress=False)
    assert b["num_samples"] == 1  # overlapping narrations are kept as two spans of one episode
    assert load_manifest(tmp_path / "shards")["shards"][0]["samples"][0]["spans"] == [[2, 15], [10, 39]]
    bad = tmp_path / "bad.csv"
    bad.write_text("video_id,start\nP01_01,0\n")
    with pytest.raises(UserInputError, match="needs columns"):
        convert_epic(bad, tmp_path / "EPIC", tmp_path / "x.jsonl")


def test_keylog_becomes_text_actions():
    ev = [
        {"t": 0.0, "type": "keydown", "key": "w"},
        {"t": 0.6, "type": "mouse", "dx": -30, "dy": 0},  # bin [0.5, 0.75): turning left while walking
        {"t": 1.0, "type": "keyup", "key": "w"},
        {"t": 1.1, "type": "keydown", "key": "A"},
        {"t": 1.5, "type": "keyup", "key": "a"},
        {"t": 1.8, "type": "mouse", "dx": 40, "dy": 0},
        {"t": 2.3, "type": "mousedown", "button": "left"},
        {"t": 2.4, "type": "mouseup", "button": "left"},
    ]
    spans = keylog_to_actions([("log", e) for e in ev], duration=3.0, bin_seconds=0.25)
    assert spans == [(0.0, 0.5, "go forward"), (0.5, 0.75, "go forward and turn left"), (0.75, 1.0, "go forward"),
                     (1.0, 1.5, "go left"), (1.5, 1.75, "stay"), (1.75, 2.0, "turn right"), (2.0, 2.25, "stay"),
                     (2.25, 2.5, "attack"), (2.5, 3.0, "stay")]
    no_idle = keylog_to_actions([("log", e) for e in ev[:3]], duration=2.0, idle=None)
    assert no_idle[-1] == (0.75, 1.0, "go forward")
    with pytest.raises(UserInputError, match="log: unknown event type 'scroll'"):
        keylog_to_actions([("log", {"t": 0, "type": "scroll"})], 1.0)


def test_keylog_cli_with_custom_keymap(tmp_path, capsys):
    src = tmp_path / "rec"
    write_video(src / "run.mp4", video_frames(0, 20, 16, 16), fps=10)
    (src / "run.keylog.csv").write_text("t,type,key,dx,dy\n0,keydown,up,,\n1.2,keyup,up,,\n1.3,mouse,,0,-50\n")
    (tmp_path / "keys.json").write_text(json.dumps({"up": "fly up"}))
    assert cli.main(["convert", "keylog", str(src), "--out", str(tmp_path / "k.jsonl"), "--bin", "0.5",
                     "--keymap", str(tmp_path / "keys.json")]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 3
    assert [r["action"] for r in rows(tmp_path / "k.jsonl")] == ["fly up", "fly up and look up", "stay"]
    with pytest.raises(UserInputError, match="keymap .* expected a JSON object"):
        (tmp_path / "bad.json").write_text("[1]")
        cli.main(["convert", "keylog", str(src), "--out", str(tmp_path / "k.jsonl"), "--keymap",
                  str(tmp_path / "bad.json")])


def test_generic_pose_sidecars_become_build_ground_truth(tmp_path):
    """`convert generic --gt-out`: X.poses.{csv,jsonl} -> one `build --gt` file; bad rows name sidecar, row, field."""
    src = tmp_path / "src"
    write_video(src / "a.mp4", video_frames(0, 6, 16, 16), fps=10)
    write_video(src / "b.mp4", video_frames(1, 4, 16, 16), fps=10)
    write_video(src / "c.mp4", video_frames(2, 4, 16, 16), fps=10)  # actions, no poses: reported
    for name in "abc":
        (src / f"{name}.actions.txt").write_text("0 go left\n")
    (src / "a.poses.csv").write_text("frame,x,y,revisit_of\n" + "".join(
        f"{f},{[0, 2, 4, 4, 2, 0][f]},1.5,{'' if f < 5 else 0}\n" for f in range(6)))
    (src / "b.poses.jsonl").write_text("".join(json.dumps({"frame": f, "x": f, "y": 0}) + "\n" for f in range(4)))
    out = tmp_path / "out"
    assert cli.main(["convert", "generic", str(src), "--out", str(out / "actions.jsonl"),
                     "--gt-out", str(out / "poses.jsonl")]) == 0
    got = rows(out / "poses.jsonl")
    assert got[0] == {"video": "a.mp4", "frame": 0, "x": 0.0, "y": 1.5}
    assert got[5] == {"video": "a.mp4", "frame": 5, "x": 0.0, "y": 1.5, "revisit_of": 0}
    assert [r["video"] for r in got].count("b.mp4") == 4 and "c.mp4" not in {r["video"] for r in got}
    summary = build_shards(src, out / "actions.jsonl", tmp_path / "shards", video="npy", progress=False,
                           gt=out / "poses.jsonl")
    assert summary["num_episodes"] == 3
    bad = {"pose field 'x'": "1,abc,1.5,\n", "frame 0 of 'a.mp4' appears twice": "0,2,1.5,\n"}
    for what, line in bad.items():
        (src / "a.poses.csv").write_text("frame,x,y,revisit_of\n0,0,1.5,\n" + line)
        before = (out / "poses.jsonl").read_bytes()
        with pytest.raises(UserInputError) as err:
            cli.main(["convert", "generic", str(src), "--out", str(out / "actions.jsonl"),
                      "--gt-out", str(out / "poses.jsonl")])
        assert "a.poses.csv:3" in str(err.value) and what in str(err.value), str(err.value)
        assert (out / "poses.jsonl").read_bytes() == before  # nothing half-written over the good file
    (src / "a.poses.csv").write_text("frame,x,y\n0,0,1\n2,0,1\n")  # no row for frame 1
    with pytest.raises(UserInputError, match=r"'a\.mp4' has no row for frame 1"):
        convert_generic(src, tmp_path / "x.jsonl", gt_out=tmp_path / "x.gt.jsonl")
    assert not (tmp_path / "x.gt.jsonl").exists() and not (tmp_path / "x.jsonl").exists()
