"""Read every record of a source file, whatever its container and schema, and account for each one.

Containers are inferred from the file name: JSON lines (plain, .gz, .zst — Dolma's `.json.gz` is JSON lines too),
parquet, and a plain `.json` holding one JSON array (OpenHermes-2.5). Schemas (`format` in the spec):

- `text`:            `{text_key: str, id_key: ...}` (Dolma, DCLM, python-edu, DeepMind maths)
- `messages`:        `messages: [{role, content}]` (Tulu-3, UltraChat, Code-Feedback, synthetic GSM8K)
- `conversations`:   `conversations: [{from, value}]` (OpenHermes-2.5)
- `question_answer`: `question`, `answer` (WebInstructSub)

Conversations are rendered the way Instella did: every message's content, stripped, followed by "\n", no role tags.

Bad-input policy (documented in the README): a problem confined to one record (malformed JSON line, missing or
non-string text, empty text, non-UTF-8 bytes, a lone UTF-16 surrogate escape such as `"\\ud800"` ->
`invalid-unicode`) is a *counted skip*: the record becomes a `dropped` row in `documents` with its file, line and
reason, and the build goes on (`--strict` turns it into an error naming file and line). A UTF-8 byte-order mark
before the first record is ignored. A compressed stream that ends early keeps every record before the break and
records one `truncated-stream` row at the line where it broke. A file that cannot be parsed at all (corrupt parquet,
invalid JSON array, a `.gz`/`.zst` name on bytes that are not gzip/zstd) is a `SourceFileError` naming the file
(and line/column for JSON). Reading is linear in the input size, however long a line is.
"""
from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import fsspec.compression
import fsspec.utils

from pipelines.errors import SourceFileError
from pipelines.read.renderers import RENDERERS

try:  # orjson parses Dolma lines ~3x faster than json; optional, same results
    import orjson

    _loads = orjson.loads
    _JSONError: tuple[type[Exception], ...] = (orjson.JSONDecodeError,)
except ImportError:  # pragma: no cover
    _loads = json.loads
    _JSONError = (json.JSONDecodeError,)

try:
    import zstandard

    _STREAM_ERRORS: tuple[type[Exception], ...] = (EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError)
except ImportError:  # pragma: no cover
    _STREAM_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


# A row step (pipelines/read/rowfilters.py) sees parsed rows in batches before they become Records: it may add fields (text
# fetched from elsewhere) or return a Record for a row it turns into a counted skip (filtered-out, blob-missing).
RowTransform = Callable[[list[Any]], list[Any]]


@dataclass(slots=True)
class Record:
    """One input record: either readable (`text` set, `reason` None) or a counted skip (`reason` set)."""

    line: int  # 1-based line (JSON lines) or row/element index (parquet, JSON array)
    doc_id: str | None
    text: str | None
    reason: str | None = None
    detail: str = ""
    url: str | None = None
    # char spans of the text that are answers (assistant turns) — used by SFT packing for loss masks
    answer_spans: list[tuple[int, int]] = field(default_factory=list)


def container_of(path: str) -> str:
    name = path.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".json"):
        return "json"  # JSON lines or a JSON array, decided by the first byte
    return "jsonl"


