"""Long-context packers (ProLong / Instella-Long): whole-build packers over document lengths (`get_packer`).

`long` (spec `packing: {mode: long, ...}`; each source says `packing: long` or `packing: short`):

- *short* sources: random documents concatenated to exactly seq_len; the overflow of a row's last document is
  discarded (never carried into the next row). A final row that cannot be filled is not written (`incomplete-row`).
- *long* sources: a document of n >= seq_len tokens fills whole rows: floor(n / L) windows of L tokens at a random
  shift; a document with more than `max_windows_per_doc` windows contributes that many, chosen at random (ProLong
  samples a few segments of very long documents instead of cutting them whole). Shorter documents are dropped
  (`shorter-than-<L>`).
- with `sub_seq_len` (stage 2: 65,536 in 262,144 rows), long documents with sub_seq_len <= n < L give windows of
  sub_seq_len tokens instead, and `L / sub_seq_len` windows of *distinct* documents are packed into one row.
- optional per-source `options: {share: 0.3, sub_share: 0.15}` with `--max-tokens`: the source contributes at most
  share × max_tokens tokens of full rows / short documents and sub_share × max_tokens of sub_seq_len windows (taken
  in random order); what is left out is dropped as `over-share`.

`sft` (`packing: {mode: sft, loss_mask: true}`): whole samples (QA over long documents, short instruction data)
packed best-fit-decreasing into rows and padded to exactly seq_len with the pad id (padding only at row ends);
samples longer than seq_len are dropped (`longer-than-seq-len`). The loss mask (answer tokens only) comes from the
spine (stage A, `messages` answer spans). The manifest view `padding` reports the padding fraction per source.

Both run per pack partition (`pipelines.pack.partitioned.PackPartition`) over the lengths of its kept documents, never their
tokens or text; a build of up to ITEMS_PER_PARTITION documents is one partition, packed as one whole.

Every packer places segments of a row contiguously from offset 0 and shuffles row order with the build seed.
"""
from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipelines.pack.base import (
    DROPPED_SCHEMA,
    SEGMENT_SCHEMA,
    PackInput,
    PackResult,
    expand_copies,
)


@dataclass
class Piece:
    """A run of one document copy's tokens destined for one row."""

    key: int
    copy: int
    doc_start: int
    length: int
    source: str


def _role(inp: PackInput, source: str) -> str:
    spec = inp.source_options.get(source)
    role = spec.packing if spec is not None else None
    if isinstance(role, dict):
        role = role.get("role")
    if role not in ("long", "short"):
        raise ValueError(f"packing mode {inp.options.get('mode')!r}: source {source!r} needs `packing: long` or "
                         f"`packing: short`, got {role!r}")
    return role


def sample_windows(n_tokens: int, size: int, max_windows: int | None, rng: np.random.Generator) -> list[int]:
    """Start offsets of non-overlapping `size`-token windows of a document: all floor(n/size) at a random shift, or
    `max_windows` of them chosen at random when there are more."""
    k = n_tokens // size
    if k == 0:
        return []
    shift = int(rng.integers(0, n_tokens - k * size + 1))
    idx = np.arange(k)
    if max_windows is not None and k > max_windows:
        idx = np.sort(rng.choice(k, size=max_windows, replace=False))
    return [shift + int(i) * size for i in idx]


def fill_short_rows(pieces: list[Piece], seq_len: int) -> tuple[list[list[Piece]], list[Piece]]:
    """Concatenate whole documents into rows of exactly seq_len; a row's last document is cut, its overflow dropped.
    Returns (full rows, pieces of the unfinished last row)."""
    rows: list[list[Piece]] = []
    row: list[Piece] = []
    pos = 0
    for p in pieces:
        take = min(p.length, seq_len - pos)
        row.append(Piece(p.key, p.copy, 0, take, p.source))
        pos += take
        if pos == seq_len:
            rows.append(row)
            row, pos = [], 0
    return rows, row


