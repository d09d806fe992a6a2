"""A bad CLI option value is exit code 2 and a message naming the option — run as a user runs it (a subprocess), so
any traceback on stdout or stderr fails the test (issue 11)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TOKENIZER


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "300"}
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    (d / "docs.jsonl").write_text("".join(json.dumps({"text": f"doc {i} " * 20}) + "\n" for i in range(3)))
    path = d / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "cli", "seq_len": 64, "tokenizer": str(TOKENIZER),
                                    "sources": [{"name": "docs", "uri": str(d / "docs.jsonl")}]}))
    (d / "a-file").write_text("not a directory")
    (d / "not-a-build").mkdir()
    return path


BUILD_CASES = [
    (["--out", "{d}/a-file"], "--out {d}/a-file: exists and is not a directory"),
    (["--workers", "0"], "--workers must be >= 1, got 0"),
    (["--max-tokens", "0"], "--max-tokens must be positive, got 0"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--executor", "kubernetes"], "--executor must be one of local, slurm, ray, got 'kubernetes'"),
    (["--executor", "slurm", "--executor-opt", "partition"], "--executor-opt expects KEY=VALUE, got 'partition'"),
    (["--executor", "slurm", "--executor-opt", "=cpu"], "--executor-opt expects KEY=VALUE"),
    (["--executor-opt", "partition=cpu"], "--executor-opt is for the slurm and ray executors"),
    (["--source-root", "{d}/missing"], "--source-root {d}/missing: not a directory"),
    (["--exclude", "{d}/not-a-build"], "--exclude {d}/not-a-build: no manifest.duckdb there"),
    (["--workers", "many"], "Invalid value for '--workers'"),  # typer's own type check, also exit 2
]


@pytest.mark.parametrize("args,message", BUILD_CASES, ids=[" ".join(a) for a, _ in BUILD_CASES])
def test_bad_build_option_exits_2(spec: Path, args: list[str], message: str):
    """In-process through typer (the same parsing and handlers; an escaping exception would be `res.exception`)."""
    from typer.testing import CliRunner

    import cli as cli_module

    d = str(spec.parent)
    args = [a.format(d=d) for a in args]
    if "--out" not in args:
        args += ["--out", f"{d}/out"]
    res = CliRunner().invoke(cli_module.app, ["build-mixture", str(spec), "--no-progress", *args],
                             env={"COLUMNS": "300"})
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), (text, res.exception)
    assert message.format(d=d) in text
    assert not Path(d, "out", "work").exists()


def test_bad_build_option_from_a_shell_has_no_traceback(spec: Path):
    res = cli("build-mixture", str(spec), "--no-progress", "--workers", "0", "--out", str(spec.parent / "out"))
    assert res.returncode == 2 and "--workers must be >= 1, got 0" in res.stderr  # errors go to stderr, one line
    assert "Traceback" not in res.stdout + res.stderr


@pytest.mark.parametrize("args,message", [
    (["verify", "{d}/not-a-build"], "no manifest.duckdb there"),
    (["verify", "{d}/missing"], "no manifest.duckdb there"),
    (["contamination", "{d}/not-a-build"], "no manifest"),
    (["contamination", "{d}/not-a-build", "--items", "-1"], "Invalid value for '--items'"),
    (["show", "{d}/spec.yaml", "--source-root", "{d}/missing"], "--source-root {d}/missing: not a directory"),
    (["show", "{d}/nope.yaml"], "spec file not found"),
    (["synth", "gsm8k", "--seed", "-1"], "Invalid value for '--seed'"),
    (["synth", "gsm8k", "--limit", "0"], "Invalid value for '--limit'"),
    (["synth", "gsm8k", "--tokenizer", "{d}/missing.json"], "tokenizer file not found"),
    (["synth", "gsm8k", "--out", "{d}/a-file"], "exists and is not a directory"),
    (["synth", "long-qa", "--input", "x", "--max-attempts", "0"], "Invalid value for '--max-attempts'"),
    (["synth", "long-qa", "--input", "x", "--request-timeout", "0"], "--request-timeout must be positive"),
    (["synth", "long-qa", "--input", "x", "--format", "html"], "--format must be one of"),
    (["synth", "long-qa", "--input", "x", "--name", "../../etc"], "--name must be a plain file name"),
])
def test_bad_option_of_other_commands_exits_2(spec: Path, args: list[str], message: str):
    d = str(spec.parent)
    res = cli(*[a.format(d=d) for a in args])
    text = " ".join((res.stdout + res.stderr).split())
    assert res.returncode == 2, text
    assert message.format(d=d) in text and "Traceback" not in text


def test_default_out_of_a_spec_name_stays_under_out(tmp_path: Path):
    """A spec named `../..` used to write to `out/../..`; it is now a spec error before anything is created."""
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": "x " * 50}) + "\n")
    path = tmp_path / "escape.yaml"
    path.write_text(yaml.safe_dump({"name": "../..", "seq_len": 64, "tokenizer": str(TOKENIZER),
                                    "sources": [{"name": "docs", "uri": str(tmp_path / "docs.jsonl")}]}))
    work = tmp_path / "cwd"
    work.mkdir()
    res = cli("build-mixture", str(path), "--no-progress", cwd=work)
    assert res.returncode == 2 and "field 'name' must be a plain name" in " ".join(res.stderr.split())
    assert not any(work.iterdir()) and sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "docs.jsonl",
                                                                                      "escape.yaml"]
