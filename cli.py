"""midtrain command line: build mixtures, synthesise data, train, merge.

Each capability lives in its own module and registers its commands here, so this file stays a table of contents.
"""
from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    help="midtrain: reproducible corpus builder and lean FSDP trainer for the Instella-3B recipe.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
synth_app = typer.Typer(help="Generate synthetic training data (GSM8K variants, long-context QA).", no_args_is_help=True)
app.add_typer(synth_app, name="synth")

# Modules exposing `register(app, synth_app)`; each adds its own commands.
COMMAND_MODULES = [
    "pipelines.commands",
    "pipelines.synth.gsm8k.cli",
    "pipelines.synth.longqa.cli",
    "trainer.cli",
    "trainer.hf_cli",
    "pipelines.quality.cli",
]

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app, synth_app)

if __name__ == "__main__":
    app()
