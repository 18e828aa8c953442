"""Errors raised for bad user input. The CLI prints them as one line and exits with code 2.

Every ``sfvgen`` command parses its options with :class:`ArgumentParser` (an argparse error is one line too)
and reads user files through helpers that name the file and what was expected (``slowfast_vgen.io``). Set
``SFVGEN_DEBUG=1`` (or ``sfvgen --debug ...``) to see the traceback behind a one-line error.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import NoReturn


class UserInputError(ValueError):
    """A value given by the user (config, file, argument) is invalid; the message names it and what was expected."""


class ModelNotAvailableError(UserInputError, OSError):
    """Pretrained weights are missing (e.g. offline); the message names the file and how to provide it."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: a bad option raises :class:`UserInputError` (exit code 2 in the CLI)
    instead of printing the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserInputError(f"{self.prog}: {message}")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _one_line(message: str) -> str:
    """Condense a jsonargparse error (often a nested, multi-line report) into its most specific line."""
    lines = [ln.strip(" -") for ln in str(message).splitlines() if ln.strip(" -")]
    if not lines:
        return "invalid configuration"
    key = next((m.group(1) for ln in lines if (m := re.search(r'[Kk]ey "([^"]+)"', ln))), None)
    detail = next(
        (ln for ln in lines if re.search(r"not expected|Expected a|Got value|does not|invalid|unrecognized", ln)),
        lines[-1],
    )
    detail = re.sub(r"\s+", " ", detail)
    if key and key not in detail:
        return f'config key "{key}": {detail}'
    return detail


def exit_with_usage_error(message: str) -> NoReturn:
    """Used by the config parser: one line on stderr, exit code 2."""
    print(f"sfvgen: error: {_one_line(message)}", file=sys.stderr)
    if os.environ.get("SFVGEN_DEBUG"):
        print(message, file=sys.stderr)
    sys.exit(2)
