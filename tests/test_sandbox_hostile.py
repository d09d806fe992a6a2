"""Hostile generated programs through the public `run_program`: each attack is contained, reported with a specific
reason, and the sandbox still runs a legitimate program afterwards.

Every attack comes in the forms a model could write: the plain one (`import os`, `open(...)`) and the form that got
past the old static screen by walking generator frames (`gi_frame.f_back...f_globals`) to the runner's real
builtins. Against the old sandbox the escaped forms read, deleted and created files and signalled the test process,
so these tests failed there.
"""
from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from pipelines.synth.gsm8k.sandbox import SandboxLimits, SandboxResult, run_program

LIMITS = SandboxLimits(cpu_seconds=5, wall_seconds=20)


def escaped(body: str) -> str:
    """A program that walks generator frames up to the runner's globals, then runs `body` with `b` = the real
    builtins module, `imp` = the real `__import__` and `o` = the real `os`."""
    lines = "\n".join("        " + line for line in body.splitlines())
    return ("def answer(a):\n    def walk():\n        yield g.gi_frame.f_back\n    g = walk()\n    for f in g:\n"
            "        while f.f_back is not None:\n            f = f.f_back\n        b = f.f_globals['builtins']\n"
            "        imp = b.getattr(b, '__import__')\n        o = imp('os')\n"
            f"{lines}\n    return 1\n")


ESCAPE = "rejected: yield not allowed"  # no generators, hence no generator frames to walk


def assert_contained(result: SandboxResult, reason: str) -> None:
    assert not result.ok, f"attack ran: {result}"
    assert result.reason and result.reason.startswith(reason), result.reason


def assert_still_works() -> None:
    legit = run_program("def answer(a, b):\n    return a * b + 2\n", {"a": 4, "b": 10}, limits=LIMITS)
    assert legit.ok and legit.value == 42, legit  # ... and the run goes on


def test_frame_walking_is_refused():
    for source, reason in [
        (escaped("return len(f.f_globals)"), ESCAPE),
        ("def answer(a):\n    f = (x for x in [1])\n    return f.gi_frame.f_back\n",
         "rejected: attribute access '.f_back'"),
        ("def answer(a):\n    return len(answer.__globals__)\n", "rejected: attribute access '.__globals__'"),
        ("def answer(a):\n    return sqrt.impl(a)\n", "rejected: attribute access '.impl'"),  # interpreter internals
        ("import math\ndef answer(a):\n    return len(math.__dict__)\n", "rejected: attribute access '.__dict__'"),
    ]:
        assert_contained(run_program(source, {"a": 1}, limits=LIMITS), reason)
    assert_still_works()


def test_subclasses_and_mro_walks_are_refused():
    for source, reason in [
        (escaped("root = b.getattr(b.getattr(0, '__class__'), '__mro__')[-1]\n"
                 "return len(b.getattr(root, '__subclasses__')())"), ESCAPE),
        ("def answer(a):\n    return len(().__class__.__mro__[-1].__subclasses__())\n",
         "rejected: attribute access '.__subclasses__'"),
        ("def answer(a):\n    return len(a.mro())\n", "rejected: attribute access '.mro'"),
        ("def answer(a):\n    return len(type(a).mro())\n", "rejected: name 'type'"),
        ("def answer(a):\n    return len(getattr(a, '__class__'))\n", "rejected: name 'getattr'"),
    ]:
        assert_contained(run_program(source, {"a": 1}, limits=LIMITS), reason)
    assert_still_works()


def test_format_string_attribute_access_is_refused():
    for source, reason in [
        ("def answer(a):\n    return len('{0.__class__.__mro__}'.format(a))\n", "rejected: attribute access '.format'"),
        ("def answer(a):\n    return len(f'{a.__class__}')\n", "rejected: f-strings"),
        ("def answer(a):\n    return len('%s' % a)\n", "error: TypeError"),  # `%` is arithmetic only
    ]:
        assert_contained(run_program(source, {"a": 1}, limits=LIMITS), reason)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text("42")
    return path
    assert_still_works()


def test_reading_files_is_refused(secret: Path):
    for source, reason in [
        (escaped(f"o.close(0)\nreturn int(b.open({str(secret)!r}).read())"), ESCAPE),
        (f"def answer(a):\n    return int(open({str(secret)!r}).read())\n", "rejected: name 'open'"),
        (f"from pathlib import Path\ndef answer(a):\n    return int(Path({str(secret)!r}).read_text())\n",
         "rejected: import from 'pathlib'"),
    ]:
        result = run_program(source, {"a": 1}, limits=LIMITS)
        assert_contained(result, reason)
        assert result.value != 42
    assert_still_works()


