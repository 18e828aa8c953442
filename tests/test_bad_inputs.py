"""Every bad input of issue 17 through the real CLI (a subprocess): exit 2, one error line naming the bad value,
no traceback; `--debug` shows the traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from testutils import REPO, sfvgen_in_one_process

TINY = str(REPO / "experiments" / "slow_tiny.yaml")
EVAL4 = str(REPO / "experiments" / "eval" / "table4_world.yaml")


class Payload:
    """What a malicious checkpoint carries: a call of os.system when unpickled."""

    def __reduce__(self):
        return (os.system, ("echo PWNED",))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "random.bin").write_bytes(os.urandom(512))
    (root / "empty.yaml").write_text("")
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "actions.txt").write_text("go left\ngo right\n")
    (root / "videos").mkdir()
    (root / "latin1.csv").write_bytes(b"video,start,end,action\nv.mp4,0,1,go \xe9 left\n")
    (root / "torn.ckpt").write_bytes(os.urandom(2048))
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload()}}, root / "evil.ckpt")
    return root


CASES = {  # id -> (argv, text the error line must contain)
    "fit max_steps -5": (["fit", "-c", TINY, "--trainer.max_steps", "-5"], "-5"),
    "fit -c random bytes": (["fit", "-c", "random.bin"], "random.bin"),
    "fit -c empty yaml": (["fit", "-c", "empty.yaml"], "empty.yaml"),
    "fit -c a yaml list": (["fit", "-c", "list.yaml"], "list.yaml"),
    "fit --ckpt_path torn": (["fit", "-c", TINY, "--ckpt_path", "torn.ckpt"], "torn.ckpt"),
    "fit --ckpt_path malicious": (["fit", "-c", TINY, "--ckpt_path", "evil.ckpt"], "refused"),
    "fit --ckpt_path missing": (["fit", "-c", TINY, "--ckpt_path", "nowhere.ckpt"], "nowhere.ckpt"),
    "fit --ckpt_path last, none saved": (["fit", "-c", TINY, "--ckpt_path", "last"], "no last.ckpt"),
    "generate --memory-in random bytes": (["generate", "--actions", "actions.txt", "--memory-in", "random.bin",
                                           "--out", "g"], "random.bin"),
    "generate --steps 0": (["generate", "--actions", "actions.txt", "--steps", "0"], "'0'"),
    "generate --steps -3": (["generate", "--actions", "actions.txt", "--steps", "-3"], "'-3'"),
    "data build non-UTF-8 action file": (["data", "build", "videos", "latin1.csv", "out"], "latin1.csv:2"),
    "export torn checkpoint": (["export", "torn.ckpt", "x.safetensors"], "torn.ckpt"),
    "export malicious checkpoint": (["export", "evil.ckpt", "x.safetensors"], "refused"),
    "demo --episodes 1": (["demo", "--episodes", "1"], "--episodes"),
    "demo --draws 0": (["demo", "--draws", "0"], "draws >= 1, got 0"),
    "demo --read-text-match 2": (["demo", "--read-text-match", "2"], "read_text_match is a similarity in [-1, 1], got 2"),
    "demo --reverse-actions missing": (["demo", "--reverse-actions", "nowhere.json"], "nowhere.json"),
    "generate --temp-lora best": (["generate", "--actions", "actions.txt", "--temp-lora", "best"], "'best'"),
    "demo --guidance 0 5": (["demo", "--guidance", "0", "5"], "--guidance 0 5"),
    "evaluate pool missing file": (["evaluate", "pool", "nowhere.json"], "nowhere.json"),
    "evaluate missing config": (["evaluate", "-c", "nowhere.yaml"], "nowhere.yaml"),
    "evaluate settings.lr=-1": (["evaluate", "-c", EVAL4, "settings.lr=-1"], "settings.lr = -1.0; expected a number >= 0"),
    "evaluate pose_tolerance=-2": (["evaluate", "-c", str(REPO / "experiments" / "eval" / "table1_doom.yaml"),
                                   "benchmark.pose_tolerance=-2"], "benchmark.pose_tolerance = -2"),
    "evaluate episodes=0": (["evaluate", "-c", EVAL4, "benchmark.episodes=0"], "an integer >= 1"),
    "evaluate ranks with 0": (["evaluate", "-c", str(REPO / "experiments" / "eval" / "table6_8_world.yaml"),
                              "settings.ranks=[16,0]"], "settings.ranks = [16, 0]"),
    "evaluate idm_lr=-1": (["evaluate", "-c", str(REPO / "experiments" / "eval" / "table2_world.yaml"),
                           "benchmark.tasks.0.idm_lr=-1"], "benchmark.tasks.0.idm_lr = -1"),
    "bench unknown": (["bench", "nothing"], "nothing"),
}


def sfvgen(argv, cwd, debug=False):
    env = {k: v for k, v in os.environ.items() if k != "SFVGEN_DEBUG"}
    args = [sys.executable, "-m", "slowfast_vgen.cli", *(["--debug"] if debug else []), *argv]
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def outcomes(files):
    """Every case through ``slowfast_vgen.cli.main`` in one child process; the real command's exit path is
    test_debug_shows_the_traceback_behind_the_line's."""
    return sfvgen_in_one_process({case: argv for case, (argv, _) in CASES.items()}, files)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_is_one_line_and_exit_2(case, outcomes):
    needle = CASES[case][1]
    out = outcomes[case]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("sfvgen: error:")]
    assert out.returncode == 2, out.stderr[-3000:]
    assert len(errors) == 1 and needle in errors[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "PWNED" not in out.stdout


def test_debug_shows_the_traceback_behind_the_line(files):
    out = sfvgen(["export", "torn.ckpt", "x.safetensors"], files, debug=True)
    assert out.returncode == 2 and "Traceback" in out.stderr and "sfvgen: error:" in out.stderr
