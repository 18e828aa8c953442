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
    # a frame bank run (no Temp-LoRA settings) is not pooled with a Temp-LoRA run written before `memory` existed
    bank = json.loads(b.read_text())
    del bank["settings"]["temp_lora"]
    bank["settings"]["memory"] = "frame-bank"
    (tmp_path / "bank.json").write_text(json.dumps(bank))
    with pytest.raises(UserInputError, match="memory: 'temp-lora' vs 'frame-bank'"):
        pool_runs([a, tmp_path / "bank.json"])
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


def test_plot_labels_of_nearby_points_do_not_overlap():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slowfast_vgen.evaluation.pool import _label_offsets

    fig, ax = plt.subplots(dpi=100)
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 100)
    points = [(5.0, 50.0), (5.0, 50.0), (5.1, 50.5), (1.0, 10.0)]  # three on one spot, one far away
    offsets = _label_offsets(ax, fig, points, line=9.0)
    per_point = 72.0 / fig.dpi
    label_y = [ax.transData.transform(p)[1] * per_point + dy for p, dy in zip(points, offsets)]
    crowd = sorted(label_y[:3])
    assert all(b - a >= 9.0 - 1e-9 for a, b in zip(crowd, crowd[1:]))  # a line apart
    assert offsets[3] == 0.0  # a point with no neighbour keeps its label where it was
    plt.close(fig)


def _episode(seed: int, pattern: str | None, revisit_mse: float, other_psnr: float = 20.0):
    import torch

    from slowfast_vgen.evaluation.revisit import EpisodeResult

    video = torch.zeros(3, 3, 4, 4)  # (T, C, H, W)
    psnr = -10 * math.log10(revisit_mse) if revisit_mse == revisit_mse else math.nan
    scores = {"SRC": 90.0, "SCuts": 0.0, "PSNR": 20.0, "SSIM": 50.0, "Revisit PSNR": psnr, "Revisit MSE": revisit_mse,
              "Other PSNR": other_psnr}
    return EpisodeResult(seed, video, video, [], scores=scores, pattern=pattern)


def test_memory_by_revisit_pattern_in_a_report_and_in_its_pool(tmp_path, capsys):
    from slowfast_vgen.evaluation.report import revisit_statistics, write_report

    # loop: the error halves in both episodes; retrace: unchanged in one, a third off in the other, one without
    # a frame that needs memory (NaN); one episode of an older recording without a pattern
    rows = [(0, "loop", 0.04, 0.02), (1, "loop", 0.02, 0.01), (2, "retrace", 0.03, 0.03),
            (3, "retrace", 0.03, 0.02), (4, "retrace", math.nan, math.nan), (5, None, 0.05, 0.01)]
    without = [_episode(seed, p, a) for seed, p, a, _ in rows]
    with_lora = [_episode(seed, p, b, other_psnr=19.5) for seed, p, _, b in rows]
    stats = revisit_statistics(without, with_lora)
    by_pattern = stats["memory_by_pattern"]
    assert list(by_pattern) == ["loop", "retrace"]  # the unlabelled episode is in no row
    loop, retrace = by_pattern["loop"], by_pattern["retrace"]
    assert loop["n_episodes"] == 2 and loop["revisit_psnr"]["n"] == 2 and retrace["revisit_psnr"]["n"] == 2
    assert loop["revisit_mse"]["floor_no_memory"] == pytest.approx(0.03)
    assert loop["gap_closed"] == pytest.approx(0.5) and retrace["gap_closed"] == pytest.approx(0.5 / 3)
    assert loop["revisit_psnr"]["mean"] == pytest.approx(10 * math.log10(2))
    assert loop["revisit_psnr"]["p"] == 0.0 and 0 < retrace["revisit_psnr"]["p"] < 1  # no spread in loop
    assert loop["damage_other_frames_db"] == pytest.approx(0.5)
    # the whole run's statistics are as before, over all six episodes
    assert stats["memory"]["revisit_mse"]["floor_no_memory"] == pytest.approx(0.034)
    assert stats["paired_difference_with_minus_without"]["Revisit PSNR"]["n"] == 5
    no_patterns = revisit_statistics([_episode(0, None, 0.1), _episode(1, None, 0.1)],
                                     [_episode(0, None, 0.1), _episode(1, None, 0.1)])
    assert "memory_by_pattern" not in no_patterns

    write_report(tmp_path / "run", without, with_lora, {"shards": "maze", "episodes": 6, "first_episode": 0})
    run = json.loads((tmp_path / "run" / "results.json").read_text())
    assert run["memory_by_pattern"]["loop"]["gap_closed"] == pytest.approx(0.5)
    assert [ep.get("pattern") for ep in run["episodes"]] == ["loop", "loop", "retrace", "retrace", "retrace", None]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "### By revisit pattern" in report and "| loop | 2 of 2 | 0.0300 | 0.0150 | 50.0 % |" in report
    assert "By revisit pattern" in (tmp_path / "run" / "index.html").read_text()

    # split into two runs and pooled: the same split, printed by `sfvgen evaluate pool`
    run["settings"].pop("seconds", None)
    paths = split(tmp_path / "halves", run, 3)
    pooled = pool_runs(paths)
    for name, row in run["memory_by_pattern"].items():
        assert pooled["memory_by_pattern"][name]["gap_closed"] == pytest.approx(row["gap_closed"])
        assert pooled["memory_by_pattern"][name]["revisit_psnr"]["p"] == pytest.approx(row["revisit_psnr"]["p"])
    assert evaluate_main(["pool", *map(str, paths)]) == 0
    printed = capsys.readouterr().out
    assert "loop: gap closed 50.0 %" in printed and "n = 2 of 3 episodes" in printed