def test_deleting_files_is_refused(secret: Path):
    for source, reason in [
        (escaped(f"o.unlink({str(secret)!r})"), ESCAPE),
        (f"import os\ndef answer(a):\n    os.remove({str(secret)!r})\n    return 1\n", "rejected: import of 'os'"),
        (f"def answer(a):\n    __import__('os').remove({str(secret)!r})\n    return 1\n",
         "rejected: name '__import__'"),
    ]:
        assert_contained(run_program(source, {"a": 1}, limits=LIMITS), reason)
        assert secret.read_text() == "42"
    assert_still_works()


def test_creating_files_is_refused(tmp_path: Path):
    target = tmp_path / "new.txt"
    for source, reason in [
        (escaped(f"o.close(0)\nb.open({str(target)!r}, 'w')"), ESCAPE),
        (escaped(f"o.mkdir({str(target)!r})"), ESCAPE),
        (f"def answer(a):\n    open({str(target)!r}, 'w')\n    return 1\n", "rejected: name 'open'"),
    ]:
        assert_contained(run_program(source, {"a": 1}, limits=LIMITS), reason)
    assert list(tmp_path.iterdir()) == []
    assert_still_works()


def test_signalling_the_parent_is_refused():
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda sig, frame: received.append(sig))
    try:
        for source, reason in [
            (escaped("o.kill(o.getppid(), 10)"), ESCAPE),
            ("import os\ndef answer(a):\n    os.kill(os.getppid(), 10)\n    return 1\n", "rejected: import of 'os'"),
            ("from signal import raise_signal\ndef answer(a):\n    raise_signal(10)\n    return 1\n",
             "rejected: import from 'signal'"),
        ]:
            assert_contained(run_program(source, {"a": 1}, limits=LIMITS), reason)
        time.sleep(0.2)  # a signal would have arrived by now
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert received == []
    assert_still_works()


def test_socket_to_a_loopback_server_is_refused():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        for source, reason in [
            (escaped(f"o.close(0)\nimp('socket').create_connection(('127.0.0.1', {port}))\nreturn 7"), ESCAPE),
            (f"import socket\ndef answer(a):\n    socket.create_connection(('127.0.0.1', {port}))\n    return 7\n",
             "rejected: import of 'socket'"),
        ]:
            assert_contained(run_program(source, {"a": 1}, limits=LIMITS), reason)
        with pytest.raises(socket.timeout):
            server.accept()  # nobody connected
    finally:
        server.close()
    assert_still_works()


def test_huge_exponent_is_refused_before_computing():
    for source in ("def answer(a):\n    return 10 ** 10 ** 10\n",
                   "def answer(a):\n    return pow(7, 10 ** 9)\n",
                   "def answer(a):\n    return 1 << 10 ** 9\n",
                   "from fractions import Fraction\ndef answer(a):\n    return Fraction(3, 2) ** 10 ** 8\n"):
        # the old sandbox computed until the CPU limit killed it ("killed: cpu time limit")
        assert_contained(run_program(source, {"a": 1}, limits=LIMITS), "limit: integer larger than")
    assert_still_works()


def test_deep_recursion_is_stopped():
    assert_contained(run_program("def answer(a):\n    return answer(a + 1)\n", {"a": 1}, limits=LIMITS),
                     "limit: calls nested deeper than")
    # Deeply nested source: the old sandbox's parser raised RecursionError/MemoryError out of run_program itself.
    for source in ("def answer(a):\n    return a" + " + a" * 4000 + "\n",
                   "def answer(a):\n    return " + "-" * 5000 + "a\n",
                   "def answer(a):\n    return " + "[" * 150 + "a" + "]" * 150 + "\n"):
        assert_contained(run_program(source, {"a": 1}, limits=LIMITS), "rejected: program nested")
    assert_still_works()


def test_a_megabyte_of_output_is_stopped():
    for source, reason in [
        ("def answer(a):\n    print('x' * 60000, 'y' * 60000)\n    return a\n", "limit: printed more than"),
        ("def answer(a):\n    for i in range(200000):\n        print(i, i, i)\n    return a\n",
         "limit: printed more than"),
        ("def answer(a):\n    print('x' * 1000000)\n    return a\n", "limit: sequence longer"),
        (escaped("s = f.f_globals['sys']\ns.stdout.write('x' * 2 ** 20)\ns.stdout.flush()"), ESCAPE),
    ]:
        assert_contained(run_program(source, {"a": 1}, limits=LIMITS), reason)
    assert_still_works()


def test_endless_loops_and_huge_allocations_are_stopped():
    for source, reason in [
        ("def answer(a):\n    while True:\n        a += 1\n", "limit: more than"),
        ("def answer(a):\n    for i in range(10 ** 12):\n        a += 1\n    return a\n", "limit: "),
        ("def answer(a):\n    x = [0] * (10 ** 10)\n    return len(x)\n", "limit: sequence longer"),
        ("def answer(a):\n    x = []\n    for i in range(60):\n        x.append([0] * 90000)\n    return 1\n",
         "limit: built more than"),
    ]:
        assert_contained(run_program(source, {"a": 1}, limits=LIMITS), reason)
    assert_still_works()
