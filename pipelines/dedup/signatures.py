"""Deduplication across all sources of a mixture: exact, MinHash near-duplicate and URL.

Stage A (`DedupSignatureStep`, per input file) stores three keys per kept document: `text_hash` (the `fold_exact`
text: Unicode NFC, case and whitespace runs folded; digits, signs, operators and punctuation count), `minhash` (one
hash per LSH band of a MinHash signature over 5-gram shingles of `fold_tokens` tokens: words and symbol runs) and
`url`; both normalisations are documented in `pipelines/text.py`. Stage B (`find_duplicates`, once over every kept
document of the build) clusters them and keeps the lowest `key` (= first in build order) of each cluster; every
other member is dropped with `reason` = `exact-dup` | `url-dup` | `near-dup` and `duplicate_of` = the survivor's
doc_id.

Signatures are our own vectorised numpy MinHash, computed for a batch of documents at a time (see `bench/dedup.py`
for the measurement against datatrove's `MinhashDedupSignature` and datasketch).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import polars as pl
import xxhash
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from pipelines.errors import SpecError
from pipelines.stages import part_time
from pipelines.text import (
    batches_by_chars,
    fold_exact,
    hashes_at,
    mix64,
    ngram_prefix,
    token_hashes_batch,
)

_U64 = np.uint64
_U32 = np.uint32
_CHUNK = 4096  # shingles per block of the (shingles x hashes) matrix: keeps the temporary in cache


@dataclass(frozen=True)
class DedupConfig:
    """Spec `dedup:` mapping. Defaults: 20 bands x 8 rows, so P(pair caught) = 1 - (1 - J**8)**20 is 0.975 at
    Jaccard 0.8, 0.998 at 0.85, 0.30 at 0.6 and 0.01 at 0.4 (threshold ~ (1/20)**(1/8) = 0.69)."""

    exact: bool = True
    minhash: bool = True
    url: bool = True
    ngram: int = 5  # word n-gram shingles
    bands: int = 20
    rows: int = 8
    seed: int = 1
    # LSH only proposes candidates: a pair sharing one band is dropped only when its estimated Jaccard (the share
    # of equal signature values) reaches `threshold` (default: the bands x rows threshold (1/bands)**(1/rows),
    # 0.69 for 20 x 8). Without it, two short documents differing in one meaningful token (Jaccard 0.56) were
    # dropped ~17% of the time (issue 20). `verify: false` restores band-only decisions.
    threshold: float | None = None
    verify: bool = True
    # Tokenize after the global dedup (`pipelines.dedup.late_tokens`): a dropped duplicate is never tokenized, so
    # its `n_tokens` stays null in the manifest. Shards are the same bytes either way.
    tokenize_after: bool = False

    @classmethod
    def from_spec(cls, d: dict | bool | None) -> "DedupConfig | None":
        if d is None or d is False:
            return None
        if d is True:
            return cls()
        if not isinstance(d, dict):
            raise SpecError(f"dedup: expected a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SpecError(f"dedup: unknown key(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**d)
        for k in ("ngram", "bands", "rows"):
            if not isinstance(getattr(cfg, k), int) or getattr(cfg, k) < 1:
                raise SpecError(f"dedup.{k} must be a positive integer, got {getattr(cfg, k)!r}")
        if cfg.threshold is not None and (isinstance(cfg.threshold, bool) or not isinstance(cfg.threshold, (int, float))
                                          or not 0 < cfg.threshold <= 1):
            raise SpecError(f"dedup.threshold must be a number in (0, 1], got {cfg.threshold!r}")
        for k in ("verify", "tokenize_after"):
            if not isinstance(getattr(cfg, k), bool):
                raise SpecError(f"dedup.{k} must be true or false, got {getattr(cfg, k)!r}")
        if not (cfg.exact or cfg.minhash or cfg.url):
            return None
        return cfg

    @property
    def jaccard_threshold(self) -> float:
        """Estimated Jaccard a candidate pair needs to count as near duplicates."""
        return float(self.threshold) if self.threshold is not None else (1.0 / self.bands) ** (1.0 / self.rows)

    @property
    def verify_threshold(self) -> float | None:
        """The threshold candidates are confirmed against, None when `verify` is off (band-only decisions)."""
        return self.jaccard_threshold if self.verify and self.minhash else None

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    def p_caught(self, jaccard: float) -> float:
        """Probability that a pair with this Jaccard similarity shares at least one band."""
        return 1.0 - (1.0 - jaccard ** self.rows) ** self.bands

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.tokenize_after:  # off: the same dict (and hashes) as before the option existed
            del d["tokenize_after"]
        return d


class MinHasher:
    """k-permutation MinHash with multiply-add hashes on 32-bit values (h_k(x) = a_k * x + b_k mod 2**32, a_k odd;
    the minimum is decided by the top bits, which multiply-add mixes well), banded into one 64-bit hash per band.
    Works on a batch of texts at once: per-call numpy overhead, not arithmetic, dominates on short documents."""

    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        self.a = (rng.integers(0, 2**32, cfg.num_perm, dtype=np.uint64) | 1).astype(_U32)
        self.b = rng.integers(0, 2**32, cfg.num_perm, dtype=np.uint64).astype(_U32)
        # per-row multipliers to combine a band's `rows` values into one hash; band index salts it
        self.row_mult = rng.integers(0, 2**64, cfg.rows, dtype=np.uint64) | _U64(1)
        self.band_salt = rng.integers(0, 2**64, cfg.bands, dtype=np.uint64)
        self._buf = np.empty((cfg.num_perm, _CHUNK), _U32)

    def shingles(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(32-bit shingle hashes, text index of each, non-decreasing) of the `fold_tokens` n-grams of every text; a
        text shorter than `ngram` tokens is one shingle, a text without tokens none. Repeats are kept: they cannot
        change a minimum and removing them costs a sort."""
        n = self.cfg.ngram
        th, doc = token_hashes_batch(texts)
        counts = np.bincount(doc, minlength=len(texts))
        first = np.cumsum(counts) - counts
        prefix = np.concatenate([[_U64(0)], ngram_prefix(th)])
        starts = np.arange(max(0, len(th) - n + 1))
        starts = starts[doc[starts] == doc[starts + n - 1]]  # n-grams inside one text
        short = np.flatnonzero((counts > 0) & (counts < n))  # whole-text shingles
        sh = np.concatenate([hashes_at(prefix, starts, n), hashes_at(prefix, first[short], counts[short])])
        sh_doc = np.concatenate([doc[starts], short])
        order = np.argsort(sh_doc, kind="stable")
        return (sh[order] >> _U64(32)).astype(_U32), sh_doc[order]

    def signatures(self, shingles: np.ndarray, doc: np.ndarray, n_docs: int) -> np.ndarray:
        """uint32 [n_docs, num_perm] MinHash signatures (all ones-bits for a text without shingles)."""
        sig = np.full((n_docs, self.cfg.num_perm), np.iinfo(_U32).max, _U32)
        for i in range(0, len(shingles), _CHUNK):
            x, d = shingles[i:i + _CHUNK], doc[i:i + _CHUNK]
            buf = self._buf[:, : len(x)]  # (num_perm, shingles): each text's run of shingles is contiguous per row
            np.multiply(self.a[:, None], x[None, :], out=buf)
            buf += self.b[:, None]
            seg = np.flatnonzero(np.concatenate([[True], d[1:] != d[:-1]]))
            docs = d[seg]  # distinct, so the fancy-indexed update below is well defined
            sig[docs] = np.minimum(sig[docs], np.minimum.reduceat(buf, seg, axis=1).T)
        return sig

    def band_hashes(self, sig: np.ndarray) -> np.ndarray:
        """uint64 [n_docs, bands] from signatures [n_docs, num_perm]."""
        rows = sig.reshape(len(sig), self.cfg.bands, self.cfg.rows).astype(_U64)
        return mix64((rows * self.row_mult).sum(axis=2, dtype=_U64) ^ self.band_salt)

    def signatures_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(uint32 [n, num_perm] signatures, bool [n] whether the text has tokens)."""
        sh, doc = self.shingles(texts)
        return self.signatures(sh, doc, len(texts)), np.bincount(doc, minlength=len(texts)) > 0

    def bands_batch(self, texts: list[str]) -> list[np.ndarray | None]:
        """Band hashes of every text (None for a text without tokens)."""
        sh, doc = self.shingles(texts)
        bands = self.band_hashes(self.signatures(sh, doc, len(texts)))
        has = np.bincount(doc, minlength=len(texts)) > 0
        return [b if h else None for b, h in zip(bands, has.tolist())]


def exact_key(text: str) -> int:
    """Signed 64-bit hash of `fold_exact(text)`: the exact-dedup key."""
    return int(np.uint64(xxhash.xxh3_64_intdigest(fold_exact(text))).view(np.int64))


def normalize_url(url: str | None) -> str | None:
    if not isinstance(url, str):
        return None
    url = url.strip().split("#", 1)[0]
    if not url:
        return None
    scheme, sep, rest = url.partition("://")
    if sep:
        host, slash, path = rest.partition("/")
        url = f"{scheme.lower()}://{host.lower()}{slash}{path}"
    return url.rstrip("/") or None


def url_of(doc_id: str, meta: dict) -> str | None:
    """URL from the reader's `url`, a nested `metadata.url`, or a Dolma id that is a URL."""
    inner = meta.get("metadata")
    for cand in (meta.get("url"), inner.get("url") if isinstance(inner, dict) else None,
                 doc_id if isinstance(doc_id, str) and doc_id.startswith(("http://", "https://")) else None):
        u = normalize_url(cand)
        if u:
            return u
    return None


