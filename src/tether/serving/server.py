"""Running a deployment: in the foreground (``tether serve``) or in a thread (tests)."""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import uvicorn

from .._errors import TetherError
from .._http_deadlines import protocol as deadline_protocol
from .app import create_app
from .config import Deployment
from .follower import load_from_registry
from .logs import configure
from .runtime import ServingRuntime

if TYPE_CHECKING:
    from .._contract import RegistryAPI

log = logging.getLogger("tether.serving")


def _uvicorn_config(runtime: ServingRuntime, host: str, port: int, *,
                    log_level: str, inline: bool) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(runtime, inline=inline), host=host, port=port, log_config=None,
        log_level=log_level, access_log=False, lifespan="on", server_header=False,
        timeout_graceful_shutdown=10, http=deadline_protocol(),
    )


def start_runtime(registry: RegistryAPI, deployment: Deployment, *, follow: str | None = None,
                  replica_url: str = "", shared_dir: Path | None = None) -> ServingRuntime:
    """Load every endpoint's versions (raising the registry's refusal) and start the threads.

    ``follow`` names a deployment stored in the registry: it replaces
    ``deployment``'s endpoints (its ``server`` section stays) and is followed live.
    """
    following = None
    if follow is not None:
        deployment, record = load_from_registry(registry, follow, deployment.server)
        following = (follow, int(record["revision"]))
    runtime = ServingRuntime(registry, deployment, follow=following, replica_url=replica_url)
    runtime.instruments.shared_dir = shared_dir
    try:
        runtime.start()
    except BaseException:
        runtime.stop()
        raise
    return runtime


RegistrySource = Union["RegistryAPI", Callable[[], "RegistryAPI"]]


def serve(registry: RegistrySource, deployment: Deployment, *, host: str | None = None,
          port: int | None = None, log_level: str = "info", inline: bool = True,
          follow: str | None = None, workers: int = 1) -> None:
    """Serve until interrupted. Raises before listening if a version is refused.

    ``workers`` above 1 forks that many serving processes sharing one listening
    socket; each opens the registry itself (``registry`` must then be a
    function that opens it) and is a replica of its own.
    """
    configure(log_level)
    server = deployment.server
    host = host or server.host
    port = port if port is not None else server.port
    if workers > 1:
        if not callable(registry):
            raise TypeError("several workers need a function that opens the registry")
        _serve_workers(registry, deployment, host, port, workers=workers, log_level=log_level,
                       inline=inline, follow=follow)
        return
    opened = registry() if callable(registry) else registry
    runtime = start_runtime(opened, deployment, follow=follow,
                            replica_url=f"http://{host}:{port}")
    gc.collect()
    gc.freeze()  # models and modules loaded at start-up: never scanned again
    config = _uvicorn_config(runtime, host, port, log_level=log_level, inline=inline)
    uvicorn.Server(config).run()


#: A worker that exits within this many seconds of starting stops them all.
_EARLY_EXIT = 10.0


def _serve_workers(open_registry: Callable[[], RegistryAPI], deployment: Deployment, host: str,
                   port: int, *, workers: int, log_level: str, inline: bool,
                   follow: str | None) -> None:
    """Fork ``workers`` serving processes on one socket; restart one that dies."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    shared = Path(tempfile.mkdtemp(prefix="tether-metrics-"))
    context = multiprocessing.get_context("fork")
    url = f"http://{host}:{port}"

    def start(index: int) -> tuple[Any, float]:
        process = context.Process(
            target=_worker, name=f"tether-worker-{index}",
            args=(open_registry, deployment, sock, shared, follow, log_level, inline, url))
        process.start()
        return process, time.monotonic()

    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    procs = [start(i) for i in range(workers)]
    log.info("serving with %d workers on %s", workers, url,
             extra={"workers": [p.pid for p, _ in procs]})
    failed = None
    try:
        while not stopping:
            time.sleep(0.2)
            for index, (process, started) in enumerate(procs):
                if process.is_alive() or stopping:
                    continue
                if time.monotonic() - started < _EARLY_EXIT:
                    failed = f"worker {index} exited with {process.exitcode} while starting"
                    stopping = True
                    break
                log.warning("worker %d (pid %s) exited with %s; starting another", index,
                            process.pid, process.exitcode)
                procs[index] = start(index)
    finally:
        for process, _ in procs:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        for process, _ in procs:
            process.join(timeout=20)
            if process.is_alive():
                process.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(shared, ignore_errors=True)
        sock.close()
    if failed is not None:
        raise ServingFailed(failed, hint="see the worker's log above")


class ServingFailed(TetherError):
    code = "serving_failed"
    http_status = 500


def _worker(open_registry: Callable[[], RegistryAPI], deployment: Deployment,
            sock: socket.socket, shared: Path, follow: str | None, log_level: str,
            inline: bool, url: str) -> None:
    configure(log_level)
    runtime = start_runtime(open_registry(), deployment, follow=follow, replica_url=url,
                            shared_dir=shared)
    gc.collect()
    gc.freeze()
    host, port = sock.getsockname()[:2]
    config = _uvicorn_config(runtime, host, port, log_level=log_level, inline=inline)
    uvicorn.Server(config).run(sockets=[sock])


class BackgroundServer:
    """A deployment served from a thread on a free loopback port (tests, benchmarks)."""

    def __init__(self, registry: RegistryAPI, deployment: Deployment, *, host: str = "127.0.0.1",
                 port: int = 0, inline: bool = True, log_level: str = "warning",
                 follow: str | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.runtime = start_runtime(registry, deployment, follow=follow,
                                     replica_url=f"http://{host}:{self.port}")
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
