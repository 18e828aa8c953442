"""The sfvgen command line: help, one-line config errors with exit code 2, a real fit run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from testutils import REPO, sfvgen_in_one_process

SFVGEN = [sys.executable, "-m", "slowfast_vgen.cli"]
TINY = REPO / "experiments" / "slow_tiny.yaml"


def run(args, cwd=None):
    return subprocess.run(SFVGEN + args, capture_output=True, text=True, cwd=cwd, timeout=300)


def test_help_lists_every_subcommand():
    out = run(["--help"])
    assert out.returncode == 0
    for command in ("fit", "validate", "test", "predict", "data", "generate", "evaluate", "bench", "demo"):
        assert f"  {command} " in out.stdout


def error_lines(stderr: str) -> list[str]:
    noise = ("warn", "seed set to")  # warnings and Lightning's seed info are not part of the error
    return [ln for ln in stderr.splitlines() if ln.strip() and not any(n in ln.lower() for n in noise)]


BAD_YAML = {  # id -> ((text in slow_tiny.yaml, its replacement), words the error line must contain)
    "unknown key": (("    frames: 8", "    frames: 8\n    bogus_key: 1"),
                    ['"data.init_args.bogus_key"', "expected one of", "view_size"]),
    "not an int": (("  max_steps: 200", "  max_steps: many"), ['"trainer.max_steps"', "int", "many"]),
    "not a float": (("    lr: 1.0e-3", "    lr: fast"), ["lr", "float", "fast"]),
    "unknown preset": (("preset: tiny", "preset: huge"), ["huge", "expected one of"]),
    "unknown class": (("class_path: slowfast_vgen.models.HashTextEncoder", "class_path: slowfast_vgen.models.Nope"),
                      ["Nope"]),
}


@pytest.fixture(scope="module")
def bad_yaml_runs(tmp_path_factory):
    """`sfvgen fit -c` on each bad YAML, all in one child process (tests/cli_driver.py)."""
    root, text = tmp_path_factory.mktemp("bad_yaml"), TINY.read_text()
    cases = {}
    for i, (case, ((old, new), _)) in enumerate(BAD_YAML.items()):
        assert old in text, old
        (root / f"bad{i}.yaml").write_text(text.replace(old, new, 1))
        cases[case] = ["fit", "-c", str(root / f"bad{i}.yaml")]
    return sfvgen_in_one_process(cases, root)


@pytest.mark.parametrize("case", BAD_YAML)
def test_bad_yaml_gives_one_line_and_exit_code_2(case, bad_yaml_runs):
    out = bad_yaml_runs[case]
    assert out.returncode == 2, out.stderr[-2000:]
    lines = error_lines(out.stderr)
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    for word in BAD_YAML[case][1]:
        assert word in lines[0], lines[0]


def test_unknown_command_is_one_line_and_exit_2():
    out = run(["fly"])
    assert out.returncode == 2 and "unknown command 'fly'" in out.stderr


def test_fit_saves_resolved_config_and_checkpoint(tmp_path):
    out = run(["fit", "-c", str(TINY), "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
               "--trainer.enable_progress_bar", "false"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (config,) = (tmp_path / "runs" / "slow_tiny").rglob("config.yaml")
    assert "SlowLearningSystem" in config.read_text() and "${" not in config.read_text()
    ckpt = sorted((tmp_path / "runs" / "slow_tiny").rglob("*.ckpt"))[-1]
    from safetensors.torch import load_file

    from slowfast_vgen.checkpoints import export_main

    assert export_main([str(ckpt), str(tmp_path / "unet.safetensors")]) == 0
    weights = load_file(str(tmp_path / "unet.safetensors"))
    assert weights and all(not k.startswith("unet.") for k in weights)
    # the export remembers what the network predicts; loading it into a system that predicts otherwise fails clearly
    from safetensors import safe_open

    from slowfast_vgen.errors import UserInputError
    from slowfast_vgen.experiment import load_system

    with safe_open(str(tmp_path / "unet.safetensors"), framework="pt") as f:
        assert f.metadata()["prediction_type"] == "epsilon"
    load_system(str(TINY), str(tmp_path / "unet.safetensors"))
    with pytest.raises(UserInputError, match="trained with prediction_type 'epsilon'.*uses 'v_prediction'"):
        load_system(str(TINY), str(tmp_path / "unet.safetensors"),
                    overrides=["--model.init_args.diffusion.init_args.prediction_type", "v_prediction"])
    with pytest.raises(UserInputError, match="checkpoint .* trained with prediction_type 'epsilon'"):
        load_system(str(TINY), ckpt=str(ckpt),
                    overrides=["--model.init_args.diffusion.init_args.prediction_type", "v_prediction"])


def test_quiet_lightning_filters_only_the_tips_and_the_pytree_warning():
    import logging
    import warnings

    from slowfast_vgen.cli import LIGHTNING_TIP_LOGGERS, quiet_lightning

    message = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and treespec.is_leaf()` instead."
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_lightning()
        warnings.warn_explicit(message, FutureWarning, "_pytree.py", 21, module="lightning.pytorch.utilities._pytree")
        warnings.warn_explicit(message, FutureWarning, "other.py", 1, module="some.other.module")  # still shown
        warnings.warn_explicit("another deprecation", FutureWarning, "_pytree.py", 22,
                               module="lightning.pytorch.utilities._pytree")  # still shown
    assert [(str(w.message), w.filename) for w in seen] == [(message, "other.py"), ("another deprecation", "_pytree.py")]
    logger = logging.getLogger(LIGHTNING_TIP_LOGGERS[0])
    record = lambda text: logging.LogRecord(logger.name, logging.INFO, __file__, 1, text, None, None)  # noqa: E731
    assert not logger.filter(record("💡 Tip: For seamless cloud logging, try installing [litlogger](https://x)"))
    assert not logger.filter(record("💡 Tip: For seamless cloud uploads, try installing [litmodels](https://x)"))
    assert logger.filter(record("`Trainer.fit` stopped: `max_steps=1` reached."))


def test_step_limited_progress_bar_shows_no_negative_epoch_count():
    from types import SimpleNamespace

    from slowfast_vgen.experiment import load_experiment
    from slowfast_vgen.lightning_cli import StepLimitedRichProgressBar

    bar = StepLimitedRichProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1)  # what Lightning sets when only max_steps is given
    assert bar._get_train_description(3).strip() == "Epoch 3"
    bar._trainer = SimpleNamespace(max_epochs=5)
    assert bar._get_train_description(3).strip() == "Epoch 3/4"
    cli = load_experiment(TINY, ["--trainer.logger", "false", "--trainer.callbacks", "[]"])
    assert isinstance(cli.trainer.progress_bar_callback, StepLimitedRichProgressBar)
    off = load_experiment(TINY, ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"])
    assert off.trainer.progress_bar_callback is None


def test_a_step_limited_fit_prints_no_tips_no_pytree_warning_and_no_epoch_minus_2(tmp_path):
    """`sfvgen fit` with no logger and Lightning's default checkpoint: the two conditions for the litlogger and
    litmodels tips; max_steps only: the condition for "Epoch 0/-2"."""
    out = run(["fit", "-c", str(TINY), "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
               "--trainer.logger", "false", "--trainer.callbacks", "[]", "--trainer.enable_model_summary", "false",
               "--data.init_args.batch_size", "1", "--data.init_args.frames", "5", "--data.init_args.min_frames", "5"],
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    for noise in ("💡", "Tip:", "litlogger", "litmodels", "LeafSpec", "Epoch 0/-"):
        assert noise not in text, text[-3000:]
    assert "Epoch 0" in out.stdout and "max_steps=1" in out.stderr  # the progress bar and Lightning's info still show
