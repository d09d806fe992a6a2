"""The sandbox's second layer on its own: real Python standing in for a program that escaped the interpreter runs in
the isolated child (`run_isolated`), and the namespace, privilege drop, rlimits, closed descriptors and bounded
output still contain it. Plus: isolation that cannot be set up fails closed."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipelines.synth.gsm8k.sandbox import (
    SandboxLimits,
    SandboxResult,
    SandboxUnavailable,
    ensure_available,
    read_bounded,
    run_isolated,
)

LIMITS = SandboxLimits(cpu_seconds=5, wall_seconds=30)
REPO = Path(__file__).resolve().parents[1]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop only happens when run as root")


def escaped(body: str, limits: SandboxLimits = LIMITS) -> SandboxResult:
    """Run `body` as real Python in the isolated child; its exception, if any, becomes the reason. The modules it
    uses are loaded before isolation, as if the escaped program had found them loaded."""
    code = ("import json\ntry:\n" + "\n".join("    " + line for line in body.splitlines())
            + "\n    out = {'ok': True, 'value': 1}\nexcept Exception as e:\n"
            "    out = {'ok': False, 'reason': 'error: %s: %s' % (type(e).__name__, e)}\nprint(json.dumps(out))\n")
    return run_isolated(code, b"", limits, preload="import os, signal, socket, resource, time")


def test_child_has_no_network(tmp_path: Path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    try:
        port = server.getsockname()[1]
        result = escaped(f"s = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))")
        assert not result.ok and "Network is unreachable" in result.reason, result
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()


@needs_root
def test_child_cannot_read_delete_or_create_files(tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text("42")
    read = escaped(f"open({str(secret)!r}).read()")
    assert not read.ok and "PermissionError" in read.reason, read
    gone = escaped(f"import os\nos.unlink({str(secret)!r})")
    assert not gone.ok and "PermissionError" in gone.reason, gone
    made = escaped(f"open({str(tmp_path / 'new.txt')!r}, 'w')")
    assert not made.ok and "PermissionError" in made.reason, made
    assert secret.read_text() == "42" and sorted(p.name for p in tmp_path.iterdir()) == ["secret.txt"]


@needs_root
def test_child_cannot_signal_the_parent():
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda sig, frame: received.append(sig))
    try:
        result = escaped("import os, signal\nos.kill(os.getppid(), signal.SIGUSR1)")
        time.sleep(0.2)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert not result.ok and "PermissionError" in result.reason, result
    assert received == []


def test_child_inherits_no_descriptors_and_cannot_fork_or_write(tmp_path: Path):
    with open(tmp_path / "open.txt", "w") as leaked:
        os.set_inheritable(leaked.fileno(), True)
        fds = escaped("import os\nfds = sorted(int(f) for f in os.listdir('/proc/self/fd'))\n"
                      "assert fds[:3] == [0, 1, 2] and len(fds) == 4, fds")  # the 4th is the listing itself
    assert fds.ok, fds
    fork = escaped("import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)")
    assert not fork.ok and ("BlockingIOError" in fork.reason or "PermissionError" in fork.reason), fork
    write = escaped("import resource\nassert resource.getrlimit(resource.RLIMIT_FSIZE) == (0, 0)\n"
                    "open('x', 'w').write('y' * 10)")
    assert not write.ok, write


def test_cpu_and_wall_clock_limits_kill_the_child():
    cpu = escaped("while True:\n    pass", SandboxLimits(cpu_seconds=1, wall_seconds=30))
    assert cpu.reason.startswith("killed: cpu time limit"), cpu
    wall = escaped("import time\ntime.sleep(60)", SandboxLimits(cpu_seconds=1, wall_seconds=2))
    assert wall.reason == "killed: wall-clock timeout", wall


def test_parent_reads_at_most_the_output_limit():
    # The child writes 2 MiB and then blocks: the old parent read everything and then waited for the wall clock.
    result = escaped("import sys, time\nsys.stdout.write('x' * (2 << 20))\nsys.stdout.flush()\ntime.sleep(60)")
    assert result.reason == "killed: output over 65536 bytes", result


def test_read_bounded_stops_after_limit_plus_one_bytes():
    r, w = os.pipe()
    writer = threading.Thread(target=_write_all, args=(w, 1 << 20))
    writer.start()
    try:
        data, why = read_bounded(r, 1000, time.monotonic() + 10)
        assert len(data) == 1001 and why == "killed: output over 1000 bytes"
    finally:
        os.close(r)
        writer.join()


def _write_all(fd: int, n: int) -> None:
    try:
        while n > 0:
            n -= os.write(fd, b"x" * min(n, 65536))
    except BrokenPipeError:  # the reader stopped, as it should
        pass
    finally:
        os.close(fd)


def _isolate_with(unshare_fails: bool, require: bool) -> subprocess.CompletedProcess:
    code = ("from pipelines.synth.gsm8k import sandbox_child as sandbox\n"
            "def unshare(flags):\n"
            "    if FAILS:\n        raise OSError(1, 'Operation not permitted')\n"
            "    sandbox.libc_unshare(flags)\n"
            "sandbox.isolate({'cpu_seconds': 5, 'memory_bytes': 2**29, 'require_isolation': REQUIRE}, unshare)\n"
            "print('PROGRAM RAN')\n").replace("FAILS", str(unshare_fails)).replace("REQUIRE", str(require))
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO), "PATH": os.environ.get("PATH", "")})


def test_isolation_failure_fails_closed():
    refused = _isolate_with(unshare_fails=True, require=True)
    assert "PROGRAM RAN" not in refused.stdout, refused
    reply = json.loads(refused.stdout)
    assert reply["ok"] is False and reply["reason"].startswith("refused: ") and "network namespace" in reply["reason"]
    # the explicit opt-out runs anyway; a working namespace needs no opt-out
    assert "PROGRAM RAN" in _isolate_with(unshare_fails=True, require=False).stdout
    assert _isolate_with(unshare_fails=False, require=True).stdout.strip() == "PROGRAM RAN"


def test_ensure_available_raises_when_the_sandbox_cannot_run_programs():
    ensure_available(LIMITS)  # works here
    with pytest.raises(SandboxUnavailable, match="sandbox does not work here"):
        ensure_available(SandboxLimits(memory_bytes=1 << 20))  # too little memory for any program to run
