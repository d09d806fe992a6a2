"""The first stage-A step: one Document per input record, unreadable records included as `dropped`.
"""
from __future__ import annotations

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from pipelines import _logging  # noqa: F401  (quiet datatrove console in every worker)
from pipelines.errors import SourceFileError
from pipelines.read.formats import iter_records
from pipelines.read.registry import EXTRA_FORMATS
from pipelines.read.rowfilters import SELECTED_OUT, row_transform
from pipelines.steps.tasks import FileTask


class ReadSourceFile(PipelineStep):
    """Emit one Document per record of file `tasks[rank]`, unreadable records included (status `dropped`)."""

    name = "📖 read source file"
    type = "📖 - READER"

    def __init__(self, tasks: list[FileTask], strict: bool = False):
        super().__init__()
        self.tasks = tasks
        self.strict = strict

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        task = self.tasks[rank]
        if task.fmt in EXTRA_FORMATS:
            from pipelines.read.registry import read_extra

            records = read_extra(task)
        else:
            rows = row_transform(task.filter, task.fetch, task.text_key, task.id_key)
            records = iter_records(task.path, task.fmt, task.text_key, task.id_key, enrich=rows)
        for rec in records:
            if rec.reason and self.strict and rec.reason not in SELECTED_OUT:  # a filter's choice is no bad input
                raise SourceFileError(f"{task.path}:{rec.line}: {rec.reason} ({rec.detail})")
            doc_id = rec.doc_id if rec.doc_id is not None else task.default_id(rec.line)
            meta = {
                "source": task.source, "file": task.display, "line": rec.line,
                "status": "dropped" if rec.reason else "kept", "reason": rec.reason, "detail": rec.detail,
                "n_chars": len(rec.text) if rec.text else 0, "n_copies": 0 if rec.reason else 1,
                # UTF-8 bytes of the text as read (held-out documents report them, for bits per byte)
                "n_bytes": len(rec.text.encode("utf-8", "surrogatepass")) if rec.text else 0,
                "url": rec.url,
            }
            if rec.answer_spans:
                meta["answer_spans"] = rec.answer_spans
            meta.update(getattr(rec, "extra", None) or {})  # tokens / turns from pipelines.read.registry readers
            self.stat_update("records")
            if rec.reason:
                self.stat_update(f"dropped:{rec.reason}")
            yield Document(text=rec.text or "", id=doc_id, metadata=meta)