def group_distinct(units: list[Piece], per_row: int, rng: np.random.Generator) -> tuple[list[list[Piece]], list[Piece]]:
    """Pack `per_row` units of *distinct* documents per row. Units of a document stay adjacent in a random document
    order and are dealt column-wise over the rows, so k <= n_rows units of one document land in k different rows."""
    by_doc: dict[int, list[Piece]] = {}
    for u in units:
        by_doc.setdefault(u.key, []).append(u)
    docs = list(by_doc)
    rng.shuffle(docs)
    left_out: list[Piece] = []
    while True:
        n_rows = sum(len(v) for v in by_doc.values()) // per_row
        over = [d for d in docs if len(by_doc[d]) > n_rows]
        if not over:
            break
        for d in over:  # a document cannot fill more rows than exist
            left_out += by_doc[d][max(n_rows, 0):]
            by_doc[d] = by_doc[d][:max(n_rows, 0)]
    flat = [u for d in docs for u in by_doc[d]]
    used, left_out = flat[:n_rows * per_row], left_out + flat[n_rows * per_row:]
    rows: list[list[Piece]] = [[] for _ in range(n_rows)]
    for i, u in enumerate(used):
        rows[i % n_rows].append(u)
    return rows, left_out


def take_share(units: list[Piece], budget: float | None, rng: np.random.Generator) -> list[Piece]:
    """Units in random order while their tokens stay within budget (all of them when there is no budget)."""
    if budget is None:
        return units
    order = rng.permutation(len(units))
    out, total = [], 0
    for i in order:
        if total + units[i].length > budget:
            continue
        out.append(units[i])
        total += units[i].length
    return out


def _result(rows: list[list[Piece]], inp: PackInput, rng: np.random.Generator, reasons: dict[int, str],
            max_rows: int | None = None) -> PackResult:
    """Shuffle rows, cap them, lay segments out from offset 0, and drop every doc with no placed segment."""
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    if max_rows is not None and len(rows) > max_rows:
        for r in rows[max_rows:]:
            for p in r:
                reasons.setdefault(p.key, "max-tokens")
        rows = rows[:max_rows]
    cols: dict[str, list] = {k: [] for k in SEGMENT_SCHEMA}
    for r, row in enumerate(rows):
        start = 0
        for p in row:
            for k, v in (("key", p.key), ("copy", p.copy), ("doc_start", p.doc_start), ("row", r), ("start", start),
                         ("length", p.length)):
                cols[k].append(v)
            start += p.length
        assert start <= inp.seq_len, "a row overflowed"
    segments = pl.DataFrame(cols, schema=SEGMENT_SCHEMA)
    placed = set(cols["key"])
    copies = segments.group_by("key").agg(pl.col("copy").n_unique().cast(pl.Int32).alias("n_copies"))
    copies = copies.join(inp.docs.select("key", pl.col("n_copies").alias("asked")), on="key").filter(
        pl.col("n_copies") != pl.col("asked")).select("key", "n_copies")
    dropped_keys = [k for k in inp.docs["key"].to_list() if k not in placed]
    dropped = pl.DataFrame({"key": dropped_keys, "reason": [reasons.get(k, "not-placed") for k in dropped_keys]},
                           schema=DROPPED_SCHEMA)
    return PackResult(segments=segments, n_rows=len(rows), dropped=dropped, copies=copies if copies.height else None)


