"""The web UI over Starlette's TestClient: pages, JSON twins, escaping, sign-in, actions."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tether import Registry
from tether._registry import catalog
from tether.ui import create_ui_app
from tether.ui.app import COOKIE, csrf_token

from .conftest import fit_logreg

XSS = "<script>alert('x')</script>"


@dataclass
class World:
    registry: Registry
    tokens: dict[str, str]

    def client(self, user: str | None = None) -> TestClient:
        client = TestClient(create_ui_app(lambda: self.registry), base_url="http://testserver")
        if user is not None:
            response = client.post(
                "/login", data={"token": self.tokens[user], "next": "/"}, follow_redirects=False
            )
            assert response.status_code == 303, response.text
        return client


@pytest.fixture
def world(any_registry: Registry, iris: tuple[Any, Any]) -> Iterator[World]:
    """The same small world on SQLite, then on a fresh PostgreSQL database."""
    registry = any_registry
    X, _ = iris
    registry.log_model(
        fit_logreg(iris), "iris", metrics={"acc": 0.95, "f1": 0.9}, input_example=X.head(3),
        progress=False,
    )
    registry.log_model(
        fit_logreg(iris, C=0.05), "iris", metrics={"acc": 0.80, "f1": 0.7},
        input_example=X.head(3), progress=False, notes=f"notes {XSS}",
    )
    catalog.update_model(registry, "iris", description=f"flowers {XSS}", set_tags={"team": XSS})
    for i in range(3):
        catalog.create_model(registry, f"extra-{i}", tags={"kind": "extra"})
    tokens = {"admin": registry.create_token(registry.actor)["token"]}
    for user, role in (("rita", "reader"), ("amy", "approver"), ("carl", "contributor")):
        tokens[user] = registry.create_token(user, role=role)["token"]
    yield World(registry, tokens)


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


# -- sign-in ------------------------------------------------------------------------


def test_pages_need_sign_in_and_the_cookie_is_httponly_strict(world: World) -> None:
    client = world.client()
    response = client.get("/models/iris", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=%2Fmodels%2Firis")
    assert client.get("/audit.json").status_code == 401

    bad = client.post("/login", data={"token": "tth_wrong", "next": "/"}, follow_redirects=False)
    assert bad.status_code == 401 and "not valid" in bad.text

    good = client.post(
        "/login", data={"token": world.tokens["rita"], "next": "/models/iris"},
        follow_redirects=False,
    )
    assert good.status_code == 303 and good.headers["location"] == "/models/iris"
    cookie = good.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie
    assert "samesite=strict" in cookie.lower()
    page = client.get("/models/iris")
    assert page.status_code == 200 and 'data-testid="principal">rita<' in page.text


def test_login_never_redirects_off_site(world: World) -> None:
    client = world.client()
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        response = client.post(
            "/login", data={"token": world.tokens["rita"], "next": target}, follow_redirects=False
        )
        assert response.headers["location"] == "/"


def test_security_headers_and_no_cdn(world: World) -> None:
    page = world.client("rita").get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert not re.search(r'(src|href)="(https?:)?//', page.text)


# -- pages and their JSON twins -----------------------------------------------------


def test_every_page_renders_and_has_a_json_twin(world: World) -> None:
    client = world.client("rita")
    pages = {
        "/": "/?format=json",
        "/models/iris": "/models/iris.json",
        "/models/iris/versions/1.1.0": "/models/iris/versions/1.1.0.json",
        "/compare?v=iris@1.0.0&v=iris@1.1.0": "/compare.json?v=iris@1.0.0&v=iris@1.1.0",
        "/audit": "/audit?format=json",
    }
    for html_url, json_url in pages.items():
        html = client.get(html_url)
        assert html.status_code == 200, (html_url, html.text[:500])
        assert html.headers["content-type"].startswith("text/html")
        twin = client.get(json_url)
        assert twin.status_code == 200 and twin.headers["content-type"] == "application/json"
        assert twin.json()

    models = client.get("/?format=json").json()
    assert models["total"] == 4 and models["models"][0]["name"] == "extra-0"
    model = client.get("/models/iris?format=json").json()
    assert [v["semver"] for v in model["versions"]] == ["1.1.0", "1.0.0"]
    assert model["columns"] == ["acc", "f1"] and model["chart"]["metric"] == "acc"
    assert [p["value"] for p in model["chart"]["points"]] == [0.95, 0.80]
    html = client.get("/models/iris?chart=f1&metrics=f1").text
    assert "<svg" in html and "<polyline" in html and "f1 across versions" in html
    version = client.get("/models/iris/versions/1.1.0.json").json()
    assert version["previous"] == "iris@1.0.0"
    assert version["files"] and all("shared_bytes" in f for f in version["files"])
    assert 'tether.load("iris@1.1.0"' in version["snippets"]["load"]
    assert version["snippets"]["pin"] == "tether lock add iris@1.1.0"
    assert any(e["action"] == "version.created" or "1.1.0" in (e["subject"] or "")
               for e in version["events"])


def test_a_models_versions_come_a_page_at_a_time_and_its_chart_a_bounded_sample(
        world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A model of 100,000 versions drew every one in its table (and its promote list) and
    a chart of 100,000 points. The table pages, newest first; the chart keeps at most
    CHART_POINTS, evenly spaced, the newest among them."""
    from tether.ui import views

    for i in range(5):
        (tmp_path / "w.bin").write_bytes(b"w%d" % i)
        world.registry.log_model(tmp_path / "w.bin", "many", metrics={"acc": i / 10},
                                 progress=False)
    monkeypatch.setattr(views, "VERSIONS_PAGE", 2, raising=False)
    monkeypatch.setattr(views, "CHART_POINTS", 3, raising=False)
    client = world.client("rita")
    first = client.get("/models/many?format=json").json()
    assert [v["seq"] for v in first["versions"]] == [5, 4]
    assert (first["page"], first["pages"], first["version_total"]) == (1, 3, 5)
    assert [p["seq"] for p in first["chart"]["points"]] == [1, 3, 5]
    last = client.get("/models/many?format=json&page=3").json()
    assert [v["seq"] for v in last["versions"]] == [1] and last["first_shown"] == 5
    assert client.get("/models/many?format=json&page=99").json()["page"] == 3
    html = client.get("/models/many?page=2&metrics=acc").text
    assert "versions 3–4 of 5, newest first" in html
    assert 'href="?metrics=acc&amp;chart=acc&amp;page=1"' in html, html[html.find("pager"):][:600]
    assert 'href="?metrics=acc&amp;chart=acc&amp;page=3"' in html
    assert html.count('name="v" value="many@') == 2  # the page's versions, no more


