"""`python cli.py synth gsm8k`: synthetic GSM8K variants (symbolic, no model; or llm, Instella's procedure)."""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from pipelines.resources import shared_data_dir

# the shared data folder beside the checkout (defaults must not depend on the working directory)
SHARED = shared_data_dir()


class Mode(str, Enum):
    symbolic = "symbolic"
    llm = "llm"


def gsm8k(
    input: Path = typer.Option(SHARED / "gsm8k/train.jsonl", "--input", help="GSM8K train JSONL (question, answer)."),
    out: Path = typer.Option(Path("out/synth/gsm8k"), "--out", help="Output folder: *.jsonl shards + report.json."),
    mode: Mode = typer.Option(Mode.symbolic, "--mode", help="symbolic: offline program abstraction; "
                                                           "llm: Instella's procedure through a model server."),
    variants: int = typer.Option(50, "--variants", min=1, help="Variants wanted per train problem "
                                                               "(50 reaches Instella's ~28.5M tokens)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed; the output depends only on seed and input."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes (symbolic mode); output is identical."),
    spread: float = typer.Option(2.0, "--spread", min=1.1, help="New values lie within [x/spread, x*spread]."),
    test: Path = typer.Option(SHARED / "gsm8k/test.jsonl", "--test",
                              help="GSM8K test JSONL: variants sharing a word 13-gram with it are dropped."),
    tokenizer: Path = typer.Option(SHARED / "tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json",
                                   "--tokenizer", help="Tokenizer JSON used to count output tokens in the report."),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N train rows (smoke runs)."),
    server_type: str = typer.Option("endpoint", "--server-type",
                                    help="llm mode: datatrove server type (endpoint, vllm, sglang)."),
    model: str = typer.Option("Qwen/Qwen2.5-72B-Instruct", "--model", help="llm mode: model name or path."),
    endpoint_url: str = typer.Option(None, "--endpoint-url",
                                     help="llm mode: OpenAI-compatible base URL (server type endpoint)."),
    api_key: str = typer.Option(None, "--api-key", envvar="OPENAI_API_KEY", help="llm mode: endpoint API key."),
    concurrency: int = typer.Option(64, "--concurrency", min=1, help="llm mode: concurrent generations."),
    program_tries: int = typer.Option(5, "--program-tries", min=1,
                                      help="llm mode: program generations per problem before giving up."),
) -> None:
    """Turn GSM8K train problems into parameterised programs and resample verified new problems."""
    if not input.is_file():
        raise typer.BadParameter(f"input file not found: {input}", param_hint="--input")
    if not tokenizer.is_file():
        raise typer.BadParameter(f"tokenizer file not found: {tokenizer}", param_hint="--tokenizer")
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} exists and is not a directory", param_hint="--out")
    test_path = test if test.is_file() else None
    if test_path is None:
        typer.echo(f"warning: {test} not found; variants are not checked against GSM8K test", err=True)
    if mode is Mode.symbolic:
        from .symbolic import SymbolicConfig, run_symbolic

        report = run_symbolic(input, out, SymbolicConfig(variants=variants, seed=seed, spread=spread,
                                                         workers=workers), test_path, tokenizer, limit)
    else:
        from .llm import LLMConfig, run_llm
        from .sandbox import SandboxUnavailable

        try:
            report = run_llm(input, out, LLMConfig(server_type=server_type, model=model, endpoint_url=endpoint_url,
                                                   api_key=api_key, variants=variants, seed=seed,
                                                   concurrency=concurrency, program_tries=program_tries),
                             test_path, tokenizer, limit)
        except SandboxUnavailable as e:  # generated programs are never run without isolation
            typer.echo(f"error: the program sandbox cannot be set up on this machine: {e}", err=True)
            raise typer.Exit(2)
    keys = ["problems", "problems_abstracted", "abstraction_rate", "variants_emitted", "tokens", "seconds"]
    typer.echo(json.dumps({k: report.get(k) for k in keys}))
    typer.echo(f"wrote {out}/report.json")


def register(app: typer.Typer, synth_app: typer.Typer) -> None:
    synth_app.command("gsm8k")(gsm8k)
