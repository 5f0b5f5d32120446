"""Shadow traffic: mirror requests to another version, off the request path.

The request handler only appends to a bounded queue (dropping, and counting
the drop, when it is full); one worker thread takes whatever has queued up,
predicts it with each shadow version in one batch, and compares the outputs
record by record with what the primary answered. The shadow's latency and
errors never reach a caller; its disagreement rate is recorded per pair of
versions, and in the primary route's window for rollback rules.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .instruments import Instruments
from .pool import LoadedModel

log = logging.getLogger("tether.serving")

#: Largest number of mirrored requests one shadow batch takes.
BATCH_REQUESTS = 256
QUEUE_SIZE = 10_000
#: How long the worker waits for more requests before predicting a batch (seconds).
LINGER = 0.025


@dataclass(frozen=True)
class MirrorJob:
    endpoint: str
    primary: LoadedModel
    records: list[dict[str, Any]]
    predictions: list[Any]
    #: Called with (records compared, records that disagreed) for the primary's route.
    on_compared: Callable[[int, int], None] | None = None


def agree(a: Any, b: Any) -> bool:
    """Same prediction: equal, or numbers within 1e-6 relative / 1e-9 absolute."""
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(agree(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


class ShadowMirror:
    """One worker thread serving every endpoint's shadows."""

    def __init__(self, instruments: Instruments,
                 shadows_of: Callable[[str], Sequence[LoadedModel]]) -> None:
        self.instruments = instruments
        self._shadows_of = shadows_of
        self._queue: queue.Queue[MirrorJob | None] = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._comparisons: dict[tuple[str, str, str], list[int]] = {}
        self._lock = threading.Lock()
        instruments.shadow_disagreement.set_function(self._ratios)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tether-shadow", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)
            self._thread = None

    def submit(self, job: MirrorJob) -> None:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.instruments.shadow_dropped.inc(job.endpoint)

    def idle(self) -> bool:
        return self._queue.unfinished_tasks == 0

    def comparisons(self) -> dict[tuple[str, str, str], tuple[int, int]]:
        """(endpoint, primary ref, shadow ref) -> (compared, disagreed)."""
        with self._lock:
            return {k: (v[0], v[1]) for k, v in self._comparisons.items()}

    def _ratios(self) -> list[tuple[tuple[str, ...], float]]:
        return [(key, bad / total) for key, (total, bad) in self.comparisons().items() if total]

    def _run(self) -> None:
        while True:
            jobs = [self._queue.get()]
            if jobs[0] is not None and self._queue.qsize() < BATCH_REQUESTS:
                # Let a batch gather: one prediction on many records costs about what
                # one on a single record does. Sleeping (rather than waiting on the
                # queue) keeps each new request from waking this thread.
                time.sleep(LINGER)
            while len(jobs) < BATCH_REQUESTS and jobs[-1] is not None:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(j is None for j in jobs)
            try:
                self._process([j for j in jobs if j is not None])
            except Exception:  # the mirror must survive anything
                log.exception("shadow worker failed on a batch")
            finally:
                for _ in jobs:
                    self._queue.task_done()
            if stop:
                return

    def _process(self, jobs: list[MirrorJob]) -> None:
        by_endpoint: dict[str, list[MirrorJob]] = {}
        for job in jobs:
            by_endpoint.setdefault(job.endpoint, []).append(job)
        for endpoint, group in by_endpoint.items():
            for shadow in self._shadows_of(endpoint):
                self._compare(endpoint, shadow, group)

    def _compare(self, endpoint: str, shadow: LoadedModel, jobs: list[MirrorJob]) -> None:
        jobs = [job for job in jobs if job.primary.digest != shadow.digest]  # same bytes
        if not jobs:
            return
        records = [r for job in jobs for r in job.records]
        started = time.perf_counter()
        try:
            outputs = shadow.predict(records)
        except Exception as error:  # a failing shadow is measured, not raised
            self.instruments.shadow_errors.inc(endpoint, shadow.ref, amount=len(jobs))
            log.warning("shadow prediction failed: %s", error,
                        extra={"endpoint": endpoint, "model": shadow.version.name,
                               "version": shadow.version.semver, "digest": shadow.digest})
            return
        finally:
            self.instruments.shadow_latency.observe(time.perf_counter() - started, endpoint,
                                                    shadow.ref)
        if len(outputs) != len(records):
            self.instruments.shadow_errors.inc(endpoint, shadow.ref, amount=len(jobs))
            return
        offset = 0
        for job in jobs:
            mine = outputs[offset:offset + len(job.records)]
            offset += len(job.records)
            if len(job.predictions) != len(mine):
                continue
            bad = sum(not agree(a, b) for a, b in zip(job.predictions, mine, strict=True))
            key = (endpoint, job.primary.ref, shadow.ref)
            with self._lock:
                pair = self._comparisons.setdefault(key, [0, 0])
                pair[0] += len(mine)
                pair[1] += bad
            self.instruments.shadow_compared.inc(*key, amount=len(mine))
            if bad:
                self.instruments.shadow_disagreed.inc(*key, amount=bad)
            if job.on_compared is not None:
                job.on_compared(len(mine), bad)
