"""`build-mixture --dry-run`: what a build will read, produce and need, before anything runs.

Per source: matched files, their bytes, and tokens estimated from a sample (the first `SAMPLE_BYTES` of up to
`SAMPLE_FILES` files are decompressed, their complete records rendered and tokenized; tokens per stored byte then
scale to all of the source's bytes, times its sampling rate). Per stage: tasks, and the memory per task and disk it
needs, from the stage's own estimate where it gives one, else from the formulas below. Nothing is written.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field

import fsspec

from pipelines.build.targets import required_rate
from pipelines.read.formats import Record, RowTransform, container_of, to_text
from pipelines.read.rowfilters import row_transform
from pipelines.stages import Stage

SAMPLE_FILES = 3
SAMPLE_BYTES = 4 << 20
SAMPLE_RECORDS = 2000
FETCH_SAMPLE_RECORDS = 64  # rows of a source with a `fetch:` step sampled (their text is fetched one request each)
# stage-A intermediates: one parquet row per input record (ids, file, counts, dedup signatures)
DOC_ROW_BYTES = 200
# a per-file task holds one batch of documents plus the tokenizer and, with decontamination, the n-gram index
PER_FILE_TASK_BYTES = 512 << 20


@dataclass
class SourceEstimate:
    source: str
    n_files: int
    bytes: int
    sample: float
    est_records: int | None = None  # records in all files (before sampling)
    est_tokens: int | None = None  # tokens written (after sampling), EOS included
    note: str = ""
    share: float | None = None  # planned share of the spec's `tokens:`
    rate_needed: float | None = None  # the `sample:` that would make share × tokens (pipelines/build/targets.py)


@dataclass
class StageEstimate:
    name: str
    kind: str
    tasks: int
    memory_per_task: int | None
    disk: int | None
    description: str = ""


@dataclass
class BuildPlan:
    sources: list[SourceEstimate]
    stages: list[StageEstimate]
    token_bytes: int
    extra: dict = field(default_factory=dict)

    @property
    def est_tokens(self) -> int:
        return sum(s.est_tokens or 0 for s in self.sources)

    @property
    def est_records(self) -> int:
        return sum(s.est_records or 0 for s in self.sources)


def _decompress_prefix(path: str, data: bytes) -> bytes:
    name = path.lower()
    if name.endswith(".gz"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
    if name.endswith(".zst") or name.endswith(".zstd"):
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def _sample_texts(path: str, fmt: str, text_key: str, step: RowTransform | None = None,
                  limit: int = SAMPLE_RECORDS) -> tuple[list[str], int, int]:
    """(texts of complete records in the sampled prefix, records in that prefix, stored bytes that prefix spans);
    `step` is the source's row steps (filter, fetch): a row they turn into a skip counts as a record without text."""
    def render_all(recs: list) -> list[str]:
        out = []
        for rec in (step(recs) if step else recs):
            t = None if isinstance(rec, Record) else to_text(rec, fmt, text_key)[0]
            if t:
                out.append(t)
        return out

    fs, p = fsspec.core.url_to_fs(path)
    if container_of(path) == "parquet":
        import pyarrow.parquet as pq

        with fs.open(p, "rb") as f:
            pf = pq.ParquetFile(f)
            n_rows = pf.metadata.num_rows
            if n_rows == 0:
                return [], 0, 0
            table = pf.read_row_group(0)
        rows = table.slice(0, limit).to_pylist()
        texts = render_all(rows)
        # scale: the sampled rows stand for their share of the file's bytes
        return texts, len(rows), int(fs.size(p) * len(rows) / n_rows)
    with fs.open(p, "rb") as f:
        raw = f.read(SAMPLE_BYTES)
        whole = len(raw) < SAMPLE_BYTES
    data = _decompress_prefix(path, raw)
    if not whole:
        data = data[:data.rfind(b"\n") + 1]  # complete records only
    stripped = data.lstrip()
    if container_of(path) == "json" and stripped[:1] == b"[":
        try:
            items = json.loads(data) if whole else []
        except ValueError:
            items = []
        texts = render_all([r for r in items[:limit] if isinstance(r, dict)])
        return texts, len(items), len(raw) if items else 0
    lines = [ln for ln in data.splitlines() if ln.strip()]
    recs = []
    for ln in lines[:limit]:
        try:
            rec = json.loads(ln)
        except ValueError:
            continue
        if isinstance(rec, dict):
            recs.append(rec)
    texts = render_all(recs)
    # the sampled records stand for their share of the prefix's stored bytes
    return texts, len(lines), len(raw)


def estimate_source(name: str, files: list[str], fmt: str, text_key: str, sample: float, tokenizer,
                    step: RowTransform | None = None, limit: int = SAMPLE_RECORDS) -> SourceEstimate:
    sizes = []
    for f in files:
        fs, p = fsspec.core.url_to_fs(f)
        sizes.append(int(fs.size(p) or 0))
    est = SourceEstimate(source=name, n_files=len(files), bytes=sum(sizes), sample=sample)
    if not files:
        est.note = "no files"
        return est
    if fmt in ("mds", "chat", "preference"):  # read by pipelines/read/registry.py, not sampled here
        est.note = f"no estimate for format {fmt}"
        return est
    tok_total = rec_total = byte_total = 0
    for f in files[:SAMPLE_FILES]:
        try:
            texts, n_records, n_bytes = _sample_texts(f, fmt, text_key, step, limit)
        except Exception as e:  # an estimate must never stop the dry-run; the build reports bad files properly
            est.note = f"could not sample {f}: {type(e).__name__}"
            continue
        if not n_bytes or (not texts and step is None):
            continue
        if texts:
            encs = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
            per_record = (sum(len(e.ids) for e in encs) + len(encs)) / len(texts)  # + EOS
            # with row steps, only the rows they keep (and fetch) make tokens
            tok_total += per_record * (n_records if step is None else len(texts))
        rec_total += n_records
        byte_total += n_bytes
    if byte_total:
        est.est_records = int(rec_total / byte_total * est.bytes)
        est.est_tokens = int(tok_total / byte_total * est.bytes * sample)
    elif not est.note:
        est.note = "no readable sample"
    return est


