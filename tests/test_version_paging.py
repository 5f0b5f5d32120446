"""The server lists a model's or a dataset's versions a page at a time; clients page.

A reader asked ``/api/v1/models/NAME/versions`` and the server read, built and sent
every version in one answer, with every version's file list (a review: a model of
100,000 versions listing thousands of files each was one answer of gigabytes). Now a
page holds at most VERSION_PAGE versions and VERSION_PAGE_BYTES of their manifests;
``X-Tether-Next-After`` says where the next starts, and the client follows it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import tether
from tether import Registry

from .servers import app_in_thread


@pytest.fixture
def served(registry: Registry, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    from tether._metadata import repository
    from tether.server import app

    monkeypatch.setattr(repository, "VERSION_PAGE", 3, raising=False)
    for i in range(8):
        (tmp_path / "w.bin").write_bytes(f"weights {i}".encode())
        registry.log_model(str(tmp_path / "w.bin"), "paged")
        (tmp_path / "d.csv").write_text(f"x\n{i}\n")
        registry.add_dataset(tmp_path / "d.csv", "rows")
    registry.delete_version("paged@2")
    token = registry.create_token("ops@example.com", role="admin")["token"]
    with app_in_thread(app.create_app(registry)) as url:
        yield url, token


def _get(url: str, token: str, path: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{url}/api/v1{path}", params=params,
                     headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_an_answer_holds_one_page_and_the_client_gets_every_version(
        registry: Registry, served: tuple[str, str]) -> None:
    url, token = served
    first = _get(url, token, "/models/paged/versions")
    assert [v["seq"] for v in first.json()] == [1, 3, 4]  # 2 is deleted
    assert first.headers["X-Tether-Next-After"] == "4"
    last = _get(url, token, "/models/paged/versions", after=7)
    assert [v["seq"] for v in last.json()] == [8] and "X-Tether-Next-After" not in last.headers
    with_deleted = _get(url, token, "/models/paged/versions", deleted=1)
    assert [v["seq"] for v in with_deleted.json()] == [1, 2, 3]

    client = tether.connect(url, token=token)
    try:
        assert [v.seq for v in client.versions("paged")] == [v.seq for v in
                                                              registry.versions("paged")]
        assert [v.seq for v in client.versions_with_deleted("paged")] == list(range(1, 9))
        assert [v.seq for v in client.dataset_versions("rows")] == list(range(1, 9))
    finally:
        client.close()


def test_a_page_ends_before_the_manifests_cross_their_budget(
        registry: Registry, served: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget is on stored manifest bytes, read before any row: a page of huge file
    lists stops early (one version always fits)."""
    from tether._metadata import repository

    url, token = served
    one = len(_get(url, token, "/models/paged/versions").json()[0]["files"][0]["path"])
    assert one
    monkeypatch.setattr(repository, "VERSION_PAGE_BYTES", 1, raising=False)
    page = _get(url, token, "/models/paged/versions")
    assert [v["seq"] for v in page.json()] == [1] and page.headers["X-Tether-Next-After"] == "1"
    client = tether.connect(url, token=token)
    try:
        assert len(client.versions("paged")) == 7
    finally:
        client.close()


def test_the_budget_counts_every_listed_column_in_bytes(any_registry: Registry,
                                                       tmp_path: Path) -> None:
    """Counting the manifest alone let a page of large tags load 25 times its budget;
    counting characters, not bytes, let text outside ASCII through at up to four times
    it (a review). The size the page query reads is every listed text column's bytes."""
    import sqlalchemy as sa

    from tether._metadata import repository
    from tether._metadata.schema import versions

    registry = any_registry
    (tmp_path / "t.bin").write_bytes(b"tagged")
    version = registry.log_model(str(tmp_path / "t.bin"), "tagged",
                                 tags={"note": "é" * 5000}, notes="ü" * 3000)
    with registry.engine.connect() as conn:
        measured = conn.execute(sa.select(repository._listed_octets(conn, versions))
                                .where(versions.c.id == version.id)).scalar_one()
        row = conn.execute(sa.select(versions).where(versions.c.id == version.id)).one()
    texts = [c.name for c in repository.version_columns(records=False)
             if isinstance(c.type, sa.String)]
    stored = sum(len(str(getattr(row, name)).encode()) for name in texts
                 if getattr(row, name) is not None)
    assert measured == stored and measured > 16_000, (measured, stored)


def test_a_bad_cursor_is_a_400(served: tuple[str, str]) -> None:
    url, token = served
    for bad in ("abc", "-1", "1e3", "2147483648"):  # seq is 32 bits: PostgreSQL said 500
        answer = _get(url, token, "/models/paged/versions", after=bad)
        assert answer.status_code == 400 and "after" in answer.json()["message"], answer.text


@pytest.mark.parametrize("misbehaviour", ["cursor dropped", "next page behind"])
def test_a_server_paging_wrong_is_refused_not_followed_forever(
        served: tuple[str, str], monkeypatch: pytest.MonkeyPatch, misbehaviour: str) -> None:
    """A server (or a proxy) that drops ``after`` answers the first page again and
    again: a client following the header would page without end, growing its list."""
    url, token = served
    client = tether.connect(url, token=token)
    real = client._request

    def wrong(method: str, path: str, **kw: Any) -> Any:
        if misbehaviour == "cursor dropped":
            kw.get("params", {}).pop("after", None)
            return real(method, path, **kw)
        content, headers = real(method, path, **kw)
        headers = httpx.Headers({**headers, "X-Tether-Next-After": "1"})
        return content, headers

    monkeypatch.setattr(client, "_request", wrong)
    try:
        with pytest.raises(tether.IntegrityError, match="stopped paging"):
            client.versions("paged")
    finally:
        client.close()


def test_pages_of_one_version_each_are_counted_at_a_page_s_least_cost(
        served: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A server answering a version a page (17 bytes each) kept a client paging for
    hours within MAX_ANSWER (a review): every page counts at least PAGE_COST."""
    from tether import remote
    from tether._metadata import repository

    url, token = served
    monkeypatch.setattr(repository, "VERSION_PAGE", 1, raising=False)
    monkeypatch.setattr(remote, "MAX_ANSWER", 4 * remote.PAGE_COST, raising=False)
    client = tether.connect(url, token=token)
    try:
        with pytest.raises(tether.IntegrityError, match="came to more than"):
            client.versions("paged")  # 7 pages of one version
        monkeypatch.setattr(repository, "VERSION_PAGE", 3, raising=False)
        assert len(client.versions("paged")) == 7  # 3 pages
    finally:
        client.close()
