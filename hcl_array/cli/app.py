"""`hcl`: train contrastive representations and diagnose their geometry."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="hcl",
    help="Hard-negative contrastive learning: train representations and diagnose neural vs dimensional collapse.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each command module registers itself on `app` (one line each, below).
from . import backends, train  # noqa: E402,F401  (hcl backends, hcl train)
from .analyze import analyze  # noqa: E402

app.command()(analyze)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
