"""Finding models: one page of a filtered, sorted model list in a fixed number of queries.

A UI or an API that shows 50 models at a time must not pay for 1,000 (or walk
100,000 versions) on each request. Here the filters run over the models table alone
(name, description and tags are columns of it, the alias filter is one
indexed lookup), and the version counts, latest versions and alias targets
are read for the page's models only, four queries in all.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .._errors import InvalidInput, NotFound
from .._metadata.repository import aliases_by_version
from .._metadata.schema import aliases, models, versions
from .._records import ModelInfo, readable_mapping
from .resolve import require_model

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


def _infos(
    conn: sa.Connection, rows: Sequence[sa.Row[Any]], *, every: bool = False
) -> list[ModelInfo]:
    """ModelInfo for some model rows (``every`` model's), in two queries whatever their number."""
    ids = [row.id for row in rows]
    if not ids:
        return []
    live = versions.c.status != "deleted"
    if not every:
        live = sa.and_(versions.c.model_id.in_(ids), live)
    # Count and newest sequence number per model (from ix_versions_model_status_seq
    # alone), joined back to the newest version for its semantic version.
    counted = (
        sa.select(
            versions.c.model_id,
            sa.func.count().label("n"),
            sa.func.max(versions.c.seq).label("top"),
        )
        .where(live)
        .group_by(versions.c.model_id)
        .subquery()
    )
    query = sa.select(counted.c.model_id, counted.c.n, versions.c.semver).join(
        versions,
        sa.and_(versions.c.model_id == counted.c.model_id, versions.c.seq == counted.c.top),
    )
    counts: dict[int, int] = {}
    latest: dict[int, str] = {}
    for r in conn.execute(query):
        counts[r.model_id] = r.n
        latest[r.model_id] = r.semver
    targets: dict[int, dict[str, str]] = {}
    query = (
        sa.select(aliases.c.model_id, aliases.c.name, versions.c.semver)
        .join(versions, versions.c.id == aliases.c.version_id)
        .where(sa.true() if every else aliases.c.model_id.in_(ids))
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
            version_count=counts.get(row.id, 0),
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
    only: Collection[str] | None = None,
) -> tuple[int, list[ModelInfo]]:
    """(how many models match, the ``limit`` of them from ``offset``); ``only``: among
    these names (the models a scoped caller reads).

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
    if only is not None:
        select = select.where(models.c.name.in_(sorted(only)))
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


def all_models(registry: Registry) -> list[ModelInfo]:
    """Every model (by name) with its counts, latest version and aliases, in three queries.

    For a list or a search that has to see every model (``Registry.models``,
    MLflow's filters, ``GET /api/v1/models``).
    """
    with registry.read() as conn:
        rows = list(
            conn.execute(
                sa.select(models).where(models.c.deleted.is_(False)).order_by(models.c.name)
            )
        )
        return _infos(conn, rows, every=True)


def model_info(registry: Registry, name: str) -> ModelInfo:
    """One model's description, tags, counts, latest version and aliases."""
    with registry.read() as conn:
        row = conn.execute(
            sa.select(models).where(models.c.name == name, models.c.deleted.is_(False))
        ).first()
        if row is None:
            raise NotFound(f"no model named {name!r}", hint="see `tether models`")
        return _infos(conn, [row])[0]


@dataclass(frozen=True)
class VersionSummary:
    """What a versions table shows of a version: no manifest, environment or lineage."""

    name: str
    id: int
    seq: int
    semver: str
    digest: str
    status: str
    author: str
    created_at: str
    metrics: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.semver}"

    @property
    def short_digest(self) -> str:
        return f"sha:{self.digest[:12]}"


def version_summaries(registry: Registry, name: str, *, seqs: Collection[int] | None = None,
                      newest_first: bool = False, limit: int | None = None,
                      offset: int = 0) -> list[VersionSummary]:
    """A model's live versions by sequence number (``newest_first``: the other way),
    for tables, charts and neighbours: those numbered ``seqs`` only, or ``limit`` of
    them after skipping ``offset``.

    ``Registry.versions`` decodes every version whole (its manifest, environment
    with every installed distribution, lineage); a page that shows a table of
    100 versions spent most of its time there. This reads the few columns a
    table needs. Anything that loads, verifies or compares a version still
    goes through ``Registry.get``, which re-hashes it to its digest.
    """
    with registry.read() as conn:
        mid = require_model(conn, name)
        by_version = aliases_by_version(conn, mid)
        query = (
            sa.select(
                versions.c.id, versions.c.seq, versions.c.semver, versions.c.digest,
                versions.c.status, versions.c.author, versions.c.created_at, versions.c.metrics,
            )
            .where(versions.c.model_id == mid, versions.c.status != "deleted")
            .order_by(versions.c.seq.desc() if newest_first else versions.c.seq)
        )
        if seqs is not None:
            query = query.where(versions.c.seq.in_(sorted(seqs)))
        if limit is not None:
            query = query.limit(limit).offset(offset)
        return [
            VersionSummary(
                name=name,
                id=row.id,
                seq=row.seq,
                semver=row.semver,
                digest=row.digest,
                status=row.status,
                author=row.author,
                created_at=row.created_at,
                metrics=readable_mapping(json.loads(row.metrics) if row.metrics else {}),
                aliases=tuple(by_version.get(row.id, [])),
            )
            for row in conn.execute(query)
        ]


def _live(mid: int) -> Any:
    return sa.and_(versions.c.model_id == mid, versions.c.status != "deleted")


def count_versions(registry: Registry, name: str) -> int:
    """How many live versions model ``name`` has (one indexed count)."""
    with registry.read() as conn:
        mid = require_model(conn, name)
        return int(conn.execute(sa.select(sa.func.count()).where(_live(mid))).scalar_one())


def spread_seqs(registry: Registry, name: str, most: int, *,
                metric: str | None = None) -> list[int]:
    """At most ``most`` of the model's live sequence numbers, evenly spaced over all of
    them (``metric``: over those that recorded it), the newest kept: what a chart of a
    model of 100,000 versions draws.

    Numbered and picked in the database (a window function over the model's index),
    so a page reads ``most`` numbers, not every version."""
    if most < 1:
        return []
    with registry.read() as conn:
        mid = require_model(conn, name)
        live = _live(mid)
        if metric is not None:  # the key in the metrics' JSON (only keys are text there)
            live = sa.and_(live, versions.c.metrics.contains(json.dumps(metric),
                                                              autoescape=True))
        total = int(conn.execute(sa.select(sa.func.count()).where(live)).scalar_one())
        if total <= most:
            return [int(s) for s in conn.execute(
                sa.select(versions.c.seq).where(live).order_by(versions.c.seq)).scalars()]
        step = -(-total // most)
        # Numbered by ``seq + 0``: ordered by ``seq`` itself, SQLite walked the
        # (model_id, seq) index and read each version's row for its status (50,000
        # versions: 220 ms); so it reads the index holding all three (26 ms).
        numbered = (
            sa.select(versions.c.seq,
                      sa.func.row_number().over(order_by=versions.c.seq + 0).label("n"))
            .where(live)
            .subquery()
        )
        picked = [int(s) for s in conn.execute(
            sa.select(numbered.c.seq)
            .where(sa.or_((numbered.c.n - 1) % step == 0, numbered.c.n == total))
            .order_by(numbered.c.seq)).scalars()]
    # Every step-th and the newest: one too many when the newest is not a step-th.
    return picked if len(picked) <= most else [*picked[:most - 1], picked[-1]]


def neighbour_seqs(registry: Registry, name: str, seq: int) -> tuple[int | None, int | None]:
    """The live versions numbered just before and just after ``seq`` (two indexed looks)."""
    with registry.read() as conn:
        mid = require_model(conn, name)
        before = conn.execute(sa.select(sa.func.max(versions.c.seq)).where(
            _live(mid), versions.c.seq < seq)).scalar()
        after = conn.execute(sa.select(sa.func.min(versions.c.seq)).where(
            _live(mid), versions.c.seq > seq)).scalar()
    return (None if before is None else int(before)), (None if after is None else int(after))
