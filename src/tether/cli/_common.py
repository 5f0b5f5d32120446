"""What every command shares: finding the registry, --json, errors, rendering."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from .._errors import TetherError
from .._humanize import printable as printable

if TYPE_CHECKING:
    from rich.console import Console

    from .._registry.registry import Registry

F = TypeVar("F", bound=Callable[..., Any])


class _LazyConsole:
    """A rich Console made on first use, so commands that print nothing never import rich."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


console = cast("Console", _LazyConsole(highlight=False, soft_wrap=True))
err_console = cast("Console", _LazyConsole(stderr=True, highlight=False, soft_wrap=True))


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


def fail(
    message: str, *, hint: str | None = None, code: str = "tether_error", as_json: bool = False
) -> None:
    """Report an error in the one shape every command uses, and exit 1.

    Text: ``error: MESSAGE`` and ``  hint: HINT`` on stderr. With --json: the
    object ``{"error": CODE, "message": ..., "hint": ...}`` on stdout.
    """
    if as_json:
        emit_json({"error": code, "message": message, "hint": hint})
    else:
        # A server's words, perhaps: its escape sequences erased this line and drew
        # another (a review), so they are shown escaped, like every registry value.
        err_console.print(f"[bold red]error:[/] {shown(message)}", markup=True)
        if hint:
            err_console.print(f"  [dim]hint:[/] {shown(hint)}", markup=True)
    sys.exit(1)


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


#: A TCP port to listen on: uvicorn took 99999 and listened somewhere else (a review).
PORT = click.IntRange(1, 65535)
#: A count or an id that the database can hold (a 20-digit number was an OverflowError
#: from SQLite, a traceback: a review) ...
COUNT = click.IntRange(1, 2**63 - 1)
#: ... or 0 where it means "all".
COUNT_OR_ALL = click.IntRange(0, 2**63 - 1)


def handle_errors(func: F) -> F:
    """Turn Tether errors into a message and exit code 1, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        try:
            return func(*args, **kwargs)
        except TetherError as error:
            fail(error.message, hint=error.hint, code=error.code, as_json=as_json)
        except click.UsageError:
            raise  # click prints the usage line with it
        except click.ClickException as error:
            fail(error.format_message(), code="error", as_json=as_json)
        except OSError as error:
            # A folder where a file was expected, a name too long, a full disk: say which.
            where = f" ({error.filename})" if error.filename else ""
            fail(f"{error.strerror or error}{where}", code="os_error", as_json=as_json,
                 hint="check the path and that there is room and permission to write there")
        except Exception as error:
            # The database itself failing (a damaged or missing SQLite file, a read-only
            # mount, a PostgreSQL that refuses): SQLAlchemy's own traceback on every
            # command (a review). Matched by module: sqlalchemy is not imported here.
            if not type(error).__module__.startswith("sqlalchemy"):
                raise
            cause = getattr(error, "orig", None) or error
            fail(f"the registry's database could not be used: "
                 f"{type(cause).__name__}: {str(cause).splitlines()[0][:300]}",
                 code="database_error", as_json=as_json,
                 hint="check --registry / TETHER_URI, that the database exists and may be "
                 "written here, and that it is a Tether registry's; restore a damaged one "
                 "from a backup")

    return wrapper  # type: ignore[return-value]


#: Characters a terminal acts on rather than shows: C0 and C1 controls (a newline, too,
#: would draw a row of its own), DEL, and the bidirectional overrides and isolates that
#: reorder what is shown.
def shown(value: Any) -> str:
    """A registry's text for ``console.print``: control characters and markup escaped."""
    from rich.markup import escape

    return escape(printable(value))


def table(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None
) -> Any:
    """Columns for ``console.print``: a rich table on a terminal, else plain aligned
    text that never wraps or cuts a value (digests and emails stay whole for grep).

    A cell is shown as text, never read as markup, and with its control characters
    escaped (``printable``); one that should be styled is a ``rich.text.Text`` (its
    style shows on a terminal, its plain text elsewhere)."""
    from rich.text import Text

    styled = [[cell if isinstance(cell, Text) else Text(printable(cell)) for cell in row]
              for row in rows]
    cells = [[cell.plain for cell in row] for row in styled]
    if not console.is_terminal:
        widths = [
            max([len(column), *(len(row[i]) for row in cells if i < len(row))])
            for i, column in enumerate(columns)
        ]
        lines = [title] if title else []
        for row in [[str(column) for column in columns], *cells]:
            padded = [value.ljust(widths[i]) for i, value in enumerate(row)]
            lines.append("  ".join(padded).rstrip())
        return Text("\n".join(lines), no_wrap=True, overflow="ignore")
    from rich.table import Table

    grid = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False)
    for column in columns:
        grid.add_column(column, overflow="fold")
    for cells_of_row in styled:
        # Text, not str: a cell is data (a tag, an author, a data= key), and rich would
        # read "[/bold]" in it as markup (a MarkupError traceback on a terminal).
        grid.add_row(*cells_of_row)
    return grid


def fmt_metrics(metrics: dict[str, Any], limit: int = 3) -> str:
    items = list(metrics.items())[:limit]
    text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items)
    return text + (" …" if len(metrics) > limit else "")
