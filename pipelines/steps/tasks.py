"""`FileTask`: one input file of one source, the unit of stage A (datatrove task rank = file index).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines import _logging  # noqa: F401  (quiet datatrove console in every worker)


@dataclass(frozen=True)
class FileTask:
    """One input file of one source; the datatrove task with the same rank processes it."""

    source: str
    path: str  # what is opened (after --source-root mapping)
    display: str  # what the manifest records (the canonical hf:// URI when read from a mirror)
    fmt: str
    text_key: str
    id_key: str
    sample: float
    relative: str = ""  # path relative to the source's root: unique within the source, so default ids never collide
    identity: str = ""  # size/mtime/ETag...: part of the stage-A cache key, so a file changed in place is re-read
    fetch: dict | None = None  # text fetched from elsewhere by a key of the row (pipelines/read/fetch.py)
    filter: dict | None = None  # keep only rows whose fields have these values (pipelines/read/rowfilters.py)
    options: dict | None = None  # the source's `options`, for the readers of EXTRA_FORMATS (mds, chat)

    def default_id(self, line: int) -> str:
        """Id of a record without one: `<source>/<path relative to the source root>:<line>`, unique in a build
        (source names are unique, and so are a source's relative paths)."""
        return f"{self.source}/{self.relative or Path(self.path).name}:{line}"
