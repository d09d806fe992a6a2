"""Resolve a source URI (hf://, s3://, local) to the list of files it matches, through fsspec.

Each file comes with its path relative to the source's root (the URI up to its first glob component, the directory
it names, or the parent of the single file it names) — unique within a source, so default document ids built from it
never collide — and an identity (size, mtime, ETag, ... as the filesystem reports them) that keys the stage-A cache,
so a file changed in place is read again.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

import fsspec

HF_PREFIX = "hf://datasets/"

# Metadata keys that change when a file's content does, as local, S3, GCS, Azure and the HF hub report them.
IDENTITY_KEYS = ("size", "mtime", "ETag", "etag", "LastModified", "last_modified", "generation", "md5Hash",
                 "content_md5", "blob_id", "lfs", "sha256", "last_commit")


@dataclass(frozen=True)
class ResolvedSource:
    uri: str  # as written in the spec
    resolved: str  # after --source-root mapping
    files: tuple[str, ...]  # sorted, fsspec-openable paths
    relative: tuple[str, ...] = ()  # files[i] relative to the source's root (posix separators)
    identities: tuple[str, ...] = ()  # files[i]'s identity: its metadata that changes with its content


def map_uri(uri: str, source_root: str | None) -> str:
    """`hf://datasets/<owner>/<repo>/<path>` -> `<source_root>/<owner>/<repo>/<path>` when a root is given."""
    if source_root and uri.startswith(HF_PREFIX):
        return str(Path(source_root) / uri[len(HF_PREFIX):])
    return uri


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def _static_root(path: str) -> str:
    """The directory part of a glob before its first wildcard component."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if _has_magic(part):
            return "/".join(parts[:i])
    return posixpath.dirname(path)


def file_identity(info: dict) -> str:
    """A string that changes when the file's content does (stage-A cache key), from fsspec `info()`."""
    return " ".join(f"{k}={info[k]}" for k in IDENTITY_KEYS if info.get(k) is not None)


def resolve_source(uri: str, source_root: str | None = None) -> ResolvedSource:
    """List the files of a source; a URI matching nothing gives an empty tuple (a reported condition, not a crash)."""
    resolved = map_uri(uri, source_root)
    fs, path = fsspec.core.url_to_fs(resolved)
    path = path.rstrip("/") or path
    if _has_magic(path):
        infos, root = fs.glob(path, detail=True), _static_root(path)
    elif fs.isdir(path):
        infos, root = fs.find(path, detail=True), path
    elif fs.exists(path):
        infos, root = {path: fs.info(path)}, posixpath.dirname(path)
    else:
        infos, root = {}, path
    names = sorted(m for m, info in infos.items()
                   if info.get("type") != "directory" and not Path(m).name.startswith(".") and not m.endswith(".md"))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"
    return ResolvedSource(
        uri=uri, resolved=resolved, files=tuple(prefix + m for m in names),
        relative=tuple(posixpath.relpath(m, root) if root else m for m in names),
        identities=tuple(file_identity(infos[m]) for m in names))
