"""The DuckDB manifest of a build: what went in, what was dropped and why, what every shard holds.

Table and column names are a public interface (docs/FORMAT.md). The file is written under a temporary name and
renamed into place, so a manifest that exists is always complete.
"""
from __future__ import annotations

import os
from pathlib import Path

import duckdb
import polars as pl

MANIFEST = "manifest.duckdb"

# Reasons that mean "the document was fine but not (fully) used" — it still counts toward a source's available data
# when computing epochs.
ELIGIBLE_REASONS = ("sampled-out", "max-tokens", "excluded")

COMPOSITION_VIEW = f"""
CREATE VIEW composition AS
WITH written AS (
    SELECT d.source, count(DISTINCT s.doc_id) AS n_docs, sum(s.length)::BIGINT AS n_tokens
    FROM segments s JOIN documents d USING (doc_id)
    GROUP BY d.source
), rate AS (  -- tokens per char of the source's tokenized docs, to size the untokenized (sampled-out) ones
    SELECT source,
           sum(n_tokens) FILTER (WHERE n_tokens IS NOT NULL)::DOUBLE
             / nullif(sum(n_chars) FILTER (WHERE n_tokens IS NOT NULL), 0) AS tokens_per_char,
           sum(n_chars) FILTER (WHERE status = 'kept' OR reason IN {ELIGIBLE_REASONS!r}) AS eligible_chars
    FROM documents GROUP BY source
)
SELECT src.source,
       coalesce(w.n_docs, 0)::BIGINT AS n_docs,
       coalesce(w.n_tokens, 0)::BIGINT AS n_tokens,
       coalesce(w.n_tokens, 0) / nullif((SELECT sum(length) FROM segments), 0)::DOUBLE AS share,
       w.n_tokens / nullif(r.eligible_chars * r.tokens_per_char, 0) AS epochs
FROM sources src
LEFT JOIN written w USING (source)
LEFT JOIN rate r USING (source)
ORDER BY n_tokens DESC, src.source
"""

# Planned (spec `share:`, of the spec's `tokens:`) vs achieved share of every source (pipelines/targets.py).
SHARE_PLAN_VIEW = """
CREATE VIEW share_plan AS
SELECT src.source, src.planned_share, c.share AS achieved_share,
       src.planned_share * CAST((SELECT target_tokens FROM build) AS DOUBLE) AS planned_tokens, c.n_tokens AS achieved_tokens
FROM sources src JOIN composition c USING (source)
ORDER BY src.source
"""

# More views (SQL) that packers register on import, e.g. the long-context `padding` view.
EXTRA_VIEWS: list[str] = [SHARE_PLAN_VIEW]


def write_manifest(out: Path, tables: dict[str, pl.DataFrame]) -> Path:
    """Write all tables + the composition view to OUT/manifest.duckdb atomically."""
    final = out / MANIFEST
    tmp = out / (MANIFEST + ".tmp")
    for p in (tmp, Path(str(tmp) + ".wal")):
        p.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        for name, df in tables.items():
            con.register("_df", df.to_arrow())
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM _df")
            con.unregister("_df")
        con.execute(COMPOSITION_VIEW)
        for view in EXTRA_VIEWS:
            con.execute(view)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    os.replace(tmp, final)
    return final


def connect(out: str | Path) -> duckdb.DuckDBPyConnection:
    path = Path(out) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no manifest at {path}: the build is missing or did not finish")
    return duckdb.connect(str(path), read_only=True)
