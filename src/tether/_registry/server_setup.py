"""Creating and opening the registry behind a server (no registry folder).

``Registry.init_server`` and ``Registry.open_server`` call these: a server's
shell only parses its options and serves what they return.
"""

from __future__ import annotations

from .._errors import InvalidInput, StoreError, TetherError
from .._metadata import repository as repo
from .._metadata.audit_log import append_event
from .._metadata.engine import check_schema, create_engine, upgrade
from .._store import check_store_url
from . import roles
from .location import RegistryLocation, default_cache_dir
from .registry import Registry

STORE_SETTING = "server.store"


def _location(db_url: str, store_url: str) -> RegistryLocation:
    return RegistryLocation(
        root=None, db_url=db_url, store_url=store_url, cache_dir=default_cache_dir() / "server"
    )


def init_server(
    db_url: str, store_url: str, admin: str
) -> tuple[Registry, dict[str, str]]:
    """Create (or upgrade) the schema, remember the store, make ``admin`` an admin."""
    check_store_url(store_url)  # before the database remembers a store nobody can open
    _reach(store_url)
    engine = create_engine(db_url)
    upgrade(engine)
    engine.dispose()
    registry = Registry(_location(db_url, store_url), actor=admin)
    with registry.write() as conn:
        if repo.get_setting(conn, STORE_SETTING) is None:
            repo.put_setting(conn, STORE_SETTING, store_url)
            append_event(conn, actor=admin, action="registry.created", details={"store": store_url})
        elif repo.get_setting(conn, STORE_SETTING) != store_url:
            raise InvalidInput(
                f"this database already uses the store {repo.get_setting(conn, STORE_SETTING)}",
                hint="pass that --store, or use another database",
            )
    roles.grant(registry, admin, "admin", None, bootstrap=True)
    token = registry.create_token(admin, description="created by tether server-init")
    return registry, token


def _reach(store_url: str) -> None:
    """List the store once: a bucket that does not exist, an endpoint nobody answers
    or credentials it refuses are said at init, not by the first upload."""
    from .._store import open_store

    try:
        open_store(store_url).blobs.list("index/")
    except TetherError as error:
        raise StoreError(
            f"the store {store_url} could not be reached: {error.message}",
            hint="check the bucket exists, TETHER_S3_ENDPOINT_URL and the credentials (or the "
            "folder's permissions); nothing was created",
        ) from error


def open_server(db_url: str, store_url: str | None) -> Registry:
    """The registry a server serves; refuses a schema older or newer than the code."""
    engine = create_engine(db_url)
    check_schema(engine, where=redacted_url(db_url))
    engine.dispose()
    probe = Registry(_location(db_url, store_url or "file:///nonexistent"))
    configured = probe.get_setting(STORE_SETTING)
    probe.close()
    store = store_url or configured
    if store is None:
        raise InvalidInput(
            "no artifact store configured for this database",
            hint="run `tether server-init --db URL --store URL --admin USER` first",
        )
    check_store_url(store)
    return Registry(_location(db_url, store))


def redacted_url(url: str) -> str:
    """A database URL without its password, for messages."""
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparseable URL is shown as given
        return url
