"""`hcl`: train contrastive representations and diagnose their geometry."""

from __future__ import annotations

import typer

from .analyze import analyze
from .backends import backends_command
from .reproduce import reproduce_command
from .train import train_command

app = typer.Typer(
    name="hcl",
    help="Hard-negative contrastive learning: train representations and diagnose neural vs dimensional collapse.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# The commands are plain functions in their own modules, registered here: this module imports them,
# never the reverse, so the CLI has no import cycle.
app.command("train")(train_command)
app.command("analyze")(analyze)
app.command("backends")(backends_command)
app.command("reproduce")(reproduce_command)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
