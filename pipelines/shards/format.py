"""THE shard format: file names, the token dtype rule and the schema of every manifest table and shard index.

The shard writer, the manifest writer, `verify` and the trainer import these names; docs/FORMAT.md documents them
and `tests/test_shard_format.py` checks that the two agree (every table and column of FORMAT.md is a column here,
and nothing here is undocumented).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from pipelines.io import sha256_file  # noqa: F401  (re-exported: the hash the manifest records)

MANIFEST = "manifest.duckdb"
SHARDS_DIR = "shards"
FORMAT_VERSION = 2


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every token id fits (vocab <= 65,536), else uint32: for shards and stage-A intermediates."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.npy"


def shard_path(i: int) -> str:
    """A shard's path relative to the build directory, as the manifest records it."""
    return f"{SHARDS_DIR}/{shard_name(i)}"


def index_name(i: int) -> str:
    return f"shard-{i:05d}.idx.arrow"


def mask_name(i: int) -> str:
    return f"shard-{i:05d}.mask.npy"


def index_path_of(shard: str | Path) -> Path:
    """The per-shard index beside a shard file (`shards/shard-00000.npy` -> `shards/shard-00000.idx.arrow`)."""
    return Path(str(shard).removesuffix(".npy") + ".idx.arrow")


def mask_path_of(shard: str | Path) -> Path:
    return Path(str(shard).removesuffix(".npy") + ".mask.npy")


HOLDOUT_DIR = "holdout"  # OUT/holdout/<source>.npy + <source>.idx.parquet: documents held out of training


def holdout_name(source: str) -> str:
    """`<source>.npy`: 1-D, the build's token dtype, every held-out document's tokens followed by EOS."""
    return f"{source}.npy"


def holdout_index_name(source: str) -> str:
    return f"{source}.idx.parquet"


# Per-shard index (`shard-NNNNN.idx.arrow`, Arrow IPC file): one row per segment, sorted by (row, start).
INDEX_SCHEMA = pa.schema([
    ("doc_id", pa.string()),
    ("shard", pa.string()),      # path relative to the build (`shards/shard-00000.npy`)
    ("row", pa.int64()),         # row inside this shard
    ("start", pa.int64()),       # offset inside the row
    ("length", pa.int64()),
    ("copy", pa.int32()),        # which repeat of the document (sample rate > 1)
    ("doc_start", pa.int64()),   # offset of the segment's first token inside the document (+ EOS)
])

# Index of a held-out file (`holdout/<source>.idx.parquet`): one row per document, in the order of the .npy.
HOLDOUT_INDEX_SCHEMA = pa.schema([
    ("doc_id", pa.string()),
    ("start", pa.int64()),       # offset of the document's first token in the .npy
    ("length", pa.int64()),      # its tokens, EOS included
    ("n_chars", pa.int64()),     # characters of its text
    ("n_bytes", pa.int64()),     # UTF-8 bytes of its text (for bits per byte)
])

