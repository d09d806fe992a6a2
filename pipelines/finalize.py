"""Stage B of a build: global decisions over all documents, packing, shard files and the manifest."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import yaml

from pipelines.build import BuildContext, _sha256_file, _versions
from pipelines.manifest import MANIFEST, connect, write_manifest
from pipelines.packing import PackInput, PackResult, get_packer
from pipelines.steps import intermediate_paths

SHARDS = "shards"


def load_documents(ctx: BuildContext) -> pl.DataFrame:
    """All stage-A rows in build order (spec source order, then file order, then line), with a global `key`."""
    frames = []
    for rank in range(len(ctx.tasks)):
        docs_path = intermediate_paths(os.path.join(ctx.work_dir, "docs"), rank)[0]
        frames.append(pl.read_parquet(docs_path).with_columns(pl.lit(rank, pl.Int32).alias("task")))
    if not frames:
        return pl.DataFrame(schema={"key": pl.Int64, "doc_id": pl.Utf8, "source": pl.Utf8, "file": pl.Utf8,
                                    "line": pl.Int64, "n_chars": pl.Int64, "n_tokens": pl.Int64, "status": pl.Utf8,
                                    "reason": pl.Utf8, "detail": pl.Utf8, "n_copies": pl.Int32, "offset": pl.Int64,
                                    "task": pl.Int32, "duplicate_of": pl.Utf8})
    docs = pl.concat(frames, how="diagonal_relaxed").with_row_index("key").with_columns(pl.col("key").cast(pl.Int64))
    # doc ids must be unique inside a build: later repeats of an id get their whole file path and line appended
    # (a file feeds one source, so file:line is unique; the base name alone repeats for a/part.jsonl, b/part.jsonl)
    repeat = pl.col("doc_id").cum_count().over("doc_id") > 1
    docs = docs.with_columns(
        pl.when(repeat).then(pl.format("{}@{}:{}", "doc_id", "file", "line"))
        .otherwise(pl.col("doc_id")).alias("doc_id"),
        pl.lit(None, pl.Utf8).alias("duplicate_of"),
    )
    return docs


def _drop(docs: pl.DataFrame, dropped: pl.DataFrame, with_dup: bool = False) -> pl.DataFrame:
    """Mark `dropped` (key, reason[, duplicate_of]) as dropped in docs."""
    if dropped.height == 0:
        return docs
    cols = ["key", pl.col("reason").alias("_reason")]
    if with_dup:
        cols.append(pl.col("duplicate_of").alias("_dup"))
    docs = docs.join(dropped.select(cols), on="key", how="left")
    hit = pl.col("_reason").is_not_null() & (pl.col("status") == "kept")
    updates = [
        pl.when(hit).then(pl.lit("dropped")).otherwise(pl.col("status")).alias("status"),
        pl.when(hit).then(pl.col("_reason")).otherwise(pl.col("reason")).alias("reason"),
        pl.when(hit).then(0).otherwise(pl.col("n_copies")).cast(pl.Int32).alias("n_copies"),
    ]
    if with_dup:
        updates.append(pl.when(hit).then(pl.col("_dup")).otherwise(pl.col("duplicate_of")).alias("duplicate_of"))
    return docs.with_columns(updates).drop(["_reason", "_dup"], strict=False)


def apply_exclusions(ctx: BuildContext, docs: pl.DataFrame) -> pl.DataFrame:
    """Drop documents that another build (`--exclude OUT`) already placed in its shards."""
    for other in ctx.opts.exclude:
        con = connect(other)
        used = pl.from_arrow(con.sql("SELECT DISTINCT doc_id FROM segments").to_arrow_table())
        con.close()
        hits = docs.filter(pl.col("status") == "kept").join(used, on="doc_id", how="semi")
        docs = _drop(docs, hits.select("key", pl.lit("excluded").alias("reason")))
    return docs


def apply_dedup(ctx: BuildContext, docs: pl.DataFrame) -> pl.DataFrame:
    if ctx.spec.dedup is None:
        return docs
    from pipelines.dedup import DedupConfig, find_duplicates

    cfg = DedupConfig.from_spec(ctx.spec.dedup)
    if cfg is None:
        return docs
    kept = docs.filter(pl.col("status") == "kept").select("key", "doc_id", "text_hash", "minhash", "url")
    found = find_duplicates(kept, cfg)
    return _drop(docs, found.select("key", "reason", "duplicate_of"), with_dup=True)


def _gather_shard(seg: pl.DataFrame, r0: int, n_rows: int, seq_len: int, dtype, pad_id: int,
                  tokens: list[np.ndarray], masks: list[np.ndarray] | None):
    arr = np.full((n_rows, seq_len), pad_id, dtype=dtype)
    mask = np.zeros((n_rows, seq_len), dtype=np.uint8) if masks is not None else None
    cols = [seg[c].to_numpy() for c in ("task", "src", "row", "start", "length")]
    for task, src, row, start, length in zip(*cols):
        arr[row - r0, start:start + length] = tokens[task][src:src + length]
        if mask is not None:
            mask[row - r0, start:start + length] = masks[task][src:src + length]
    return arr, mask


def _atomic_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, path)


def write_shards(ctx: BuildContext, docs: pl.DataFrame, packed: PackResult, tmp_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Write shard .npy (+ .mask.npy) and per-shard Arrow indexes into tmp_dir; returns (segments, shards) tables."""
    seq_len = ctx.spec.seq_len
    dtype = np.uint16 if ctx.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    rows_per_shard = max(1, ctx.spec.shard_tokens // seq_len)
    seg = packed.segments.join(docs.select("key", "doc_id", "task", "offset"), on="key", how="left")
    seg = seg.with_columns(
        (pl.col("row") // rows_per_shard).alias("shard_idx"),
        (pl.col("offset") + pl.col("doc_start")).alias("src"),
    ).sort("row", "start")
    work = os.path.join(ctx.work_dir, "docs")
    tokens = [np.memmap(intermediate_paths(work, r)[1], dtype=np.uint32, mode="r") if os.path.getsize(intermediate_paths(work, r)[1]) else np.zeros(0, np.uint32)
              for r in range(len(ctx.tasks))]
    masks = None
    if ctx.with_mask:
        masks = [np.memmap(intermediate_paths(work, r)[2], dtype=np.uint8, mode="r") if os.path.getsize(intermediate_paths(work, r)[2]) else np.zeros(0, np.uint8)
                 for r in range(len(ctx.tasks))]
    shard_rows, seg_tables = [], []
    n_shards = -(-packed.n_rows // rows_per_shard)
    from rich.progress import track

    for i in track(range(n_shards), description=f"write {n_shards} shard(s)", disable=not ctx.opts.progress or n_shards < 2):
        r0, r1 = i * rows_per_shard, min(packed.n_rows, (i + 1) * rows_per_shard)
        part = seg.filter(pl.col("shard_idx") == i)
        arr, mask = _gather_shard(part, r0, r1 - r0, seq_len, dtype, ctx.pad_id, tokens, masks)
        rel = f"{SHARDS}/shard-{i:05d}.npy"
        _atomic_npy(tmp_dir / Path(rel).name, arr)
        if mask is not None:
            _atomic_npy(tmp_dir / f"shard-{i:05d}.mask.npy", mask)
        index = part.select(
            "doc_id", pl.lit(rel).alias("shard"), (pl.col("row") - r0).alias("row"), "start", "length", "copy",
            "doc_start")
        with pa.OSFile(str(tmp_dir / f"shard-{i:05d}.idx.arrow.tmp"), "wb") as sink:
            table = index.to_arrow()
            with pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
        os.replace(tmp_dir / f"shard-{i:05d}.idx.arrow.tmp", tmp_dir / f"shard-{i:05d}.idx.arrow")
        n_tok = arr.size
        covered = int(part["length"].sum()) if part.height else 0
        shard_rows.append({"path": rel, "n_rows": r1 - r0, "n_tokens": n_tok, "n_pad": n_tok - covered,
                           "sha256": _sha256_file(tmp_dir / Path(rel).name)})
        seg_tables.append(index)
    segments = pl.concat(seg_tables) if seg_tables else pl.DataFrame(
        schema={"doc_id": pl.Utf8, "shard": pl.Utf8, "row": pl.Int64, "start": pl.Int64, "length": pl.Int64,
                "copy": pl.Int32, "doc_start": pl.Int64})
    shards = pl.DataFrame(shard_rows, schema={"path": pl.Utf8, "n_rows": pl.Int64, "n_tokens": pl.Int64,
                                              "n_pad": pl.Int64, "sha256": pl.Utf8})
    return segments, shards


def _contamination_table(docs: pl.DataFrame) -> pl.DataFrame:
    schema = {"doc_id": pl.Utf8, "benchmark": pl.Utf8, "item_id": pl.Utf8, "n_matches": pl.Int64}
    if "contamination" not in docs.columns:
        return pl.DataFrame(schema=schema)
    hits = docs.select("doc_id", "contamination").filter(pl.col("contamination").list.len() > 0)
    if hits.height == 0:
        return pl.DataFrame(schema=schema)
    return hits.explode("contamination").unnest("contamination").select(list(schema)).cast(schema)


def _files_table(ctx: BuildContext, docs: pl.DataFrame) -> pl.DataFrame:
    per_file = docs.group_by("file", maintain_order=True).agg(
        pl.col("source").first(), pl.len().alias("n_records"),
        (pl.col("status") == "kept").sum().alias("n_kept"), (pl.col("status") == "dropped").sum().alias("n_dropped"))
    sizes = pl.DataFrame({"file": [t.display for t in ctx.tasks], "source_": [t.source for t in ctx.tasks],
                          "bytes": [_size(t.path) for t in ctx.tasks]},
                         schema={"file": pl.Utf8, "source_": pl.Utf8, "bytes": pl.Int64})  # typed when no files
    # files with no records at all (empty files) are rows too
    out = sizes.join(per_file, on="file", how="left").select(
        pl.col("source_").alias("source"), "file", pl.col("n_records").fill_null(0).cast(pl.Int64),
        pl.col("n_kept").fill_null(0).cast(pl.Int64), pl.col("n_dropped").fill_null(0).cast(pl.Int64), "bytes")
    return out


def _size(path: str) -> int | None:
    try:
        import fsspec

        return int(fsspec.core.url_to_fs(path)[0].size(path))
    except Exception:  # size is informative only
        return None


def finalize_build(ctx: BuildContext) -> Path:
    out = ctx.out
    docs = load_documents(ctx)
    docs = apply_exclusions(ctx, docs)
    docs = apply_dedup(ctx, docs)

    kept = docs.filter(pl.col("status") == "kept")
    packer = get_packer(ctx.spec.packing.get("mode", "concat"))
    packed = packer(PackInput(
        docs=kept, seq_len=ctx.spec.seq_len, seed=ctx.seed, max_tokens=ctx.opts.max_tokens,
        options=ctx.spec.packing, source_options={s.name: s for s in ctx.spec.sources}))
    docs = _drop(docs, packed.dropped)
    if packed.copies is not None and packed.copies.height:
        docs = docs.join(packed.copies.rename({"n_copies": "_c"}), on="key", how="left").with_columns(
            pl.coalesce("_c", "n_copies").cast(pl.Int32).alias("n_copies")).drop("_c")

    tmp_dir = out / f"{SHARDS}.partial"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    segments, shards = write_shards(ctx, docs, packed, tmp_dir)

    sources = pl.DataFrame(ctx.sources).join(
        docs.group_by("source").agg(pl.len().alias("n_docs")), on="source", how="left"
    ).with_columns(pl.col("n_docs").fill_null(0).cast(pl.Int64)).select(
        "source", "uri", "resolved", "sample", "n_files", "n_docs", "condition")
    finished = dt.datetime.now(dt.timezone.utc)
    started = dt.datetime.fromisoformat(ctx.started_at)
    build = pl.DataFrame([{
        "name": ctx.spec.name, "spec_yaml": yaml.safe_dump(ctx.spec.to_dict(), sort_keys=False),
        "spec_hash": ctx.spec.spec_hash, "seed": ctx.seed, "seq_len": ctx.spec.seq_len,
        "tokenizer": ctx.spec.tokenizer, "tokenizer_sha256": _sha256_file(ctx.tokenizer_path),
        "eos_id": ctx.eos_id, "pad_id": ctx.pad_id, "vocab_size": ctx.vocab_size,
        "dtype": "uint16" if ctx.vocab_size <= 65536 else "uint32", "rope_theta": ctx.spec.rope_theta,
        "versions": json.dumps(_versions()), "started_at": ctx.started_at,
        "finished_at": finished.isoformat(timespec="seconds"), "seconds": (finished - started).total_seconds(),
        "max_tokens": ctx.opts.max_tokens, "executor": ctx.opts.executor, "workers": ctx.opts.workers,
        "source_root": ctx.opts.source_root, "exclude": json.dumps(list(ctx.opts.exclude)),
        "packing": json.dumps(ctx.spec.packing), "has_loss_mask": ctx.with_mask,
    }])
    documents = docs.select("doc_id", "source", "file", "line", "n_chars", "n_tokens", "status", "reason",
                            "n_copies", "duplicate_of", "detail")
    tables = {"documents": documents, "segments": segments, "shards": shards, "sources": sources,
              "files": _files_table(ctx, docs), "build": build, "contamination": _contamination_table(docs)}

    # swap the new shards in, then write the manifest last: a manifest that exists describes the shards beside it
    (out / MANIFEST).unlink(missing_ok=True)
    final = out / SHARDS
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp_dir, final)
    return write_manifest(out, tables)
