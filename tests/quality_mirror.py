"""Read every document of the shared mirror (all folders, all formats) for dedup/decontam tests and benches."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipelines.read.formats import iter_records

# schema of each mirror file that is not plain Dolma-style `text`
_FORMATS = {
    "allenai/tulu-3-sft-mixture": "messages", "HuggingFaceH4/ultrachat_200k": "messages",
    "m-a-p/Code-Feedback": "messages", "teknium/OpenHermes-2.5": "conversations",
    "TIGER-Lab/WebInstructSub": "question_answer",
}
_SUFFIXES = (".json.gz", ".json.zst", ".jsonl.gz", ".jsonl.zst", ".jsonl", ".parquet", ".json")


def mirror_files(hub: Path) -> list[tuple[str, str]]:
    """(path, format) of every data file under hub/, sorted."""
    out = []
    for p in sorted(hub.rglob("*")):
        if p.is_file() and p.name.endswith(_SUFFIXES):
            rel = p.relative_to(hub).as_posix()
            fmt = next((f for prefix, f in _FORMATS.items() if rel.startswith(prefix)), "text")
            out.append((str(p), fmt))
    return out


def iter_mirror_docs(hub: Path) -> Iterator[tuple[str, str, str]]:
    """(relative file, doc_id, text) of every readable record of the mirror."""
    for path, fmt in mirror_files(hub):
        rel = Path(path).relative_to(hub).as_posix()
        for rec in iter_records(path, fmt):
            if rec.text:
                yield rel, rec.doc_id if rec.doc_id is not None else f"{rel}:{rec.line}", rec.text
