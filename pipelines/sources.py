"""Resolve a source URI (hf://, s3://, local) to the list of files it matches, through fsspec."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import fsspec

HF_PREFIX = "hf://datasets/"


@dataclass(frozen=True)
class ResolvedSource:
    uri: str  # as written in the spec
    resolved: str  # after --source-root mapping
    files: tuple[str, ...]  # sorted, fsspec-openable paths


def map_uri(uri: str, source_root: str | None) -> str:
    """`hf://datasets/<owner>/<repo>/<path>` -> `<source_root>/<owner>/<repo>/<path>` when a root is given."""
    if source_root and uri.startswith(HF_PREFIX):
        return str(Path(source_root) / uri[len(HF_PREFIX):])
    return uri


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def resolve_source(uri: str, source_root: str | None = None) -> ResolvedSource:
    """List the files of a source; a URI matching nothing gives an empty tuple (a reported condition, not a crash)."""
    resolved = map_uri(uri, source_root)
    fs, path = fsspec.core.url_to_fs(resolved)
    if _has_magic(path):
        matches = fs.glob(path)
    elif fs.isdir(path):
        matches = fs.find(path)
    elif fs.exists(path):
        matches = [path]
    else:
        matches = []
    files = sorted(m for m in matches if not fs.isdir(m) and not Path(m).name.startswith(".") and not m.endswith(".md"))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol not in ("file", "local"):
        files = [f"{protocol}://{f}" for f in files]
    return ResolvedSource(uri=uri, resolved=resolved, files=tuple(files))