def pack_long(inp: PackInput) -> PackResult:
    L = inp.seq_len
    opts = inp.options
    sub = opts.get("sub_seq_len")
    if sub is not None and (sub <= 0 or L % sub):
        raise ValueError(f"packing.sub_seq_len must divide seq_len {L}, got {sub}")
    max_windows = opts.get("max_windows_per_doc", 8)
    rng = np.random.default_rng(inp.seed)
    keys, copies, lengths = expand_copies(inp.docs)
    source_of = dict(zip(inp.docs["key"].to_list(), inp.docs["source"].to_list()))
    reasons: dict[int, str] = {}
    full: dict[str, list[Piece]] = {}
    subs: dict[str, list[Piece]] = {}
    short: dict[str, list[Piece]] = {}
    for key, copy, n in zip(keys.tolist(), copies.tolist(), lengths.tolist()):
        src = source_of[key]
        if _role(inp, src) == "short":
            short.setdefault(src, []).append(Piece(key, copy, 0, n, src))
        elif n >= L:
            full.setdefault(src, []).extend(Piece(key, copy, s, L, src) for s in sample_windows(n, L, max_windows, rng))
        elif sub is not None and n >= sub:
            subs.setdefault(src, []).extend(Piece(key, copy, s, sub, src) for s in sample_windows(n, sub, max_windows, rng))
        else:
            reasons[key] = f"shorter-than-{sub or L}"
    # token budgets per source (only with --max-tokens and a share); a source's units compete for its budget
    # (`sub_share` is the separate budget of a source's sub_seq_len windows, e.g. books 15% 64K + 15% 256K)
    sources = list(inp.source_options)
    for s in sources:
        o = inp.source_options[s].options or {}
        for groups, share in (((full, short), o.get("share")), ((subs,), o.get("sub_share", o.get("share")))):
            if not inp.max_tokens or share is None:
                continue
            units = [u for g in groups for u in g.get(s, [])]
            kept_ids = {id(u) for u in take_share(units, share * inp.max_tokens, rng)}
            for u in units:
                if id(u) not in kept_ids:
                    reasons.setdefault(u.key, "over-share")
            for g in groups:
                g[s] = [u for u in g.get(s, []) if id(u) in kept_ids]
    rows: list[list[Piece]] = [[u] for s in sources for u in full.get(s, [])]
    if sub is not None:
        sub_rows, left = group_distinct([u for s in sources for u in subs.get(s, [])], L // sub, rng)
        rows += sub_rows
        for u in left:
            reasons.setdefault(u.key, "incomplete-row")
    short_pieces = [p for s in sources for p in short.get(s, [])]
    short_pieces = [short_pieces[i] for i in rng.permutation(len(short_pieces))]
    short_rows, tail = fill_short_rows(short_pieces, L)
    rows += short_rows
    for p in tail:
        reasons.setdefault(p.key, "incomplete-row")
    max_rows = inp.max_tokens // L if inp.max_tokens else None
    return _result(rows, inp, rng, reasons, max_rows)


def pack_sft(inp: PackInput) -> PackResult:
    """Whole samples, best-fit decreasing into rows of seq_len; the rest of a row is padding."""
    L = inp.seq_len
    rng = np.random.default_rng(inp.seed)
    keys, copies, lengths = expand_copies(inp.docs)
    source_of = dict(zip(inp.docs["key"].to_list(), inp.docs["source"].to_list()))
    reasons: dict[int, str] = {}
    if inp.max_tokens:  # per-source budgets: share × max_tokens of whole samples, taken in random order
        keep = np.ones(len(keys), dtype=bool)
        for s, spec in inp.source_options.items():
            share = (spec.options or {}).get("share")
            idx = [i for i in range(len(keys)) if source_of[int(keys[i])] == s]
            if share is None or not idx:
                continue
            units = [Piece(int(keys[i]), i, 0, int(lengths[i]), s) for i in idx]  # copy field carries the index
            chosen = {u.copy for u in take_share(units, share * inp.max_tokens, rng)}
            for i in idx:
                if i not in chosen:
                    keep[i] = False
                    reasons.setdefault(int(keys[i]), "over-share")
        keys, copies, lengths = keys[keep], copies[keep], lengths[keep]
    tiebreak = rng.random(len(keys))
    order = np.lexsort((tiebreak, -lengths))  # longest first, ties in random order
    rows: list[list[Piece]] = []
    free: list[tuple[int, int]] = []  # (free tokens, row index), sorted
    for i in order.tolist():
        n, key = int(lengths[i]), int(keys[i])
        if n > L:
            reasons[key] = "longer-than-seq-len"
            continue
        j = bisect_left(free, (n, -1))
        if j < len(free):
            cap, r = free.pop(j)
        else:
            cap, r = L, len(rows)
            rows.append([])
        rows[r].append(Piece(key, int(copies[i]), 0, n, source_of[key]))
        if cap - n > 0:
            insort(free, (cap - n, r))
    for row in rows:  # mix short and long samples inside a row in random order
        rng.shuffle(row)
    max_rows = inp.max_tokens // L if inp.max_tokens else None
    return _result(rows, inp, rng, reasons, max_rows)
