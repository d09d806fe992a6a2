"""`cli.py import-hf` and `cli.py export-hf`: Hugging Face checkpoints in and out (trainer/hf.py)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from trainer.hf import DTYPES, FORMATS


def _fail(message: str) -> None:
    """A bad flag or checkpoint: cli.py's one handler prints it as one line with exit code 2."""
    from trainer.hf import HFFormatError

    raise HFFormatError(message)


def import_hf_cmd(
    src: Annotated[Path, typer.Argument(help="Hugging Face checkpoint dir: Instella's released format "
                                        "(InstellaForCausalLM) or one written by export-hf.")],
    out: Annotated[Path, typer.Option(help="Output dir for model.safetensors + config.json in this project's "
                                      "layout; start a run from it with `train --init-from OUT`.")],
) -> None:
    """Convert a Hugging Face / Instella checkpoint into weights the trainer starts from."""
    from trainer.hf import HFFormatError, import_hf

    if not src.is_dir():
        _fail(f"{src}: no such directory")
    try:
        import_hf(src, out)
    except (FileNotFoundError, OSError) as e:
        raise HFFormatError(str(e)) from e
    typer.echo(f"imported {src} -> {out}/model.safetensors")

def export_hf_cmd(
    run: Annotated[Path, typer.Argument(help="Run dir (its model.safetensors, else its latest checkpoint), "
                                        "checkpoint dir (step-N) or merged/exported dir.")],
    out: Annotated[Path, typer.Option(help="Output dir: config.json, model.safetensors, "
                                      "generation_config.json and tokenizer files.")],
    format: Annotated[str, typer.Option("--format", help=f"{' | '.join(FORMATS)}: transformers = "
                                        "OlmoeForCausalLM with one expert, loads in transformers (4.x and 5.x) "
                                        "/ vLLM / lm-eval with no remote code; instella = Instella's released "
                                        "InstellaForCausalLM layout, which needs AMD's modeling_instella.py "
                                        "(trust_remote_code; hf_instella/ of AMD-AIG-AIMA/Instella asks "
                                        "transformers>=4.27, its imports (StaticCache) need >= 4.38 and it "
                                        "was released for 4.x) or vLLM's Instella support.")] = "transformers",
    tokenizer: Annotated[Optional[str], typer.Option(help="tokenizer.json path or name to ship (default: "
                                                     "the run's build tokenizer, else Instella's).")] = None,
    dtype: Annotated[Optional[str], typer.Option(help=f"Weight dtype: {' | '.join(DTYPES)} (default: "
                                                 "bfloat16 for models over 1B parameters, else float32).")] = None,
    chat_template: Annotated[Optional[bool], typer.Option(
        "--chat-template/--no-chat-template", help="Ship Instella's chat template (<|user|> / <|assistant|>) so "
        "apply_chat_template works (default: for SFT and DPO runs).")] = None,
    max_shard_size: Annotated[str, typer.Option(help="Largest weights file; bigger models are written as "
                                                "shards + model.safetensors.index.json.")] = "5GB",
) -> None:
    """Export a run's weights as a Hugging Face checkpoint (with tokenizer) for evaluation tools."""
    from trainer.hf import HFFormatError, export_hf, resolve_export_tokenizer

    if format not in FORMATS:
        _fail(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if dtype is not None and dtype not in DTYPES:
        _fail(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not run.is_dir():
        _fail(f"{run}: no such directory")
    try:
        tok = resolve_export_tokenizer(run, tokenizer)
        export_hf(run, out, format, tokenizer=tokenizer, dtype=dtype, chat_template=chat_template,
                  max_shard_size=max_shard_size)
        written = json.loads((out / "config.json").read_text())["dtype"]
    except (FileNotFoundError, ValueError, OSError) as e:
        if isinstance(getattr(e, "exit_code", None), int):  # HFFormatError, CheckpointError, DiskFullError
            raise
        raise HFFormatError(str(e)) from e
    typer.echo(f"exported {run} -> {out} ({format}, {written}); tokenizer {tok.path.name} from {tok.source}, "
               f"EOS {tok.eos_id}, pad {tok.pad_id}")


def register(app: typer.Typer, synth_app: typer.Typer) -> None:
    app.command("import-hf")(import_hf_cmd)
    app.command("export-hf")(export_hf_cmd)
