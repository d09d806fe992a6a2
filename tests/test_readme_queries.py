"""The README's manifest queries are a public interface: every one runs, as written, on a fresh stage-2 build."""
from __future__ import annotations

import re

import duckdb
from conftest import ROOT


def readme_queries() -> list[str]:
    text = (ROOT / "README.md").read_text()
    queries = []
    for block in re.findall(r"```sql\n(.*?)```", text, flags=re.S):
        body = "\n".join(line for line in block.splitlines() if not line.strip().startswith("--"))
        queries += [q.strip() for q in body.split(";") if q.strip()]
    return queries


def test_readme_queries_run_unchanged(stage2_build):
    queries = readme_queries()
    assert len(queries) >= 3
    con = duckdb.connect(str(stage2_build / "manifest.duckdb"), read_only=True)
    results = [con.execute(q).fetchall() for q in queries]
    composition, dropped, located = results[:3]
    assert composition and abs(sum(r[3] for r in composition) - 100) < 0.05  # shares in percent sum to 100
    assert dropped and all(r[2] > 0 for r in dropped)
    assert located, "the README's example document is not in the stage-2 build"
