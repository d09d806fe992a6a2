"""Run an untrusted generated program (a model's `def answer(...)`) and get its return value, safely enough.

Layers, each enough to stop the hostile programs of the tests on its own where it applies:

1. Static screen (AST): no imports other than `math`, no dunder names or attributes (`().__class__.__bases__`),
   no `open`/`exec`/`eval`/`compile`/`getattr`/`globals`/... — rejected before anything runs.
2. A separate process (`python -I -S`, empty environment, empty working folder, new session) whose builtins are a
   small allow-list; `__import__` only hands out `math`.
3. Kernel limits set in the child before Python starts: CPU seconds (endless loop -> SIGXCPU), address space (huge
   allocation -> MemoryError), no file writes (RLIMIT_FSIZE=0), no child processes; once the request is read the
   child lowers RLIMIT_NOFILE to the three standard streams, so no file or socket can be opened at all.
4. Where the kernel allows unprivileged user namespaces, the child also gets an empty network namespace.
5. A wall-clock timeout in the parent kills the whole process group (a program blocked rather than computing).

A program that breaks a rule is rejected or killed with a reason; the caller records it and goes on.
"""
from __future__ import annotations

import ast
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

ALLOWED_MODULES = frozenset({"math"})
FORBIDDEN_NAMES = frozenset({
    "open", "exec", "eval", "compile", "globals", "locals", "vars", "getattr", "setattr", "delattr", "input",
    "breakpoint", "help", "exit", "quit", "memoryview", "dir", "type", "object", "super", "classmethod",
    "staticmethod", "property", "__import__", "__builtins__", "os", "sys", "subprocess", "socket", "importlib",
})
SAFE_BUILTINS = (
    "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "frozenset", "int", "isinstance",
    "len", "list", "map", "max", "min", "pow", "print", "range", "reversed", "round", "set", "sorted", "str", "sum",
    "tuple", "zip", "ArithmeticError", "Exception", "ValueError", "ZeroDivisionError", "TypeError", "True", "False",
    "None",
)


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int = 2
    memory_bytes: int = 512 * 2**20
    wall_seconds: float = 10.0
    max_output_bytes: int = 65536


@dataclass(frozen=True)
class SandboxResult:
    ok: bool
    value: Any = None
    reason: str | None = None  # why it failed: "rejected: ...", "killed: ...", "error: ..."


def screen(source: str) -> str | None:
    """Why the program is refused without running it, or None."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        return f"syntax error: {e.msg} (line {e.lineno})"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bad = [a.name for a in node.names if a.name not in ALLOWED_MODULES]
            if bad:
                return f"import of {bad[0]!r} is not allowed"
        elif isinstance(node, ast.ImportFrom):
            if node.module not in ALLOWED_MODULES:
                return f"import from {node.module!r} is not allowed"
        elif isinstance(node, ast.Name) and (node.id in FORBIDDEN_NAMES or node.id.startswith("__")):
            return f"name {node.id!r} is not allowed"
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            return f"attribute {node.attr!r} is not allowed"
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            return "global/nonlocal statements are not allowed"
    return None


# The child's program. It reads one JSON request, drops its right to open anything, runs, prints one JSON line.
_RUNNER = r"""
import sys, json, math, resource, builtins
req = json.loads(sys.stdin.read())
resource.setrlimit(resource.RLIMIT_NOFILE, (3, 3))
def _import(name, globals=None, locals=None, fromlist=(), level=0):
    if name in ("math",):
        return math
    raise ImportError("import of %r is not allowed" % name)
safe = {n: getattr(builtins, n) for n in req["builtins"] if hasattr(builtins, n)}
safe["__import__"] = _import
safe["print"] = lambda *a, **k: None  # stdout carries the answer
g = {"__builtins__": safe, "math": math, "__name__": "program"}
try:
    exec(compile(req["source"], "<program>", "exec"), g)
    fn = g.get(req["func"])
    if not callable(fn):
        raise NameError("no function %r" % req["func"])
    value = fn(**req["kwargs"])
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("returned %s, not a number" % type(value).__name__)
    if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
        raise ValueError("returned a non-finite number")
    out = {"ok": True, "value": value}
except MemoryError:
    out = {"ok": False, "reason": "killed: memory limit"}
except BaseException as e:
    out = {"ok": False, "reason": "error: %s: %s" % (type(e).__name__, str(e)[:200])}
sys.stdout.write(json.dumps(out))
"""


def _limit_child(limits: SandboxLimits) -> None:  # runs in the child between fork and exec
    os.setsid()
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    except (ValueError, OSError):
        pass
    try:  # an empty network namespace when unprivileged user namespaces are allowed
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.unshare(0x10000000 | 0x40000000)  # CLONE_NEWUSER | CLONE_NEWNET; failure leaves the other layers
    except Exception:
        pass


def run_program(source: str, kwargs: dict[str, Any], func: str = "answer",
                limits: SandboxLimits = SandboxLimits(), static_screen: bool = True) -> SandboxResult:
    """Call `func(**kwargs)` of `source` in the sandbox. `static_screen=False` only exists to test the other layers."""
    if static_screen:
        why = screen(source)
        if why:
            return SandboxResult(False, reason=f"rejected: {why}")
    request = json.dumps({"source": source, "func": func, "kwargs": kwargs, "builtins": list(SAFE_BUILTINS)})
    with tempfile.TemporaryDirectory(prefix="gsm8k-sandbox-") as cwd:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _RUNNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=cwd, env={}, preexec_fn=lambda: _limit_child(limits),
        )
        try:
            stdout, _ = proc.communicate(request.encode(), timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return SandboxResult(False, reason="killed: wall-clock timeout")
    if proc.returncode < 0:
        sig = -proc.returncode
        what = {signal.SIGXCPU: "cpu time limit", signal.SIGKILL: "cpu time limit (hard)",
                signal.SIGSEGV: "memory limit (segfault)"}.get(sig, f"signal {sig}")
        return SandboxResult(False, reason=f"killed: {what}")
    try:
        out = json.loads(stdout[:limits.max_output_bytes])
    except json.JSONDecodeError:
        return SandboxResult(False, reason=f"error: unreadable output (exit {proc.returncode})")
    return SandboxResult(out["ok"], out.get("value"), out.get("reason"))