def test_a_model_page_reads_a_page_and_a_sample_never_every_version(
        world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A model of 50,000 versions took a second a page (and its version pages too): they
    decoded every version's summary, and every event of the model. Now neither page asks
    for every summary, and a version's events are picked out by the database."""
    from tether._registry.registry import Registry
    from tether.ui import views

    for i in range(7):
        (tmp_path / "w.bin").write_bytes(b"w%d" % i)
        world.registry.log_model(tmp_path / "w.bin", "many", metrics={"acc": i / 10},
                                 progress=False)
    world.registry.delete_version("many@1.5.0")  # seq 6: neither a neighbour nor a point
    world.registry.promote("many@1.2.0", "production", reason="r", create=True)
    read_all = Registry.version_summaries

    def one_page_at_most(self: Registry, name: str, **how: Any) -> Any:
        assert how.get("seqs") is not None or how.get("limit") is not None, how
        return read_all(self, name, **how)

    monkeypatch.setattr(Registry, "version_summaries", one_page_at_most)
    monkeypatch.setattr(Registry, "audit_log", lambda *a, **k: pytest.fail("every event read"))
    monkeypatch.setattr(views, "CHART_POINTS", 3, raising=False)
    client = world.client("rita")
    page = client.get("/models/many?format=json").json()
    assert page["version_total"] == 6
    assert [p["seq"] for p in page["chart"]["points"]] == [1, 3, 7]  # live: 1-5, 7
    assert page["metric_names"] == ["acc"]
    version = client.get("/models/many/versions/1.6.0.json").json()
    assert (version["previous"], version["next"]) == ("many@1.4.0", None)
    assert version["env_vs_production"]["target"] == "many@1.2.0"
    middle = client.get("/models/many/versions/1.4.0.json").json()
    assert (middle["previous"], middle["next"]) == ("many@1.3.0", "many@1.6.0")


def test_a_versions_events_are_its_own(world: World, tmp_path: Path) -> None:
    """``Registry.version_events`` keeps what the page showed before, found in SQL: the
    version's creation, an alias moved to or from it; not another version's."""
    reg = world.registry
    for i in range(3):
        (tmp_path / "w.bin").write_bytes(b"e%d" % i)
        reg.log_model(tmp_path / "w.bin", "ev", progress=False)
    reg.promote("ev@1.1.0", "staging", reason="try", create=True)
    reg.promote("ev@1.2.0", "staging", reason="next")
    mine = reg.get("ev@1.1.0")
    found = reg.version_events(mine)
    assert [(e.action, e.subject, e.before, e.after if isinstance(e.after, str) else None)
            for e in found] == [
        ("alias.set", "ev@staging", "1.1.0", "1.2.0"),  # moved away from it
        ("alias.set", "ev@staging", None, "1.1.0"),  # moved to it
        ("version.logged", "ev@1.1.0", None, None),
    ]
    every = reg.audit_log(model="ev")
    from tether._metadata.audit_log import event_concerns

    assert found == [e for e in every if event_concerns(e, mine.ref, mine.semver, mine.digest)]


def test_models_search_filter_sort_and_paginate(world: World) -> None:
    client = world.client("rita")

    def names(query: str) -> list[str]:
        return [m["name"] for m in client.get(f"/?format=json&{query}").json()["models"]]

    assert names("q=iri") == ["iris"]
    assert names("q=flowers") == ["iris"]  # descriptions are searched too
    assert names("tag=kind=extra") == ["extra-0", "extra-1", "extra-2"]
    assert names("tag=kind") == ["extra-0", "extra-1", "extra-2"]
    assert names("alias=production") == []
    world.registry.promote("iris@1.0.0", "production", reason="first", create=True)
    assert names("alias=production") == ["iris"]
    assert names("sort=-versions")[0] == "iris"
    assert names("sort=-name")[0] == "iris"
    assert client.get("/?sort=bogus").status_code == 400
    from tether.ui import views

    original = views.PAGE_SIZE
    views.PAGE_SIZE = 2
    try:
        first = client.get("/?format=json").json()
        second = client.get("/?format=json&page=2").json()
    finally:
        views.PAGE_SIZE = original
    assert first["pages"] == 2 and len(first["models"]) == 2 and len(second["models"]) == 2
    assert 'rel="next"' in client.get("/").text or first["pages"] == 2


def test_compare_only_differences(world: World) -> None:
    client = world.client("rita")
    full = client.get("/compare.json?v=iris@1.0.0&v=iris@1.1.0").json()
    only = client.get("/compare.json?v=iris@1.0.0&v=iris@1.1.0&only=1").json()
    rows = {s["title"]: s["rows"] for s in full["sections"]}
    only_rows = {s["title"]: s["rows"] for s in only["sections"]}
    assert any(r["same"] for r in rows["environment"])
    assert all(not r["same"] for section in only_rows.values() for r in section)
    assert [r["key"] for r in only_rows["metrics"]] == ["acc", "f1"]
    assert "version" in [r["key"] for r in only_rows["version"]]
    assert only_rows["files"] and len(only_rows["files"]) <= len(rows["files"])
    assert client.get("/compare?v=iris@1.0.0").status_code == 400
    html = client.get("/compare?v=iris@1.0.0&v=iris@1.1.0&only=1").text
    assert 'class="differs"' in html and 'class="same"' not in html


def test_missing_things_are_404_pages(world: World) -> None:
    client = world.client("rita")
    assert client.get("/models/nope").status_code == 404
    assert client.get("/models/iris/versions/9.9.9").status_code == 404
    assert client.get("/models/iris/versions/9.9.9.json").json()["error"] == "not_found"


# -- escaping -----------------------------------------------------------------------


def test_everything_users_wrote_is_escaped(world: World) -> None:
    client = world.client("rita")
    for url in ("/", "/models/iris", "/models/iris/versions/1.1.0", "/audit"):
        html = client.get(url).text
        assert "<script>alert" not in html, url
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in client.get("/models/iris").text
    assert "team=&lt;script&gt;" in client.get("/").text
    assert "notes &lt;script&gt;" in client.get("/models/iris/versions/1.1.0").text
    # The JSON twin carries the text as it was written (JSON, not HTML).
    assert client.get("/models/iris.json").json()["model"]["description"] == f"flowers {XSS}"


def test_a_reason_with_markup_is_escaped_in_the_audit_page(world: World) -> None:
    world.registry.promote("iris@1.0.0", "staging", reason=XSS, create=True)
    html = world.client("rita").get("/audit").text
    assert "<script>alert" not in html and "&lt;script&gt;" in html


# -- roles and CSRF -----------------------------------------------------------------


def test_reader_sees_no_action_buttons_and_a_forged_post_is_refused(world: World) -> None:
    world.registry.promote("iris@1.0.0", "staging", reason="first", create=True)
    world.registry.promote("iris@1.1.0", "staging", reason="second", create=True)
    client = world.client("rita")
    for url in ("/models/iris", "/models/iris/versions/1.1.0"):
        html = client.get(url).text
        for marker in ("promote-form", "approve-form", "deprecate-form", "rollback-staging"):
            assert marker not in html, (url, marker)
        assert "/promote" not in html and "/rollback" not in html
    # A reader who builds the POST by hand (with their own valid CSRF token) is refused.
    csrf = csrf_token(world.tokens["rita"])
    for path, form in (
        ("/models/iris/promote", {"version": "1.0.0", "alias": "staging", "reason": "x"}),
        ("/models/iris/rollback", {"alias": "staging", "reason": "x"}),
        ("/models/iris/approve", {"version": "1.1.0", "alias": "production", "reason": "x"}),
        ("/models/iris/deprecate", {"version": "1.0.0", "reason": "x"}),
    ):
        response = client.post(path, data={**form, "csrf": csrf})
        assert response.status_code == 403, path
        assert "needs role" in response.text
    assert world.registry.alias("iris", "staging")["version"] == "1.1.0"
    assert world.registry.get("iris@1.0.0").status == "ready"


def test_post_without_the_csrf_token_changes_nothing(world: World) -> None:
    client = world.client("admin")
    before = len(world.registry.audit_log())
    form = {"version": "1.0.0", "alias": "staging", "reason": "sneaky"}
    refused = client.post("/models/iris/promote", data=form)
    assert refused.status_code == 403 and "CSRF" in refused.text
    wrong = client.post("/models/iris/promote", data={**form, "csrf": "0" * 40})
    assert wrong.status_code == 403
    cross = client.post(
        "/models/iris/promote",
        data={**form, "csrf": csrf_token(world.tokens["admin"])},
        headers={"origin": "https://evil.example"},
    )
    assert cross.status_code == 403
    anonymous = world.client().post("/models/iris/promote", data=form)
    assert anonymous.status_code == 401
    assert len(world.registry.audit_log()) == before
    assert "staging" not in world.registry.get("iris@1.0.0").aliases


def test_actions_need_a_reason(world: World) -> None:
    client = world.client("admin")
    page = client.get("/models/iris/versions/1.0.0").text
    response = client.post(
        "/models/iris/promote",
        data={"version": "1.0.0", "alias": "staging", "reason": " ", "csrf": _csrf(page)},
    )
    assert response.status_code == 400 and "reason" in response.text


# -- the promotion flow ---------------------------------------------------------------


def test_refused_promotion_lists_every_rule_then_approve_promote_rollback(world: World) -> None:
    reg = world.registry
    reg.promote("iris@1.0.0", "production", reason="first release", create=True)
    reg.set_policy(
        "iris",
        "aliases:\n  production:\n    approvals: 1\n    checks:\n"
        "      - {metric: acc, min: 0.9}\n      - {metric: f1, min: 0.5}\n",
    )
    admin = world.client("admin")
    page = admin.get("/models/iris/versions/1.1.0").text
    assert "promote-form" in page and "approve-form" in page
    refused = admin.post(
        "/models/iris/promote",
        data={"version": "1.1.0", "alias": "production", "reason": "try", "csrf": _csrf(page)},
    )
    assert refused.status_code == 403
    rules = re.findall(r"<li>(.*?)</li>", refused.text.split('data-testid="rules"')[1])
    assert len(rules) == 2
    assert "needs 1 approval(s)" in rules[0] and "acc = 0.8 is below the minimum 0.9" in rules[1]
    assert "tether policy show iris" in refused.text  # the hint, as the CLI prints it
    json_refusal = admin.post(
        "/models/iris/promote?format=json",
        data={"version": "1.1.0", "alias": "production", "reason": "try", "csrf": _csrf(page)},
    ).json()
    assert json_refusal["error"] == "policy_violation" and len(json_refusal["rules"]) == 2

    # Lower the bar, approve as another user, then promote and roll back.
    reg.set_policy("iris", "aliases:\n  production:\n    approvals: 1\n")
    amy = world.client("amy")
    amy_page = amy.get("/models/iris/versions/1.1.0").text
    assert "approve-form" in amy_page
    approved = amy.post(
        "/models/iris/approve",
        data={"version": "1.1.0", "alias": "production", "reason": "looks good",
              "csrf": _csrf(amy_page)},
    )
    assert approved.status_code == 200 and "approved iris@1.1.0 for production" in approved.text
    promoted = admin.post(
        "/models/iris/promote",
        data={"version": "1.1.0", "alias": "production", "reason": "ship it", "csrf": _csrf(page)},
    )
    assert promoted.status_code == 200, promoted.text
    assert "iris@production → 1.1.0 (was 1.0.0)" in promoted.text
    assert reg.alias("iris", "production")["version"] == "1.1.0"

    model_page = admin.get("/models/iris").text
    assert 'data-testid="rollback-production"' in model_page
    rolled = admin.post(
        "/models/iris/rollback",
        data={"alias": "production", "reason": "latency", "csrf": _csrf(model_page)},
    )
    assert rolled.status_code == 200 and "→ 1.0.0 (was 1.1.0)" in rolled.text
    assert reg.alias("iris", "production")["version"] == "1.0.0"

    events = admin.get("/audit.json?model=iris").json()["events"]
    actions = [(e["action"], e["actor"]) for e in events[:3]]
    assert actions == [
        ("alias.rollback", reg.actor),
        ("alias.set", reg.actor),
        ("version.approved", "amy"),
    ]
    assert events[0]["details"]["reason"] == "latency"
    audit = admin.get("/audit.json").json()
    assert audit["verification"]["ok"] is True

    history = admin.get("/models/iris.json").json()["aliases"][0]["history"]
    assert [m["action"] for m in history][:3] == ["rollback", "set", "set"]
    assert any(m["undone"] for m in history)


def test_contributor_cannot_move_a_protected_alias_but_can_move_others(world: World) -> None:
    carl = world.client("carl")
    page = carl.get("/models/iris/versions/1.1.0").text
    assert "promote-form" in page and "approve-form" not in page
    csrf = _csrf(page)
    refused = carl.post(
        "/models/iris/promote",
        data={"version": "1.1.0", "alias": "production", "reason": "x", "csrf": csrf},
    )
    assert refused.status_code == 403 and "needs role approver" in refused.text
    done = carl.post(
        "/models/iris/promote",
        data={"version": "1.1.0", "alias": "staging", "reason": "x", "csrf": csrf},
    )
    assert done.status_code == 404 and "create" in done.text  # a typo never makes an alias
    done = carl.post(
        "/models/iris/promote",
        data={"version": "1.1.0", "alias": "staging", "reason": "x", "csrf": csrf, "create": "1"},
    )
    assert done.status_code == 200
    assert world.registry.alias("iris", "staging")["version"] == "1.1.0"


def test_deprecate_and_undo_from_the_version_page(world: World) -> None:
    amy = world.client("amy")
    page = amy.get("/models/iris/versions/1.0.0").text
    done = amy.post(
        "/models/iris/deprecate", data={"version": "1.0.0", "reason": "old", "csrf": _csrf(page)}
    )
    assert done.status_code == 200 and "now deprecated" in done.text
    page = amy.get("/models/iris/versions/1.0.0").text
    assert "Undeprecate" in page
    amy.post(
        "/models/iris/deprecate",
        data={"version": "1.0.0", "reason": "needed", "undo": "1", "csrf": _csrf(page)},
    )
    assert world.registry.get("iris@1.0.0").status == "ready"
    events = world.registry.audit_log(model="iris", action="version.")
    assert [e.action for e in events[:2]] == ["version.undeprecated", "version.deprecated"]
    assert events[1].actor == "amy" and events[1].details["reason"] == "old"


def test_revoked_token_signs_out(world: World) -> None:
    import time

    from tether.ui import app as ui_app

    client = world.client("rita")
    assert client.get("/").status_code == 200
    world.registry.revoke_token(world.tokens["rita"][:10])
    ui_app_instance = client.app.state.ui  # type: ignore[attr-defined]
    ui_app_instance._auth_cache.clear()
    assert ui_app.AUTH_CACHE_SECONDS < 60 and time.monotonic() > 0
    assert client.get("/", follow_redirects=False).status_code == 303


def test_sign_out_ends_the_session_for_every_copy_of_its_cookie(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The harm: sign-out only deleted the cookie in that browser; a copy of it (another
    profile, a proxy's log) went on working as long as the API token did."""
    from tether.ui import sessions

    client = world.client("rita")
    cookie = client.cookies.get("tether_ui")
    assert cookie
    copy = TestClient(create_ui_app(lambda: world.registry), base_url="http://testserver")
    copy.cookies.set("tether_ui", cookie)
    assert copy.get("/", follow_redirects=False).status_code == 200  # the copy works...
    page = client.get("/").text
    assert client.post("/logout", data={"csrf": _csrf(page)},
                       follow_redirects=False).status_code == 303
    assert copy.get("/", follow_redirects=False).status_code == 303  # ...until sign-out
    assert world.client("rita").get("/", follow_redirects=False).status_code == 200  # a new one

    # One row a token, however often it signs in and out (a review: a row a session
    # let any token holder fill the table), and sign-outs at once are no 500 (a review:
    # PostgreSQL's key clash).
    import threading

    import sqlalchemy as sa

    from tether._metadata.schema import ui_signouts

    for _ in range(3):
        again = world.client("rita")
        again.post("/logout", data={"csrf": _csrf(again.get("/").text)})
    racing = world.client("rita")
    form = {"csrf": _csrf(racing.get("/").text)}
    cookie = racing.cookies.get("tether_ui")
    codes: list[int] = []

    def sign_out() -> None:
        one = TestClient(create_ui_app(lambda: world.registry), base_url="http://testserver")
        one.cookies.set("tether_ui", cookie)
        codes.append(one.post("/logout", data=form, follow_redirects=False).status_code)

    threads = [threading.Thread(target=sign_out) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes == [303] * 6
    with world.registry.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ui_signouts)).scalar() == 1

    # A session lasts SESSION_SECONDS, whatever the token's own lifetime.
    fresh = world.client("rita")
    monkeypatch.setattr(sessions, "SESSION_SECONDS", -1)
    assert fresh.get("/", follow_redirects=False).status_code == 303


def test_deployments_pages_show_routes_signatures_replicas_and_revisions(
        world: World, tmp_path: Path) -> None:
    from tether._signing import generate_key

    registry = world.registry
    first = registry.get("iris@1.0.0")
    spec = {"endpoints": {"iris": {
        "routes": [{"name": "stable", "target": first.ref, "weight": 90},
                   {"name": "canary", "target": "iris@1.1.0", "weight": 10}],
        "shadow": [{"target": "iris@1.1.0", "sample": 0.5}], "trusted": True,
        "rollback": {"rules": ["error_rate > 0.05"]}}}}
    registry.apply_deployment("svc", spec, reason="first")
    key, public, key_id = generate_key(tmp_path / "release.key")
    registry.trust_key("release", public.read_text())
    registry.sign_deployment("svc", str(key), expires_in="30d")
    registry.replica_heartbeat("svc", "r1", host="node-1", pid=7, info={
        "ready": True, "revision": 2, "leader": True,
        "routes": {"iris/canary": {"ref": "iris@1.1.0", "status": "ready",
                                   "problem": f"refused {XSS}"}}})
    client = world.client("rita")
    listing = client.get("/deployments")
    assert listing.status_code == 200 and 'href="/deployments/svc"' in listing.text
    page = client.get("/deployments/svc")
    assert page.status_code == 200
    html = page.text
    for shown in ("trusted", "90%", "10%", "copy of 50% (shadow)", "error_rate &gt; 0.05",
                  key_id, "node-1", "Revision", "sign", "apply"):
        assert shown in html, shown
    assert XSS not in html and "&lt;script&gt;" in html  # a replica's report is text
    data = client.get("/deployments/svc?format=json").json()
    assert data["signatures"][0]["endpoints"] == {"iris": 2}
    assert data["replicas"][0]["routes"]["iris/canary"]["problem"] == f"refused {XSS}"
    assert [h["action"] for h in data["history"]] == ["sign", "apply"]
    assert client.get("/deployments/nope").status_code == 404
    assert world.client().get("/deployments", follow_redirects=False).status_code == 303


def test_forms_that_move_an_alias_follow_its_policy_roles(world: World) -> None:
    """An approver was shown a rollback button the alias's policy (roles: [admin])
    refused once pressed (a review)."""
    registry = world.registry
    registry.promote("iris@1.0.0", "production", create=True)
    registry.promote("iris@1.1.0", "production")
    amy = world.client("amy")
    assert 'data-testid="rollback-production"' in amy.get("/models/iris").text
    registry.set_policy("iris", "aliases:\n  production:\n    roles: [admin]\n")
    assert 'data-testid="rollback-production"' not in amy.get("/models/iris").text
    assert 'data-testid="rollback-production"' in world.client("admin").get(
        "/models/iris").text


def test_mounted_under_a_prefix_links_follow(world: World) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    outer = Starlette(routes=[Mount("/ui", app=create_ui_app(lambda: world.registry))])
    client = TestClient(outer)
    login = client.post(
        "/ui/login", data={"token": world.tokens["rita"], "next": "/ui/"}, follow_redirects=False
    )
    assert login.headers["location"] == "/ui/" and "Path=/ui" in login.headers["set-cookie"]
    html = client.get("/ui/").text
    assert 'href="/ui/models/iris"' in html and 'href="/ui/static/ui.css"' in html
    assert client.get("/ui/static/ui.js").status_code == 200


def test_tether_ui_command_is_registered() -> None:
    from click.testing import CliRunner

    from tether.cli import cli

    result = CliRunner().invoke(cli, ["ui", "--help"])
    assert result.exit_code == 0 and "127.0.0.1" in result.output


def test_search_models_pages_in_sql(world: World) -> None:
    reg = world.registry
    total, page = reg.search_models(sort="name", offset=1, limit=2)
    assert total == 4 and [m.name for m in page] == ["extra-1", "extra-2"]
    assert reg.search_models(query="%")[0] == 0  # LIKE wildcards are plain text
    assert reg.search_models(query="FLOWERS")[0] == 1
    assert [m.name for m in reg.search_models(tag="kind=extra", limit=1)[1]] == ["extra-0"]
    assert reg.search_models(tag="kind=other")[0] == 0
    top = reg.search_models(sort="-versions", limit=1)[1][0]
    assert top.name == "iris" and top.version_count == 2 and top.latest == "1.1.0"
    assert reg.model("iris").description.startswith("flowers")
    with pytest.raises(Exception, match="sort"):
        reg.search_models(sort="size")


def test_audit_chain_result_is_kept_until_the_chain_grows(world: World) -> None:
    client = world.client("rita")
    first = client.get("/audit.json").json()["verification"]
    assert first["ok"] is True and first["fresh"] is True
    from tether.ui import views

    original = views.ChainVerifier.AUTO_EVENTS
    views.ChainVerifier.AUTO_EVENTS = 0  # pretend the chain is long
    try:
        world.registry.promote("iris@1.0.0", "staging", reason="grow", create=True)
        stale = client.get("/audit.json").json()["verification"]
        assert stale["fresh"] is False and stale["newest"] > stale["head"]
        assert "Verify the chain now" in client.get("/audit").text
        again = client.get("/audit.json?verify=1").json()["verification"]
        assert again["fresh"] is True and again["ok"] is True
    finally:
        views.ChainVerifier.AUTO_EVENTS = original


# -- the UI served by a real `tether server` process -----------------------------------


def test_ui_served_by_a_real_tether_server_at_the_root(
    pg_database: str, tmp_path: Path, iris: tuple[Any, Any]
) -> None:
    import httpx

    from .servers import start_server, stop

    server = start_server(pg_database, f"file://{tmp_path / 'objects'}", tmp_path)
    try:
        server.client().log_model(fit_logreg(iris), "iris", metrics={"acc": 0.9}, progress=False)
        with httpx.Client(base_url=server.url, timeout=30) as browser:
            assert browser.get("/models/iris").status_code == 303  # not signed in
            login = browser.post("/login", data={"token": server.admin_token, "next": "/"})
            assert login.status_code == 303 and "HttpOnly" in login.headers["set-cookie"]
            page = browser.get("/models/iris")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert 'data-testid="principal">root@team<' in page.text and "1.0.0" in page.text
            assert "promote-form" in browser.get("/models/iris/versions/1.0.0").text
            # The API next to it is untouched by the mount.
            assert server.api("GET", "/api/v1/health").status_code == 200

            form = {"version": "1.0.0", "alias": "staging", "reason": "forged", "create": "1"}
            assert browser.post("/models/iris/promote", data=form).status_code == 403
            csrf = _csrf(browser.get("/models/iris/versions/1.0.0").text)
            cross = browser.post(
                "/models/iris/promote", data={**form, "csrf": csrf},
                headers={"origin": "https://evil.example"},
            )
            assert cross.status_code == 403
            # A forged request from another site carries no cookie (SameSite=Strict) and no
            # token; a bearer token alone does not make a UI session either.
            anonymous = httpx.post(
                f"{server.url}/models/iris/promote", data={**form, "csrf": csrf},
                headers={"authorization": f"Bearer {server.admin_token}"}, timeout=30,
            )
            assert anonymous.status_code == 401
            assert "staging" not in server.client().get("iris@1.0.0").aliases

            done = browser.post("/models/iris/promote", data={**form, "csrf": csrf,
                                                             "reason": "from the UI"})
            assert done.status_code == 200, done.text
        event = server.client().audit_log(model="iris", limit=1)[0]
        assert (event.action, event.actor) == ("alias.set", "root@team")
        assert event.details["reason"] == "from the UI"
    finally:
        stop(server)


def test_version_summaries_match_whole_versions(world: World) -> None:
    from tether._registry.model_search import version_summaries

    reg = world.registry
    reg.promote("iris@1.0.0", "production", reason="first", create=True)
    whole = reg.versions("iris")
    light = version_summaries(reg, "iris")
    assert [(s.ref, s.seq, s.short_digest, s.metrics, s.aliases, s.status, s.author)
            for s in light] == [
        (v.ref, v.seq, v.short_digest, v.metrics, v.aliases, v.status, v.author) for v in whole
    ]
    assert light[0].aliases == ("production",)
    with pytest.raises(Exception, match="no model named"):
        version_summaries(reg, "nope")


def test_the_indexes_big_registries_need_are_there(world: World) -> None:
    import sqlalchemy as sa

    inspector = sa.inspect(world.registry.engine)
    found = {
        (table, index["name"], tuple(index["column_names"]))
        for table in ("versions", "events", "alias_moves", "aliases", "models")
        for index in inspector.get_indexes(table)
    }
    assert {
        ("versions", "ix_versions_model_status_seq", ("model_id", "status", "seq")),
        ("events", "ix_events_model_id", ("model", "id")),
        ("alias_moves", "ix_alias_moves_model_alias_id", ("model_id", "alias", "id")),
        ("aliases", "ix_aliases_name", ("name",)),
        ("models", "ix_models_updated_at", ("updated_at",)),
        ("models", "ix_models_created_at", ("created_at",)),
    } <= found


def test_version_page_shows_valid_signatures(world: World, tmp_path: Path) -> None:
    from tether._signing import generate_key

    private, public, _ = generate_key(tmp_path / "release")
    world.registry.trust_key("release", public.read_text())
    world.registry.sign("iris@1.1.0", str(private))
    client = world.client("rita")
    signed = client.get("/models/iris/versions/1.1.0.json").json()["signatures"]
    assert signed == {"valid": ["release"], "problems": []}
    assert "Signed by: release" in client.get("/models/iris/versions/1.1.0").text
    assert client.get("/models/iris/versions/1.0.0.json").json()["signatures"]["valid"] == []


def test_all_models_in_three_queries_answers_as_one_model_at_a_time(world: World) -> None:
    from tether._registry.model_search import all_models, model_info

    reg = world.registry
    reg.promote("iris@1.1.0", "production", reason="first", create=True)
    reg.delete_version("iris@1.0.0")
    assert all_models(reg) == reg.models() == [model_info(reg, m.name) for m in reg.models()]
    iris = next(m for m in all_models(reg) if m.name == "iris")
    assert (iris.version_count, iris.latest, iris.aliases) == (1, "1.1.0", {"production": "1.1.0"})
    assert reg.search_models(query="iris")[1] == [iris]


def test_version_page_names_the_datasets_a_version_was_trained_on(
    world: World, tmp_path: Path, iris: tuple[Any, Any]
) -> None:
    folder = tmp_path / "events"
    folder.mkdir()
    (folder / "events.csv").write_text("amount,label\n1.5,1\n")
    world.registry.add_dataset(folder, "events")
    with world.registry.open_dataset("events@1", "events.csv") as handle:
        handle.read()
    version = world.registry.log_model(fit_logreg(iris, C=0.3), "iris", progress=False,
                                       data={"holdout": str(folder / "events.csv")})
    page = world.client("rita").get(f"/models/iris/versions/{version.semver}").text
    row = re.search(r'<tr data-testid="data-events">.*?</tr>', page)
    assert row and "dataset events@1.0.0" in row.group(0)
    assert "read in the training process" in row.group(0)
    held = re.search(r'<tr data-testid="data-holdout">.*?</tr>', page)
    assert held and "events.csv" in held.group(0) and "dataset" not in held.group(0)


# -- a later review: pages bounded by aliases and events, a verifier not poisoned -----


def test_a_model_page_shows_a_bounded_number_of_aliases_and_moves(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """1,000 aliases took the page 4.6 s, one alias moved 4,000 times 1 MB; a version's
    page listed every event about it (4,002 after as many moves) (a review)."""
    from tether.ui import views

    monkeypatch.setattr(views, "ALIASES_SHOWN", 2, raising=False)
    monkeypatch.setattr(views, "HISTORY_SHOWN", 3, raising=False)
    monkeypatch.setattr(views, "EVENTS_SHOWN", 4, raising=False)
    reg = world.registry
    for alias in ("a1", "a2", "a3"):
        reg.promote("iris@1.0.0", alias, create=True)
    for _ in range(3):
        reg.promote("iris@1.1.0", "a1")
        reg.promote("iris@1.0.0", "a1")
    page = world.client("rita").get("/models/iris?format=json").json()
    assert [a["name"] for a in page["aliases"]] == ["a1", "a2"]
    assert page["aliases_total"] == 3 and len(page["aliases"][0]["history"]) == 3
    assert "1 more aliases" in world.client("rita").get("/models/iris").text
    version = world.client("rita").get("/models/iris/versions/1.0.0.json").json()
    assert len(version["events"]) == 4


def test_a_scoped_reader_neither_verifies_nor_poisons_the_verified_chain(world: World) -> None:
    """A reader of one model got "Chain verification FAILED" (its permission error), and
    the result, cached for the registry, showed every admin the same (a review)."""
    reg = world.registry
    scoped = reg.create_token("sam", role="reader", model="iris")["token"]
    world.tokens["sam"] = scoped
    reg.promote("iris@1.0.0", "staging", create=True)  # the newest event: iris's
    sam = world.client("sam").get("/audit?format=json").json()["verification"]
    assert sam["ok"] is None and sam["needs_role"]
    assert "needs a reader of the whole registry" in world.client("sam").get("/audit").text
    admin = world.client("admin").get("/audit?format=json").json()["verification"]
    assert admin["ok"] is True, admin


def test_a_nul_in_a_name_or_search_is_a_400(world: World) -> None:
    """On PostgreSQL `/?q=%00` and `/models/a%00` were 500s with a traceback (a review)."""
    client = world.client("rita")
    for path in ("/?q=%00", "/?alias=a%00", "/models/a%00", "/audit?model=a%00",
                 "/compare?v=a%00@1&v=iris@1"):
        answer = client.get(path)
        assert answer.status_code == 400, (path, answer.status_code)


def test_another_site_cannot_sign_the_browser_out(world: World) -> None:
    """The cookie is not sent cross-site, so no session was seen, the token check skipped,
    and the cookie cleared: another site's page signed the browser out (a review)."""
    stranger = world.client()  # the browser on another site's page: no cookie sent
    answer = stranger.post("/logout", data={"csrf": "x"}, follow_redirects=False,
                           headers={"Origin": "http://evil.example"})
    assert answer.status_code == 403, answer.status_code
    assert "set-cookie" not in answer.headers  # nothing that clears the cookie


def test_a_chart_of_a_metric_some_versions_lack_spreads_over_those_that_have_it(
        world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The sample was picked before the metric was known, then thinned to the versions
    that had it: a metric on every other version drew one point of six (a review)."""
    from tether.ui import views

    for i in range(12):
        (tmp_path / "w.bin").write_bytes(b"sparse%d" % i)
        metrics = {"acc": i / 20, **({"latency_ms": float(i)} if i % 2 else {})}
        world.registry.log_model(tmp_path / "w.bin", "sparse", metrics=metrics,
                                 progress=False)
    monkeypatch.setattr(views, "CHART_POINTS", 6, raising=False)
    page = world.client("rita").get("/models/sparse?format=json&chart=latency_ms").json()
    assert [p["seq"] for p in page["chart"]["points"]] == [2, 4, 6, 8, 10, 12]
