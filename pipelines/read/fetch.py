"""Fetch steps: a source whose rows are metadata, with the text stored elsewhere, keyed by a field of the row.

HuggingFaceTB/smollm-corpus `python-edu` is the case this exists for: its parquet holds `blob_id, repo_name, path,
length_bytes, score, int_score`, and each file's text is the gzip-compressed object
`s3://softwareheritage/content/{blob_id}` (anonymous access). The dataset card's own download snippet reads the
object, gunzips it and decodes it with `.decode("utf-8", errors="ignore")`, and drops rows whose object is gone
(`NoSuchKey`); this step does the same, as a counted `blob-missing` skip.

Spec (per source): `fetch: {uri: "s3://softwareheritage/content/{blob_id}", compression: gzip}` plus optional
`concurrency` (parallel requests per reader, default 32), `retries` (default 5, exponential backoff from `backoff`
seconds), `cache` (local content cache folder; default `$MIDTRAIN_FETCH_CACHE` or `~/.cache/midtrain/fetch`),
`encoding_errors` (default `ignore`, as the card) and `storage_options` (fsspec; s3 defaults to `anon: true`).
A row that already has text (a mirror that ships it, like ../shared/data/hub) is used as it is. The URI template goes
through `--source-map`, so `--source-map s3://softwareheritage/=DIR` reads blobs from a local copy.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import string
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from pipelines.errors import SourceFileError, SpecError
from pipelines.read.formats import Record

COMPRESSIONS = ("gzip", "none")


class FetchError(SourceFileError):
    """A blob could not be read after every retry (not a missing blob: that is a counted skip)."""


@dataclass(frozen=True)
class FetchConfig:
    uri: str  # template naming one row field, e.g. s3://softwareheritage/content/{blob_id}
    compression: str = "gzip"
    encoding_errors: str = "ignore"
    concurrency: int = 32
    retries: int = 5
    backoff: float = 0.5
    cache: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The row field the template names."""
        return _template_fields(self.uri)[0]

    @classmethod
    def from_spec(cls, raw: dict[str, Any]) -> FetchConfig:
        """Validate a spec's `fetch:` mapping; ValueError names the bad key."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise SpecError(f"unknown key(s) {unknown}; allowed: {sorted(known)}")
        if not isinstance(raw.get("uri"), str):
            raise SpecError("'uri' (a template such as s3://bucket/content/{blob_id}) is required")
        names = _template_fields(raw["uri"])
        if len(names) != 1:
            raise SpecError(f"'uri' must name exactly one row field in braces, got {raw['uri']!r}")
        if raw.get("compression", "gzip") not in COMPRESSIONS:
            raise SpecError(f"'compression' must be one of {list(COMPRESSIONS)}, got {raw['compression']!r}")
        for k in ("concurrency", "retries"):
            v = raw.get(k, 1)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if k == "concurrency" else 0):
                raise SpecError(f"'{k}' must be an integer >= {1 if k == 'concurrency' else 0}, got {v!r}")
        b = raw.get("backoff", 0.5)
        if isinstance(b, bool) or not isinstance(b, (int, float)) or b < 0:
            raise SpecError(f"'backoff' must be a number of seconds >= 0, got {b!r}")
        if raw.get("encoding_errors", "ignore") not in ("ignore", "replace", "strict"):
            raise SpecError(f"'encoding_errors' must be ignore, replace or strict, got {raw['encoding_errors']!r}")
        if not isinstance(raw.get("cache", ""), (str, type(None))):
            raise SpecError(f"'cache' must be a folder path, got {raw['cache']!r}")
        if not isinstance(raw.get("storage_options", {}), dict):
            raise SpecError("'storage_options' must be a mapping")
        return cls(**{**raw, "backoff": float(b)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _template_fields(template: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError:
        return []


def default_cache_dir() -> Path:
    env = os.environ.get("MIDTRAIN_FETCH_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "midtrain" / "fetch"


class BlobFetcher:
    """Row step: fill `text_key` of rows that lack it from the blob their key names, `concurrency` at a time."""

    def __init__(self, config: FetchConfig, resolved_uri: str, text_key: str, id_key: str):
        self.config = config
        self.resolved_uri = resolved_uri  # the template after --source-map
        self.text_key = text_key
        self.id_key = id_key
        remote = "://" in resolved_uri and not resolved_uri.startswith("file://")
        # a local mirror needs no cache; a remote store is read once per blob whatever the number of builds
        self.cache = (Path(config.cache) if config.cache else default_cache_dir()) if remote else None
        opts = dict(config.storage_options)
        if resolved_uri.startswith("s3://"):
            opts.setdefault("anon", True)
        self.storage_options = opts

    def __call__(self, rows: list[Any]) -> list[Any]:
        todo = [i for i, r in enumerate(rows) if isinstance(r, dict) and r.get(self.text_key) is None]
        if not todo:
            return rows
        out = list(rows)
        with ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(todo))) as pool:
            for i, result in zip(todo, pool.map(self._fill, (rows[i] for i in todo))):
                out[i] = result
        return out

    def _skip(self, row: dict, reason: str, detail: str) -> Record:
        raw_id = row.get(self.id_key)
        return Record(0, None if raw_id is None else str(raw_id), None, reason, detail)

    def _fill(self, row: dict) -> dict | Record:
        key = self.config.key
        value = row.get(key)
        if value is None or not isinstance(value, (str, int)):
            return self._skip(row, "missing-text", f"no text and no '{key}' to fetch it by")
        canonical = self.config.uri.format(**{key: value})
        data = self._read(self.resolved_uri.format(**{key: value}), canonical)
        if data is None:
            return self._skip(row, "blob-missing", canonical)
        if self.config.compression == "gzip":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError, zlib.error) as e:
                return self._skip(row, "blob-corrupt", f"{canonical}: {type(e).__name__}: {e}"[:200])
        try:
            text = data.decode("utf-8", errors=self.config.encoding_errors)
        except UnicodeDecodeError as e:
            return self._skip(row, "invalid-utf8", f"{canonical}: byte {e.start}")
        return {**row, self.text_key: text}

    def _cache_path(self, canonical: str) -> Path | None:
        if self.cache is None:
            return None
        h = hashlib.sha256(canonical.encode()).hexdigest()
        return self.cache / h[:2] / h

    def _read(self, uri: str, canonical: str) -> bytes | None:
        """The blob's stored bytes, None when it does not exist; transient errors are retried with backoff."""
        cached = self._cache_path(canonical)
        if cached is not None and cached.exists():
            return cached.read_bytes()
        delay = self.config.backoff
        for attempt in range(self.config.retries + 1):
            try:
                fs, path = fsspec.core.url_to_fs(uri, **self.storage_options)
                data = fs.cat_file(path)
                break
            except FileNotFoundError:
                return None
            except PermissionError as e:  # not transient: credentials or bucket policy
                raise FetchError(f"{canonical}: access denied ({e})") from e
            except Exception as e:  # network, throttling, 5xx: retried
                if attempt == self.config.retries:
                    raise FetchError(f"{canonical}: {type(e).__name__}: {e} (after {attempt + 1} attempts)") from e
                time.sleep(delay)
                delay *= 2
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f"{cached.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, cached)
        return data
