"""Database engines and schema migrations.

SQLite is the embedded default. Writers take the database lock at the start of
a transaction (``BEGIN IMMEDIATE``) rather than on their first write, so two
processes logging versions at once queue instead of failing half-way with
"database is locked". PostgreSQL gets row locks from the use cases instead.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from .._errors import InvalidInput, SchemaMismatch

_MIGRATIONS = Path(__file__).parent / "migrations"

#: Execution option marking a connection that only reads.
READ_ONLY = "tether_read_only"


_POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def is_database_url(url: str) -> bool:
    """Whether ``url`` names a database ``create_engine`` opens (not a folder or a server)."""
    return url.startswith(("sqlite:", *_POSTGRES_SCHEMES))  # "sqlite-models/" is a folder


def create_engine(url: str) -> sa.Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql://...``)."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60})
        _configure_sqlite(engine)
        return engine
    if url.startswith(_POSTGRES_SCHEMES):
        url = url.replace("postgres://", "postgresql://", 1)
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
    raise InvalidInput(
        f"unsupported database URL {url!r}",
        hint="use sqlite:///path/to/registry.db or postgresql://user@host:5432/dbname",
    )


def _configure_sqlite(engine: sa.Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" below decide when a transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        # Readers must not queue behind writers (WAL lets them read a snapshot).
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _alembic_config(connection: sa.Connection) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    return config


_REVISION = re.compile(r"^revision = [\"'](\w+)[\"']", re.MULTILINE)
_DOWN = re.compile(r"^down_revision = [\"'](\w+)[\"']", re.MULTILINE)


def _revisions() -> tuple[set[str], set[str]]:
    """Every revision and every revision something builds on, read from the scripts.

    Read as text rather than through alembic, which costs a third of a second
    to import, on every command.
    """
    known, parents = set(), set()
    for script in (_MIGRATIONS / "versions").glob("*.py"):
        text = script.read_text()
        if match := _REVISION.search(text):
            known.add(match[1])
        if match := _DOWN.search(text):
            parents.add(match[1])
    return known, parents


def head_revision() -> str:
    known, parents = _revisions()
    heads = known - parents
    assert len(heads) == 1, f"migrations must form one line, found heads {heads}"
    return heads.pop()


def current_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as connection:
        if not sa.inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: sa.Engine) -> None:
    """Bring the schema to the newest revision (a no-op when it is there)."""
    from alembic import command

    with engine.begin() as connection:
        command.upgrade(_alembic_config(connection), "head")


def check_schema(engine: sa.Engine, *, where: str) -> None:
    """Refuse a database whose schema is not the one this code was written for."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    known, _ = _revisions()
    if current is None:
        raise SchemaMismatch(
            f"{where} has no Tether schema",
            hint="create it with `tether init` (embedded) or `tether db upgrade --db URL`",
        )
    if current in known:
        raise SchemaMismatch(
            f"the schema of {where} is at revision {current}, older than this Tether ({head})",
            hint="upgrade it with `tether db upgrade` (back up the database first)",
        )
    raise SchemaMismatch(
        f"the schema of {where} is at revision {current}, newer than this Tether knows ({head})",
        hint="upgrade Tether (pip install -U tether) to the version that wrote this registry",
    )
