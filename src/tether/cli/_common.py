"""What every command shares: finding the registry, --json, errors, rendering."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from functools import wraps
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from .._errors import TetherError
from .._metadata.clock import parse_iso
from .._registry.registry import Registry

F = TypeVar("F", bound=Callable[..., Any])

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class State:
    """Options given before the command (``tether --registry X versions ...``)."""

    def __init__(self, registry_uri: str | None) -> None:
        self.registry_uri = registry_uri
        self._registry: Registry | None = None

    def registry(self) -> Registry:
        if self._registry is None:
            import tether

            # An http(s):// URI gives a server client with the same interface.
            self._registry = tether.open(self.registry_uri)
        return self._registry

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()


def registry_from(ctx: click.Context) -> Registry:
    state = ctx.find_object(State)
    assert state is not None
    return state.registry()


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of tables."
)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


def handle_errors(func: F) -> F:
    """Turn Tether errors into a message and exit code 1, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except TetherError as error:
            if kwargs.get("as_json"):
                emit_json(error.to_dict())
            else:
                err_console.print(f"[bold red]error:[/] {error.message}", markup=True)
                if error.hint:
                    err_console.print(f"  [dim]hint:[/] {error.hint}", markup=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def table(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None
) -> Table:
    grid = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False)
    for column in columns:
        grid.add_column(column, overflow="fold")
    for row in rows:
        grid.add_row(*("" if cell is None else str(cell) for cell in row))
    return grid


def ago(iso: str | None) -> str:
    """'3m ago' style ages for tables."""
    if not iso:
        return ""
    seconds = (datetime.now(UTC) - parse_iso(iso)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{max(int(seconds), 0)}s ago"


def human_bytes(size: float | None) -> str:
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def fmt_metrics(metrics: dict[str, Any], limit: int = 3) -> str:
    items = list(metrics.items())[:limit]
    text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items)
    return text + (" …" if len(metrics) > limit else "")