# Manifest tables: name -> Arrow schema (DuckDB column types follow). Views are listed in VIEWS.
TABLES: dict[str, pa.Schema] = {
    "documents": pa.schema([
        ("doc_id", pa.string()), ("source", pa.string()), ("file", pa.string()), ("line", pa.int64()),
        ("n_chars", pa.int64()), ("n_tokens", pa.int64()), ("status", pa.string()), ("reason", pa.string()),
        ("n_copies", pa.int32()), ("duplicate_of", pa.string()), ("detail", pa.string()),
        ("key", pa.int64()),  # (stage-A task << 32) | row in that task: integer identity in build order
    ]),
    "segments": INDEX_SCHEMA,
    "shards": pa.schema([
        ("path", pa.string()), ("n_rows", pa.int64()), ("n_tokens", pa.int64()), ("n_pad", pa.int64()),
        ("sha256", pa.string()), ("n_segments", pa.int64()),
        ("index_sha256", pa.string()), ("mask_sha256", pa.string()),  # every file the trainer reads is hashed
    ]),
    "shard_sources": pa.schema([  # per shard and source: written tokens and the padding attributed to them
        ("shard", pa.string()), ("source", pa.string()), ("n_tokens", pa.int64()), ("n_pad", pa.float64()),
    ]),
    "sources": pa.schema([
        ("source", pa.string()), ("uri", pa.string()), ("resolved", pa.string()), ("sample", pa.float64()),
        ("n_files", pa.int64()), ("n_docs", pa.int64()), ("condition", pa.string()),
        ("planned_share", pa.float64()),  # the spec's `share:` (null without one)
    ]),
    "files": pa.schema([
        ("source", pa.string()), ("file", pa.string()), ("n_records", pa.int64()), ("n_kept", pa.int64()),
        ("n_dropped", pa.int64()), ("bytes", pa.int64()),
    ]),
    "build": pa.schema([
        ("name", pa.string()), ("spec_yaml", pa.string()), ("spec_hash", pa.string()), ("seed", pa.int64()),
        ("seq_len", pa.int64()), ("tokenizer", pa.string()), ("tokenizer_sha256", pa.string()),
        ("eos_id", pa.int64()), ("pad_id", pa.int64()), ("vocab_size", pa.int64()), ("dtype", pa.string()),
        ("rope_theta", pa.float64()), ("versions", pa.string()), ("started_at", pa.string()),
        ("finished_at", pa.string()), ("seconds", pa.float64()), ("max_tokens", pa.int64()),
        ("executor", pa.string()), ("workers", pa.int64()), ("source_root", pa.string()), ("exclude", pa.string()),
        ("packing", pa.string()), ("has_loss_mask", pa.bool_()), ("format_version", pa.int64()),
        ("target_tokens", pa.float64()),  # the spec's `tokens:` (null without one)
        ("source_map", pa.string()),      # the --source-map items (JSON list)
        ("tables_sha256", pa.string()),   # JSON table -> digest of its content as written (`table_digests`)
    ]),
    "contamination": pa.schema([
        ("doc_id", pa.string()), ("benchmark", pa.string()), ("item_id", pa.string()), ("n_matches", pa.int64()),
    ]),
    # only in builds whose spec has `holdout:`; one row per source with held-out documents
    "holdout": pa.schema([
        ("source", pa.string()), ("path", pa.string()), ("n_docs", pa.int64()), ("n_tokens", pa.int64()),
        ("n_bytes", pa.int64()), ("sha256", pa.string()),
    ]),
}

# tables a build has only when its spec asks for them (`holdout:`); every other table is in every build
OPTIONAL_TABLES = ("holdout",)

# Reasons that mean "the document was fine but not (fully) used": it still counts toward a source's available data
# when computing epochs.
ELIGIBLE_REASONS = ("sampled-out", "max-tokens", "excluded")

