"""Keep datatrove's per-task log files complete but its console output to warnings and errors.

datatrove's `add_task_logger` sends INFO to stderr for every task, which buries our progress bars and summary.
Our pipeline modules are imported in every datatrove worker process (they are unpickled there), so patching here
reaches the workers too. `MIDTRAIN_LOG_LEVEL=INFO` restores datatrove's chatty console.
"""
from __future__ import annotations

import errno
import os
import sys

import datatrove.executor.base as _base
from datatrove.utils import logging as _dlog
from loguru import logger

from pipelines.errors import InputError

_LEVEL = os.environ.get("MIDTRAIN_LOG_LEVEL", "WARNING")
_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {name}:{function}:{line} - {message}"


def _console_filter(record) -> bool:
    """Bad input (an InputError) and a full disk reach the user as the CLI's one-line message, not as a worker's
    traceback; the task log file still has the full record (when the disk lets it)."""
    exc = record["exception"]
    if exc is None:
        return True
    full = isinstance(exc.value, OSError) and exc.value.errno in (errno.ENOSPC, errno.EDQUOT)
    return not (isinstance(exc.value, InputError) or full)


def _file_sink(stream):
    """A log-file sink that a full disk cannot turn into a second traceback on the console (loguru reports a
    failing sink on stderr); the build's one-line error says what happened."""
    def write(message: str) -> None:
        try:
            stream.write(message)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
    return write


def _add_task_logger(logging_dir, rank: int, local_rank: int = 0, node_rank: int = -1):
    logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")
    logger.remove()
    logger.add(sys.stderr, level=_LEVEL, format=_FORMAT, backtrace=False, diagnose=False, filter=_console_filter)
    logger.add(_file_sink(logfile), level="DEBUG", format=_FORMAT)
    logger.info(f"Launching pipeline for {rank=}")
    return logfile


def _setup_default_logger() -> None:
    logger.remove()
    logger.add(sys.stderr, level=_LEVEL, format=_FORMAT, backtrace=False, diagnose=False, filter=_console_filter)


if _LEVEL.upper() != "INFO":
    _base.add_task_logger = _add_task_logger
    _dlog.setup_default_logger = _setup_default_logger
    _setup_default_logger()
