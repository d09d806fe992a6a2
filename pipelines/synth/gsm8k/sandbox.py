"""Run an untrusted generated program (a model's `def answer(...)`) and get its return value.

Layer 1, escape impossible by construction: the program is never given to Python. `safe_eval` checks it against a
small whitelisted subset (numbers, arithmetic, assignments, if/for/while, calls of allowed math functions; no
attribute access beyond `math.NAME`, no dunder names, no imports but math/fractions/typing) and evaluates it with
its own AST interpreter, metering steps, loop iterations, call depth, integer size, sequence length and printed
bytes. A program outside the subset is refused before anything runs ("rejected: ...").

Layer 2, in case layer 1 has a bug: the interpreter runs in a child process (`python -I -S -B`, empty environment,
empty working folder, new session, no inherited descriptors, stderr discarded). Before the request is read the
child (sandbox_child.py) isolates itself and only then evaluates:
- an empty network namespace (`unshare(CLONE_NEWNET)` as root, `CLONE_NEWUSER|CLONE_NEWNET` otherwise);
- as root, it drops to uid/gid 65534 (nobody), so it cannot signal the parent or touch root's files;
- rlimits: CPU seconds, address space, no file writes (FSIZE 0), no core files, no new processes; after reading
  the request, no descriptors beyond the three standard streams.
If the namespace or the privilege drop cannot be set up the child FAILS CLOSED: it runs nothing and answers
"refused: ..." — unless the caller passes `SandboxLimits(require_isolation=False)`. Failing closed is the default
because the machines this runs on (dev boxes and CI, as root, and unprivileged users where the kernel allows user
namespaces) can set both up; a container that forbids `unshare` must opt out explicitly and knowingly.
The parent reads at most `max_output_bytes + 1` bytes of the child's stdout, kills the child's process group on
overflow or at the wall-clock deadline, and never waits on anything unbounded.

Every failure comes back as a SandboxResult with a reason; the caller records it and goes on.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .safe_eval import EvalLimits, check
from .sandbox_child import MAX_REQUEST_BYTES

# the folder holding the `pipelines` package, so the child can import this module under `python -I`
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int = 2
    memory_bytes: int = 512 * 2**20
    wall_seconds: float = 10.0
    max_output_bytes: int = 65536
    require_isolation: bool = True  # False: run even where the network namespace / privilege drop is impossible
    program: EvalLimits = field(default_factory=EvalLimits)


@dataclass(frozen=True)
class SandboxResult:
    ok: bool
    value: Any = None
    # why it failed: "rejected: ..." (outside the subset), "limit: ..." (an interpreter bound), "error: ..." (the
    # program failed), "killed: ..." (a process limit), "refused: ..." (isolation could not be set up)
    reason: str | None = None


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run programs here (e.g. it refuses because isolation cannot be set up)."""


def ensure_available(limits: SandboxLimits = SandboxLimits()) -> None:
    """Run a trivial program once; raise SandboxUnavailable with the reason if the sandbox cannot work here, so a
    run stops before spending model calls on programs that would all be refused."""
    probe = run_program("def answer(x):\n    return x + 1\n", {"x": 1}, "answer", limits)
    if not (probe.ok and probe.value == 2):
        raise SandboxUnavailable(f"the generated-program sandbox does not work here: {probe.reason}")


def run_program(source: str, kwargs: dict[str, Any], func: str = "answer",
                limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Call `func(**kwargs)` of `source` in the sandbox."""
    why = check(source, limits.program)  # in-process: parsing only, nothing of the program runs here
    if why:
        return SandboxResult(False, reason=f"rejected: {why}")
    request = json.dumps({"source": source, "func": func, "kwargs": kwargs, "limits": asdict(limits.program)})
    if len(request) > MAX_REQUEST_BYTES:  # ASCII JSON: characters are bytes
        return SandboxResult(False, reason=f"rejected: arguments larger than {MAX_REQUEST_BYTES} bytes")
    return run_isolated("serve()", request.encode(), limits)


def run_isolated(payload: str, stdin: bytes, limits: SandboxLimits, preload: str = "") -> SandboxResult:
    """Run `payload` (Python source, trusted: `serve()` or a test's stand-in for an escaped program) in an isolated
    child, after `isolate(...)`; its stdout must be one JSON object {"ok", "value" | "reason"}. `preload` runs
    before isolation (imports a payload needs: after the privilege drop the stdlib may be unreadable)."""
    config = {"cpu_seconds": limits.cpu_seconds, "memory_bytes": limits.memory_bytes,
              "require_isolation": limits.require_isolation}
    code = (f"import sys\nsys.path.insert(0, {_PACKAGE_ROOT!r})\n{preload}\n"
            f"from pipelines.synth.gsm8k.sandbox_child import isolate, serve\nisolate({config!r})\n{payload}\n")
    with tempfile.TemporaryDirectory(prefix="gsm8k-sandbox-") as cwd:
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", "-c", code], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=cwd, env={},
                                close_fds=True, start_new_session=True)
        feeder = threading.Thread(target=_feed, args=(proc.stdin, stdin), daemon=True)
        feeder.start()
        deadline = time.monotonic() + limits.wall_seconds
        try:
            out, stopped = read_bounded(proc.stdout.fileno(), limits.max_output_bytes, deadline)
            if stopped is None:  # stdout closed: the child is exiting
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    stopped = "killed: wall-clock timeout"
        finally:
            _kill_group(proc.pid)
            proc.wait()
            proc.stdout.close()
            feeder.join(timeout=1)
    if stopped:
        return SandboxResult(False, reason=stopped)
    if proc.returncode < 0:
        sig = -proc.returncode
        what = {signal.SIGXCPU: "cpu time limit", signal.SIGKILL: "cpu time limit (hard)",
                signal.SIGSEGV: "memory limit (segfault)"}.get(sig, f"signal {sig}")
        return SandboxResult(False, reason=f"killed: {what}")
    try:
        reply = json.loads(out)
        return SandboxResult(bool(reply["ok"]), reply.get("value"), reply.get("reason"))
    except (ValueError, KeyError, TypeError):
        return SandboxResult(False, reason=f"error: unreadable output (exit {proc.returncode})")


def read_bounded(fd: int, limit: int, deadline: float) -> tuple[bytes, str | None]:
    """Read `fd` to EOF, but never more than `limit + 1` bytes nor past `deadline`; says why it stopped early."""
    buf = bytearray()
    poller = select.poll()  # not select(): the parent may hold more than FD_SETSIZE descriptors
    poller.register(fd, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(buf), "killed: wall-clock timeout"
        if not poller.poll(max(1, int(left * 1000))):
            continue
        chunk = os.read(fd, min(65536, limit + 1 - len(buf)))
        if not chunk:
            return bytes(buf), None
        buf += chunk
        if len(buf) > limit:
            return bytes(buf), f"killed: output over {limit} bytes"


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
    except (OSError, ValueError):  # the child died or stopped reading: its result says why
        pass
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # the child leads its own session, so this reaches anything it left behind
    except (ProcessLookupError, PermissionError):
        pass
