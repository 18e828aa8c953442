"""LightningCLI set-up (``SfvgenCLI``) shared by ``sfvgen fit|validate|test|predict`` and the tests.

* Experiments are YAML files naming a LightningModule (``model.class_path``) and a LightningDataModule
  (``data.class_path``) with their typed arguments; OmegaConf interpolation is on, so one value can be
  shared across sections (``frames: ${data.init_args.frames}``).
* Config errors (unknown key, wrong type) print one line and exit with code 2.
* The resolved config is saved in the run's log directory (LightningCLI's SaveConfigCallback).
* The default progress bar is :func:`default_progress_bar`: Lightning's, without the "Epoch 0/-2" that a
  step-limited run (``max_steps`` set, ``max_epochs`` unset, hence -1) otherwise shows.
* ``fit --ckpt_path last`` resumes the newest ``last*.ckpt`` under the run's folders (``default_root_dir``, the
  logger's ``save_dir``, checkpoint ``dirpath``), in any logger version, and logs on into that version (a
  CSVLogger keeps the metrics the stopped run wrote up to the checkpoint); with none there, it says so and
  exits 2 (Lightning would warn and train from step 0).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import warnings
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
from omegaconf import OmegaConf
from lightning.pytorch.callbacks import Callback, ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from slowfast_vgen.checkpoints import read_checkpoint
from slowfast_vgen.errors import UserInputError, exit_with_usage_error


class StepLimitedRichProgressBar(RichProgressBar):
    """Lightning's rich progress bar; "Epoch N" instead of "Epoch N/-2" when the epochs are unlimited
    (``max_epochs`` -1, as Lightning sets it when only ``max_steps`` or ``max_time`` limits the run)."""

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs < 0:
            description = f"Epoch {current_epoch}"
            return f"{description:{len(self.validation_description)}}"  # padded as Lightning does
        return super()._get_train_description(current_epoch)


def default_progress_bar() -> ProgressBar:
    """The progress bar Lightning would pick (rich if installed, else tqdm), step-limited runs shown right."""
    return StepLimitedRichProgressBar() if importlib.util.find_spec("rich") is not None else TQDMProgressBar()


class OneLineErrorParser(LightningArgumentParser):
    """A LightningArgumentParser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        exit_with_usage_error(message)


def check_config_keys(node: Any, where: str = "") -> None:
    """Reject unknown keys under every ``class_path``/``init_args`` pair with the accepted ones listed.

    jsonargparse reports an unknown key without saying where it is or what would be accepted; a user
    editing a YAML needs both.
    """
    if isinstance(node, dict):
        target = node.get("class_path")
        if isinstance(target, str) and isinstance(node.get("init_args"), dict):
            accepted = _accepted_args(target)
            for key in node["init_args"]:
                if accepted is not None and key not in accepted:
                    raise UserInputError(
                        f'config key "{where}init_args.{key}" is not an argument of {target}; '
                        f"expected one of {sorted(accepted)}"
                    )
        for key, value in node.items():
            check_config_keys(value, f"{where}{key}.")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_config_keys(value, f"{where}{i}.")


def _accepted_args(target: str) -> set[str] | None:
    module, _, name = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise UserInputError(f"class_path {target!r} cannot be imported; expected a dotted path to a class") from None
    params = inspect.signature(obj).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params) and not inspect.isfunction(obj):
        return None  # accepts **kwargs: let the parser decide
    return {p.name for p in params if p.kind is not p.VAR_POSITIONAL and p.name != "self"}


def _innermost_user_error(err: BaseException) -> str:
    seen = err
    while seen is not None:
        if isinstance(seen, UserInputError):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    lines = [ln.strip(" -") for ln in str(err).splitlines()]
    if "Errors:" in lines:  # jsonargparse's union report: the first error is the informative one
        return lines[lines.index("Errors:") + 1]
    return lines[0] if lines else err.__class__.__name__


CKPT_PATH_KEYWORDS = ("last", "best", "hpc", "registry")  # Lightning's names for checkpoints it finds itself