class DedupSignatureStep(PipelineStep):
    """Stage-A step: for kept docs set metadata `text_hash`, `minhash` (band hashes) and `url`; drops nothing."""

    name = "🫂 dedup signatures"
    type = "🫂 - DEDUP"

    def __init__(self, cfg: DedupConfig, batch_bytes: int = 1 << 20):
        super().__init__()
        self.cfg = cfg
        self.batch_bytes = batch_bytes  # docs are signed in batches of about this much text
        self._hasher: MinHasher | None = None

    def _flush(self, batch: list[Document]) -> None:
        kept = [d for d in batch if d.metadata.get("status", "kept") == "kept"]
        if not kept:
            return
        if self.cfg.minhash:
            # an exact copy of an earlier document (`copy_of`) is dropped as `exact-dup` before near-duplicate
            # candidates are made: its bands and signature could change nothing (pipelines.dedup.copies)
            originals = [d for d in kept if "copy_of" not in d.metadata]
            with part_time(self, "minhash"):
                if originals:
                    sig, has = self._hasher.signatures_batch([d.text for d in originals])
                    bands = self._hasher.band_hashes(sig)
                    for i, doc in enumerate(originals):
                        meta = doc.metadata
                        meta["minhash"] = bands[i].view(np.int64).tolist() if has[i] else None
                        # the whole signature, to confirm a candidate pair by its estimated Jaccard (global stages)
                        meta["minhash_sig"] = sig[i].tobytes() if has[i] else None
        with part_time(self, "exact keys"):
            for doc in kept:
                doc.metadata["text_hash"] = exact_key(doc.text)
        with part_time(self, "urls"):
            for doc in kept:
                doc.metadata["url"] = url_of(doc.id, doc.metadata)
        self.stat_update("signed", value=len(kept))

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if self._hasher is None:
            self._hasher = MinHasher(self.cfg)
        for batch in batches_by_chars(data, self.batch_bytes):
            self._flush(batch)
            yield from batch


