"""Web UI sessions: what the sign-in cookie seals, how long it lasts, and a sign-out that
ends it everywhere.

The cookie seals (Fernet: encrypted and authenticated) the API token with a random
session id; Fernet's timestamp bounds its life to ``SESSION_SECONDS``. Deleting the
cookie at sign-out ended nothing: a copy of it (a shared machine's browser profile, a
proxy's log) worked on as long as the token did. Sign-out records the session id in
the registry (``ui_signouts``, until the cookie would have expired anyway), which every
worker of a server reads on each request.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from .._metadata.schema import ui_signouts

#: How long a sign-in lasts (seconds): sign in again after it.
SESSION_SECONDS = 12 * 3600
#: Sessions signed out where there is no database to record them (a UI over a client
#: of a server seals with a key of its process's own, so its sessions end with it).
_signed_out_here: dict[str, float] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class Sealed:
    token: str
    session: str
    #: Seconds since the epoch the cookie was sealed (Fernet's own timestamp).
    issued_at: float


def seal(fernet: Any, token: str) -> str:
    """A new session's cookie for ``token``."""
    body = json.dumps({"t": token, "s": os.urandom(16).hex()})
    return str(fernet.encrypt(body.encode()).decode())


def unseal(fernet: Any, cookie: str) -> Sealed | None:
    """What ``cookie`` seals, if this UI sealed it less than ``SESSION_SECONDS`` ago."""
    from cryptography.fernet import InvalidToken

    try:
        raw = fernet.decrypt(cookie.encode(), ttl=SESSION_SECONDS)
        body = json.loads(raw)
        issued = float(fernet.extract_timestamp(cookie.encode()))
    except (InvalidToken, ValueError, UnicodeError, TypeError):
        return None  # expired, another registry's, not ours at all, or sealed before sessions
    if not isinstance(body, dict) or not isinstance(body.get("t"), str) or not isinstance(
            body.get("s"), str):
        return None
    return Sealed(body["t"], body["s"], issued)


def _engine(registry: Any) -> sa.Engine | None:
    engine = getattr(registry, "engine", None)
    return engine if isinstance(engine, sa.Engine) else None


def signed_out(registry: Any, session: str) -> bool:
    engine = _engine(registry)
    if engine is None:
        with _lock:
            return session in _signed_out_here
    with engine.connect() as conn:
        return conn.execute(sa.select(ui_signouts.c.session).where(
            ui_signouts.c.session == session)).first() is not None


def sign_out(registry: Any, sealed: Sealed) -> None:
    """End ``sealed``'s session for every worker; forget sessions expired anyway."""
    now = time.time()
    expires = sealed.issued_at + SESSION_SECONDS
    engine = _engine(registry)
    if engine is None:
        with _lock:
            for session in [s for s, t in _signed_out_here.items() if t <= now]:
                del _signed_out_here[session]
            _signed_out_here[sealed.session] = expires
        return
    with engine.begin() as conn:
        conn.execute(ui_signouts.delete().where(ui_signouts.c.expires_at <= now))
        if conn.execute(sa.select(ui_signouts.c.session).where(
                ui_signouts.c.session == sealed.session)).first() is None:
            conn.execute(ui_signouts.insert().values(session=sealed.session,
                                                     expires_at=expires))