def _render_turns(turns: list[tuple[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Instella's plain-text rendering: content.strip() + "\\n" per turn; spans of assistant turns."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for role, content in turns:
        piece = content.strip() + "\n"
        if role in ("assistant", "gpt"):
            spans.append((pos, pos + len(piece)))
        parts.append(piece)
        pos += len(piece)
    return "".join(parts), spans


def _turns(value: Any, role_key: str, content_key: str) -> list[tuple[str, str]] | str:
    """Extract (role, content) pairs or return a skip reason."""
    if value is None:
        return "missing-text"
    if not isinstance(value, list):
        return "non-string-text"
    turns = []
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get(content_key), str):
            return "non-string-text"
        turns.append((str(m.get(role_key, "")), m[content_key]))
    return turns


def to_text(rec: dict, fmt: str, text_key: str) -> tuple[str | None, str | None, list[tuple[int, int]]]:
    """(text, skip reason, answer spans) of one parsed record."""
    if fmt == "text":
        if text_key not in rec or rec[text_key] is None:
            return None, "missing-text", []
        text = rec[text_key]
        if not isinstance(text, str):
            return None, "non-string-text", []
        return text, None, []
    if fmt in ("messages", "conversations"):
        key, role, content = ("messages", "role", "content") if fmt == "messages" else ("conversations", "from", "value")
        turns = _turns(rec.get(key), role, content)
        if isinstance(turns, str):
            return None, turns, []
        text, spans = _render_turns(turns)
        return text, None, spans
    if fmt == "question_answer":
        q, a = rec.get("question"), rec.get("answer")
        if q is None or a is None:
            return None, "missing-text", []
        if not isinstance(q, str) or not isinstance(a, str):
            return None, "non-string-text", []
        text, spans = _render_turns([("user", q), ("assistant", a)])
        return text, None, spans
    if fmt in RENDERERS:  # dataset-specific schemas rendered as turns (pipelines/read/renderers.py)
        turns = RENDERERS[fmt](rec)
        if isinstance(turns, str):
            return None, turns, []
        text, spans = _render_turns(turns)
        return text, None, spans
    raise ValueError(f"unknown format {fmt!r}")


def _url_of(rec: dict) -> str | None:
    meta = rec.get("metadata")
    if isinstance(meta, dict):
        for k in ("url", "warc_url", "WARC-Target-URI"):
            if isinstance(meta.get(k), str):
                return meta[k]
    for k in ("url",):
        if isinstance(rec.get(k), str):
            return rec[k]
    rid = rec.get("id")
    if isinstance(rid, str) and rid.startswith(("http://", "https://")):
        return rid
    return None


UTF8_BOM = b"\xef\xbb\xbf"


def _unencodable(value: str | None) -> str | None:
    """Where `value` stops being encodable as UTF-8, or None. A JSON escape such as `"\\ud800"` parses (with the
    stdlib json) into a lone surrogate, which no UTF-8 writer (tokenizer, parquet) accepts. `isascii()` is O(1) in
    CPython, so the encode runs only for non-ASCII strings (cheaper than scanning every raw line for escapes)."""
    if value is None or value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"lone surrogate {value[e.start]!r} at char {e.start}"
    return None


def _make_record(rec: Any, line: int, fmt: str, text_key: str, id_key: str) -> Record:
    if not isinstance(rec, dict):
        return Record(line, None, None, "malformed-json", f"expected a JSON object, got {type(rec).__name__}")
    raw_id = rec.get(id_key)
    if raw_id is None and fmt == "messages":
        raw_id = rec.get("prompt_id")
    doc_id = str(raw_id) if raw_id is not None else None
    text, reason, spans = to_text(rec, fmt, text_key)
    if reason is None and not text.strip():
        reason = "empty-text"
    if reason:
        return Record(line, doc_id if not _unencodable(doc_id) else None, None, reason,
                      f"field '{text_key if fmt == 'text' else fmt}'")
    url = _url_of(rec)
    for name, value in (("text", text), ("id", doc_id), ("url", url)):
        if problem := _unencodable(value):
            return Record(line, None, None, "invalid-unicode", f"{name}: {problem}")
    return Record(line, doc_id, text, None, url=url, answer_spans=spans)


def _chunks(stream, chunk_size: int = 1 << 14) -> Iterator[bytes]:
    """Small reads: when a compressed stream breaks, only the chunk being read is lost."""
    while chunk := stream.read(chunk_size):
        yield chunk


def _zstd_chunks(raw, chunk_size: int = 1 << 16) -> Iterator[bytes]:
    """Decode (possibly multi-frame) zstd; zstandard's stream reader ends silently on a truncated frame, so check
    that the last frame was complete."""
    dctx = zstandard.ZstdDecompressor()
    dobj, mid_frame = dctx.decompressobj(), False
    while data := raw.read(chunk_size):
        while data:
            mid_frame = True
            if out := dobj.decompress(data):
                yield out
            data = b""
            if dobj.eof:
                mid_frame, data = False, dobj.unused_data
                dobj = dctx.decompressobj()
    if mid_frame:
        raise EOFError("zstd stream ended in the middle of a frame")


def split_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Split decoded chunks into lines in time linear in the input, however long a line is: the pieces of a
    line that spans many chunks are collected in a list and joined once (appending to one growing bytes object
    copies it on every chunk, which made a 50 MB line take 80 s)."""
    parts: list[bytes] = []
    for chunk in chunks:
        pieces = chunk.split(b"\n")
        if len(pieces) == 1:
            parts.append(chunk)
            continue
        parts.append(pieces[0])
        yield b"".join(parts)
        yield from pieces[1:-1]
        parts = [pieces[-1]] if pieces[-1] else []
    if parts:
        yield b"".join(parts)


def _transformed(enrich: RowTransform | None, rows: list[Any], line: int, fmt: str, text_key: str,
                 id_key: str) -> Iterator[Record]:
    """Records of consecutive rows starting at `line`, after the row step (if any)."""
    for i, rec in enumerate(enrich(rows) if enrich else rows):
        if isinstance(rec, Record):
            rec.line = line + i
            yield rec
        else:
            yield _make_record(rec, line + i, fmt, text_key, id_key)


def _iter_jsonl(chunks: Iterator[bytes], fmt: str, text_key: str, id_key: str,
                enrich: RowTransform | None = None) -> Iterator[Record]:
    line_no = 0
    try:
        for raw in split_lines(chunks):
            line_no += 1
            if line_no == 1 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM):]  # editors on Windows write one; it is not part of the record
            if not raw.strip():
                continue  # blank lines are not records
            try:
                raw.decode("utf-8")  # orjson would accept some invalid sequences via str(); be explicit
            except UnicodeDecodeError as e:
                yield Record(line_no, None, None, "invalid-utf8", f"byte {e.start}: {e.reason}")
                continue
            try:
                rec = _loads(raw)
            except _JSONError as e:
                reason = "invalid-unicode" if "surrogate" in str(e) else "malformed-json"
                yield Record(line_no, None, None, reason, str(e)[:200])
                continue
            if enrich is not None:
                yield from _transformed(enrich, [rec], line_no, fmt, text_key, id_key)
                continue
            yield _make_record(rec, line_no, fmt, text_key, id_key)
    except _STREAM_ERRORS as e:
        yield Record(line_no + 1, None, None, "truncated-stream", f"{type(e).__name__}: {e}"[:200])


def _iter_json_array(path: str, data: bytes, fmt: str, text_key: str, id_key: str,
                     enrich: RowTransform | None = None) -> Iterator[Record]:
    try:
        items = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise SourceFileError(f"{path}: not UTF-8 at byte {e.start}") from e
    except json.JSONDecodeError as e:
        raise SourceFileError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    if not isinstance(items, list):
        raise SourceFileError(f"{path}: expected a JSON array of records, got {type(items).__name__}")
    yield from _transformed(enrich, items, 1, fmt, text_key, id_key)


def _iter_parquet(path: str, fmt: str, text_key: str, id_key: str,
                  enrich: RowTransform | None = None) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        with fsspec.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            row = 0
            for batch in pf.iter_batches(batch_size=1024):
                rows = batch.to_pylist()
                yield from _transformed(enrich, rows, row + 1, fmt, text_key, id_key)
                row += len(rows)
    except (OSError, ValueError) as e:
        if isinstance(e, SourceFileError):
            raise
        raise SourceFileError(f"{path}: cannot read parquet: {e}") from e


# Leading bytes of each compressed container a file name can promise (the codec is inferred from the suffix). A file
# whose bytes do not match is an error naming it, rather than a "truncated" stream standing for its whole content.
_MAGIC: dict[str, tuple[str, tuple[bytes, ...]]] = {
    ".gz": ("gzip", (b"\x1f\x8b",)),
    ".zst": ("zstd", (b"\x28\xb5\x2f\xfd", *(bytes([0x50 + i]) + b"\x2a\x4d\x18" for i in range(16)))),
    ".bz2": ("bzip2", (b"BZh",)),
    ".xz": ("xz", (b"\xfd7zXZ\x00",)),
}


def _check_compression(path: str, raw) -> None:
    """Raise SourceFileError when the file name promises a codec its first bytes do not have; rewind `raw`."""
    suffix = next((s for s in _MAGIC if path.lower().endswith(s)), None)
    if suffix is None:
        return
    codec, magics = _MAGIC[suffix]
    head = raw.read(6)
    raw.seek(0)
    if head and not head.startswith(magics):
        raise SourceFileError(f"{path}: named {suffix} but is not {codec}-compressed (starts with {head[:4]!r}); "
                              f"rename or recompress it")


def _decompressed(path: str, raw):
    codec = fsspec.utils.infer_compression(path)
    return fsspec.compression.compr[codec](raw, mode="rb") if codec else raw


def iter_records(path: str, fmt: str = "text", text_key: str = "text", id_key: str = "id",
                 enrich: RowTransform | None = None) -> Iterator[Record]:
    """Yield one Record per input record of `path` (see the module docstring for the policy); `enrich` is the
    source's row step, if any."""
    kind = container_of(path)
    if kind == "parquet":
        yield from _iter_parquet(path, fmt, text_key, id_key, enrich)
        return
    try:
        with fsspec.open(path, "rb") as raw:
            _check_compression(path, raw)
            if path.lower().endswith(".zst"):
                yield from _iter_jsonl(_zstd_chunks(raw), fmt, text_key, id_key, enrich)
                return
            stream = _decompressed(path, raw)
            if kind == "json":
                data = stream.read()
                if data.startswith(UTF8_BOM):
                    data = data[len(UTF8_BOM):]
                if data.lstrip()[:1] == b"[":
                    yield from _iter_json_array(path, data, fmt, text_key, id_key, enrich)
                    return
                stream = io.BytesIO(data)
            yield from _iter_jsonl(_chunks(stream), fmt, text_key, id_key, enrich)
    except OSError as e:  # unreadable before any record (missing, permission, corrupt container header)
        raise SourceFileError(f"{path}: cannot read: {type(e).__name__}: {e}") from e
