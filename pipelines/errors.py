"""Typed errors for bad input. The CLI turns every `InputError` into a one-line message and exit code 2.

A user can fix each of these without reading code: the message names the spec file and field, the input file (and
line), the CLI option, or the output directory at fault. Anything else that escapes is a bug in midtrain.
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user (spec, source file, CLI option, output directory); the message says where."""


class SpecError(InputError):
    """A mixture spec is invalid; the message names the file and the field."""


class SourceFileError(InputError):
    """A whole source file cannot be read; the message names the file (and the line where known)."""


class OptionError(InputError):
    """A CLI option value is out of range or inconsistent; the message names the option."""


class OutputDirError(InputError):
    """The output directory cannot be used: it is a file, or another build holds its lock."""
