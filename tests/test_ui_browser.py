"""The web UI in a real headless Chromium (Debian's chromium + chromedriver, via Selenium).

Walks the issue's path: sign in, search, open a model, compare two versions with
"only differences", promote against a failing policy and read the rules, approve
as another user, promote, roll back, and find each step in the audit page.
Screenshots of the main pages are taken on every run; they replace the ones in
docs/ui/ only with TETHER_UPDATE_SCREENSHOTS=1, so a test run leaves the checkout
as it found it.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tether import Registry
from tether._registry import catalog

from .conftest import fit_logreg, free_port, repo_root

CHROMIUM = os.environ.get("TETHER_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TETHER_CHROMEDRIVER", "/usr/bin/chromedriver")
SHOTS = (
    repo_root() / "docs" / "ui"
    if os.environ.get("TETHER_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / f"tether-ui-shots-{os.getpid()}"
)

if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip(
        f"headless Chromium not found ({CHROMIUM}, {CHROMEDRIVER}); "
        "install it with `apt-get install -y chromium chromium-driver`",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a dev dependency")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow



@pytest.fixture
def site(registry: Registry, iris: tuple[Any, Any]) -> Iterator[tuple[str, dict[str, str]]]:
    import uvicorn

    from tether.ui import create_ui_app

    X, _ = iris
    for C, acc, f1, notes in (
        (1.0, 0.95, 0.93, "baseline"),
        (0.5, 0.97, 0.95, "more regularisation, better on the holdout"),
        (0.01, 0.80, 0.71, "too much regularisation"),
    ):
        registry.log_model(
            fit_logreg(iris, C=C), "iris", metrics={"acc": acc, "f1": f1, "latency_ms": 3 + C},
            params={"C": C}, input_example=X.head(3), progress=False, notes=notes,
        )
    catalog.update_model(
        registry, "iris", description="Iris species classifier (logistic regression)",
        set_tags={"team": "botany", "stage": "prod"},
    )
    for name, tags in (("fraud-detector", {"team": "risk"}), ("churn", {"team": "growth"}),
                       ("ranker", {"team": "search"})):
        catalog.create_model(registry, name, description=f"{name} model", tags=tags)
    registry.promote("iris@1.0.0", "production", reason="first release", create=True)
    registry.promote("iris@1.0.0", "staging", reason="first release", create=True)
    registry.set_policy(
        "iris",
        "aliases:\n  production:\n    roles: [approver]\n    approvals: 1\n    checks:\n"
        "      - {metric: acc, min: 0.9}\n      - {metric: acc, not_worse_than_current: 0.02}\n",
    )
    tokens = {
        "admin": registry.create_token(registry.actor)["token"],
        "amy": registry.create_token("amy@example.com", role="approver")["token"],
    }
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_ui_app(lambda: registry), host="127.0.0.1", port=port,
                       log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", tokens
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--disable-gpu", "--window-size=1280,1000", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: Any, name: str, width: int = 1280) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(max(int(height) + 40, 600), 2400))
    driver.save_screenshot(str(SHOTS / f"{name}.png"))
    driver.set_window_size(1280, 1000)


def _sign_in(driver: Any, url: str, token: str, *, here: bool = False) -> None:
    if not here:
        driver.get(f"{url}/login")
    field = driver.find_element(By.ID, "token")
    field.send_keys(token)
    field.send_keys(Keys.ENTER)  # the keyboard is enough
    WebDriverWait(driver, 10).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=principal]"))
    )


def _sign_out(driver: Any) -> None:
    driver.find_element(By.CSS_SELECTOR, "form.who button").click()
    WebDriverWait(driver, 10).until(EC.presence_of_element_located((By.ID, "token")))


def _fill_and_submit(driver: Any, form: str, **fields: str) -> None:
    root = driver.find_element(By.CSS_SELECTOR, f"[data-testid={form}]")
    for testid, value in fields.items():
        box = root.find_element(By.CSS_SELECTOR, f"[data-testid={testid}]")
        box.clear()
        box.send_keys(value)
    root.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def test_browser_walkthrough(site: tuple[str, dict[str, str]], browser: Any) -> None:
    url, tokens = site
    wait = WebDriverWait(browser, 10)

    # Not signed in: sent to the sign-in page, which needs no JavaScript to work.
    browser.get(f"{url}/models/iris")
    assert "/login" in browser.current_url
    _shot(browser, "login")
    _sign_in(browser, url, tokens["admin"], here=True)
    assert browser.current_url.endswith("/models/iris")

    # Search from the models page, then open the model.
    browser.get(f"{url}/")
    _shot(browser, "models")
    search = browser.find_element(By.CSS_SELECTOR, "[data-testid=search]")
    search.send_keys("iri")
    search.send_keys(Keys.ENTER)
    wait.until(EC.url_contains("q=iri"))
    rows = browser.find_elements(By.CSS_SELECTOR, "[data-testid=models] tbody tr")
    assert len(rows) == 1 and "iris" in rows[0].text and "production → 1.0.0" in rows[0].text
    rows[0].find_element(By.LINK_TEXT, "iris").click()
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=chart]")))
    assert len(browser.find_elements(By.CSS_SELECTOR, "[data-testid=chart] circle")) == 3
    _shot(browser, "model")

    # Compare two versions with "only differences".
    browser.find_element(By.CSS_SELECTOR, "[data-testid='cmp-1.0.0']").click()
    browser.find_element(By.CSS_SELECTOR, "[data-testid='cmp-1.1.0']").click()
    browser.find_element(By.CSS_SELECTOR, "input[name=only]").click()
    browser.find_element(By.CSS_SELECTOR, "[data-testid=compare]").click()
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=compare-table]")))
    assert "only=1" in browser.current_url
    table = browser.find_element(By.CSS_SELECTOR, "[data-testid=compare-table]")
    assert not table.find_elements(By.CSS_SELECTOR, "tr.same")
    differing = [r.text for r in table.find_elements(By.CSS_SELECTOR, "tr.differs")]
    assert any(r.startswith("acc") for r in differing) and any(r.startswith("C") for r in differing)
    assert not any(r.startswith("python ") for r in differing)  # same environment: hidden
    _shot(browser, "compare")
    # Switching it off (JavaScript applies it at once) shows the equal rows again.
    browser.find_element(By.CSS_SELECTOR, "[data-testid=only-diff]").click()
    wait.until(lambda d: "only=1" not in d.current_url)
    assert browser.find_elements(By.CSS_SELECTOR, "tr.same")

    # Promote 1.2.0: the policy refuses, naming every failed rule.
    browser.get(f"{url}/models/iris/versions/1.2.0")
    _fill_and_submit(browser, "promote-form", **{"promote-reason": "try the new one"})
    refusal = wait.until(
        EC.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=rules]"))
    )
    rules = [li.text for li in refusal.find_elements(By.TAG_NAME, "li")]
    assert len(rules) == 3, rules
    assert "needs 1 approval(s)" in rules[0]
    assert "below the minimum 0.9" in rules[1] and "worse than 1.0.0" in rules[2]
    _shot(browser, "refused")

    # Another user approves 1.1.0 ...
    _sign_out(browser)
    _sign_in(browser, url, tokens["amy"])
    browser.get(f"{url}/models/iris/versions/1.1.0")
    _fill_and_submit(browser, "approve-form", **{"approve-reason": "holdout looks good"})
    done = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=done]")))
    assert "approved iris@1.1.0 for production" in done.text

    # ... so the admin can promote it, then roll it back.
    _sign_out(browser)
    _sign_in(browser, url, tokens["admin"])
    browser.get(f"{url}/models/iris/versions/1.1.0")
    _shot(browser, "version")
    _fill_and_submit(browser, "promote-form", **{"promote-reason": "better accuracy"})
    done = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=done]")))
    assert "iris@production → 1.1.0 (was 1.0.0)" in done.text
    browser.get(f"{url}/models/iris")
    reason = browser.find_element(By.CSS_SELECTOR, "[data-testid=rollback-reason-production]")
    reason.send_keys("latency regression")
    browser.find_element(By.CSS_SELECTOR, "[data-testid=rollback-production]").click()
    done = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=done]")))
    assert "iris@production → 1.0.0 (was 1.1.0)" in done.text
    browser.get(f"{url}/models/iris")
    timeline = browser.find_element(By.CSS_SELECTOR, "[data-testid=alias-production]").text
    assert "rollback" in timeline and "latency regression" in timeline
    _shot(browser, "model-after")

    # Each step is in the audit log, and the chain verifies.
    browser.get(f"{url}/audit?model=iris")
    verify = browser.find_element(By.CSS_SELECTOR, "[data-testid=verify]").text
    assert verify.startswith("Chain verified")
    events = [
        r.text for r in browser.find_elements(By.CSS_SELECTOR, "[data-testid=events] tbody tr")
    ]
    assert "alias.rollback" in events[0] and "latency regression" in events[0]
    assert "alias.set" in events[1] and "better accuracy" in events[1]
    assert "version.approved" in events[2] and "amy@example.com" in events[2]
    _shot(browser, "audit")

    # Readable on a phone: no sideways scrolling of the page itself.
    browser.set_window_size(390, 844)
    browser.get(f"{url}/models/iris")
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 1
    _shot(browser, "phone-model", width=390)


def test_reader_without_javascript_reads_and_sees_no_buttons(
    site: tuple[str, dict[str, str]], registry: Registry, browser: Any
) -> None:
    url, _ = site
    token = registry.create_token("rita", role="reader")["token"]
    browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    _sign_in(browser, url, token)
    browser.get(f"{url}/models/iris/versions/1.1.0")
    assert browser.find_element(By.TAG_NAME, "h1").text == "iris@1.1.0"
    for form in ("promote-form", "approve-form", "deprecate-form"):
        assert not browser.find_elements(By.CSS_SELECTOR, f"[data-testid={form}]")
    browser.get(f"{url}/compare?v=iris@1.0.0&v=iris@1.2.0&only=1")
    assert browser.find_elements(By.CSS_SELECTOR, "tr.differs")


def test_a_deployment_is_one_click_from_every_page(
    site: tuple[str, dict[str, str]], registry: Registry, browser: Any, tmp_path: Path
) -> None:
    """An ML engineer finds a stored deployment from the top bar: its routes and their
    traffic, who signed which versions, and what each replica serves (and refused)."""
    from tether._signing import generate_key

    url, tokens = site
    spec = {"endpoints": {"iris": {
        "routes": [{"name": "stable", "target": "iris@production", "weight": 90},
                   {"name": "canary", "target": "iris@1.1.0", "weight": 10}],
        "shadow": [{"target": "iris@1.2.0", "sample": 0.25}], "trusted": True,
        "rollback": {"window": 60, "min_requests": 20, "rules": ["error_rate > 0.05"]}}}}
    registry.apply_deployment("iris-prod", spec, reason="canary 1.1.0")
    key, public, _ = generate_key(tmp_path / "release.key")
    registry.trust_key("release", public.read_text())
    registry.sign_deployment("iris-prod", str(key), expires_in="90d")
    for replica, problem in (("node-1-4242", None), ("node-2-4243", "refused iris@1.1.0: "
                                                      "no signature this replica checked")):
        registry.replica_heartbeat("iris-prod", replica, host=replica[:6], pid=1, info={
            "ready": True, "revision": 2, "leader": replica.endswith("42"),
            "routes": {"iris/stable": {"ref": "iris@1.0.0", "status": "ready"},
                       "iris/canary": {"ref": None if problem else "iris@1.1.0",
                                       "status": "ready", "problem": problem}}})
    _sign_in(browser, url, tokens["admin"])
    browser.find_element(By.LINK_TEXT, "Deployments").click()
    browser.find_element(By.LINK_TEXT, "iris-prod").click()
    WebDriverWait(browser, 10).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=signatures]")))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Deployment iris-prod"
    assert browser.find_element(By.CSS_SELECTOR, "[data-testid=trusted]").is_displayed()
    rows = browser.find_elements(By.CSS_SELECTOR, "[data-testid=replicas] tbody tr")
    assert len(rows) == 2
    assert "no signature this replica checked" in browser.find_element(
        By.CSS_SELECTOR, "[data-testid=problem]").text
    _shot(browser, "deployment")
