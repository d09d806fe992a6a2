"""The DuckDB manifest of a build: what went in, what was dropped and why, what every shard holds.

Table, view and column names are a public interface (`pipelines.shards.format`, docs/FORMAT.md). The last stage
of a build (`WriteManifest`, one task) creates the tables from the Parquet parts the other stages wrote, inside
DuckDB (streamed, out of core, under `memory_limit`), then swaps the new build in (`pipelines.shards.swap`).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa
import yaml
from datatrove.pipeline.base import PipelineStep

from pipelines import _logging  # noqa: F401  (quiet datatrove console in every worker)
from pipelines.io import file_size
from pipelines.pack.layout import StageBLayout
from pipelines.shards.format import (
    ELIGIBLE_REASONS,
    FORMAT_VERSION,
    HOLDOUT_DIR,
    MANIFEST,
    TABLES,
    VIEWS,
    sha256_file,
    table_digests,
    token_dtype,
)
from pipelines.shards.reader import connect
from pipelines.shards.swap import recover_interrupted_swap, swap_in

if TYPE_CHECKING:
    from pipelines.build.context import BuildContext

__all__ = ["MANIFEST", "ELIGIBLE_REASONS", "connect", "recover_interrupted_swap", "swap_in", "WriteManifest"]

DUCKDB_MEMORY_LIMIT = os.environ.get("MIDTRAIN_DUCKDB_MEMORY", "256MB")  # spills beyond: bounded at any scale


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("midtrain", "datatrove", "tokenizers", "pyarrow", "polars", "duckdb", "numpy", "datasketch", "nltk"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _files(paths: list[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


class WriteManifest(PipelineStep):
    """Build manifest.duckdb from the parts of every stage, then swap the new build in."""

    name = "🗂️ manifest"
    type = "💽 - WRITER"

    def __init__(self, ctx: BuildContext, lay: StageBLayout):
        super().__init__()
        self.ctx = ctx
        self.lay = lay

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        out = self.ctx.out
        recover_interrupted_swap(out)
        tmp = out / (MANIFEST + ".tmp")
        for p in (tmp, Path(str(tmp) + ".wal")):
            p.unlink(missing_ok=True)
        con = duckdb.connect(str(tmp))
        try:
            spill = os.path.join(self.lay.root, "duckdb-spill")
            con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'; SET temp_directory = '{spill}'; "
                        "SET preserve_insertion_order = true")
            self._tables(con)
            for view in VIEWS.values():
                con.execute(view)
            con.execute("CHECKPOINT")
        finally:
            con.close()
        next_shards = Path(self.lay.next_shards)
        next_shards.mkdir(parents=True, exist_ok=True)
        self._remove_strays(next_shards)
        if not self.lay.holdout:  # a failed earlier build's held-out files are not this build's
            shutil.rmtree(out / (HOLDOUT_DIR + ".next"), ignore_errors=True)
        swap_in(out)
        return iter(())

    def _remove_strays(self, next_shards: Path) -> None:
        """Files of an earlier, failed run that this build did not write (e.g. it had more shards)."""
        con = duckdb.connect(str(self.ctx.out / (MANIFEST + ".tmp")), read_only=True)
        try:
            listed = {Path(p).name for p, in con.execute("SELECT path FROM shards").fetchall()}
        finally:
            con.close()
        keep = set()
        for name in listed:
            stem = name.removesuffix(".npy")
            keep |= {name, stem + ".idx.arrow", stem + ".mask.npy"}
        for f in next_shards.iterdir():
            if f.name not in keep:
                f.unlink()

    def _create(self, con, name: str, files: list[str], select: str) -> None:
        """CREATE TABLE name AS <select over read_parquet(files)>, or an empty table of the format's schema."""
        existing = [f for f in files if os.path.exists(f)]
        if len(existing) != len(files):
            missing = sorted(set(files) - set(existing))[:3]
            raise FileNotFoundError(f"stage-B parts missing (did an earlier stage fail?): {missing}")
        if not files:
            empty = TABLES[name].empty_table()
            con.register("empty_table", empty)
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM empty_table")
            con.unregister("empty_table")
            return
        con.execute(f"CREATE TABLE {name} AS " + select.replace("PARTS", f"read_parquet({_files(files)})"))

    def _tables(self, con) -> None:
        ctx, lay = self.ctx, self.lay
        docs = [lay.part("documents", t) for t in range(lay.n_tasks)]
        outcomes = [lay.part("outcomes", k) for k in range(lay.n_plan_parts)] if lay.n_tasks else []
        written = lambda kind: [lay.part("written", w, f"{kind}.parquet") for w in range(lay.n_writers)] \
            if lay.n_tasks else []  # noqa: E731
        if outcomes:
            con.execute(f"CREATE TEMP TABLE outcome AS SELECT key, sum(lost)::INTEGER AS lost, min(reason) AS reason "
                        f"FROM read_parquet({_files(outcomes)}) GROUP BY key")
        else:
            con.execute("CREATE TEMP TABLE outcome (key BIGINT, lost INTEGER, reason VARCHAR)")
        # a copy the packer could not place lowers n_copies; a document with none left is dropped with its reason
        self._create(con, "documents", docs, """
            WITH d AS (SELECT * FROM PARTS)
            SELECT d.doc_id, d.source, d.file, d.line, d.n_chars, d.n_tokens,
                   CASE WHEN d.status = 'kept' AND d.n_copies <= coalesce(o.lost, 0) THEN 'dropped' ELSE d.status END
                     AS status,
                   CASE WHEN d.status = 'kept' AND d.n_copies <= coalesce(o.lost, 0) THEN o.reason ELSE d.reason END
                     AS reason,
                   (CASE WHEN d.status = 'kept' THEN greatest(d.n_copies - coalesce(o.lost, 0), 0)
                    ELSE d.n_copies END)::INTEGER AS n_copies,
                   s.doc_id AS duplicate_of, d.detail, d.key
            FROM d LEFT JOIN outcome o ON o.key = d.key
            LEFT JOIN (SELECT key AS survivor, doc_id FROM d WHERE key IN (SELECT duplicate_of_key FROM d)) s
              ON s.survivor = d.duplicate_of_key
            ORDER BY d.key""")
        if lay.holdout:
            self._holdout(con)
        self._create(con, "segments", written("segments"), "SELECT * FROM PARTS")
        self._create(con, "shards", written("shards"), "SELECT * FROM PARTS")
        self._create(con, "shard_sources", written("sources"), "SELECT * FROM PARTS")
        self._create(con, "contamination", [lay.part("contamination", t) for t in range(lay.n_tasks)],
                     "SELECT * FROM PARTS")
        task_rows = [{"task": i, "source": t.source, "file": t.display, "bytes": file_size(t.path)}
                     for i, t in enumerate(ctx.tasks)]
        con.register("tasks_in", pa.Table.from_pylist(task_rows, schema=pa.schema(
            [("task", pa.int64()), ("source", pa.string()), ("file", pa.string()), ("bytes", pa.int64())])))
        con.execute("""
            CREATE TABLE files AS
            WITH per_task AS (
                SELECT key >> 32 AS task, count(*) AS n_records, count(*) FILTER (WHERE status = 'kept') AS n_kept,
                       count(*) FILTER (WHERE status = 'dropped') AS n_dropped
                FROM documents GROUP BY ALL)
            SELECT t.source, t.file, coalesce(p.n_records, 0)::BIGINT AS n_records,
                   coalesce(p.n_kept, 0)::BIGINT AS n_kept, coalesce(p.n_dropped, 0)::BIGINT AS n_dropped, t.bytes
            FROM tasks_in t LEFT JOIN per_task p USING (task) ORDER BY t.task""")
        con.register("sources_in", pa.Table.from_pylist(
            [{k: s[k] for k in ("source", "uri", "resolved", "sample", "n_files", "condition", "planned_share")}
             for s in ctx.sources],
            schema=pa.schema([("source", pa.string()), ("uri", pa.string()), ("resolved", pa.string()),
                              ("sample", pa.float64()), ("n_files", pa.int64()), ("condition", pa.string()),
                              ("planned_share", pa.float64())])))
        con.execute("""
            CREATE TABLE sources AS
            SELECT s.source, s.uri, s.resolved, s.sample, s.n_files, coalesce(n.n_docs, 0)::BIGINT AS n_docs,
                   s.condition, s.planned_share
            FROM sources_in s LEFT JOIN (SELECT source, count(*) AS n_docs FROM documents GROUP BY source) n
              USING (source)""")
        con.register("build_in", pa.Table.from_pylist([self._build_row()], schema=TABLES["build"]))
        con.execute("CREATE TABLE build AS SELECT * FROM build_in")
        for name in ("tasks_in", "sources_in", "build_in"):
            con.unregister(name)
        con.execute("DROP TABLE outcome")
        # last: the digest of every table as written, so `verify` notices any later edit
        con.execute("UPDATE build SET tables_sha256 = ?", [json.dumps(table_digests(con), sort_keys=True)])

    def _holdout(self, con) -> None:
        """Held-out documents get status 'holdout' (they are in no row: the pack stage left them out) and the
        `holdout` table lists their files (pipelines/shards/holdout.py)."""
        from pipelines.pack.holdout import HOLDOUT_REASON, HOLDOUT_STATUS, HoldoutConfig, held_out_path
        from pipelines.shards.holdout import holdout_rows, holdout_rows_path

        lay = self.lay
        rows = holdout_rows(lay) if os.path.exists(holdout_rows_path(lay)) else []  # no input files: no stage
        con.register("holdout_in", pa.Table.from_pylist(rows, schema=TABLES["holdout"]))
        con.execute("CREATE TABLE holdout AS SELECT * FROM holdout_in ORDER BY source")
        con.unregister("holdout_in")
        if not rows:
            return
        cfg = HoldoutConfig.from_spec(self.ctx.spec.holdout, self.ctx.spec.path)
        why = f" (holdout fraction {cfg.fraction:g}, max_docs {cfg.max_docs} per source)"
        con.execute(f"""
            UPDATE documents SET status = '{HOLDOUT_STATUS}', reason = '{HOLDOUT_REASON}', n_copies = 0,
                   detail = '{HOLDOUT_DIR}/' || source || '.npy' || ?
            WHERE key IN (SELECT key FROM read_parquet({_files([held_out_path(lay)])}))""", [why])

    def _build_row(self) -> dict:
        ctx = self.ctx
        finished = dt.datetime.now(dt.timezone.utc)
        started = dt.datetime.fromisoformat(ctx.started_at)
        return {
            "name": ctx.spec.name, "spec_yaml": yaml.safe_dump(ctx.spec.to_dict(), sort_keys=False),
            "spec_hash": ctx.spec.spec_hash, "seed": ctx.seed, "seq_len": ctx.spec.seq_len,
            "tokenizer": ctx.spec.tokenizer, "tokenizer_sha256": sha256_file(ctx.tokenizer_path),
            "eos_id": ctx.eos_id, "pad_id": ctx.pad_id, "vocab_size": ctx.vocab_size,
            "dtype": token_dtype(ctx.vocab_size).name, "rope_theta": ctx.spec.rope_theta,
            "versions": json.dumps(versions()), "started_at": ctx.started_at,
            "finished_at": finished.isoformat(timespec="seconds"), "seconds": (finished - started).total_seconds(),
            "max_tokens": ctx.opts.max_tokens, "executor": ctx.opts.executor, "workers": ctx.opts.workers,
            "source_root": ctx.opts.source_root, "exclude": json.dumps(list(ctx.opts.exclude)),
            "packing": json.dumps(ctx.spec.packing), "has_loss_mask": ctx.with_mask,
            "format_version": FORMAT_VERSION,
            "target_tokens": ctx.spec.tokens, "source_map": json.dumps(list(ctx.opts.source_map)),
            "tables_sha256": None,  # filled in once every table exists (`_tables`)
        }

