"""The source formats (spec key `format:`), the one registry of them: how a record becomes a document.

FORMATS are read by `formats.iter_records` (the container — JSON lines plain/gz/zst, parquet, a JSON array — is
inferred from the file name; renderers in `renderers.py`). EXTRA_FORMATS have readers of their own: `mds`
(pre-tokenized, `mds_source.py`), `chat` (turns for Instella's SFT template, `chat.py`) and `preference` (DPO
pairs of chosen / rejected message lists, `chat.py`); `ReadSourceFile`
dispatches to them through `read_extra`, and spec validation checks their `options` through
`validate_source_options`. To add a format: a renderer in renderers.py (text formats), or a reader module here plus an
entry in EXTRA_FORMATS and `read_extra`."""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from pipelines.read.renderers import RENDERERS

FORMATS: tuple[str, ...] = ("text", "messages", "conversations", "question_answer", *RENDERERS)
EXTRA_FORMATS: tuple[str, ...] = ("mds", "chat", "preference")

if TYPE_CHECKING:  # steps imports datatrove; spec validation must stay light
    from pipelines.read.formats import Record
    from pipelines.steps.tasks import FileTask


def validate_source_options(where: str, fmt: str, options: dict) -> None:
    """SpecError naming the spec file and field for bad `options` of an mds/chat source."""
    from pipelines.errors import SpecError

    if fmt == "mds":
        if not isinstance(options.get("tokenizer"), str):
            raise SpecError(f"{where}: field 'options.tokenizer' is required with format: mds — the tokenizer "
                            "(path or name) the input_ids were made with")
        for k in ("input_ids_key", "indices_key"):
            if k in options and not isinstance(options[k], str):
                raise SpecError(f"{where}: field 'options.{k}' must be a column name (str)")
    elif fmt == "chat":
        from pipelines.read.chat import validate_chat_options

        validate_chat_options(where, options)
    elif fmt == "preference":
        from pipelines.read.chat import validate_preference_options

        validate_preference_options(where, options)


def task_options(spec, source, build_tokenizer: str) -> dict | None:
    """The options a FileTask of `source` carries (None for formats.iter_records formats): an mds source's
    tokenizer resolved now, so a missing one is a SpecError before any work starts."""
    from pipelines.errors import SpecError

    if source.format not in EXTRA_FORMATS:
        return None
    options = {**source.options, "build_tokenizer": build_tokenizer}
    if source.format == "mds":
        import dataclasses

        try:
            options["tokenizer"] = dataclasses.replace(spec, tokenizer=options["tokenizer"]).resolve_tokenizer()
        except SpecError as e:
            raise SpecError(f"{spec.path}: source '{source.name}': field 'options.tokenizer': {e}") from e
        from pipelines.read.mds_source import mds_route

        if (spec.dedup is not None or spec.decontaminate is not None) and mds_route(options) == "import":
            # imported ids carry no text: exact dedup would see every document as the same empty string
            raise SpecError(f"{spec.path}: source '{source.name}': imported MDS ids have no text for "
                            "'dedup'/'decontaminate'; drop those fields or re-tokenize from another tokenizer")
    return options


def read_extra(task: "FileTask") -> "Iterator[Record]":
    options = task.options or {}
    if task.fmt == "mds":
        from pipelines.read.mds_source import iter_mds_records

        return iter_mds_records(task.path, task.source, options)
    if task.fmt == "preference":
        from pipelines.read.chat import iter_preference_records

        return iter_preference_records(task.path, task.id_key, options)
    from pipelines.read.chat import iter_chat_records

    return iter_chat_records(task.path, task.id_key, options)
