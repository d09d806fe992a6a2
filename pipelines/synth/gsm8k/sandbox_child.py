"""The sandbox child's side (see sandbox.py): isolate this process, then read one request, evaluate it with the
whitelisted interpreter and answer one JSON line. Kept apart from sandbox.py so the child imports only what it
needs (every program pays the child's start-up time)."""
from __future__ import annotations

import ctypes
import json
import math
import os
import resource
import sys
from fractions import Fraction
from typing import Callable

from .safe_eval import (
    EvalLimits,
    LimitExceeded,
    ProgramFailed,
    ProgramRejected,
    evaluate,
)

NOBODY = 65534
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
MAX_REQUEST_BYTES = 1 << 20


def libc_unshare(flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def isolate(config: dict, unshare: Callable[[int], None] = libc_unshare) -> None:
    """In the child, before anything untrusted is read: namespace, privileges, rlimits. Fails closed."""
    problems = []
    netns = False
    if os.geteuid() == 0:
        try:
            unshare(CLONE_NEWNET)
            netns = True
        except OSError as e:
            problems.append(f"no network namespace as root ({e})")
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        except OSError as e:
            problems.append(f"cannot drop root privileges ({e})")
    if not netns:
        try:  # unprivileged: a user namespace makes the network namespace possible
            unshare(CLONE_NEWUSER | CLONE_NEWNET)
            netns = True
            problems = [p for p in problems if not p.startswith("no network")]
        except OSError as e:
            problems.append(f"no network namespace ({e})")
    if problems and config["require_isolation"]:
        _reply({"ok": False, "reason": "refused: " + "; ".join(problems)
                + " (SandboxLimits(require_isolation=False) runs without)"})
        os._exit(0)
    cpu, mem = config["cpu_seconds"], config["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def serve() -> None:
    """In the child: read one request, shut every other descriptor out, evaluate, answer one JSON line."""
    req = json.loads(sys.stdin.buffer.read(MAX_REQUEST_BYTES))
    resource.setrlimit(resource.RLIMIT_NOFILE, (3, 3))
    try:
        value = evaluate(req["source"], req["func"], req["kwargs"], EvalLimits(**req["limits"]))
        if isinstance(value, Fraction):
            value = value.numerator if value.denominator == 1 else float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProgramFailed(f"TypeError: returned {type(value).__name__}, not a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise ProgramFailed("ValueError: returned a non-finite number")
        out = {"ok": True, "value": value}
    except ProgramRejected as e:
        out = {"ok": False, "reason": f"rejected: {e}"}
    except LimitExceeded as e:
        out = {"ok": False, "reason": f"limit: {e}"}
    except ProgramFailed as e:
        out = {"ok": False, "reason": f"error: {e}"}
    except MemoryError:
        out = {"ok": False, "reason": "killed: memory limit"}
    except Exception as e:  # a bug of the interpreter: still a reason, never a hang
        out = {"ok": False, "reason": f"error: internal {type(e).__name__}: {str(e)[:200]}"}
    _reply(out)


def _reply(out: dict) -> None:
    sys.stdout.write(json.dumps(out))
    sys.stdout.flush()
