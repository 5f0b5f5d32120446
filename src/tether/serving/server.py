"""Running a deployment: in the foreground (``tether serve``) or in a thread (tests)."""

from __future__ import annotations

import gc
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import uvicorn

from .app import create_app
from .config import Deployment
from .logs import configure
from .runtime import ServingRuntime

if TYPE_CHECKING:
    from .._contract import RegistryAPI


def _uvicorn_config(runtime: ServingRuntime, host: str, port: int, *,
                    log_level: str, inline: bool) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(runtime, inline=inline), host=host, port=port, log_config=None,
        log_level=log_level, access_log=False, lifespan="on", server_header=False,
        timeout_graceful_shutdown=10,
    )


def start_runtime(registry: RegistryAPI, deployment: Deployment) -> ServingRuntime:
    """Load every endpoint's versions (raising the registry's refusal) and start the threads."""
    runtime = ServingRuntime(registry, deployment)
    try:
        runtime.start()
    except BaseException:
        runtime.stop()
        raise
    return runtime


def serve(registry: RegistryAPI, deployment: Deployment, *, host: str | None = None,
          port: int | None = None, log_level: str = "info", inline: bool = True) -> None:
    """Serve until interrupted. Raises before listening if a version is refused."""
    configure(log_level)
    runtime = start_runtime(registry, deployment)
    gc.collect()
    gc.freeze()  # models and modules loaded at start-up: never scanned again
    server = deployment.server
    config = _uvicorn_config(runtime, host or server.host,
                             port if port is not None else server.port,
                             log_level=log_level, inline=inline)
    uvicorn.Server(config).run()


class BackgroundServer:
    """A deployment served from a thread on a free loopback port (tests, benchmarks)."""

    def __init__(self, registry: RegistryAPI, deployment: Deployment, *, host: str = "127.0.0.1",
                 port: int = 0, inline: bool = True, log_level: str = "warning") -> None:
        self.host = host
        self.port = port or free_port(host)
        self.runtime = start_runtime(registry, deployment)
        self._server = uvicorn.Server(_uvicorn_config(self.runtime, self.host, self.port,
                                                      log_level=log_level, inline=inline))
        self._thread = threading.Thread(target=self._server.run, name="tether-uvicorn",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the serving thread did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc: Any) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=20)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
