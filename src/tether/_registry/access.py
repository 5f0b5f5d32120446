"""Who may read and who may log: decided here, for every shell.

The server, the MLflow API and the web UI only authenticate (who is calling);
they hand the registry an actor that enforces roles, and the use cases call
``require`` before they read or write.  A registry opened on the local machine
trusts its operating-system user, who can read the database file anyway, unless
the ``access`` setting says ``roles`` (a team sharing one PostgreSQL database
without a server).  Finer rules (admin-only grants, approvers for protected
aliases, approvals by someone other than the author) are checked by their use
cases whatever the mode.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._errors import PermissionDenied, TetherError
from .._metadata import repository as repo
from .._policy import covers, role_rank
from .roles import roles_of, scoped_roles_of

if TYPE_CHECKING:
    from .registry import Registry

ACCESS_SETTING = "access"
ACCESS_MODES = ("open", "roles")

#: Role lookups are on every read's path: remembered this long, so a revoked
#: role stops working within this many seconds.
CACHE_SECONDS = 5.0
_cache: dict[tuple[Any, ...], tuple[float, Any]] = {}


def cached(key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
    now = time.monotonic()
    hit = _cache.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    value = compute()
    if len(_cache) > 10000:
        _cache.clear()
    _cache[key] = (now + CACHE_SECONDS, value)
    return value


def enforces_roles(registry: Registry) -> bool:
    """True for an authenticated caller of a server or UI, or under ``access=roles``."""
    chosen = registry._enforce_roles
    if chosen is not None:
        return chosen

    def setting() -> bool:
        with registry.read() as conn:
            return repo.get_setting(conn, ACCESS_SETTING) == "roles"

    return bool(cached(("access", id(registry.engine)), setting))


def forget(registry: Registry) -> None:
    """Drop what this process remembers of ``registry`` (its mode changed, a grant moved)."""
    engine = id(registry.engine)
    for key in [k for k in _cache if len(k) > 1 and k[1] == engine]:
        _cache.pop(key, None)


def held_roles(registry: Registry, principal: str, model: str | None) -> tuple[str, ...]:
    def lookup() -> tuple[str, ...]:
        with registry.read() as conn:
            return roles_of(conn, principal, model)

    return tuple(cached(("roles", id(registry.engine), principal, model), lookup))


def may(registry: Registry, role: str, model: str | None) -> bool:
    """Whether the actor holds ``role`` (on ``model``, or registry-wide): ``require`` without
    the refusal, for leaving out what the caller may not see."""
    if not enforces_roles(registry):
        return True
    held = held_roles(registry, registry.actor, model)
    return covers(held, role)


def scoped_roles(registry: Registry, principal: str) -> list[tuple[str, str]]:
    def lookup() -> list[tuple[str, str]]:
        with registry.read() as conn:
            return scoped_roles_of(conn, principal)

    return list(cached(("scoped", id(registry.engine), principal), lookup))


def redacted(registry: Registry, error: TetherError) -> TetherError:
    """``error`` as ``registry``'s actor may see it: the names an ``UnknownName`` lists
    cut to those the actor may read (datasets share the models' names for roles)."""
    from .._errors import UnknownName

    if not isinstance(error, UnknownName):
        return error
    try:
        if not enforces_roles(registry) or may(registry, "reader", None):
            return error
        # Deployments are read registry-wide only; models and datasets by their names.
        visible = set() if error.kind == "deployments" else {
            model for held, model in scoped_roles(registry, registry.actor)
            if covers((held,), "reader")}
    except Exception:  # the refusal stands, with nothing listed
        visible = set()
    return error.only(visible)


def readable(registry: Registry, role: str, action: str) -> set[str] | None:
    """The models a listing shows the actor: None for all of them (``role`` held
    registry-wide, or roles not enforced), else those a scoped grant gives ``role`` on.
    Refuses (as ``require``) an actor with the role nowhere.

    A reader of one model could not open the UI's home page or audit log: both
    listed every model, so both were refused outright.
    """
    if not enforces_roles(registry) or may(registry, role, None):
        return None
    names = {model for held, model in scoped_roles(registry, registry.actor)
             if covers((held,), role)}
    if not names:
        require(registry, role, None, action)  # the refusal, worded as everywhere
    return names


def require_somewhere(registry: Registry, role: str, action: str) -> None:
    """Refuse ``action`` unless the actor holds ``role`` registry-wide or on some model.

    For what serves a model-scoped role and harms no other model: uploading packs
    (content-addressed, verified against their index, never overwritten; the
    version that names them is checked against its own model when committed).
    """
    if not enforces_roles(registry):
        return
    if covers((r for r, _model in scoped_roles(registry, registry.actor)), role):
        return
    require(registry, role, None, action)


def require(registry: Registry, role: str, model: str | None, action: str, *,
            every_mode: bool = False) -> None:
    """Refuse ``action`` unless the actor holds ``role`` (on ``model``, or registry-wide).

    On an ``--open-access`` server reading and logging are open to all, but approving
    and administering take the role granted to ``anonymous``, as moving an alias always
    did: such a server let anonymous, holding no role at all, delete models and
    versions, undeprecate and collect garbage (a review). An embedded registry in open
    mode checks nothing here (its users are whoever can open its files), except for
    ``every_mode`` actions: the governance decisions the README says need their role in
    every mode (deleting a model or a version, deprecating one), which an embedded
    registry let anyone make while it asked approving and setting a policy for theirs
    (a review)."""
    if not enforces_roles(registry) and not every_mode and (
            registry._enforce_roles is None or role_rank(role) < role_rank("approver")):
        return
    principal = registry.actor
    held = held_roles(registry, principal, model)
    if covers(held, role):
        return
    have = ", ".join(held) or "no role"
    if not held:
        # "has no role" was wrong for someone granted roles on single models.
        scoped = scoped_roles(registry, principal)
        if scoped:
            have = "only " + ", ".join(f"{r} on {m}" for r, m in scoped)
    scope = f" on model {model}" if model else ""
    raise PermissionDenied(
        f"{action} needs role {role}{scope}; {principal} has {have}",
        hint=f"an admin can run `tether role grant {principal} {role}"
        + (f" --model {model}`" if model else "`"),
    )


def check_mode(value: str) -> None:
    from .._errors import InvalidInput

    if value not in ACCESS_MODES:
        raise InvalidInput(
            f"access must be one of {', '.join(ACCESS_MODES)}, not {value!r}",
            hint="open: the local user may read and log; roles: every caller needs a role",
        )
