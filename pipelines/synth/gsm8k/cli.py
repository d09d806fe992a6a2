"""`python cli.py synth gsm8k`: synthetic GSM8K variants (symbolic, no model; or llm, Instella's procedure)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipelines.errors import OptionError
from pipelines.resources import shared_data_dir

# the shared data folder beside the checkout (defaults must not depend on the working directory)
SHARED = shared_data_dir()


class Mode(str, Enum):
    symbolic = "symbolic"
    llm = "llm"


def gsm8k(
    input: Annotated[Path, typer.Option("--input", help="GSM8K train JSONL (question, answer).")] = SHARED
    / "gsm8k/train.jsonl",
    out: Annotated[Path, typer.Option("--out", help="Output folder: *.jsonl shards + report.json.")] = Path(
        "out/synth/gsm8k"
    ),
    mode: Annotated[
        Mode,
        typer.Option(
            "--mode", help="symbolic: offline program abstraction; llm: Instella's procedure through a model server."
        ),
    ] = Mode.symbolic,
    variants: Annotated[
        int,
        typer.Option(
            "--variants", min=1, help="Variants wanted per train problem (50 reaches Instella's ~28.5M tokens)."
        ),
    ] = 50,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed; the output depends only on seed and input.")] = 0,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Processes (symbolic mode); output is identical.")
    ] = 1,
    spread: Annotated[
        float, typer.Option("--spread", min=1.1, help="New values lie within [x/spread, x*spread].")
    ] = 2.0,
    test: Annotated[
        Path, typer.Option("--test", help="GSM8K test JSONL: variants sharing a word 13-gram with it are dropped.")
    ] = SHARED / "gsm8k/test.jsonl",
    tokenizer: Annotated[
        Path, typer.Option("--tokenizer", help="Tokenizer JSON used to count output tokens in the report.")
    ] = SHARED / "tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json",
    limit: Annotated[
        Optional[int], typer.Option("--limit", min=1, help="Only the first N train rows (smoke runs).")
    ] = None,
    server_type: Annotated[
        str, typer.Option("--server-type", help="llm mode: datatrove server type (endpoint, vllm, sglang).")
    ] = "endpoint",
    model: Annotated[
        str, typer.Option("--model", help="llm mode: model name or path.")
    ] = "Qwen/Qwen2.5-72B-Instruct",
    endpoint_url: Annotated[
        Optional[str],
        typer.Option("--endpoint-url", help="llm mode: OpenAI-compatible base URL (server type endpoint)."),
    ] = None,
    api_key: Annotated[
        Optional[str], typer.Option("--api-key", envvar="OPENAI_API_KEY", help="llm mode: endpoint API key.")
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="llm mode: concurrent generations.")] = 64,
    program_tries: Annotated[
        int,
        typer.Option("--program-tries", min=1, help="llm mode: program generations per problem before giving up."),
    ] = 5,
) -> None:
    """Turn GSM8K train problems into parameterised programs and resample verified new problems."""
    if not input.is_file():
        raise OptionError(f"--input: input file not found: {input}")
    if not tokenizer.is_file():
        raise OptionError(f"--tokenizer: tokenizer file not found: {tokenizer}")
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out: {out} exists and is not a directory")
    test_path = test if test.is_file() else None
    if test_path is None:
        typer.echo(f"warning: {test} not found; variants are not checked against GSM8K test", err=True)
    if mode is Mode.symbolic:
        from .symbolic import SymbolicConfig, run_symbolic

        report = run_symbolic(
            input,
            out,
            SymbolicConfig(variants=variants, seed=seed, spread=spread, workers=workers),
            test_path,
            tokenizer,
            limit,
        )
    else:
        from .llm import LLMConfig, run_llm
        from .sandbox import SandboxUnavailable

        try:
            report = run_llm(
                input,
                out,
                LLMConfig(
                    server_type=server_type,
                    model=model,
                    endpoint_url=endpoint_url,
                    api_key=api_key,
                    variants=variants,
                    seed=seed,
                    concurrency=concurrency,
                    program_tries=program_tries,
                ),
                test_path,
                tokenizer,
                limit,
            )
        except SandboxUnavailable as e:  # generated programs are never run without isolation
            raise OptionError(f"the program sandbox cannot be set up on this machine: {e}") from e
    keys = ["problems", "problems_abstracted", "abstraction_rate", "variants_emitted", "tokens", "seconds"]
    typer.echo(json.dumps({k: report.get(k) for k in keys}))
    typer.echo(f"wrote {out}/report.json")


def register(app: typer.Typer, synth_app: typer.Typer) -> None:
    synth_app.command("gsm8k")(gsm8k)
