"""The builder's data flows one way (issue 18): read -> steps -> dedup / decontam -> pack -> shards -> build, and
the trainer reads builds only through the shard format. Checked on the source, so a new back-edge fails here before
it becomes an import circle."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# layer of each part of pipelines/; a module may import its own layer or an earlier one, never a later one.
# The format contract (shards.format, shards.reader) is read by every stage and by the trainer: it sits at the base.
BASE = ("pipelines", "pipelines._logging", "pipelines.errors", "pipelines.io", "pipelines.resources", "pipelines.text",
        "pipelines.stages", "pipelines.shards", "pipelines.shards.format", "pipelines.shards.reader")
LAYERS: list[tuple[str, ...]] = [
    BASE,
    ("pipelines.read",),
    ("pipelines.steps",),
    ("pipelines.dedup", "pipelines.decontam"),
    ("pipelines.pack",),
    ("pipelines.shards",),
    ("pipelines.build",),
    ("pipelines.synth", "pipelines.quality", "pipelines.commands"),
]
# what the trainer may import of the builder: the format contract and dependency-free helpers, never a stage
TRAINER_MAY_IMPORT = ("pipelines.shards.format", "pipelines.shards.reader", "pipelines.resources", "pipelines.io")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path, type_checking: bool = False) -> set[str]:
    """Modules imported by `path` (anywhere in it, functions included), except under `if TYPE_CHECKING:` (which
    only names types for annotations) unless `type_checking`."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if not type_checking and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    pkg = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
    return found


def modules(folder: str) -> dict[str, Path]:
    return {module_name(p): p for p in (ROOT / folder).rglob("*.py")}


PIPELINES = modules("pipelines")


def layer(mod: str) -> int:
    """Base modules by exact name; the others by their package (the longest prefix that names one)."""
    if mod in BASE:
        return 0
    found = [(len(p), i) for i, prefixes in enumerate(LAYERS[1:], 1) for p in prefixes
             if mod == p or mod.startswith(p + ".")]
    assert found, f"{mod}: no layer (add its package to LAYERS)"
    return max(found)[1]


def graph(type_checking: bool = False, mods: dict[str, Path] = PIPELINES) -> dict[str, set[str]]:
    return {m: {i for i in runtime_imports(p, type_checking) if i in mods and i != m} for m, p in mods.items()}


def test_no_module_imports_a_later_stage():
    back = [f"{m} (layer {layer(m)}) imports {i} (layer {layer(i)})"
            for m, deps in graph().items() for i in sorted(deps) if layer(i) > layer(m)]
    assert not back, "imports against the data flow:\n" + "\n".join(back)


def test_no_import_circle():
    """Not even through imports for annotations (`if TYPE_CHECKING:`) or inside functions."""
    g = graph(type_checking=True, mods={**PIPELINES, **modules("trainer")})
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g[m]):
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_trainer_reads_builds_only_through_the_shard_format():
    bad = sorted(f"{module_name(p)} imports {i}" for p in (ROOT / "trainer").rglob("*.py")
                 for i in runtime_imports(p) if i.startswith("pipelines")
                 and not any(i == a or i.startswith(a + ".") for a in TRAINER_MAY_IMPORT)
                 and i not in ("pipelines", "pipelines.shards"))
    assert not bad, bad


def test_kernels_import_nothing_of_ours():
    bad = sorted(f"{module_name(p)} imports {i}" for p in (ROOT / "kernels").rglob("*.py")
                 for i in runtime_imports(p) if i.split(".")[0] in ("pipelines", "trainer"))
    assert not bad, bad


@pytest.mark.parametrize("mod", sorted(PIPELINES))
def test_every_module_imports_alone(mod):
    """Each module imports in a fresh interpreter on its own (an import circle shows up as an ImportError for
    whichever module is imported first)."""
    r = subprocess.run([sys.executable, "-c", f"import {mod}"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
