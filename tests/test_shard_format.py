"""docs/FORMAT.md is the format module's contract: every documented table/column exists in code and vice versa, and
a real build's manifest has exactly those tables, views and columns."""
from __future__ import annotations

import re
from pathlib import Path

import duckdb
import numpy as np
from conftest import ROOT

from pipelines.shards.format import (
    INDEX_SCHEMA,
    OPTIONAL_TABLES,
    TABLES,
    VIEW_COLUMNS,
    token_dtype,
)


def documented() -> dict[str, list[str]]:
    """table or view name -> columns, from the manifest table of docs/FORMAT.md."""
    out = {}
    for line in (ROOT / "docs" / "FORMAT.md").read_text().splitlines():
        m = re.match(r"\| (?:view )?`(\w+)` \| [^`|]*`([^`]+)`", line)
        if m:
            out[m.group(1)] = [c.strip() for c in m.group(2).split(",")]
    return out


def test_format_md_lists_exactly_the_schemas_in_code():
    doc = documented()
    code = {name: schema.names for name, schema in TABLES.items()} | {k: list(v) for k, v in VIEW_COLUMNS.items()}
    assert doc.keys() == code.keys()
    for name in code:
        assert doc[name] == code[name], name
    assert TABLES["segments"].names == INDEX_SCHEMA.names  # the per-shard index is the segments table, per shard


def test_token_dtype_rule():
    assert token_dtype(50_280) == np.uint16 and token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32 and token_dtype(100_352) == np.uint32


def test_built_manifest_matches_the_format(stage2_build: Path):
    con = duckdb.connect(str(stage2_build / "manifest.duckdb"), read_only=True)
    try:
        cols: dict[str, list[str]] = {}
        for table, column in con.execute("SELECT table_name, column_name FROM information_schema.columns "
                                         "ORDER BY table_name, ordinal_position").fetchall():
            cols.setdefault(table, []).append(column)
    finally:
        con.close()
    expected = {name: schema.names for name, schema in TABLES.items() if name not in OPTIONAL_TABLES} \
        | {k: list(v) for k, v in VIEW_COLUMNS.items()}
    assert cols == expected  # stage2 has no `holdout:` (tests/test_holdout.py checks a build with one)
