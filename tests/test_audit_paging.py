"""The server answers the audit log a page at a time; clients page through it.

A reader of one model asked ``/api/v1/audit?model=NAME`` and the server read, built
and sent every event of that model in one answer, however many (a review: the
listing had no bound). Now at most AUDIT_PAGE events go in an answer; the client
asks for the next page with ``before`` and still gets every event.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import tether
from tether import Registry

from .servers import app_in_thread


@pytest.fixture
def served(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    from tether import remote
    from tether.server import app

    monkeypatch.setattr(app, "AUDIT_PAGE", 4, raising=False)
    monkeypatch.setattr(remote, "AUDIT_PAGE", 4, raising=False)
    for i in range(9):  # 9 models created: 9 events of their own, plus the registry's
        registry.create_model(f"m{i}", tags={"i": str(i)})
        registry.update_model("m0", description=f"edit {i}")
    token = registry.create_token("ops@example.com", role="admin")["token"]
    with app_in_thread(app.create_app(registry)) as url:
        yield url, token


def _get(url: str, token: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{url}/api/v1/audit", params=params,
                     headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_an_answer_holds_one_page_and_the_client_gets_every_event(
    registry: Registry, served: tuple[str, str]
) -> None:
    url, token = served
    everything = registry.audit_log()
    assert len(everything) > 12
    assert len(_get(url, token).json()) == 4  # asked for all: one page
    assert len(_get(url, token, limit=100).json()) == 4
    assert len(_get(url, token, model="m0").json()) == 4  # 10 events of m0
    page = _get(url, token, before=everything[3].id).json()
    assert [e["id"] for e in page] == [e.id for e in everything[4:8]]

    client = tether.connect(url, token=token)
    try:
        assert [e.id for e in client.audit_log()] == [e.id for e in everything]
        assert [e.id for e in client.audit_log(limit=6)] == [e.id for e in everything[:6]]
        mine = [e.id for e in registry.audit_log(model="m0")]
        assert len(mine) == 10 and [e.id for e in client.audit_log(model="m0")] == mine
    finally:
        client.close()


def test_a_bad_cursor_is_a_400(served: tuple[str, str]) -> None:
    url, token = served
    for bad in ("abc", "-1", "1e3"):
        answer = _get(url, token, before=bad)
        assert answer.status_code == 400 and "before" in answer.json()["message"], answer.text


def test_a_server_that_ignores_the_cursor_is_refused_not_followed_forever(
    served: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server (or a proxy) that drops ``before`` answers the first page again and
    again: a client following it would page without end, growing its list."""
    url, token = served
    client = tether.connect(url, token=token)
    real = client._request

    def cursor_dropped(method: str, path: str, **kw: Any) -> Any:
        kw.get("params", {}).pop("before", None)
        return real(method, path, **kw)

    monkeypatch.setattr(client, "_request", cursor_dropped)
    try:
        with pytest.raises(tether.IntegrityError, match="not older than the one before"):
            client.audit_log()
    finally:
        client.close()


def _answering(client: Any, monkeypatch: pytest.MonkeyPatch, pages: Any) -> None:
    """Make ``client``'s audit requests answered by ``pages(before)`` (a JSON list)."""
    import json

    real = client._request

    def made_up(method: str, path: str, **kw: Any) -> Any:
        if path != "/audit":
            return real(method, path, **kw)
        answer = pages(kw["params"].get("before"))
        return json.dumps(answer).encode() if kw.get("raw") else answer

    monkeypatch.setattr(client, "_request", made_up)


def _event(i: int, pad: str = "") -> dict[str, Any]:
    return {"id": i, "ts": "2026-01-01T00:00:00Z", "actor": "x", "action": "model.updated",
            "model": "m", "subject": pad, "before": None, "after": None, "details": {},
            "prev_hash": "0" * 64, "hash": "0" * 64}


def test_a_server_paging_made_up_events_without_end_is_stopped(
    served: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each page older than the one before, as asked, but from ids near 2**62 down: the
    client paged (and held every event) without end. Pages now add up to at most
    MAX_ANSWER bytes, each counted at least PAGE_COST."""
    from tether import remote

    url, token = served
    client = tether.connect(url, token=token)
    monkeypatch.setattr(remote, "MAX_ANSWER", 40 * remote.PAGE_COST)
    asked: list[Any] = []

    def pages(before: int | None) -> list[dict[str, Any]]:
        asked.append(before)
        top = (before or 2**62) - 1
        return [_event(top - i) for i in range(4)]

    _answering(client, monkeypatch, pages)
    try:
        with pytest.raises(tether.IntegrityError, match="pages came to more than"):
            client.audit_log()
    finally:
        client.close()
    assert 30 < len(asked) <= 41


@pytest.mark.parametrize("ids", [[5, 6, 3, 2], [3, 2, 1, 0], [4, 4, 3, 2]])
def test_a_page_out_of_order_or_with_ids_below_one_is_refused(
    served: tuple[str, str], monkeypatch: pytest.MonkeyPatch, ids: list[int]
) -> None:
    url, token = served
    client = tether.connect(url, token=token)
    _answering(client, monkeypatch, lambda before: [_event(i) for i in ids])
    try:
        with pytest.raises(tether.IntegrityError, match="not older than the one before"):
            client.audit_log()
    finally:
        client.close()


def test_a_page_may_start_past_a_million_events(served: tuple[str, str]) -> None:
    """`before` stopped at 1,000,000: on a registry of more events the client's second
    page was refused (a review). Up to the largest id a database holds."""
    url, token = served
    assert _get(url, token, before=1_000_001).status_code == 200
    assert _get(url, token, before=2**31 - 1).status_code == 200
    assert _get(url, token, before=2**31).status_code == 400
