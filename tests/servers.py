"""A real `tether server` for tests: server-init, start, wait for health, stop.

Kept out of the test modules so that those that need a server import it from
here, not from another test file (tests/test_faults.py keeps its own, which also
kills with SIGKILL and restarts on the same port).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import tether

from .conftest import free_port, subprocess_env, tether_exe


@dataclass
class Server:
    url: str
    admin_token: str
    db_url: str
    store_url: str
    procs: list[subprocess.Popen[bytes]]

    def client(self, token: str | None = None) -> Any:
        return tether.connect(self.url, token=token or self.admin_token)

    def api(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.admin_token}", **kw.pop("headers", {})}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kw)


def start_server(db_url: str, store_url: str, tmp: Path, *, workers: int = 1) -> Server:
    # server-init in this process: `tether server-init` is tested as a command elsewhere
    # (test_cli, test_server); here a second interpreter start per server cost a second.
    from tether._registry.registry import Registry

    registry, issued = Registry.init_server(db_url, store_url, "root@team")
    registry.close()
    token = issued["token"]
    port = free_port()
    log = open(tmp / f"server-{port}.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [tether_exe(), "server", "--db", db_url, "--port", str(port), "--workers", str(workers)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=subprocess_env(),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    else:
        proc.kill()
        raise AssertionError((tmp / f"server-{port}.log").read_text())
    return Server(url, token, db_url, store_url, [proc])


def stop(server: Server) -> None:
    for proc in server.procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def version_values(manifest: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    """The JSON values of a new version (POST /models/NAME/versions), as a client sends
    them: a files version with nothing recorded, but what ``fields`` set."""
    return {
        "manifest": manifest or [],
        "flavor": {"name": "files"},
        "signature": None,
        "input_example": None,
        "params": {},
        "metrics": {},
        "data": {},
        "lineage": {},
        "environment": {},
        "tags": {},
        "notes": "",
        **fields,
    }


def assert_logs_clean(base: Path, prefix: str) -> str:
    """Every ``tether server`` log under ``base/<prefix>*`` holds no traceback and no
    "unexpected error" (a 500); their text, for more checks."""
    logs = list(base.glob(f"{prefix}*/server-*.log"))
    assert logs, f"no server log under {base}/{prefix}*"
    text = "".join(p.read_text(errors="replace") for p in logs)
    assert "Traceback" not in text and "unexpected error" not in text, text[-3000:]
    return text


@contextmanager
def app_in_thread(app: Any) -> Iterator[str]:
    """An ASGI ``app`` (the server's, built on a registry of the test's) served by a real
    uvicorn on a thread of this process, so the test can watch what it does; its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
