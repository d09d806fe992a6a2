"""Benchmark decontamination: drop documents that contain evaluation items, and record which items.

Index (built once per build by `build_decontam_index`): for every benchmark item, the hashes of normalised word
13-grams (`fold_words` of `pipelines/text.py`: NFC, case, punctuation, symbols and whitespace folded) of
*question + answer* and of *question + choices in order*. N-grams with fewer than `min_distinct` distinct words are
left out: digit runs such as "1 2 3 ... 13" or "0 0 0 ..." occur in clean code and tables and were most of plain
13-gram matching's false positives. Short items (question < 13 words) use whole-sequence containment instead: the
hash of the whole question (if it has >= `short_min` words), and of question + answer / question + choices when
those are still < 13 words.
Items with no sequence of >= `short_min` words cannot be matched reliably and are counted as `unmatchable`.

The index is a directory of sorted uint64 arrays (.npy, memory-mapped by every worker, shared through the page
cache) plus an item table; a bitmap over the top hash bits rejects most of a document's n-grams with one lookup.

Matching (`DecontaminationStep`): a document's 13-grams are looked up (bitmap, then binary search), and its
8-grams in the short-item table, whose hits are confirmed by hashing the doc's words at that position over the
item's full length; the document is matched a second time with multiple-choice labels ("A)", "(b)", "C.") and
"Question:/Answer:" prefixes removed when it has a label letter b-h, so "A) ..." listings still match "question + choices".
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from pipelines.errors import SpecError
from pipelines.io import iter_jsonl
from pipelines.text import (
    batches_by_chars,
    fold_words,
    hashes_at,
    length_salts,
    ngram_ipow,
    ngram_prefix,
    token_batch,
    word_hashes,
    words_and_labels,
)

_U64 = np.uint64
DEFAULT_SUITE = ("arc_challenge", "arc_easy", "boolq", "hellaswag", "piqa", "sciq", "winogrande", "openbookqa",
                 "mmlu", "bbh", "gsm8k", "minerva_math")  # Instella's evaluation suite
# Words dropped from the *label-free* stream: single letters a-h (what "A)", "(b)", "C." become after normalisation)
# and prompt prefixes. Only the question + choices sequence of an item is indexed in this form too.
_PREFIX_WORDS = word_hashes(b"question answer choices options")


def default_benchmarks_dir() -> Path:
    from pipelines.resources import benchmarks_dir

    return benchmarks_dir()


@dataclass(frozen=True)
class DecontamConfig:
    """Spec `decontaminate:` mapping."""

    benchmarks: tuple[str, ...] = ()  # resolved benchmark files (JSONL[.gz] or parquet)
    ngram: int = 13
    min_distinct: int = 6  # index n-grams with fewer distinct words are dropped (digit runs, repeated tokens)
    short_min: int = 8  # shortest whole question (in words) matched by containment
    min_matches: int = 1  # distinct matched n-grams of one item needed to call a doc contaminated
    exclude_splits: tuple[str, ...] = ("train",)  # never decontaminate against training rows (GSM8K train is data)
    text_field: str = "text"  # for benchmark files without question/choices/answer

    @classmethod
    def from_spec(cls, d: dict | bool | None, spec_dir: Path | str | None = None) -> "DecontamConfig | None":
        if d is None or d is False:
            return None
        if d is True:
            d = {}
        if not isinstance(d, dict):
            raise SpecError(f"decontaminate: expected a mapping, got {type(d).__name__}")
        known = {f.name for f in cls.__dataclass_fields__.values()}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SpecError(f"decontaminate: unknown key(s) {unknown}; known: {sorted(known)}")
        d = dict(d)
        d["benchmarks"] = tuple(resolve_benchmarks(d.get("benchmarks"), Path(spec_dir or Path.cwd())))
        if "exclude_splits" in d:
            d["exclude_splits"] = tuple(d["exclude_splits"] or ())
        cfg = cls(**d)
        if cfg.ngram < 2 or cfg.short_min < 1 or cfg.min_matches < 1:
            raise SpecError("decontaminate: ngram must be >= 2, short_min and min_matches >= 1")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_benchmarks(spec: str | list[str] | None, spec_dir: Path) -> list[str]:
    """Files for `benchmarks:` (a path, glob, directory or list of them). Default: Instella's suite from
    $MIDTRAIN_BENCHMARKS or <repo>/../shared/data/benchmarks. Relative paths are taken from the spec's folder,
    then from the benchmarks folder (so `[gsm8k, mmlu]` works)."""
    base = default_benchmarks_dir()
    if spec is None:
        files = [str(base / f"{name}.jsonl.gz") for name in DEFAULT_SUITE]
        missing = [f for f in files if not Path(f).exists()]
        if missing:
            raise FileNotFoundError(f"decontaminate: default benchmark files missing: {missing} "
                                    "(set MIDTRAIN_BENCHMARKS or `benchmarks:` in the spec)")
        return files
    out: list[str] = []
    for entry in [spec] if isinstance(spec, str) else list(spec):
        entry = os.path.expanduser(str(entry))
        candidates = [entry] if os.path.isabs(entry) else [str(spec_dir / entry), str(base / entry),
                                                           str(base / f"{entry}.jsonl.gz")]
        found: list[str] = []
        for c in candidates:
            if os.path.isdir(c):
                found = sorted(p for p in glob.glob(os.path.join(c, "*"))
                               if p.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".parquet")))
            else:
                found = sorted(glob.glob(c, recursive=True))
            if found:
                break
        if not found:
            raise FileNotFoundError(f"decontaminate: benchmark {entry!r} matched no file (looked in {candidates})")
        out += [str(Path(f).resolve()) for f in found]
    return sorted(dict.fromkeys(out))


# ------------------------------------------------------------------------------------------------ benchmark items
@dataclass
class Item:
    benchmark: str
    item_id: str
    question: str
    choices: list[str] = field(default_factory=list)
    answer: str | None = None


def _bench_name(path: str) -> str:
    name = Path(path).name
    for suf in (".jsonl.gz", ".json.gz", ".jsonl", ".parquet"):
        if name.endswith(suf):
            return name[: -len(suf)]
    return name


def read_items(path: str, cfg: DecontamConfig, skipped: dict[str, int]) -> list[Item]:
    """Items of one benchmark file. Bad rows raise with file and line; rows of excluded splits are counted."""
    if path.endswith(".parquet"):
        rows = enumerate(pq.read_table(path).to_pylist(), 1)
    else:
        rows = list(iter_jsonl(path))
    items = []
    default = _bench_name(path)
    for i, rec in rows:
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{i}: expected a JSON object")
        if rec.get("split") in cfg.exclude_splits:
            skipped[f"split={rec['split']}"] = skipped.get(f"split={rec['split']}", 0) + 1
            continue
        q = rec.get("question")
        if not isinstance(q, str):
            q = rec.get(cfg.text_field)
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"{path}:{i}: no 'question' or '{cfg.text_field}' string")
        choices = [c for c in (rec.get("choices") or []) if isinstance(c, str)]
        ans = rec.get("answer") if isinstance(rec.get("answer"), str) else None
        items.append(Item(str(rec.get("benchmark") or default), str(rec.get("id") or f"{default}-{i}"), q, choices, ans))
    return items


# ------------------------------------------------------------------------------------------------------ the index
def _expand(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + l) for every (s, l), without a Python loop."""
    total = int(lengths.sum())
    return np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(total)