def estimate_stage(stage: Stage, n_records: int, n_tokens: int, token_bytes: int) -> StageEstimate:
    memory, disk = stage.memory_bytes or None, stage.disk_bytes or None
    if stage.kind == "per-file":
        memory = memory or PER_FILE_TASK_BYTES
        disk = disk or n_tokens * token_bytes + n_records * DOC_ROW_BYTES
    return StageEstimate(stage.name, stage.kind, stage.tasks, memory, disk, stage.description)


def plan_build(ctx, stages: list[Stage]) -> BuildPlan:
    """Estimates for a prepared build context (`pipelines.build.context.prepare`) and its stages."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(ctx.tokenizer_path)
    token_bytes = 2 if ctx.vocab_size <= 65536 else 4
    by_source: dict[str, list[str]] = {}
    steps: dict[str, RowTransform | None] = {}
    for t in ctx.tasks:
        by_source.setdefault(t.source, []).append(t.path)
        steps[t.source] = row_transform(t.filter, t.fetch, t.text_key, t.id_key)
    sources = []
    for s in ctx.spec.sources:
        # a fetch source's sample costs one request per row: a few rows only
        limit = FETCH_SAMPLE_RECORDS if s.fetch else SAMPLE_RECORDS
        est = estimate_source(s.name, by_source.get(s.name, []), s.format, s.text_key, s.sample, tok,
                              steps.get(s.name), limit)
        est.share = s.share
        est.rate_needed = required_rate(s.share, ctx.spec.tokens, est.est_tokens, s.sample)
        sources.append(est)
    n_records = sum(s.est_records or 0 for s in sources)
    n_tokens = sum(s.est_tokens or 0 for s in sources)
    plan = BuildPlan(sources=sources, stages=[], token_bytes=token_bytes, extra={"target_tokens": ctx.spec.tokens})
    plan.stages = [estimate_stage(st, n_records, n_tokens, token_bytes) for st in stages]
    return plan


@dataclass
class VariantRow:
    """One line of the side-by-side table: a source (or a setting) in two specs."""

    what: str
    a: str
    b: str
    diff: str = ""


def measured_tokens(out) -> dict[str, int] | None:
    """Tokens written per source by a finished build in `out` (its manifest's `composition`), None without one."""
    from pathlib import Path

    if not (Path(out) / "manifest.duckdb").exists():
        return None
    from pipelines.shards.reader import connect

    con = connect(Path(out))
    try:
        return {s: int(n) for s, n in con.execute("SELECT source, n_tokens FROM composition").fetchall()}
    finally:
        con.close()


def compare_variants(a_spec, a_plan: BuildPlan, b_spec, b_plan: BuildPlan, a_built: dict | None = None,
                     b_built: dict | None = None) -> list[VariantRow]:
    """Two specs side by side (faithful vs improved): per source the estimated tokens (and, when a build of each
    exists, the tokens it wrote — the only place dedup / decontamination removals show), then the settings that
    differ. `diff` is b - a."""
    def fmt(n):
        return "-" if n is None else f"{n:,}"

    est_a = {s.source: s.est_tokens for s in a_plan.sources}
    est_b = {s.source: s.est_tokens for s in b_plan.sources}
    rows = []
    for name in list(est_a) + [n for n in est_b if n not in est_a]:
        ta, tb = est_a.get(name), est_b.get(name)
        diff = f"{(tb or 0) - (ta or 0):+,}" if ta is not None or tb is not None else ""
        if name not in est_a or name not in est_b:
            diff += f" (only in {a_spec.name if name in est_a else b_spec.name})"
        rows.append(VariantRow(name, fmt(ta), fmt(tb), diff))
        if a_built is not None and b_built is not None:
            ma, mb = a_built.get(name), b_built.get(name)
            rows.append(VariantRow(f"  {name} (built)", fmt(ma), fmt(mb), f"{(mb or 0) - (ma or 0):+,}"))
    total_a, total_b = a_plan.est_tokens, b_plan.est_tokens
    rows.append(VariantRow("total (est.)", fmt(total_a), fmt(total_b), f"{total_b - total_a:+,}"))
    if a_built is not None and b_built is not None:
        ma, mb = sum(a_built.values()), sum(b_built.values())
        rows.append(VariantRow("total (built)", fmt(ma), fmt(mb), f"{mb - ma:+,}"))
    for key in ("dedup", "decontaminate", "tokens", "tokenization", "packing", "seq_len"):
        va, vb = getattr(a_spec, key), getattr(b_spec, key)
        if va != vb:
            rows.append(VariantRow(key, "none" if va is None else str(va), "none" if vb is None else str(vb)))
    return rows
