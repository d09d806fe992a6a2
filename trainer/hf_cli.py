"""`cli.py import-hf` and `cli.py export-hf`: Hugging Face checkpoints in and out (trainer/hf.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from trainer.hf import DTYPES, FORMATS


def _fail(message: str) -> None:
    """A bad flag or checkpoint: cli.py's one handler prints it as one line with exit code 2."""
    from trainer.hf import HFFormatError

    raise HFFormatError(message)


def register(app: typer.Typer, synth_app: typer.Typer) -> None:
    @app.command("import-hf")
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

    @app.command("export-hf")
    def export_hf_cmd(
        run: Annotated[Path, typer.Argument(help="Run dir (its model.safetensors, else its latest checkpoint), "
                                            "checkpoint dir (step-N) or merged/exported dir.")],
        out: Annotated[Path, typer.Option(help="Output dir: config.json, model.safetensors, "
                                          "generation_config.json and tokenizer files.")],
        format: Annotated[str, typer.Option("--format", help=f"{' | '.join(FORMATS)}: transformers = "
                                            "OlmoeForCausalLM with one expert, loads in transformers / vLLM / "
                                            "lm-eval with no remote code; instella = Instella's released "
                                            "InstellaForCausalLM layout.")] = "transformers",
        tokenizer: Annotated[Optional[str], typer.Option(help="tokenizer.json path or name to ship (default: "
                                                         "the run's build tokenizer, else Instella's).")] = None,
        dtype: Annotated[str, typer.Option(help=f"Weight dtype: {' | '.join(DTYPES)}.")] = "float32",
    ) -> None:
        """Export a run's weights as a Hugging Face checkpoint (with tokenizer) for evaluation tools."""
        from trainer.hf import HFFormatError, export_hf, resolve_export_tokenizer

        if format not in FORMATS:
            _fail(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
        if dtype not in DTYPES:
            _fail(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if not run.is_dir():
            _fail(f"{run}: no such directory")
        try:
            tok = resolve_export_tokenizer(run, tokenizer)
            export_hf(run, out, format, tokenizer=tokenizer, dtype=dtype)
        except (FileNotFoundError, ValueError) as e:
            if isinstance(e, HFFormatError):
                raise
            raise HFFormatError(str(e)) from e
        typer.echo(f"exported {run} -> {out} ({format}, {dtype}); tokenizer {tok.path.name} from {tok.source}, "
                   f"EOS {tok.eos_id}, pad {tok.pad_id}")
