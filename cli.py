"""midtrain command line: build mixtures, synthesise data, train, merge.

Each capability lives in its own module and registers its commands here, so this file stays a table of contents.
Errors reach the user through one handler (`exit_on_typed_errors`): an exception that carries an `exit_code` (every
`pipelines.errors.InputError`: 2; a failed build stage: 1; the trainer's checkpoint and option errors: 2) becomes
one line on stderr and that exit code; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import functools

import typer

import pipelines.commands
import pipelines.quality.cli
import pipelines.synth.gsm8k.cli
import pipelines.synth.longqa.cli
import trainer.cli
import trainer.hf_cli
import trainer.mix_cli

app = typer.Typer(
    help="midtrain: reproducible corpus builder and lean FSDP trainer for the Instella-3B recipe.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
synth_app = typer.Typer(help="Generate synthetic training data (GSM8K variants, long-context QA).", no_args_is_help=True)
app.add_typer(synth_app, name="synth")

# Modules exposing `register(app, synth_app)`; each adds its own commands.
COMMAND_MODULES = [
    pipelines.commands,
    pipelines.synth.gsm8k.cli,
    pipelines.synth.longqa.cli,
    trainer.cli,
    trainer.hf_cli,
    trainer.mix_cli,
    pipelines.quality.cli,
]


def exit_on_typed_errors(command):
    """Run a command; an error with an `exit_code` becomes `error: <message>` on stderr and that exit code."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except Exception as e:
            code = getattr(e, "exit_code", None)
            if not isinstance(code, int) or isinstance(e, (typer.Exit, typer.Abort)):
                raise
            message = str(e).strip() or type(e).__name__
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(code) from None

    return run


for _module in COMMAND_MODULES:
    _module.register(app, synth_app)
for _group in (app, synth_app):
    for _info in _group.registered_commands:
        _info.callback = exit_on_typed_errors(_info.callback)

if __name__ == "__main__":
    app()
