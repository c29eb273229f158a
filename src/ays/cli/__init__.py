"""The ``ays`` command.

Each subcommand lives in its own module of this package and is registered in
``_COMMANDS``; modules load only when their command runs, so ``ays --help`` is
quick. Every user-facing failure (an :class:`ays.AysError`, a malformed
argument) ends with exit code 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from ..validate import AysError

# command name -> (module, click command attribute, one-line help)
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "schedule": ("ays.cli.schedule", "schedule", "Print or export a heuristic, published or saved schedule."),
    "optimize": ("ays.cli.optimize", "optimize", "Optimise a schedule for a model, solver and step count."),
    "sample": ("ays.cli.sample", "sample", "Sample a model with a schedule and save or plot the samples."),
    "plot": ("ays.cli.plot", "plot", "Plot schedules on a log-sigma axis, with the KLUB of each interval."),
    "demo": ("ays.cli.demo", "demo", "The main job: optimise gmm-8x8 at 10 steps and compare with the heuristics."),
    "train": ("ays.cli.train", "train", "Train a small EDM denoiser on a named problem and save it."),
    "evaluate": ("ays.cli.evaluate", "evaluate", "Sample with schedules × solvers × steps and measure the samples."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS:
            return None
        module, attr, _ = _COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ays")
def cli() -> None:
    """ays: optimise the sampling schedule of a diffusion model (Align Your Steps)."""


def fail(message: str) -> None:
    """End the command with exit code 2 and one line on stderr."""
    click.echo(f"ays: error: {message}", err=True)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``ays`` script."""
    try:
        rv = cli.main(args=argv, prog_name="ays", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("ays: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("ays: interrupted", err=True)
        sys.exit(130)
    except click.UsageError as e:
        fail(e.format_message().replace("\n", " "))
    except click.ClickException as e:
        fail(e.format_message().replace("\n", " "))
    except AysError as e:
        fail(str(e).replace("\n", " "))
    except OSError as e:
        fail(f"{e.strerror or e}: {e.filename}" if getattr(e, "filename", None) else str(e))
    sys.exit(rv if isinstance(rv, int) else 0)
