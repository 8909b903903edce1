"""`hcl backends`: which backends are installed, their versions and devices (a rich table)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..backends import BACKENDS, available_backends, get_backend


def backends_command() -> None:
    """List the array backends: installed or not (with the pip extra to install), version and devices."""
    table = Table(title="hcl-array backends")
    for column in ("backend", "status", "version", "devices"):
        table.add_column(column)
    for name, problem in available_backends().items():
        if problem is None:
            backend = get_backend(name)
            devices = backend.devices()
            table.add_row(name, "[green]installed[/]", backend.version(), ", ".join(devices) or "[yellow]no device[/]")
        else:
            extra = BACKENDS[name][3]
            table.add_row(name, "[red]missing[/]", "-", escape(f"pip install '{extra}'"))
    Console().print(table)
