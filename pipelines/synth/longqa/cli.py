"""CLI of the long-context work: `synth long-qa` (teacher-written QA over long documents)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from pipelines.errors import OptionError, StageFailed

console = Console()


def long_qa_cmd(
    input: Annotated[list[str], typer.Option(
        "--input", help="Source files/globs (hf://datasets/... mapped through --source-root, or local); repeatable.")],
    kind: Annotated[str, typer.Option(
        help="book: one QA about a 2K-8K-token sub-part, appended after the whole document; "
             "short: one QA per document, documents concatenated to --concat-min-tokens, one QA appended.")] = "book",
    name: Annotated[Optional[str], typer.Option(
        help="Output name: writes OUT/NAME.jsonl, NAME.dropped.jsonl, NAME.summary.json (default: the kind).")] = None,
    out: Annotated[Path, typer.Option(help="Output directory (a spec reads OUT/NAME.jsonl as a messages source).")] = Path("out/synth/long-qa"),
    source_root: Annotated[Optional[str], typer.Option(
        help="Map hf://datasets/<owner>/<repo>/<path> to DIR/<owner>/<repo>/<path> (e.g. ../shared/data/hub).")] = None,
    format: Annotated[str, typer.Option(help="Record schema of the inputs: text, messages, conversations, question_answer.")] = "text",
    text_key: Annotated[str, typer.Option(help="Field holding the text (format text).")] = "text",
    id_key: Annotated[str, typer.Option(help="Field holding the document id.")] = "id",
    tokenizer: Annotated[str, typer.Option(help="tokenizer.json path or name in ../shared/data/tokenizers.")] = "allenai/eleuther-ai-gpt-neox-20b-pii-special",
    server_type: Annotated[str, typer.Option(
        help="endpoint: a running OpenAI-compatible server at --endpoint-url; vllm: datatrove starts vLLM (GPUs).")] = "endpoint",
    endpoint_url: Annotated[Optional[str], typer.Option(
        help="Base URL of the teacher server, without /v1 (e.g. http://127.0.0.1:8000).")] = None,
    model: Annotated[str, typer.Option(help="Teacher model name (sent in requests; loaded by vllm).")] = "Qwen/Qwen2.5-14B-Instruct-1M",
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the endpoint's API key, if any.")] = "OPENAI_API_KEY",
    max_concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight at once.")] = 32,
    request_timeout: Annotated[float, typer.Option(help="Seconds one request may take before it counts as failed.")] = 600.0,
    max_attempts: Annotated[int, typer.Option(min=1, help="Attempts per document before it is dropped with the last reason.")] = 4,
    backoff: Annotated[float, typer.Option(min=0.0, help="Seconds before the 2nd attempt; doubles for each further one.")] = 2.0,
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for the server to answer /v1/models.")] = 60.0,
    temperature: Annotated[float, typer.Option(min=0.0, help="Teacher sampling temperature.")] = 0.7,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Teacher reply budget in tokens.")] = 512,
    tp: Annotated[int, typer.Option(min=1, help="Tensor parallel GPUs (vllm only).")] = 1,
    seed: Annotated[int, typer.Option(min=0, help="Seed for sub-part choice, grouping and the teacher's sampling.")] = 0,
    min_doc_tokens: Annotated[int, typer.Option(min=1, help="book: documents shorter than this are dropped.")] = 8192,
    max_doc_tokens: Annotated[int, typer.Option(min=1, help="book: documents are truncated to this (on a sentence end).")] = 131072,
    subpart_min_tokens: Annotated[int, typer.Option(min=1, help="book: smallest sub-part shown to the teacher.")] = 2048,
    subpart_max_tokens: Annotated[int, typer.Option(min=1, help="book: largest sub-part shown to the teacher.")] = 8192,
    short_context_tokens: Annotated[int, typer.Option(min=1, help="short: at most this much of a document goes to the teacher.")] = 8192,
    concat_min_tokens: Annotated[int, typer.Option(min=1, help="short: a sample holds documents until it has this many tokens.")] = 131072,
    force: Annotated[bool, typer.Option(help="Discard a finished or interrupted run of the same NAME and start over.")] = False,
) -> None:
    """Synthesise long-context QA samples with a teacher model (Instella-Long / ProLong recipe)."""
    from datatrove.pipeline.inference.types import ServerError

    from pipelines.build.context import display_uri
    from pipelines.build.spec import FORMATS, SAFE_NAME
    from pipelines.read.sources import resolve_source
    from pipelines.synth.longqa.generate import (
        InputSource,
        LongQAConfig,
        TeacherConfig,
        resolve_tokenizer,
        synthesize_long_qa,
    )

    for flag, value in (("--request-timeout", request_timeout), ("--ready-timeout", ready_timeout)):
        if not value > 0:
            raise OptionError(f"{flag} must be positive, got {value}")
    if format not in FORMATS:
        raise OptionError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if name is not None and not SAFE_NAME.fullmatch(name):
        raise OptionError(f"--name must be a plain file name (no '/' or '..'), got {name!r}")
    try:
        cfg = LongQAConfig(kind=kind, seed=seed, min_doc_tokens=min_doc_tokens, max_doc_tokens=max_doc_tokens,
                           subpart_min_tokens=subpart_min_tokens, subpart_max_tokens=subpart_max_tokens,
                           short_context_tokens=short_context_tokens, concat_min_tokens=concat_min_tokens)
        teacher = TeacherConfig(server_type=server_type, endpoint_url=endpoint_url, model=model,
                                api_key=os.environ.get(api_key_env), max_concurrency=max_concurrency,
                                request_timeout=request_timeout, max_attempts=max_attempts, backoff_s=backoff,
                                ready_timeout_s=ready_timeout, temperature=temperature,
                                max_new_tokens=max_new_tokens, seed=seed, tp=tp)
        tok = resolve_tokenizer(tokenizer)
    except (ValueError, FileNotFoundError) as e:
        raise OptionError(f"{e}")
    inputs = []
    for uri in input:
        resolved = resolve_source(uri, source_root)
        if not resolved.files:
            raise OptionError(f"--input {uri} matches no files (resolved as {resolved.resolved})")
        inputs += [InputSource(name=Path(uri).parent.name or uri, path=f, display=display_uri(f, source_root), fmt=format,
                               text_key=text_key, id_key=id_key) for f in resolved.files]
    try:
        res = synthesize_long_qa(inputs, out, name or kind, cfg, teacher, tok, force=force)
    except ServerError as e:
        raise StageFailed(f"teacher server: {e}") from e
    except ValueError as e:
        raise OptionError(f"{e}")
    s = res.summary
    t = Table(title=f"long-qa {s['name']} ({s['kind']}) → {res.samples_path}")
    t.add_column("what")
    t.add_column("count", justify="right")
    for key in ("documents_sent", "samples", "documents_in_samples", "sample_tokens", "dropped"):
        t.add_row(key, f"{s[key]:,}")
    for reason, n in sorted(s["dropped_by_reason"].items()):
        t.add_row(f"  dropped: {reason}", f"{n:,}")
    console.print(t)


def register(app: typer.Typer, synth_app: typer.Typer) -> None:
    synth_app.command("long-qa")(long_qa_cmd)