def _hash_texts(texts: list[bytes], chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Word hashes, label letters and is-number flags of all words of normalised texts, ~1 MB at a time."""
    out, group, size = [], [], 0
    for t in [*texts, None]:
        if t is not None and t:
            group.append(t)
            size += len(t) + 1
        if group and (t is None or size >= chunk):
            big = b" ".join(group)
            wh, lab = words_and_labels(big)
            b = np.frombuffer(big, np.uint8)
            starts = np.concatenate([[0], np.flatnonzero(b == 32) + 1])
            nondigit = np.concatenate([[0], np.cumsum((b < 48) | (b > 57))])
            out.append((wh, lab, (nondigit[np.append(starts[1:] - 1, len(b))] - nondigit[starts]) == 0))
            group, size = [], 0
    if not out:
        return np.zeros(0, _U64), np.zeros(0, np.uint8), np.zeros(0, bool)
    return tuple(np.concatenate(x) for x in zip(*out))


@dataclass
class IndexArrays:
    """What the index stores. Long rule: `ngrams` (sorted n-gram hashes) -> `ngram_items`. Short rule: a sequence
    of L words (short_min <= L < ngram) is found by the hash of its first short_min words (`short_prefix`, sorted),
    then confirmed by the hash of all L words (`short_full`, `short_len`) -> `short_items`."""

    ngrams: np.ndarray
    ngram_items: np.ndarray
    short_prefix: np.ndarray
    short_full: np.ndarray
    short_len: np.ndarray
    short_items: np.ndarray

    @staticmethod
    def concat(parts: list["IndexArrays"]) -> "IndexArrays":
        return IndexArrays(*(np.concatenate([getattr(p, f) for p in parts]) for f in IndexArrays.__dataclass_fields__))

    @staticmethod
    def empty() -> "IndexArrays":
        return IndexArrays(np.zeros(0, _U64), np.zeros(0, np.int32), np.zeros(0, _U64), np.zeros(0, _U64),
                           np.zeros(0, np.uint8), np.zeros(0, np.int32))

    def sorted_unique(self) -> "IndexArrays":
        o = np.lexsort((self.ngram_items, self.ngrams))
        h, i = self.ngrams[o], self.ngram_items[o]
        keep = np.ones(len(h), bool)
        keep[1:] = (h[1:] != h[:-1]) | (i[1:] != i[:-1])  # one row per (hash, item)
        o2 = np.lexsort((self.short_items, self.short_full, self.short_prefix))
        sp, sf, sl, si = self.short_prefix[o2], self.short_full[o2], self.short_len[o2], self.short_items[o2]
        k2 = np.ones(len(sp), bool)
        k2[1:] = (sp[1:] != sp[:-1]) | (sf[1:] != sf[:-1]) | (si[1:] != si[:-1])
        return IndexArrays(h[keep], i[keep], sp[k2], sf[k2], sl[k2], si[k2])


def index_hashes(items: list[Item], cfg: DecontamConfig, batch: int = 4096) -> tuple[IndexArrays, int]:
    """(index arrays, number of unmatchable items) for the benchmark items.

    Sequences per item: question, question + answer, question + choices (in order) and the latter without labels /
    prefixes (for "A) ..." listings). Long sequences (>= ngram words) contribute the n-grams that *start inside the
    question* and have >= min_distinct distinct words, not all numbers: a document that merely shares answer text
    (GSM8K solution boilerplate like "there are 60 minutes in an hour and 60 seconds in a minute") is not flagged,
    nor are digit runs. Shorter sequences of >= short_min words are matched whole.
    """
    parts = []
    for b0 in range(0, len(items), batch):  # batches bound the memory of the vectorised pass
        part = _index_batch(items[b0:b0 + batch], cfg)
        part.ngram_items += b0
        part.short_items += b0
        parts.append(part)
    arrays = (IndexArrays.concat(parts) if parts else IndexArrays.empty()).sorted_unique()
    matchable = np.union1d(arrays.ngram_items, arrays.short_items)
    return arrays, len(items) - len(matchable)


def _index_batch(items: list[Item], cfg: DecontamConfig) -> IndexArrays:
    """`index_hashes` for one batch of items, vectorised over the batch (item indices local to it)."""
    # 1. all fields of all items, normalised and hashed in one pass
    texts: list[bytes] = []
    fields: list[tuple[int, int, list[int]]] = []  # (question text, answer text or -1, choice texts)
    for it in items:
        q = len(texts)
        texts.append(fold_words(it.question))
        a = -1
        if it.answer:
            a = len(texts)
            texts.append(fold_words(it.answer))
        cs = list(range(len(texts), len(texts) + len(it.choices)))
        texts += [fold_words(c) for c in it.choices]
        fields.append((q, a, cs))
    n_words = np.array([t.count(b" ") + 1 if t else 0 for t in texts], np.int64)
    offset = np.cumsum(n_words) - n_words
    wh, lab, is_num = _hash_texts(texts)
    is_lab = (lab > 0) | np.isin(wh, _PREFIX_WORDS)

    # 2. sequences as lists of texts; the label-free variant is marked and filtered below
    seg_seq, seg_text, seq_item, seq_strip = [], [], [], []
    for idx, (q, a, cs) in enumerate(fields):
        variants = [[q]] + ([[q, a]] if a >= 0 else []) + ([[q, *cs]] * 2 if cs else [])
        for k, v in enumerate(variants):
            sid = len(seq_item)
            seq_item.append(idx)
            seq_strip.append(bool(cs) and k == len(variants) - 1)
            seg_seq += [sid] * len(v)
            seg_text += v
    seg_seq_a, seg_text_a = np.array(seg_seq), np.array(seg_text)
    pos = _expand(offset[seg_text_a], n_words[seg_text_a])
    tok_seq = np.repeat(seg_seq_a, n_words[seg_text_a])
    q_text = np.array([f[0] for f in fields])[np.array(seq_item)]
    in_q = np.repeat(seg_text_a == q_text[seg_seq_a], n_words[seg_text_a])
    keep = ~(np.array(seq_strip)[tok_seq] & is_lab[pos])
    pos, tok_seq, in_q = pos[keep], tok_seq[keep], in_q[keep]
    n_seq = len(seq_item)
    seq_len = np.bincount(tok_seq, minlength=n_seq)
    q_len = np.bincount(tok_seq, weights=in_q, minlength=n_seq).astype(np.int64)
    seq_start = np.cumsum(seq_len) - seq_len
    S, num = wh[pos], is_num[pos]
    seq_item_a = np.array(seq_item, np.int32)

    # 3. hash sequences in chunks of ~256K words, so temporaries (and the cached powers) stay small
    parts = []
    chunk_of = (seq_start + seq_len) // (1 << 18)
    bounds = np.flatnonzero(np.diff(np.concatenate([[-1], chunk_of, [chunk_of[-1] + 1 if n_seq else 0]])))
    for a, z in zip(bounds[:-1], bounds[1:]):
        t0, t1 = seq_start[a], seq_start[z - 1] + seq_len[z - 1]
        parts.append(_sequence_hashes(S[t0:t1], num[t0:t1], seq_start[a:z] - t0, seq_len[a:z], q_len[a:z],
                                      seq_item_a[a:z], cfg))
    return IndexArrays.concat(parts) if parts else IndexArrays.empty()


def _informative(S: np.ndarray, num: np.ndarray, w: np.ndarray, min_distinct: int) -> np.ndarray:
    """Rows of window matrix w (positions into S) with >= min_distinct distinct words, not all numbers."""
    srt = np.sort(S[w], axis=1)
    return ((1 + (srt[:, 1:] != srt[:, :-1]).sum(axis=1)) >= min_distinct) & ~num[w].all(axis=1)


def _sequence_hashes(S, num, seq_start, seq_len, q_len, seq_item, cfg: DecontamConfig) -> IndexArrays:
    """Index entries of the sequences laid out in S (see `index_hashes`)."""
    n, m = cfg.ngram, cfg.short_min
    prefix = np.concatenate([[_U64(0)], ngram_prefix(S)])
    # long sequences: n-grams starting in the question
    n_starts = np.where(seq_len >= n, np.minimum(q_len, seq_len - n + 1), 0)
    p = _expand(seq_start, n_starts)
    ok = _informative(S, num, p[:, None] + np.arange(n), cfg.min_distinct) if len(p) else np.zeros(0, bool)
    long_h, long_i = hashes_at(prefix, p[ok], n), np.repeat(seq_item, n_starts)[ok].astype(np.int32)
    # short sequences: the whole sequence, found by its first short_min words
    sp, sf, sl, si = [], [], [], []
    for L in range(m, n):
        sel = np.flatnonzero(seq_len == L)
        if len(sel) == 0:
            continue
        good = sel[_informative(S, num, seq_start[sel, None] + np.arange(L), min(cfg.min_distinct, L))]
        sp.append(hashes_at(prefix, seq_start[good], m))
        sf.append(hashes_at(prefix, seq_start[good], L))
        sl.append(np.full(len(good), L, np.uint8))
        si.append(seq_item[good].astype(np.int32))
    if not sp:
        e = IndexArrays.empty()
        return IndexArrays(long_h, long_i, e.short_prefix, e.short_full, e.short_len, e.short_items)
    return IndexArrays(long_h, long_i, np.concatenate(sp), np.concatenate(sf), np.concatenate(sl), np.concatenate(si))


INDEX_VERSION = 6  # bump when the index layout or hashing changes


def _cache_dir(cfg: DecontamConfig) -> Path | None:
    """Content-addressed cache of built indexes ($MIDTRAIN_CACHE, default ~/.cache/midtrain; "off" disables):
    the key covers the config, this code's INDEX_VERSION and every benchmark file's path, size and mtime."""
    root = os.environ.get("MIDTRAIN_CACHE", str(Path.home() / ".cache" / "midtrain"))
    if root.lower() in ("off", "0", "none", ""):
        return None
    h = hashlib.sha256(json.dumps([INDEX_VERSION, cfg.to_dict()], sort_keys=True, default=str).encode())
    for f in cfg.benchmarks:
        st = os.stat(f)
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return Path(root) / "decontam-index" / h.hexdigest()[:24]


INDEX_FILES = ("ngrams.npy", "ngram_items.npy", "short_prefix.npy", "short_full.npy", "short_len.npy",
               "short_items.npy", "bitmap.npy", "short_bitmap.npy", "items.json", "meta.json")


def _copy_index(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + f".partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in INDEX_FILES:
        try:
            os.link(src / f, tmp / f)  # read-only use: hard links are safe and free
        except OSError:
            shutil.copy2(src / f, tmp / f)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def build_decontam_index(cfg: DecontamConfig, path: Path, use_cache: bool = True) -> None:
    """Write the index directory `path` (atomically), reusing a cached identical index when there is one."""
    path = Path(path)
    cache = _cache_dir(cfg) if use_cache else None
    if cache is not None and all((cache / f).exists() for f in INDEX_FILES):
        _copy_index(cache, path)
        return
    _build_index(cfg, path)
    if cache is not None:
        try:
            _copy_index(path, cache)
        except OSError:  # a read-only or full cache location must not fail the build
            pass


def _bitmap(hashes: np.ndarray, bits: int) -> np.ndarray:
    bitmap = np.zeros(1 << (bits - 3), np.uint8)
    top = hashes >> _U64(64 - bits)
    np.bitwise_or.at(bitmap, (top >> _U64(3)).astype(np.intp), (1 << (top & _U64(7))).astype(np.uint8))
    return bitmap


def _bitmap_bits(n: int) -> int:
    return int(min(34, max(16, round(np.log2(max(n, 1) * 16)))))  # ~16 bits per entry: ~6% pass rate


def _build_index(cfg: DecontamConfig, path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    skipped: dict[str, int] = {}
    items: list[Item] = []
    for f in cfg.benchmarks:
        items += read_items(f, cfg, skipped)
    arrays, unmatchable = index_hashes(items, cfg)
    bits, short_bits = _bitmap_bits(len(arrays.ngrams)), _bitmap_bits(len(arrays.short_prefix))
    # item numbers fit uint16 for suites of < 65,536 items (Instella's has ~50K): 2 bytes per n-gram instead of 4
    item_dtype = np.uint16 if len(items) < 2**16 else np.int32
    arrays.ngram_items = arrays.ngram_items.astype(item_dtype)
    arrays.short_items = arrays.short_items.astype(item_dtype)
    for name, arr in (*arrays.__dict__.items(), ("bitmap", _bitmap(arrays.ngrams, bits)),
                      ("short_bitmap", _bitmap(arrays.short_prefix, short_bits))):
        np.save(tmp / f"{name}.npy", arr)
    (tmp / "items.json").write_text(json.dumps([[it.benchmark, it.item_id] for it in items]))
    per_bench: dict[str, int] = {}
    for it in items:
        per_bench[it.benchmark] = per_bench.get(it.benchmark, 0) + 1
    meta = {"config": cfg.to_dict(), "n_items": len(items), "items_per_benchmark": per_bench,
            "n_hashes": int(len(arrays.ngrams)), "n_short": int(len(arrays.short_prefix)),
            "short_lengths": sorted({int(x) for x in np.unique(arrays.short_len)}), "bitmap_bits": bits,
            "short_bitmap_bits": short_bits,
            "unmatchable_items": unmatchable, "skipped_rows": skipped}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _in_bitmap(bitmap: np.ndarray, bits: int, h: np.ndarray) -> np.ndarray:
    """Mask of hashes whose top `bits` bits are set in the bitmap (no false negatives)."""
    top = h >> _U64(64 - bits)
    return (bitmap[(top >> _U64(3)).astype(np.intp)] >> (top & _U64(7)).astype(np.uint8)) & 1 == 1


def _ranges(table: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query index, table position) of every match of queries q in sorted `table` (which may repeat hashes).
    Queries are searched in sorted order (numpy narrows each search from the previous one: ~6x faster on the
    suite's 2M-entry table than random order), once each; the second search (for repeats) only for the few hits."""
    order = np.argsort(q)
    qs = q[order]
    lo = np.searchsorted(table, qs, "left")
    hit = lo < len(table)
    hit[hit] = table[lo[hit]] == qs[hit]
    si = np.flatnonzero(hit)
    if len(si) == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    lo = lo[si]
    n = np.searchsorted(table, qs[si], "right") - lo
    return np.repeat(order[si], n), np.repeat(lo - np.cumsum(n) + n, n) + np.arange(int(n.sum()))


RULES = ("ngram", "short")


class DecontamIndex:
    """Memory-mapped index; `match(text)` -> {item index: distinct matched n-grams / short sequences}."""

    def __init__(self, path: Path | str):
        path = Path(path)
        missing = [f for f in INDEX_FILES if not (path / f).exists()]
        if missing:
            raise FileNotFoundError(f"decontamination index {path} is incomplete: missing {missing}")
        self.path = path
        self.meta = json.loads((path / "meta.json").read_text())
        cfg = self.meta["config"]
        self.n, self.m = int(cfg["ngram"]), int(cfg["short_min"])
        # plain ndarray views of the memory maps: numpy's memmap subclass adds overhead to every indexing
        a = {f[:-4]: np.load(path / f, mmap_mode="r").view(np.ndarray) for f in INDEX_FILES if f.endswith(".npy")}
        self.ngrams, self.ngram_items, self.bitmap = a["ngrams"], a["ngram_items"], a["bitmap"]
        self.short_prefix, self.short_full = np.array(a["short_prefix"]), np.array(a["short_full"])  # small
        self.short_len, self.short_items = np.array(a["short_len"]).astype(np.intp), np.array(a["short_items"])
        self.short_bitmap = np.array(a["short_bitmap"])
        self._bits = int(self.meta["bitmap_bits"])
        self._short_bits = int(self.meta["short_bitmap_bits"])
        self._items: list[tuple[str, str]] | None = None  # parsed on the first hit: most workers never need it

    @property
    def items(self) -> list[tuple[str, str]]:
        """(benchmark, item_id) of every item, by item number."""
        if self._items is None:
            self._items = [tuple(x) for x in json.loads((self.path / "items.json").read_text())]
        return self._items

    def _match_stream(self, wh: np.ndarray, doc: np.ndarray, rules: tuple[str, ...]
                      ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """Matched (doc, hash, item) arrays of a word-hash stream holding several documents back to back
        (`doc[i]` = document of word i, non-decreasing); n-grams that cross a document boundary are ignored."""
        ds, hs, its = [], [], []
        if len(wh) < self.m:
            return ds, hs, its
        prefix = np.concatenate([[_U64(0)], ngram_prefix(wh)])
        if "ngram" in rules and len(wh) >= self.n:
            starts = np.arange(len(wh) - self.n + 1)
            starts = starts[doc[starts] == doc[starts + self.n - 1]]
            h = hashes_at(prefix, starts, self.n)
            keep = _in_bitmap(self.bitmap, self._bits, h)
            if keep.any():
                qi, tp = _ranges(self.ngrams, h[keep])
                ds.append(doc[starts[keep][qi]])
                hs.append(self.ngrams[tp])
                its.append(self.ngram_items[tp].astype(np.int64))
        if "short" in rules and len(self.short_prefix):
            starts = np.arange(len(wh) - self.m + 1)
            h = hashes_at(prefix, starts, self.m)
            keep = _in_bitmap(self.short_bitmap, self._short_bits, h)
            starts = starts[keep]
            qi, tp = _ranges(self.short_prefix, h[keep])
            if len(qi):
                pos, L = starts[qi], self.short_len[tp]
                fits = pos + L <= len(wh)
                pos, L, tp = pos[fits], L[fits], tp[fits]
                fits = doc[pos] == doc[pos + L - 1]
                pos, L, tp = pos[fits], L[fits], tp[fits]
                full = (prefix[pos + L] - prefix[pos]) * ngram_ipow(len(prefix))[pos] + length_salts(L)
                ok = full == self.short_full[tp]
                ds.append(doc[pos[ok]])
                hs.append(full[ok])
                its.append(self.short_items[tp[ok]].astype(np.int64))
        return ds, hs, its

    def match_batch(self, texts: list[str], rules: tuple[str, ...] = RULES) -> list[dict[int, int]]:
        """`match` for many texts in one vectorised pass (per-call overhead dominates on short documents)."""
        wh, doc, lab = token_batch(texts).words()  # the `fold_words` stream, shared with the dedup step
        ds, hs, its = self._match_stream(wh, doc, rules)
        # second pass without labels for docs with a label letter other than "a" (rare in prose)
        strong = np.zeros(len(texts), bool)
        strong[doc[lab > ord("a")]] = True
        if strong.any():
            keep = strong[doc] & ~((lab > 0) | np.isin(wh, _PREFIX_WORDS))
            d2, h2, i2 = self._match_stream(wh[keep], doc[keep], rules)
            ds, hs, its = ds + d2, hs + h2, its + i2
        out: list[dict[int, int]] = [{} for _ in texts]
        if not hs or not sum(len(h) for h in hs):
            return out
        triples = np.unique(np.stack([np.concatenate(ds), np.concatenate(hs).view(np.int64), np.concatenate(its)]),
                            axis=1)  # distinct (doc, hash, item)
        pairs, counts = np.unique(triples[[0, 2]], axis=1, return_counts=True)
        for d, item, c in zip(pairs[0].tolist(), pairs[1].tolist(), counts.tolist()):
            out[d][item] = c
        return out

    def match(self, text: str, rules: tuple[str, ...] = RULES) -> dict[int, int]:
        """{item index: distinct matched hashes}; `rules` picks the n-gram and/or the short-item rule."""
        return self.match_batch([text], rules)[0]

    def _named(self, matched: dict[int, int], min_matches: int) -> list[dict]:
        out = [{"benchmark": self.items[k][0], "item_id": self.items[k][1], "n_matches": n}
               for k, n in matched.items() if n >= min_matches]
        return sorted(out, key=lambda r: (-r["n_matches"], r["benchmark"], r["item_id"]))

    def hits(self, text: str, min_matches: int = 1, rules: tuple[str, ...] = RULES) -> list[dict]:
        """[{benchmark, item_id, n_matches}] sorted by n_matches (desc), then benchmark and item id."""
        return self._named(self.match(text, rules), min_matches)

    def hits_batch(self, texts: list[str], min_matches: int = 1, rules: tuple[str, ...] = RULES) -> list[list[dict]]:
        return [self._named(m, min_matches) for m in self.match_batch(texts, rules)]


class DecontaminationStep(PipelineStep):
    """Stage-A step: mark kept docs that contain benchmark items as dropped (`contaminated`); yields every doc."""

    name = "🦠 decontaminate"
    type = "🦠 - DECONT"

    def __init__(self, cfg: DecontamConfig, index_path: str | Path, batch_bytes: int = 1 << 20):
        super().__init__()
        self.cfg = cfg
        self.index_path = str(index_path)
        self.batch_bytes = batch_bytes  # docs are matched in batches of about this much text
        self._index: DecontamIndex | None = None

    def _flush(self, batch: list) -> None:
        kept = [d for d in batch if d.metadata.get("status", "kept") == "kept"]
        if not kept:
            return
        with self.track_time():
            all_hits = self._index.hits_batch([d.text for d in kept], self.cfg.min_matches)
        for doc, hits in zip(kept, all_hits):
            if hits:
                meta = doc.metadata
                meta["status"], meta["reason"] = "dropped", "contaminated"
                meta["contamination"] = hits
                self.stat_update("contaminated")
                for b in {h["benchmark"] for h in hits}:
                    self.stat_update(f"contaminated:{b}")

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if self._index is None:
            self._index = DecontamIndex(self.index_path)
        for batch in batches_by_chars(data, self.batch_bytes):
            self._flush(batch)
            yield from batch
