"""Finding models: one page of a filtered, sorted model list in a fixed number of queries.

``list_models`` answers with every model and two queries per model; a UI or an
API that shows 50 models at a time must not pay for 1,000 (or walk 100,000
versions) on each request. Here the filters run over the models table alone
(name, description and tags are columns of it, the alias filter is one
indexed lookup), and the version counts, latest versions and alias targets
are read for the page's models only, three queries in all.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .._errors import InvalidInput, NotFound
from .._metadata.schema import aliases, models, versions
from .._records import ModelInfo

if TYPE_CHECKING:
    from .registry import Registry

#: How a model list may be sorted; a leading '-' sorts descending.
SORTS = ("name", "updated", "created", "versions")
MAX_LIMIT = 500


def _like(text: str, *, fold: bool = True) -> str:
    """A LIKE pattern matching ``text`` anywhere (lower-cased unless ``fold`` is off)."""
    text = text.lower() if fold else text
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _tags_match(raw: str | None, key: str, value: str | None) -> bool:
    tags = json.loads(raw) if raw else {}
    return key in tags and (value is None or str(tags[key]) == value)


def _infos(conn: sa.Connection, rows: Sequence[sa.Row[Any]]) -> list[ModelInfo]:
    """ModelInfo for a handful of model rows, in three queries whatever their number."""
    ids = [row.id for row in rows]
    if not ids:
        return []
    live = sa.and_(versions.c.model_id.in_(ids), versions.c.status != "deleted")
    counts = {
        r.model_id: (r.n, r.top)
        for r in conn.execute(
            sa.select(
                versions.c.model_id,
                sa.func.count().label("n"),
                sa.func.max(versions.c.seq).label("top"),
            )
            .where(live)
            .group_by(versions.c.model_id)
        )
    }
    wanted = [(mid, top) for mid, (_, top) in counts.items()]
    latest: dict[int, str] = {}
    if wanted:
        query = sa.select(versions.c.model_id, versions.c.semver).where(
            sa.or_(*(sa.and_(versions.c.model_id == m, versions.c.seq == t) for m, t in wanted))
        )
        latest = {r.model_id: r.semver for r in conn.execute(query)}
    targets: dict[int, dict[str, str]] = {}
    query = (
        sa.select(aliases.c.model_id, aliases.c.name, versions.c.semver)
        .join(versions, versions.c.id == aliases.c.version_id)
        .where(aliases.c.model_id.in_(ids))
        .order_by(aliases.c.name)
    )
    for r in conn.execute(query):
        targets.setdefault(r.model_id, {})[r.name] = r.semver
    return [
        ModelInfo(
            name=row.name,
            description=row.description,
            owners=json.loads(row.owners) if row.owners else [],
            tags=json.loads(row.tags) if row.tags else {},
            created_at=row.created_at,
            updated_at=row.updated_at,
            version_count=counts.get(row.id, (0, None))[0],
            latest=latest.get(row.id),
            aliases=targets.get(row.id, {}),
        )
        for row in rows
    ]


def search_models(
    registry: Registry,
    *,
    query: str = "",
    tag: str = "",
    alias: str = "",
    sort: str = "name",
    offset: int = 0,
    limit: int = 50,
) -> tuple[int, list[ModelInfo]]:
    """(how many models match, the ``limit`` of them from ``offset``).

    ``query`` matches a part of the name or description (case-insensitive),
    ``tag`` is ``key`` or ``key=value``, ``alias`` keeps models that have that
    alias. ``sort`` is one of SORTS, with a leading '-' for descending.
    """
    key = sort.removeprefix("-")
    if key not in SORTS:
        raise InvalidInput(f"cannot sort models by {sort!r}", hint=f"sort by: {', '.join(SORTS)}")
    if limit < 1 or limit > MAX_LIMIT or offset < 0:
        raise InvalidInput(f"limit must be 1..{MAX_LIMIT} and offset at least 0")
    descending = sort.startswith("-")
    select = sa.select(models).where(models.c.deleted.is_(False))
    if query.strip():
        pattern = _like(query.strip())
        select = select.where(
            sa.or_(
                sa.func.lower(models.c.name).like(pattern, escape="\\"),
                sa.func.lower(models.c.description).like(pattern, escape="\\"),
            )
        )
    if alias.strip():
        select = select.where(
            models.c.id.in_(sa.select(aliases.c.model_id).where(aliases.c.name == alias.strip()))
        )
    tag_key, has_value, tag_value = tag.strip().partition("=")
    if tag_key:
        # Tags are a JSON column: narrow in SQL by text, then decide on the parsed value.
        needle = _like(json.dumps(tag_key, ensure_ascii=False), fold=False)
        select = select.where(models.c.tags.like(needle, escape="\\"))
    order: Any
    if key == "versions":
        counted = (
            sa.select(versions.c.model_id, sa.func.count().label("n"))
            .where(versions.c.status != "deleted")
            .group_by(versions.c.model_id)
            .subquery()
        )
        select = select.outerjoin(counted, counted.c.model_id == models.c.id)
        order = sa.func.coalesce(counted.c.n, 0)
    else:
        order = {"name": models.c.name, "updated": models.c.updated_at,
                 "created": models.c.created_at}[key]
    select = select.order_by(order.desc() if descending else order.asc(), models.c.name)
    with registry.read() as conn:
        if tag_key:
            rows = [
                r
                for r in conn.execute(select)
                if _tags_match(r.tags, tag_key, tag_value if has_value else None)
            ]
            total = len(rows)
            page = rows[offset : offset + limit]
        else:
            counter = sa.select(sa.func.count()).select_from(select.order_by(None).subquery())
            total = int(conn.execute(counter).scalar_one())
            page = list(conn.execute(select.limit(limit).offset(offset)))
        return total, _infos(conn, page)


def model_info(registry: Registry, name: str) -> ModelInfo:
    """One model's description, tags, counts, latest version and aliases."""
    with registry.read() as conn:
        row = conn.execute(
            sa.select(models).where(models.c.name == name, models.c.deleted.is_(False))
        ).first()
        if row is None:
            raise NotFound(f"no model named {name!r}", hint="see `tether models`")
        return _infos(conn, [row])[0]