class SfvgenCLI(LightningCLI):
    """LightningCLI with subclass-mode model and data, OmegaConf interpolation and one-line errors."""

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_kwargs={"parser_mode": "omegaconf"},
            parser_class=OneLineErrorParser,
            args=args,
            run=run,
            **kwargs,
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        for path in _config_paths(args):
            check_config_keys(_load_config_file(path))
        super().parse_arguments(parser, args)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> L.Trainer:
        configured = config.get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in [*configured, *callbacks]
        ):
            callbacks = [*callbacks, default_progress_bar()]  # instead of Lightning's default one
        return super()._instantiate_trainer(config, callbacks)

    def _parse_ckpt_path(self) -> None:
        # Lightning reads a --ckpt_path file here (its hyperparameters): a torn, foreign or code-carrying file
        # would end in a traceback, so it is read once more as data first and refused in one line.
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt and ckpt not in CKPT_PATH_KEYWORDS:
            read_checkpoint(ckpt, "--ckpt_path")
        super()._parse_ckpt_path()

    def instantiate_classes(self) -> None:
        self._resume = _resolve_last_checkpoint(self.config, self.subcommand) if self.subcommand else None
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:  # raised while building model/data/trainer from the config
            raise UserInputError(_innermost_user_error(err)) from err

    def before_fit(self) -> None:
        if self._resume is not None:
            _keep_csv_metrics(self.trainer, self._resume["step"])


def _get(node: Any, key: str, default: Any = None) -> Any:
    if node is None:
        return default
    try:
        value = node[key] if key in node else default
    except TypeError:
        return default
    return default if value is None else value


def _resolve_last_checkpoint(config: Any, subcommand: str) -> dict[str, Any] | None:
    """``--ckpt_path last``: the newest ``last*.ckpt`` of the run, its step, and the logger version to log into.

    Rewrites the subcommand's config in place (``ckpt_path`` -> the file, logger ``version`` -> its version)."""
    cfg = config[subcommand]
    if subcommand != "fit" or _get(cfg, "ckpt_path") != "last":
        return None
    import re

    trainer = cfg["trainer"]
    logger = _get(trainer, "logger")
    logger_args = _get(logger, "init_args", {}) if not isinstance(logger, (bool, list)) else {}
    roots = [_get(trainer, "default_root_dir", "."), _get(logger_args, "save_dir")]
    for cb in _get(trainer, "callbacks", []) or []:
        roots.append(_get(_get(cb, "init_args", {}), "dirpath"))
    found = sorted({p.resolve() for r in roots if r and Path(r).is_dir() for p in Path(r).rglob("last*.ckpt")},
                   key=lambda p: p.stat().st_mtime)
    where = ", ".join(sorted({str(r) for r in roots if r}))
    if not found:
        raise UserInputError(f"--ckpt_path last: no last.ckpt under {where}: nothing to resume (run without "
                             f"--ckpt_path to start from step 0)")
    path = found[-1]
    step = int(read_checkpoint(path, "--ckpt_path last: checkpoint").get("global_step", 0))
    cfg["ckpt_path"] = str(path)
    version = next((m.group(1) for part in path.parts if (m := re.fullmatch(r"version_(\d+)", part))), None)
    if version is not None and logger_args:  # one configured logger: log on into the checkpoint's version
        logger["init_args"]["version"] = int(version)
    print(f"resuming {path} (step {step}){'' if version is None else f', logging into version_{version}'}")
    return {"path": str(path), "step": step, "version": version}


def _keep_csv_metrics(trainer: L.Trainer, step: int) -> None:
    """A CSVLogger deletes the metrics.csv of its version when it starts: keep the rows up to the checkpoint."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    for logger in trainer.loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        rows = list(csv.DictReader(path.open(newline=""))) if path.is_file() else []
        rows = [r for r in rows if r.get("step", "").isdigit() and int(r["step"]) < step]  # the resumed run relogs the rest
        writer = logger.experiment  # its creation removes metrics.csv
        if rows:
            keys = sorted({k for r in rows for k in r})
            with path.open("w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=keys)
                out.writeheader()
                out.writerows(rows)
            writer.metrics_keys = keys


def _load_config_file(path: str) -> dict[str, Any]:
    """An experiment YAML as a dict, with one-line errors for a file that is not one."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserInputError(f"config {path!r} is not a text file (byte {err.start} is not UTF-8); expected an "
                             f"experiment YAML") from None
    if not text.strip():
        raise UserInputError(f"config {path!r} is empty; expected an experiment YAML with trainer, model and data")
    try:
        config = OmegaConf.create(text)
    except (yaml.YAMLError, ValueError) as err:
        raise UserInputError(f"config {path!r} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(config, type(OmegaConf.create({}))):
        raise UserInputError(f"config {path!r} holds a {type(OmegaConf.to_container(config)).__name__}; expected a "
                             f"mapping with trainer, model and data")
    return OmegaConf.to_container(config, resolve=False)


def _config_paths(args: Any) -> list[str]:
    args = list(args or [])
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-c", "--config") and Path(args[i + 1]).is_file()]
