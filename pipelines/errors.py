"""Typed errors. The CLI's one handler (`cli.py`) turns an error with an `exit_code` into a one-line message and that
exit code: every `InputError` is 2 (the user's input is at fault), a `StageFailed` is 1 (the work failed).

A user can fix each of these without reading code: the message names the spec file and field, the input file (and
line), the CLI option, or the output directory at fault. Anything else that escapes is a bug in midtrain.
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user (spec, source file, CLI option, output directory); the message says where."""

    exit_code = 2


class SpecError(InputError):
    """A mixture spec is invalid; the message names the file and the field."""


class SourceFileError(InputError):
    """A whole source file cannot be read; the message names the file (and the line where known)."""


class OptionError(InputError):
    """A CLI option value is out of range or inconsistent; the message names the option."""


class OutputDirError(InputError):
    """The output directory cannot be used: it is a file, or another build holds its lock."""


class StageFailed(RuntimeError):
    """A stage of a build had failed tasks; the message carries their errors."""

    exit_code = 1
