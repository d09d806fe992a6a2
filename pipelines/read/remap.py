"""`--source-map PREFIX=DIR`: read any URI scheme (hf://, s3://, https://, ...) from a local mirror instead.

A spec names its sources by their real, public URIs; tests and air-gapped clusters point those URIs at local copies
without editing the spec. The longest matching prefix wins, so `s3://softwareheritage/content/=A` can override
`s3://softwareheritage/=B`. `--source-root DIR` is the shortcut for `hf://datasets/=DIR`. The manifest records a
file read through a mapping under its canonical URI (the reverse mapping), so a mirror build and a real build
describe the same inputs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import OptionError

HF_DATASETS = "hf://datasets/"


class SourceMapError(OptionError):
    """A `--source-map` value is malformed; the message names the value."""


@dataclass(frozen=True)
class SourceMap:
    """(prefix, target) pairs; targets are local directories or other URIs."""

    pairs: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, items: list[str] | tuple[str, ...], source_root: str | None = None) -> SourceMap:
        """`PREFIX=DIR` items (repeatable) plus the `--source-root` shortcut; a local DIR is made absolute."""
        pairs: list[tuple[str, str]] = []
        if source_root:
            pairs.append((HF_DATASETS, _absolute(source_root)))
        for item in items:
            prefix, sep, target = item.partition("=")
            if not sep or not prefix or not target:
                raise SourceMapError(f"--source-map must be PREFIX=DIR (e.g. s3://softwareheritage/=/data/swh), got {item!r}")
            if "://" not in prefix:
                raise SourceMapError(f"--source-map prefix must be a URI prefix such as hf://datasets/ or s3://bucket/, got {prefix!r}")
            pairs.append((prefix, _absolute(target)))
        return cls(tuple(pairs))

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def apply(self, uri: str) -> str:
        """The location to open for `uri` (unchanged when no prefix matches)."""
        best = max((p for p in self.pairs if uri.startswith(p[0])), key=lambda p: len(p[0]), default=None)
        if best is None:
            return uri
        prefix, target = best
        rest = uri[len(prefix):]
        if "://" in target:
            return target.rstrip("/") + "/" + rest.lstrip("/")
        return str(Path(target) / rest) if rest else target

    def canonical(self, path: str) -> str | None:
        """The URI a mapped location stands for (the reverse of `apply`), or None when it is under no target."""
        local = path if "://" in path else os.path.abspath(path)
        best = None
        for prefix, target in self.pairs:
            t = target.rstrip("/") if "://" in target else target.rstrip(os.sep)
            sep = "/" if "://" in target else os.sep
            if local == t or local.startswith(t + sep):
                if best is None or len(t) > len(best[1]):
                    best = (prefix, t, sep)
        if best is None:
            return None
        prefix, t, sep = best
        rest = local[len(t):].lstrip(sep).replace(os.sep, "/")
        return prefix + rest if prefix.endswith("/") or not rest else prefix + "/" + rest


def _absolute(target: str) -> str:
    return target if "://" in target else str(Path(target).resolve())
