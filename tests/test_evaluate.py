"""`sfvgen evaluate`: every YAML under experiments/eval/ runs at tiny size and writes its table."""

from __future__ import annotations

import json

import pytest

from testutils import REPO, world_shards
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.evaluation.cli import load_eval_config, main

EVALS = sorted((REPO / "experiments" / "eval").glob("*.yaml"))
# table2 (planning) needs trained task models: tests/test_table2.py runs its whole recipe
REVISIT_EVALS = [p for p in EVALS if not p.name.startswith("table2")]
TINY = ["benchmark.episodes=2", "benchmark.chunks_out=1", "settings.steps=2", "settings.rank=4",
        "settings.lrs=[0.001]", "settings.ranks=[4]", "settings.sweep=[1,2]", "model.weights=null"]
EXPECTED = {"table1": ["Ours (wo/ Temp-LoRA)", "Ours SlowFast-VGen", "Copy the last context frame (reference)"],
            "table4": ["Ours (w original Temp-LoRA)", "Ours (wo Local Learning Rule)", "Ours (wo Chunk Input)",
                       "Ours (wo/ Temp-LoRA)", "Ours SlowFast-VGen"],
            "table6_8": ["lr=0.001 rank=4", "wo Temp-LoRA"], "table9": ["1 steps", "2 steps"]}


def test_every_paper_table_has_an_eval_config():
    assert {load_eval_config(str(p), [])["table"] for p in EVALS} == set(EXPECTED) | {"table2"}


@pytest.fixture(scope="module")
def recorded_shards(tmp_path_factory):
    """Stands in for the ViZDoom test episodes of the *_doom configs (same contract: poses in the gt)."""
    root = tmp_path_factory.mktemp("recorded") / "shards"
    world_shards(root, chunk_frames=4, chunks_out=2)  # 2 chunks out and back: short episodes, still revisits
    return root


@pytest.mark.parametrize("path", REVISIT_EVALS, ids=lambda p: p.name)
def test_eval_config_runs_at_tiny_size(path, tmp_path, recorded_shards, monkeypatch):
    monkeypatch.setenv("DOOM_TEST_SHARDS", str(recorded_shards))
    monkeypatch.setenv("MAZE_TEST_SHARDS", str(recorded_shards))
    assert main(["-c", str(path), *TINY, f"out={tmp_path}"]) == 0
    result = json.loads((tmp_path / "table.json").read_text())
    table = result["protocol"]["table"]
    assert [r["setting"] for r in result["rows"]] == EXPECTED[table]
    assert result["protocol"]["episodes"] == 2 and result["protocol"]["steps"] == 2
    assert (tmp_path / "table.md").read_text().startswith("| setting |")
    assert (tmp_path / "table.csv").read_text().count("\n") == len(EXPECTED[table]) + 1
    for row in result["rows"]:
        if "reference" in row["setting"]:  # Table 1's trivial predictor: chunk scores only
            assert "SCuts" not in row and row["PSNR_std"] >= 0 and 0 <= row["LPIPS"] <= 100
            continue
        assert 0 <= row["SCuts"] and -100 <= row["SRC"] <= 100
    if table == "table1":  # chunk scores per episode, with their spread over the 2 episodes
        ours = result["rows"][1]
        assert all(ours[f"{k}_std"] > 0 for k in ("PSNR", "SSIM", "LPIPS")) and ours["PSNR"] != result["rows"][2]["PSNR"]
        header, _, _, line = (tmp_path / "table.md").read_text().splitlines()[:4]
        assert "±" in line.split("|")[header.split("|").index(" PSNR ")]  # Ours' PSNR cell


def test_bad_eval_config_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((EVALS[0]).read_text() + "colour: red\n")
    with pytest.raises(UserInputError, match='"colour"'):
        load_eval_config(str(bad), [])
    with pytest.raises(UserInputError, match="table"):
        load_eval_config(str(EVALS[0]), ["table=table99"])
    # the structured schema (evaluation.cli.EvalConfig): nested keys and types are checked too, with their path
    text = (REPO / "experiments" / "eval" / "table1_world.yaml").read_text()
    for old, new, match in [("  steps: 20", "  steps: many", r'"settings.steps".*converted to Integer'),
                            ("  episodes: 8", "  episodes: 8\n  colour: red", r'"benchmark.colour" is not expected.*shards'),
                            ("out: outputs/eval/table1_world", "", r"\['out'\] must be set"),
                            ("table: table1", "table: table1\nbenchmark: {}", "not valid YAML")]:
        bad.write_text(text.replace(old, new, 1))
        with pytest.raises(UserInputError, match=match):
            load_eval_config(str(bad), [])


def test_human_evaluation_sheet(tmp_path):
    import torch

    from slowfast_vgen.evaluation.human import export_sheet, summarize_sheet
    from slowfast_vgen.io import write_video

    for method in ("ours", "baseline"):
        for i in range(2):
            write_video(tmp_path / "run" / method / f"ep{i}", torch.rand(4, 3, 8, 8), formats=("gif",))
    page = export_sheet(tmp_path / "run", tmp_path / "sheet", raters=3)
    sheet = (tmp_path / "sheet" / "rating_sheet.csv").read_text().splitlines()
    assert len(sheet) == 1 + 4 * 3 and "quality" in sheet[0] and page.is_file()
    key = json.loads((tmp_path / "sheet" / "key.json").read_text())
    filled = [sheet[0]] + [ln.replace(",,,,", ",1,0.5,0,") if key[ln.split(",")[0]].startswith("ours")
                           else ln.replace(",,,,", ",0,0,0,") for ln in sheet[1:]]
    (tmp_path / "sheet" / "rating_sheet.csv").write_text("\n".join(filled) + "\n")
    scores = summarize_sheet(tmp_path / "sheet" / "rating_sheet.csv", tmp_path / "sheet" / "key.json")
    assert scores["ours"] == {"quality": 1.0, "coherence": 0.5, "action_adherence": 0.0}
    assert scores["baseline"]["quality"] == 0.0


def test_overrides_index_lists_and_bad_ones_are_named(tmp_path, monkeypatch):
    from slowfast_vgen.evaluation.planning import check_task_entry

    monkeypatch.chdir(tmp_path)
    t2 = str(REPO / "experiments" / "eval" / "table2_world.yaml")
    cfg = load_eval_config(t2, ["benchmark.tasks.0.episodes=3", "settings.fvd=false"])
    assert cfg["benchmark"]["tasks"][0]["episodes"] == 3 and cfg["settings"]["fvd"] is False
    assert cfg["benchmark"]["tasks"][0]["config"].startswith(str(REPO))  # relative paths found from the repo root
    with pytest.raises(UserInputError, match="expected key=value"):
        load_eval_config(t2, ["settings.steps"])
    with pytest.raises(UserInputError, match=r"\['colour'\] are not expected"):
        check_task_entry({**cfg["benchmark"]["tasks"][0], "colour": "red"})
