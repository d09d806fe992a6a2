"""Fingerprints of every shipped spec built on the mirror: sha256 of each shard file and of each manifest table.

`python tests/spec_fingerprints.py --record` rebuilds every spec and writes tests/data/spec_fingerprints.json; the
test `test_spec_fingerprints.py` rebuilds and compares, so a refactor that changes one byte of a shard or one row of
a manifest table is caught. Columns that describe the run, not the data (timings, versions, the mirror's absolute
path), are left out.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import duckdb

HERE = Path(__file__).resolve().parent
RECORD = HERE / "data" / "spec_fingerprints.json"
# run-specific columns of the `build` table (they differ between two runs of the same build)
VOLATILE = {"build": {"started_at", "finished_at", "seconds", "versions", "source_root", "workers",
                     "tables_sha256"}}  # tables_sha256 digests the build row, timings included


def fingerprint(out: Path, hub: Path) -> dict[str, str]:
    """{"shards/<file>": sha256, "table:<name>": sha256 of its rows in a canonical order}."""
    fp = {f"shards/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted((out / "shards").iterdir()) if p.is_file()}
    con = duckdb.connect(str(out / "manifest.duckdb"), read_only=True)
    try:
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' ORDER BY 1").fetchall()]
        for t in tables:
            cols = [r[0] for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
                [t]).fetchall() if r[0] not in VOLATILE.get(t, set())]
            sel = ", ".join(f'"{c}"' for c in cols)
            rows = con.execute(f'SELECT {sel} FROM "{t}" ORDER BY ALL').fetchall()
            text = json.dumps([cols, rows], default=str).replace(str(hub), "<HUB>")
            fp[f"table:{t}"] = hashlib.sha256(text.encode()).hexdigest()
    finally:
        con.close()
    return fp


def shipped_specs() -> list[str]:
    return sorted(p.stem for p in (HERE.parent / "mixtures").glob("*.yaml"))


def build_all(tmp: Path) -> dict[str, dict[str, str]]:
    sys.path.insert(0, str(HERE))
    from conftest import HUB, build  # noqa: E402

    names = sys.argv[2:] or shipped_specs()  # --record NAME...: only those (a deliberate change of their output)
    result = json.loads(RECORD.read_text()) if sys.argv[2:] and RECORD.exists() else {}
    for name in names:
        result[name] = build_fingerprint(name, tmp / name / "build", HUB, build)
    return result


def build_fingerprint(name: str, out: Path, hub: Path, build) -> dict[str, str]:
    """The fingerprint of a build of `name`; a spec the mirror cannot build (a source with a planned share has no
    files there: never optional, so the build stops) is recorded as that error, which must stay the same."""
    from pipelines.errors import SpecError

    try:
        return fingerprint(build(name, out, workers=2), hub)
    except SpecError as e:
        if "carries a planned share" not in str(e):
            raise
        return {"error": str(e).replace(str(hub), "<HUB>").replace(str(HERE.parent), "<ROOT>")}


if __name__ == "__main__":
    import tempfile
    import time

    assert sys.argv[1:2] == ["--record"], "usage: python tests/spec_fingerprints.py --record [NAME...]"
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        fps = build_all(Path(d))
        RECORD.parent.mkdir(exist_ok=True)
        RECORD.write_text(json.dumps(fps, indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(fps)} specs in {time.time() - t0:.0f} s -> {RECORD}")