VIEWS: dict[str, str] = {
    # written tokens from the shard writers' per-source aggregates; kept documents are exactly the written ones
    "composition": f"""
CREATE VIEW composition AS
WITH written AS (
    SELECT source, sum(n_tokens)::BIGINT AS n_tokens FROM shard_sources GROUP BY source
), docs AS (  -- tokens per char of the source's tokenized docs, to size the untokenized (sampled-out) ones
    SELECT source, count(*) FILTER (WHERE status = 'kept') AS n_docs,
           sum(n_tokens) FILTER (WHERE n_tokens IS NOT NULL)::DOUBLE
             / nullif(sum(n_chars) FILTER (WHERE n_tokens IS NOT NULL), 0) AS tokens_per_char,
           sum(n_chars) FILTER (WHERE status = 'kept' OR reason IN {ELIGIBLE_REASONS!r}) AS eligible_chars
    FROM documents GROUP BY source
)
SELECT src.source,
       coalesce(d.n_docs, 0)::BIGINT AS n_docs,
       coalesce(w.n_tokens, 0)::BIGINT AS n_tokens,
       coalesce(w.n_tokens, 0) / nullif((SELECT sum(n_tokens) FROM shard_sources), 0)::DOUBLE AS share,
       w.n_tokens / nullif(d.eligible_chars * d.tokens_per_char, 0) AS epochs
FROM sources src
LEFT JOIN written w USING (source)
LEFT JOIN docs d USING (source)
ORDER BY n_tokens DESC, src.source
""",
    # padding attributed to the sources of a row in proportion to their tokens in that row (by the shard writers)
    "padding": """
CREATE VIEW padding AS
SELECT source, sum(n_tokens)::BIGINT AS n_tokens, round(sum(n_pad))::BIGINT AS n_pad,
       sum(n_pad) / (sum(n_tokens) + sum(n_pad)) AS pad_fraction
FROM shard_sources GROUP BY source ORDER BY source
""",
    # planned (spec `share:` of the spec's `tokens:`, pipelines/build/targets.py) vs achieved share of every source
    "share_plan": """
CREATE VIEW share_plan AS
SELECT src.source, src.planned_share, c.share AS achieved_share,
       src.planned_share * CAST((SELECT target_tokens FROM build) AS DOUBLE) AS planned_tokens,
       c.n_tokens AS achieved_tokens
FROM sources src JOIN composition c USING (source)
ORDER BY src.source
""",
}
# shards holding one source only: every shard of a by-source build (its per-source token pools, for `train --mix`)
VIEWS["source_shards"] = """
CREATE VIEW source_shards AS
SELECT s.path AS shard, min(x.source) AS source, s.n_rows, s.n_tokens, s.n_pad
FROM shards s JOIN shard_sources x ON x.shard = s.path AND x.n_tokens > 0
GROUP BY s.path, s.n_rows, s.n_tokens, s.n_pad HAVING count(*) = 1
ORDER BY s.path
"""
VIEW_COLUMNS: dict[str, tuple[str, ...]] = {
    "composition": ("source", "n_docs", "n_tokens", "share", "epochs"),
    "padding": ("source", "n_tokens", "n_pad", "pad_fraction"),
    "share_plan": ("source", "planned_share", "achieved_share", "planned_tokens", "achieved_tokens"),
    "source_shards": ("shard", "source", "n_rows", "n_tokens", "n_pad"),
}


DIGESTED_TABLES = ("documents", "segments", "shards", "shard_sources", "files", "sources", "contamination", "build")


def table_digests(con) -> dict[str, str]:
    """Order-free digest of every table's content: "<rows>:<sum of each row's md5 (low 64 bits) mod 2**64>". The
    `build` row is digested without `tables_sha256` (where the digests are kept). Written with the manifest,
    recomputed by `verify`: an edited count, drop reason or seed changes its table's digest."""
    out = {}
    for name in DIGESTED_TABLES:
        exclude = " EXCLUDE (tables_sha256)" if name == "build" else ""
        n, total = con.execute(
            f"SELECT count(*), (coalesce(sum(md5_number_lower(CAST(t AS VARCHAR))::HUGEINT), 0) "
            f"% 18446744073709551616)::UBIGINT FROM (SELECT *{exclude} FROM {name}) t").fetchone()
        out[name] = f"{n}:{total:016x}"
    return out


# Written by a passing `verify` beside the manifest: {"fingerprint": <trainer build fingerprint>, "files": {path:
# [size, mtime_ns]}} for every file the trainer reads, so a trainer tells cheaply whether one changed since.
VERIFIED_MARKER = "verified.json"


def file_stats(build: str | Path, rels: list[str]) -> dict[str, list[int]]:
    """[size, mtime_ns] of each existing file (paths relative to the build): the verify marker's record."""
    build = Path(build)
    out = {}
    for rel in rels:
        try:
            st = (build / rel).stat()
        except FileNotFoundError:
            continue
        out[rel] = [st.st_size, st.st_mtime_ns]
    return out
