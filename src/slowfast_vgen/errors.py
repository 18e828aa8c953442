"""Errors raised for bad user input. The CLI prints them as one line and exits with code 2."""


class UserInputError(ValueError):
    """A value given by the user (config, file, argument) is invalid; the message names it and what was expected."""


class ModelNotAvailableError(UserInputError, OSError):
    """Pretrained weights are missing (e.g. offline); the message names the file and how to provide it."""
