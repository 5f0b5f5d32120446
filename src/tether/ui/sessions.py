"""Web UI sessions: what the sign-in cookie seals, how long it lasts, and a sign-out that
ends it everywhere.

The cookie seals (Fernet: encrypted and authenticated) the API token and the time it
was sealed; a cookie older than ``SESSION_SECONDS`` is refused. Deleting the cookie at
sign-out ended nothing: a copy of it (a shared machine's browser profile, a proxy's
log) worked on as long as the token did. So sign-out records, per token, when it
signed out (``ui_signouts``, one row a token, read by every worker of a server on each
request), and a cookie for that token sealed before then is refused: signing out ends
every UI session of the token, in every browser.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from .._metadata.schema import ui_signouts

#: How long a sign-in lasts (seconds): sign in again after it.
SESSION_SECONDS = 12 * 3600
#: A sign-out is kept this long past the last cookie it could refuse: clocks of the
#: workers (and of hosts sharing one database) may differ by up to this much.
CLOCK_MARGIN = 3600
#: Sign-outs where there is no database to record them (a UI over a client of a
#: server seals with a key of its process's own, so its sessions end with it).
_signed_out_here: dict[str, float] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class Sealed:
    token: str
    #: Seconds since the epoch the cookie was sealed, by the sealing worker's clock.
    issued_at: float


def seal(fernet: Any, token: str) -> str:
    """A new session's cookie for ``token``."""
    body = json.dumps({"t": token, "at": time.time()})
    return str(fernet.encrypt(body.encode()).decode())


def unseal(fernet: Any, cookie: str) -> Sealed | None:
    """What ``cookie`` seals, if this UI sealed it less than ``SESSION_SECONDS`` ago.

    The age is checked here, not by Fernet's ``ttl``, which also refuses a cookie
    sealed "in the future" by a worker whose clock is a minute ahead."""
    from cryptography.fernet import InvalidToken

    try:
        body = json.loads(fernet.decrypt(cookie.encode()))
        token, issued = body["t"], float(body["at"])
    except (InvalidToken, ValueError, UnicodeError, TypeError, KeyError):
        return None  # another registry's, not ours at all, or sealed before sessions
    if not isinstance(token, str) or not time.time() - issued < SESSION_SECONDS:
        return None  # expired (or not a time: NaN)
    return Sealed(token, issued)


def _key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _engine(registry: Any) -> sa.Engine | None:
    engine = getattr(registry, "engine", None)
    return engine if isinstance(engine, sa.Engine) else None


def signed_out(registry: Any, sealed: Sealed) -> bool:
    """Whether ``sealed``'s token signed out of the UI after the cookie was sealed."""
    engine = _engine(registry)
    if engine is None:
        with _lock:
            at = _signed_out_here.get(_key(sealed.token))
    else:
        with engine.connect() as conn:
            at = conn.execute(sa.select(ui_signouts.c.signed_out_at).where(
                ui_signouts.c.token == _key(sealed.token))).scalar()
    return at is not None and sealed.issued_at <= at


def sign_out(registry: Any, sealed: Sealed) -> None:
    """End every UI session of ``sealed``'s token sealed until now, for every worker;
    forget sign-outs whose cookies have all expired."""
    now = time.time()
    stale = now - SESSION_SECONDS - CLOCK_MARGIN
    key = _key(sealed.token)
    engine = _engine(registry)
    if engine is None:
        with _lock:
            for old in [k for k, at in _signed_out_here.items() if at < stale]:
                del _signed_out_here[old]
            _signed_out_here[key] = max(now, _signed_out_here.get(key, now))
        return
    with engine.begin() as conn:
        conn.execute(ui_signouts.delete().where(ui_signouts.c.signed_out_at < stale))
        # One row a token, whichever of two sign-outs at once writes first (a review: the
        # second's insert was a 500 on PostgreSQL); the later time stays.
        insert: Any
        later: Any
        if engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
            later = sa.func.greatest
        else:
            from sqlalchemy.dialects.sqlite import insert
            later = sa.func.max  # SQLite's max of two values
        statement = insert(ui_signouts).values(token=key, signed_out_at=now)
        conn.execute(statement.on_conflict_do_update(
            index_elements=[ui_signouts.c.token],
            set_={"signed_out_at": later(ui_signouts.c.signed_out_at,
                                         statement.excluded.signed_out_at)}))
