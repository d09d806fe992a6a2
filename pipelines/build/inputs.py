"""What stage A read, so that a changed input is rebuilt and reported.

The stage-A cache key (pipelines/build/run.py `prepare`) hashes every input file's identity (size, mtime, ETag, ... see
`pipelines.read.sources.file_identity`) and `stage_a_code_version()`, a hash of the source of the modules that read and
transform records. Hashing the code instead of a hand-bumped FORMAT_VERSION means no one has to remember to bump
it: any edit to a reader (even a comment) gives a fresh work dir, which costs one re-read and never a stale result.

After a build, OUT/inputs.json records each file's identity and what changed since the previous build into the same
OUT; the CLI prints those changes under the summary.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path
from types import ModuleType

INPUTS_FILE = "inputs.json"

# Modules whose code decides stage A's output. Every `pipelines.*` module they import at module level is followed
# too; a module imported only inside a function must be listed here.
STAGE_A_MODULES = ("pipelines.steps.read", "pipelines.steps.sample", "pipelines.steps.tokenize",
                   "pipelines.steps.tokenize_modes", "pipelines.steps.chat_template", "pipelines.steps.intermediate",
                   "pipelines.dedup.signatures", "pipelines.decontam.ngram", "pipelines.read.sources")


def _pipelines_deps(mod: ModuleType) -> set[str]:
    deps = set()
    for value in vars(mod).values():
        name = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
        if isinstance(name, str) and name.startswith("pipelines.") and name != mod.__name__:
            deps.add(name)
    return deps


def stage_a_code_version(modules: tuple[str, ...] = STAGE_A_MODULES) -> str:
    """sha256 (16 hex) of the source files of `modules` and the pipelines modules they import."""
    seen: dict[str, ModuleType] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name] = mod = importlib.import_module(name)
        todo.extend(_pipelines_deps(mod))
    h = hashlib.sha256()
    for name in sorted(seen):
        h.update(name.encode() + b"\0")
        if getattr(seen[name], "__file__", None):
            h.update(Path(seen[name].__file__).read_bytes())
    return h.hexdigest()[:16]


def input_changes(out: str | Path, identities: dict[str, str]) -> dict[str, list[str]]:
    """Files changed, added or removed since the last build recorded in OUT (empty lists on a first build)."""
    path = Path(out) / INPUTS_FILE
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {"changed": [], "added": [], "removed": []}
    return {
        "changed": sorted(f for f, ident in identities.items() if f in previous and previous[f] != ident),
        "added": sorted(set(identities) - set(previous)),
        "removed": sorted(set(previous) - set(identities)),
    }


def record_inputs(out: str | Path, identities: dict[str, str], changes: dict[str, list[str]]) -> None:
    """Write OUT/inputs.json atomically."""
    path = Path(out) / INPUTS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"files": identities, **changes}, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def read_input_changes(out: str | Path) -> dict[str, list[str]]:
    """The changes recorded by the last build into OUT (empty when none or no record)."""
    try:
        data = json.loads((Path(out) / INPUTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: data.get(k, []) for k in ("changed", "added", "removed")}
