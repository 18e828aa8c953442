"""``sfvgen``: one entry point for training (LightningCLI) and the framework's tools.

``sfvgen fit|validate|test|predict -c experiments/X.yaml [--section.key value ...]`` runs LightningCLI with
OmegaConf interpolation (``${data.init_args.frames}``); the resolved config is saved next to every run.
The other subcommands are plain functions ``main(argv) -> int`` in their modules, imported on use so
that ``sfvgen --help`` stays fast.

Bad input (a config key that does not exist, a value of the wrong type, an invalid argument, a file that is
not what it should be) prints one line naming it and what was expected, and exits with code 2, for every
command. ``sfvgen --debug COMMAND ...`` (or ``SFVGEN_DEBUG=1``) also prints the traceback behind it.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from slowfast_vgen.errors import UserInputError

LIGHTNING_COMMANDS = {
    "fit": "train a model (slow learning, the slow-fast loop) from an experiment YAML",
    "validate": "run the validation loop of an experiment",
    "test": "run the test loop of an experiment",
    "predict": "run the predict loop of an experiment (its data module needs a predict_dataloader, which the "
               "shipped ones lack: generate with `sfvgen generate`, `demo` or `evaluate`)",
}
# name -> (module:function, help). Each function takes the remaining argv and returns an exit code.
TOOL_COMMANDS = {
    "demo": ("slowfast_vgen.demo:main", "train/generate on the built-in world and write videos (make demo)"),
    "generate": ("slowfast_vgen.generate:main", "generate a long video from a first frame and actions"),
    "data": ("slowfast_vgen.datamodules.prep.cli:main", "build, verify and record WebDataset shards"),
    "evaluate": ("slowfast_vgen.evaluation.cli:main", "the paper's tables (-c YAML); pool, plot (revisit runs); "
                 "human-sheet"),
    "bench": ("slowfast_vgen.bench:main", "benchmarks (train-step, temp-lora, memory, slow-fast, data, metrics) as "
              "JSON"),
    "export": ("slowfast_vgen.checkpoints:export_main", "UNet weights of a checkpoint -> safetensors"),
}


# Lightning's advertising lines ("💡 Tip: ... install litlogger / litmodels"), logged with rank_zero_info.
LIGHTNING_TIP_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


def _not_a_lightning_tip(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (message.startswith("💡 Tip:") and ("litlogger" in message or "litmodels" in message))


def quiet_lightning() -> None:
    """Drop two kinds of noise from every ``sfvgen`` command, and nothing else.

    * Lightning's "💡 Tip:" lines advertising litlogger / litmodels (a logging filter on those records only);
    * torch's FutureWarning "`isinstance(treespec, LeafSpec)` is deprecated", raised from Lightning's own
      ``lightning/pytorch/utilities/_pytree.py`` (not from this project; filtered by message, category and
      module, so the same warning from any other module still shows).
    """
    for name in LIGHTNING_TIP_LOGGERS:
        logger = logging.getLogger(name)
        if _not_a_lightning_tip not in logger.filters:
            logger.addFilter(_not_a_lightning_tip)
    import warnings

    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )


def _usage() -> str:
    lines = ["usage: sfvgen <command> [options]", "", "commands:"]
    for name, text in LIGHTNING_COMMANDS.items():
        lines.append(f"  {name:<10} {text}")
    for name, (_, text) in TOOL_COMMANDS.items():
        lines.append(f"  {name:<10} {text}")
    lines += ["", "`sfvgen <command> --help` shows a command's options."]
    return "\n".join(lines)


def run_lightning(argv: list[str]) -> int:
    from slowfast_vgen.lightning_cli import SfvgenCLI

    SfvgenCLI(args=argv)  # a UserInputError goes to main's handler
    return 0


def _fail(message: str) -> int:
    print(f"sfvgen: error: {message}", file=sys.stderr)
    return 2


def _library_input_error(err: BaseException) -> str | None:
    """The one-line message of a library exception that means "bad input" (None for anything else: a bug)."""
    try:
        from lightning.fabric.utilities.exceptions import MisconfigurationException
    except ImportError:  # pragma: no cover - lightning is a dependency
        return None
    if isinstance(err, MisconfigurationException):  # e.g. --trainer.max_steps -5
        return str(err).strip().splitlines()[0]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--debug":  # tracebacks behind the one-line errors, for developers
        os.environ["SFVGEN_DEBUG"] = "1"
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    quiet_lightning()
    try:
        if command in LIGHTNING_COMMANDS:
            return run_lightning(argv)
        if command in TOOL_COMMANDS:
            module, func = TOOL_COMMANDS[command][0].split(":")
            return int(getattr(importlib.import_module(module), func)(rest) or 0)
    except UserInputError as err:
        _debug_traceback()
        return _fail(str(err))
    except Exception as err:
        message = _library_input_error(err)
        if message is None:
            raise
        _debug_traceback()
        return _fail(message)
    return _fail(f"unknown command {command!r}; expected one of {sorted({**LIGHTNING_COMMANDS, **TOOL_COMMANDS})}")


def _debug_traceback() -> None:
    if os.environ.get("SFVGEN_DEBUG"):
        import traceback

        traceback.print_exc(file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
