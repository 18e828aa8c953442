"""`sfvgen evaluate pool`: one paired test over split revisit runs equals the single run's numbers."""

import copy
import json
import math
from pathlib import Path

import pytest

from slowfast_vgen.errors import UserInputError
from slowfast_vgen.evaluation.cli import main as evaluate_main
from slowfast_vgen.evaluation.pool import pool_runs

RUN = Path(__file__).resolve().parents[1] / "docs" / "memory_guidance1_demo_20.json"  # an `sfvgen demo` results.json


def split(tmp_path, run, at):
    paths = []
    for name, episodes in (("a", run["episodes"][:at]), ("b", run["episodes"][at:])):
        part = copy.deepcopy(run)
        part["episodes"], part["settings"]["episodes"] = episodes, len(episodes)
        part["settings"]["first_seed"] = episodes[0]["seed"]
        path = tmp_path / name / "results.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(part))
        paths.append(path)
    return paths


def test_pooled_halves_give_the_single_runs_statistics(tmp_path):
    run = json.loads(RUN.read_text())
    pooled = pool_runs(split(tmp_path, run, 7))
    assert pooled["n_episodes"] == run["n_episodes"] == 20
    for key, diff in run["paired_difference_with_minus_without"].items():
        for stat in ("mean", "std", "n", "p"):
            assert pooled["paired_difference_with_minus_without"][key][stat] == pytest.approx(diff[stat], nan_ok=True)
    assert pooled["memory"]["gap_closed"] == pytest.approx(run["memory"]["gap_closed"])
    assert pooled["summary"]["with Temp-LoRA"]["Revisit MSE"]["mean"] == pytest.approx(
        run["summary"]["with Temp-LoRA"]["Revisit MSE"]["mean"])
    # a different split of other episodes: the statistics change (the test can fail)
    fewer = pool_runs(split(tmp_path / "x", run, 7)[:1])
    assert fewer["n_episodes"] == 7 and not math.isclose(fewer["memory"]["gap_closed"], pooled["memory"]["gap_closed"])


def test_pool_refuses_shared_episodes_and_other_settings(tmp_path, capsys):
    run = json.loads(RUN.read_text())
    a, b = split(tmp_path, run, 10)
    with pytest.raises(UserInputError, match="episode 10000 is in .* counted twice"):
        pool_runs([a, a])
    other = json.loads(b.read_text())
    other["settings"]["temp_lora"]["lr"] = 3e-3
    b.write_text(json.dumps(other))
    with pytest.raises(UserInputError, match=r"temp_lora.lr: 0.001 vs 0.003"):
        pool_runs([a, b])
    assert pool_runs([a, b], ignore=["temp_lora.lr"])["ignored_settings"] == ["temp_lora.lr"]
    out = tmp_path / "pooled.json"
    assert evaluate_main(["pool", str(a), str(b), "--ignore", "temp_lora.lr", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["n_episodes"] == 20 and "gap closed" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{\"summary\": 1}")
    with pytest.raises(UserInputError, match="not the results.json of an `sfvgen demo` run"):
        pool_runs([tmp_path / "bad.json"])
    with pytest.raises(UserInputError, match="no such file"):
        pool_runs([tmp_path / "missing.json"])


def test_plot_places_runs_against_the_memory_bar(tmp_path, capsys):
    from slowfast_vgen.evaluation.pool import plot_runs

    run = json.loads(RUN.read_text())
    good = copy.deepcopy(run)  # a run that clears the bar: a third of the gap, p = 0.01, 0.2 dB damage
    good["memory"].update(gap_closed=0.33, damage_other_frames_db=0.2)
    good["paired_difference_with_minus_without"]["Revisit PSNR"]["p"] = 0.01
    (tmp_path / "good.json").write_text(json.dumps(good))
    rows = plot_runs({"demo": RUN, "good": tmp_path / "good.json"}, tmp_path / "map.png")
    assert [r["clears_bar"] for r in rows] == [False, True]
    assert rows[0]["gap_closed"] == pytest.approx(run["memory"]["gap_closed"]) and rows[0]["n"] == 20
    for key, value in (("gap_closed", 0.2), ("damage_other_frames_db", 0.6)):  # each condition alone fails it
        bad = copy.deepcopy(good)
        bad["memory"][key] = value
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        assert not plot_runs({"bad": tmp_path / "bad.json"}, tmp_path / "bad.png")[0]["clears_bar"]
    assert (tmp_path / "map.png").stat().st_size > 5000
    assert evaluate_main(["plot", f"demo={RUN}", "--out", str(tmp_path / "cli.png")]) == 0
    assert "gap" in capsys.readouterr().out and (tmp_path / "cli.png").is_file()
    with pytest.raises(UserInputError, match="is not LABEL=JSON"):
        evaluate_main(["plot", str(RUN), "--out", str(tmp_path / "x.png")])
    (tmp_path / "nomem.json").write_text(json.dumps({"summary": {}}))
    with pytest.raises(UserInputError, match="no memory scores"):
        plot_runs({"x": tmp_path / "nomem.json"}, tmp_path / "x.png")


def test_the_price_plot_places_runs_by_time_ratio_and_pooling_sums_the_arms_time(tmp_path, capsys):
    from slowfast_vgen.evaluation.pool import plot_runs

    run = json.loads(RUN.read_text())
    run["memory"].update(gap_closed=0.45, damage_other_frames_db=0.2)
    run["paired_difference_with_minus_without"]["Revisit PSNR"]["p"] = 0.01
    a, b = split(tmp_path, run, 10)
    for path, (without, with_memory) in zip((a, b), ((50.0, 120.0), (70.0, 240.0))):
        part = json.loads(path.read_text())
        part["settings"]["generation_seconds"] = {"without": without, "with": with_memory,
                                                  "ratio": round(with_memory / without, 2)}
        path.write_text(json.dumps(part))
    pooled = pool_runs([a, b])  # the arms' time differs per run: summed, not refused
    assert pooled["settings"]["generation_seconds"] == {"without": 120.0, "with": 360.0, "ratio": 3.0}
    rows = plot_runs({"a": a, "b": b}, tmp_path / "price.png", against="time")
    assert [r["time_ratio"] for r in rows] == [2.4, 3.43]
    assert [r["clears_price_bar"] for r in rows] == [True, False]  # 3.43x is over the 3x price
    assert (tmp_path / "price.png").stat().st_size > 5000
    assert evaluate_main(["plot", f"a={a}", "--against", "time", "--out", str(tmp_path / "cli.png")]) == 0
    assert "time 2.4x  clears the bar" in capsys.readouterr().out
    with pytest.raises(UserInputError, match="record no generation_seconds"):
        plot_runs({"old": RUN}, tmp_path / "x.png", against="time")
