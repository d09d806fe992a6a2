"""Row steps of a source: what happens to its parsed rows before they become documents.

- `filter: {field: [values]}` keeps rows whose `field` has one of the values; the others are counted drops
  (`filtered-out`). Tülu-3's SFT mixture carries its subsets in a `source` field, so one parquet serves both the
  whole mixture (stage 2) and its persona instruction-following subset (long-sft).
- `fetch: {...}` fills the text of rows that only carry a key to it (pipelines/read/fetch.py).

The reader (`pipelines.read.formats.iter_records(..., enrich=...)`) hands rows in batches; a step returns a Record for a
row it turns into a counted skip and passes Records of earlier steps through.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.read.fetch import BlobFetcher, FetchConfig
from pipelines.read.formats import Record, RowTransform

if TYPE_CHECKING:
    from pipelines.read.remap import SourceMap


# Reasons that are a spec's selection, not bad input: `--strict` does not stop on them.
SELECTED_OUT = ("filtered-out",)


class RowFilter:
    def __init__(self, allowed: dict[str, list[Any]], id_key: str):
        self.allowed = allowed
        self.id_key = id_key

    def __call__(self, rows: list[Any]) -> list[Any]:
        out = []
        for row in rows:
            if isinstance(row, dict):
                for name, values in self.allowed.items():
                    if row.get(name) not in values:
                        raw_id = row.get(self.id_key)
                        row = Record(0, None if raw_id is None else str(raw_id), None, "filtered-out",
                                     f"{name}={row.get(name)!r}"[:200])
                        break
            out.append(row)
        return out


def task_fetch(fetch: dict | None, source_map: SourceMap) -> dict | None:
    """The fetch settings a reader task carries: a source's `fetch:`, plus the URI template after --source-map."""
    if fetch is None:
        return None
    config = FetchConfig.from_spec(fetch)
    return {**config.to_dict(), "resolved_uri": source_map.apply(config.uri)}


def row_transform(filter: dict | None, fetch: dict | None, text_key: str, id_key: str) -> RowTransform | None:
    """The row steps of a reader task (filter first: rows left out are never fetched), or None."""
    steps: list[RowTransform] = []
    if filter:
        steps.append(RowFilter(filter, id_key))
    if fetch:
        settings = dict(fetch)
        resolved = settings.pop("resolved_uri", settings["uri"])
        steps.append(BlobFetcher(FetchConfig(**settings), resolved, text_key, id_key))
    if not steps:
        return None

    def apply(rows: list[Any]) -> list[Any]:
        for step in steps:
            rows = step(rows)
        return rows

    return apply