def _first_of_group(df: pl.DataFrame, by: str, reason: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split df (sorted by key) into (survivors, dropped[key, reason, duplicate_of]) grouping on column `by`."""
    has = df.filter(pl.col(by).is_not_null())
    first = has.group_by(by).agg(pl.col("key").min().alias("_sk"), pl.col("doc_id").sort_by("key").first().alias("_sid"))
    j = has.join(first, on=by, how="left")
    dropped = j.filter(pl.col("key") != pl.col("_sk")).select(
        "key", pl.lit(reason).alias("reason"), pl.col("_sid").alias("duplicate_of"))
    return df.join(dropped.select("key"), on="key", how="anti"), dropped


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Share of equal MinHash values of signature pairs (uint32 [n, num_perm] each): an unbiased estimate of their
    Jaccard similarity (standard error sqrt(J(1-J)/num_perm), 0.04 at J 0.5 with 160 values)."""
    return (a == b).mean(axis=1)


def signature_matrix(values: list[bytes | None]) -> np.ndarray:
    """uint32 [n, num_perm] from the stored signature bytes (a missing one: a row that matches nothing)."""
    width = max((len(v) for v in values if v), default=0) // 4
    out = np.zeros((len(values), width), np.uint32)
    for i, v in enumerate(values):
        if v:
            out[i] = np.frombuffer(v, np.uint32)
        else:
            out[i] = np.arange(width, dtype=np.uint32) + np.uint32(i * 7919 + 1)  # never equal to a real one
    return out


def _near_dup_clusters(df: pl.DataFrame, threshold: float | None = None) -> pl.DataFrame:
    """Docs sharing any band hash are candidates; with `threshold` and signatures, a candidate pair links only when
    its estimated Jaccard reaches it; connected components are clusters; all but the lowest key drop."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    sig = df.filter(pl.col("minhash").is_not_null() & (pl.col("minhash").list.len() > 0)).select("key", "minhash")
    empty = pl.DataFrame(schema={"key": pl.Int64, "reason": pl.Utf8, "duplicate_of": pl.Utf8})
    if sig.height < 2:
        return empty
    bands = sig.with_columns(pl.int_ranges(pl.col("minhash").list.len()).alias("band")).explode("minhash", "band")
    groups = bands.group_by("band", "minhash").agg(pl.col("key").min().alias("root"), pl.col("key"))
    edges = groups.filter(pl.col("key").list.len() > 1).explode("key").filter(pl.col("key") != pl.col("root"))
    if edges.height == 0:
        return empty
    if threshold is not None and "minhash_sig" in df.columns:
        sigs = dict(zip(df["key"].to_list(), df["minhash_sig"].to_list()))
        a = signature_matrix([sigs.get(k) for k in edges["key"].to_list()])
        b = signature_matrix([sigs.get(k) for k in edges["root"].to_list()])
        edges = edges.filter(pl.Series(estimated_jaccard(a, b) >= threshold))
        if edges.height == 0:
            return empty
    ends = np.concatenate([edges["key"].to_numpy(), edges["root"].to_numpy()])
    nodes, inv = np.unique(ends, return_inverse=True)
    u, v = inv[: edges.height], inv[edges.height:]
    _, label = connected_components(coo_matrix((np.ones(len(u)), (u, v)), shape=(len(nodes),) * 2), directed=False)
    comp = pl.DataFrame({"key": nodes, "comp": label})
    comp = comp.with_columns(pl.col("key").min().over("comp").alias("_sk"))
    dropped = comp.filter(pl.col("key") != pl.col("_sk")).join(
        df.select(pl.col("key").alias("_sk"), pl.col("doc_id").alias("duplicate_of")), on="_sk", how="left")
    return dropped.select("key", pl.lit("near-dup").alias("reason"), "duplicate_of")


def find_duplicates(df: pl.DataFrame, cfg: DedupConfig | None) -> pl.DataFrame:
    """Docs to drop among kept docs df[key, doc_id, text_hash, minhash, url]: columns key, reason, duplicate_of.

    Order: exact, then URL, then near-duplicates among what is left; in each, the lowest key of a cluster survives,
    so the result depends only on the build order.
    """
    out_schema = {"key": pl.Int64, "reason": pl.Utf8, "duplicate_of": pl.Utf8}
    if cfg is None or df.height == 0:
        return pl.DataFrame(schema=out_schema)
    alive = df.sort("key")
    found: list[pl.DataFrame] = []
    if cfg.exact and "text_hash" in df.columns:
        alive, d = _first_of_group(alive, "text_hash", "exact-dup")
        found.append(d)
    if cfg.url and "url" in df.columns:
        alive, d = _first_of_group(alive, "url", "url-dup")
        found.append(d)
    if cfg.minhash and "minhash" in df.columns:
        found.append(_near_dup_clusters(alive, cfg.verify_threshold))
    found = [f.cast(out_schema) for f in found if f.height]
    return pl.concat(found).sort("key") if found else pl.DataFrame(schema=out_schema)
