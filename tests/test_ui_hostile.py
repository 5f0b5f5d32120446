"""The web UI and the server under it, attacked the way a review did (each failing before):

- another site's page writing through the API of an ``--open-access`` server (a JSON body
  sent as text/plain needs no CORS preflight), or signing the browser in as its own user;
- a rollback form reloaded or sent twice rolling back twice;
- the cookie holding the API token itself, which browsers send to every port of the host;
- an approval naming a missing version listing a model's versions to a caller with no role;
- a page number past 64 bits.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.testclient import TestClient

from tether import Registry
from tether.server.app import create_app
from tether.ui import create_ui_app
from tether.ui.app import COOKIE

from .conftest import fit_logreg, wait_until

EVIL = {"origin": "http://evil.example"}


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def _signed_in(app: Any, token: str) -> TestClient:
    client = TestClient(app, base_url="http://testserver")
    answer = client.post("/login", data={"token": token, "next": "/"}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return client


def test_another_sites_page_cannot_write_through_an_open_access_server(
    registry: Registry, iris: tuple[Any, Any]
) -> None:
    version = registry.log_model(fit_logreg(iris), "iris", progress=False)
    client = TestClient(create_app(registry, open_access=True), base_url="http://testserver")
    body = '{"args": ["iris@1.0.0"], "kwargs": {"reason": "x"}}'
    for headers in (EVIL, {"origin": "null"}, {"sec-fetch-site": "cross-site"}):
        refused = client.post("/api/v1/call/deprecate", content=body,
                              headers={"content-type": "text/plain", **headers})
        assert refused.status_code == 403, refused.text
        assert "another site's page" in refused.json()["message"]
    assert registry.get(version.ref).status == "ready"
    # A client (no Origin) and the site's own pages still write.
    for headers in ({}, {"origin": "http://testserver"}):
        done = client.post("/api/v1/call/update_model",
                           json={"args": ["iris"], "kwargs": {"description": "ok"}},
                           headers=headers)
        assert done.status_code == 200, done.text


def test_another_sites_page_cannot_sign_the_browser_in(registry: Registry) -> None:
    token = registry.create_token("mallory", role="reader")["token"]
    client = TestClient(create_ui_app(lambda: registry), base_url="http://testserver")
    swapped = client.post("/login", data={"token": token, "next": "/audit"}, headers=EVIL,
                          follow_redirects=False)
    assert swapped.status_code == 403 and "set-cookie" not in swapped.headers
    assert COOKIE not in client.cookies


def test_the_cookie_is_not_the_api_token(registry: Registry) -> None:
    token = registry.create_token("rita", role="reader")["token"]
    client = _signed_in(create_ui_app(lambda: registry), token)
    cookie = client.cookies[COOKIE]
    assert token not in cookie
    # What another local service received could not call the registry as rita.
    api = TestClient(create_app(registry), base_url="http://testserver")
    assert api.get("/api/v1/whoami", headers={"authorization": f"Bearer {cookie}"}
                   ).status_code == 401
    assert api.get("/api/v1/whoami", headers={"authorization": f"Bearer {token}"}
                   ).status_code == 200
    # Another registry's UI (another key) takes it for no one.
    other = TestClient(create_ui_app(lambda: registry), base_url="http://testserver")
    other.cookies.set(COOKIE, cookie[:-4] + "AAAA")
    assert other.get("/", follow_redirects=False).status_code == 303


def test_a_rollback_form_sent_twice_rolls_back_once(
    registry: Registry, iris: tuple[Any, Any]
) -> None:
    for C in (1.0, 0.5, 0.1):
        version = registry.log_model(fit_logreg(iris, C=C), "iris", progress=False)
        registry.promote(version.ref, "exp", create=True)
    admin = registry.create_token(registry.actor)["token"]
    client = _signed_in(create_ui_app(lambda: registry), admin)
    page = client.get("/models/iris").text
    generation = re.search(r'name="generation" value="(\d+)"', page)
    assert generation, "the rollback form carries the alias's generation"
    form = {"csrf": _csrf(page), "alias": "exp", "reason": "bad", "generation":
            generation.group(1)}
    first = client.post("/models/iris/rollback", data=form)
    assert first.status_code == 200 and "→ 1.1.0 (was 1.2.0)" in first.text
    again = client.post("/models/iris/rollback", data=form)  # a reload of the Done page
    assert again.status_code == 409 and "moved since generation" in again.text
    assert registry.get("iris@exp").semver == "1.1.0"


def test_an_approval_without_a_role_lists_nothing(
    registry: Registry, iris: tuple[Any, Any]
) -> None:
    registry.log_model(fit_logreg(iris), "other", progress=False)
    registry.log_model(fit_logreg(iris), "fraud", progress=False)
    sam = registry.create_token("sam", role="contributor", model="fraud")["token"]
    client = _signed_in(create_ui_app(lambda: registry), sam)
    csrf = _csrf(client.get("/models/fraud").text)
    answer = client.post("/models/other/approve", data={
        "csrf": csrf, "alias": "production", "version": "9.9.9", "reason": "x"})
    assert answer.status_code == 403, answer.text
    assert "1.0.0" not in answer.text and "versions:" not in answer.text


def test_a_page_number_past_64_bits_is_the_last_page(registry: Registry) -> None:
    admin = registry.create_token(registry.actor)["token"]
    client = _signed_in(create_ui_app(lambda: registry), admin)
    answer = client.get("/?page=" + "9" * 30)
    assert answer.status_code == 200, answer.text


def test_the_token_tether_ui_makes_ends_with_it(registry: Registry, tmp_path: Any) -> None:
    """Each start minted an admin's 12-hour token that stayed valid after the command
    ended (printed in a terminal's scrollback)."""
    import signal
    import subprocess
    import time

    import httpx

    from tether._registry import tokens as token_store

    from .conftest import free_port, subprocess_env, tether_exe

    port = free_port()
    proc = subprocess.Popen(
        [tether_exe(), "-r", str(registry.location.root), "ui", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=subprocess_env(TETHER_USER=registry.actor))
    try:
        assert proc.stdout is not None
        token = ""
        deadline = time.time() + 30
        while not token.startswith("tth_") and time.time() < deadline:
            token = proc.stdout.readline().strip()
        assert token.startswith("tth_"), proc.stderr.read() if proc.poll() is not None else ""
        assert token_store.authenticate(registry, token) == registry.actor
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/login", timeout=1) is not None,
                   timeout=max(1.0, deadline - time.time()), ignoring=(httpx.HTTPError,))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    try:
        token_store.authenticate(registry, token)
    except token_store.Unauthenticated:
        pass
    else:
        raise AssertionError("the token outlived `tether ui`")


def test_a_reader_of_one_model_can_use_the_ui_and_sees_only_that_model(
    registry: Registry, iris: tuple[Any, Any]
) -> None:
    """The home page, the audit log and every version page listed or read registry-wide,
    so a reader scoped to one model was refused all three."""
    registry.log_model(fit_logreg(iris), "fraud", progress=False)
    registry.log_model(fit_logreg(iris), "other", progress=False)
    sam = registry.create_token("sam", role="reader", model="fraud")["token"]
    client = _signed_in(create_ui_app(lambda: registry), sam)
    for path in ("/", "/audit", "/models/fraud", "/models/fraud/versions/1.0.0"):
        page = client.get(path)
        assert page.status_code == 200, (path, page.text[:300])
        assert "other" not in page.text, path
    assert [m["name"] for m in client.get("/?format=json").json()["models"]] == ["fraud"]
    events = client.get("/audit?format=json").json()["events"]
    assert events and {e["model"] for e in events} == {"fraud"}
    assert client.get("/models/other").status_code == 403
    nobody = registry.create_token("nobody@example.com")["token"]  # no role anywhere
    assert _signed_in(create_ui_app(lambda: registry), nobody).get("/").status_code == 403


def test_the_sites_own_pages_behind_a_reverse_proxy_are_not_taken_for_another_site(
    registry: Registry
) -> None:
    """The first cross-site check compared Origin with Host only: behind a proxy that
    rewrites Host (nginx's default) every sign-in and action was refused."""
    token = registry.create_token(registry.actor)["token"]
    public = {"origin": "https://tether.example.com", "x-forwarded-host": "tether.example.com"}
    for app in (create_ui_app(lambda: registry), create_app(registry)):
        client = TestClient(app, base_url="http://127.0.0.1:8080")
        for headers in (public, {"origin": "https://tether.example.com",
                                 "host": "tether.example.com:443"},
                        {"origin": "https://tether.example.com",
                         "sec-fetch-site": "same-origin"}):
            signed = client.post("/login", data={"token": token, "next": "/"}, headers=headers,
                                 follow_redirects=False)
            assert signed.status_code == 303, (headers, signed.text)
        other = client.post("/login", data={"token": token, "next": "/"}, follow_redirects=False,
                            headers={"origin": "https://evil.example",
                                     "x-forwarded-host": "tether.example.com"})
        assert other.status_code == 403


def test_pages_survive_values_json_cannot_hold_and_rows_of_the_wrong_shape(
        registry: Registry, iris: tuple[Any, Any]) -> None:
    """A version logged with a missing value in its input example answered its JSON twin
    with a bare 500 (JSON has no NaN), and rows written by another hand (tags a string,
    metrics a list, an audit event's details a string, a deployment without endpoints)
    failed whole pages, even the deployments list (a review)."""
    import json as _json

    import numpy as np
    import sqlalchemy as sa

    from tether._metadata.schema import deployments, events, versions

    X, _ = iris
    example = X.head(3).copy()
    example.iloc[0, 0] = np.nan
    nan = registry.log_model(fit_logreg(iris), "nanny", input_example=example,
                             params={"alpha": float("inf")})
    other = registry.log_model(fit_logreg(iris, C=0.5), "nanny")
    admin = registry.create_token(registry.actor)["token"]
    client = _signed_in(create_ui_app(lambda: registry), admin)
    twin = client.get(f"/models/nanny/versions/{nan.semver}?format=json")
    assert twin.status_code == 200, twin.text
    assert twin.json()["version"]["params"]["alpha"] is None
    registry.apply_deployment("svc", {"endpoints": {"nanny": {"routes": [
        {"name": "main", "target": other.ref, "weight": 100}]}}})
    registry.apply_deployment("broken", {"endpoints": {"nanny": {"routes": [
        {"name": "main", "target": other.ref, "weight": 100}]}}})
    with registry.engine.begin() as conn:  # what an older database, or another hand, holds
        conn.execute(versions.update().where(versions.c.seq == other.seq).values(
            tags=_json.dumps("a string"), metrics=_json.dumps([1, 2])))
        conn.execute(events.update().where(events.c.id == conn.execute(
            sa.select(sa.func.max(events.c.id))).scalar()).values(details=_json.dumps("x")))
        conn.execute(deployments.update().where(deployments.c.name == "broken").values(
            spec="{}", paused="null"))
    for path in ("/models/nanny", f"/models/nanny/versions/{other.semver}",
                 f"/models/nanny/versions/{nan.semver}", "/deployments",
                 f"/compare?v=nanny@{nan.semver}&v=nanny@{other.semver}"):
        for suffix in ("", "&format=json" if "?" in path else "?format=json"):
            answer = client.get(path + suffix)
            assert answer.status_code == 200, (path + suffix, answer.text[:300])
    assert "svc" in client.get("/deployments").text


def test_an_odd_token_row_or_deployment_spec_gives_a_page_that_says_so(
        registry: Registry, iris: tuple[Any, Any]) -> None:
    """An unreadable token expiry answered every page a bare 500, and a deployment's page
    (not only the list) failed on a spec without endpoints (a review)."""
    import sqlalchemy as sa

    from tether._metadata.schema import deployments, tokens

    version = registry.log_model(fit_logreg(iris), "m")
    registry.apply_deployment("broken", {"endpoints": {"m": {"routes": [
        {"name": "main", "target": version.ref, "weight": 100}]}}})
    admin = registry.create_token(registry.actor)["token"]
    odd = registry.create_token("olga@example.com", role="reader")["token"]
    client = _signed_in(create_ui_app(lambda: registry), admin)
    with registry.engine.begin() as conn:
        conn.execute(deployments.update().values(spec="{}"))
        conn.execute(tokens.update().where(tokens.c.principal == "olga@example.com")
                     .values(expires_at="not a date"))
    page = client.get("/deployments/broken")
    assert page.status_code == 500 and "stored record is unreadable" in page.text
    assert client.get("/deployments").status_code == 200
    other = TestClient(create_ui_app(lambda: registry), base_url="http://testserver")
    login = other.post("/login", data={"token": odd, "next": "/"}, follow_redirects=False)
    assert login.status_code in (200, 400, 401) and "Internal Server Error" not in login.text
    assert sa  # used for the updates above
