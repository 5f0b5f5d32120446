"""Shadow traffic: mirror requests to another version, off the request path.

The request handler only appends to a bounded queue (dropping, and counting
the drop, when it is full); one worker thread takes whatever has queued up
and hands it, as one batch per shadow version, to a separate process, which
predicts and compares the outputs record by record with what the primary
answered. The serving process only pickles the batch and waits on a pipe, so
the shadow's CPU never competes with the request path for the interpreter
(the shadow route's cost to p99 went from about 20% to a few percent on two
cores). The shadow's latency and errors never reach a caller; its
disagreement rate is recorded per pair of versions, and in the primary
route's window for rollback rules. A model that cannot be pickled is
predicted in a thread of the serving process instead, as before.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
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


class ShadowProcess:
    """A child process that predicts shadow batches and compares them (see `_child`)."""

    def __init__(self) -> None:
        self._conn: Any = None
        self._process: Any = None
        self._sent: set[str] = set()
        self._unpicklable: set[str] = set()

    def _start(self) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # never fork a threaded server
        ours, theirs = context.Pipe()
        self._process = context.Process(target=_child, args=(theirs,), name="tether-shadow",
                                        daemon=True)
        self._process.start()
        theirs.close()
        self._conn, self._sent = ours, set()

    def compare(self, shadow: LoadedModel,
                jobs: list[tuple[list[dict[str, Any]], list[Any]]]) -> list[int] | None:
        """Disagreements per job, or None when ``shadow`` must be predicted here.

        Raises RuntimeError with the shadow's error when it fails to predict.
        """
        digest = shadow.digest
        if digest in self._unpicklable:
            return None
        if self._process is None or not self._process.is_alive():
            self._start()
        if digest not in self._sent:
            try:
                import cloudpickle

                payload = cloudpickle.dumps((shadow.version, shadow.model, shadow.signature))
            except Exception:
                self._unpicklable.add(digest)
                log.warning("shadow %s cannot be pickled: predicted in the serving process",
                            shadow.ref)
                return None
            self._conn.send(("model", digest, payload))
            self._sent.add(digest)
        try:
            self._conn.send(("compare", digest, jobs))
            kind, value = self._conn.recv()
        except (EOFError, OSError):
            self._process = None
            raise RuntimeError("the shadow process exited") from None
        if kind == "error":
            raise RuntimeError(value)
        return list(value)

    def forget(self, keep: set[str]) -> None:
        drop = self._sent - keep
        if drop and self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.send(("forget", sorted(drop), None))
            self._sent -= drop

    def stop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.send(("stop", None, None))
            self._conn.close()
        if self._process is not None:
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
        self._process = self._conn = None


def _child(conn: Any) -> None:
    """The shadow process: models by digest, then batches to predict and compare."""
    from .drift import DriftMonitor

    with contextlib.suppress(OSError):
        os.nice(10)  # best effort: on a busy machine the request path goes first
    models: dict[str, LoadedModel] = {}
    while True:
        try:
            kind, key, payload = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if kind == "stop":
            return
        if kind == "forget":
            for digest in key:
                models.pop(digest, None)
            continue
        if kind == "model":
            version, model, signature = pickle.loads(payload)
            models[key] = LoadedModel(version, model, signature, DriftMonitor(None))
            continue
        try:
            shadow = models[key]
            records = [r for job_records, _ in payload for r in job_records]
            outputs = shadow.predict(records)
            if len(outputs) != len(records):
                raise RuntimeError(f"{len(outputs)} predictions for {len(records)} records")
            bad, offset = [], 0
            for job_records, predictions in payload:
                mine = outputs[offset:offset + len(job_records)]
                offset += len(job_records)
                bad.append(-1 if len(predictions) != len(mine) else
                           sum(not agree(a, b) for a, b in zip(predictions, mine, strict=True)))
            conn.send(("ok", bad))
        except Exception as error:
            conn.send(("error", f"{type(error).__name__}: {error}"))


class ShadowMirror:
    """One worker thread serving every endpoint's shadows, predicting in a child process."""

    def __init__(self, instruments: Instruments,
                 shadows_of: Callable[[str], Sequence[LoadedModel]], *,
                 in_process: bool = False) -> None:
        self.instruments = instruments
        self._shadows_of = shadows_of
        self._child = None if in_process else ShadowProcess()
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
        if self._child is not None:
            self._child.stop()

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
        live: set[str] = set()
        for endpoint, group in by_endpoint.items():
            for shadow in self._shadows_of(endpoint):
                live.add(shadow.digest)
                self._compare(endpoint, shadow, group)
        if self._child is not None:
            self._child.forget(live)

    def _compare(self, endpoint: str, shadow: LoadedModel, jobs: list[MirrorJob]) -> None:
        jobs = [job for job in jobs if job.primary.digest != shadow.digest]  # same bytes
        if not jobs:
            return
        started = time.perf_counter()
        bad: list[int] | None = None
        if self._child is not None:
            try:
                bad = self._child.compare(shadow, [(job.records, job.predictions)
                                                   for job in jobs])
            except Exception as error:  # a failing shadow is measured, not raised
                self._failed(endpoint, shadow, jobs, error, started)
                return
        if bad is None:
            self._compare_here(endpoint, shadow, jobs, started)
            return
        self.instruments.shadow_latency.observe(time.perf_counter() - started, endpoint,
                                                shadow.ref)
        for job, disagreed in zip(jobs, bad, strict=True):
            if disagreed >= 0:
                self._record(endpoint, shadow, job, len(job.records), disagreed)

    def _failed(self, endpoint: str, shadow: LoadedModel, jobs: list[MirrorJob],
                error: Exception, started: float) -> None:
        self.instruments.shadow_latency.observe(time.perf_counter() - started, endpoint,
                                                shadow.ref)
        self.instruments.shadow_errors.inc(endpoint, shadow.ref, amount=len(jobs))
        log.warning("shadow prediction failed: %s", error,
                    extra={"endpoint": endpoint, "model": shadow.version.name,
                           "version": shadow.version.semver, "digest": shadow.digest})

    def _record(self, endpoint: str, shadow: LoadedModel, job: MirrorJob, compared: int,
                bad: int) -> None:
        key = (endpoint, job.primary.ref, shadow.ref)
        with self._lock:
            pair = self._comparisons.setdefault(key, [0, 0])
            pair[0] += compared
            pair[1] += bad
        self.instruments.shadow_compared.inc(*key, amount=compared)
        if bad:
            self.instruments.shadow_disagreed.inc(*key, amount=bad)
        if job.on_compared is not None:
            job.on_compared(compared, bad)

    def _compare_here(self, endpoint: str, shadow: LoadedModel, jobs: list[MirrorJob],
                      started: float) -> None:
        records = [r for job in jobs for r in job.records]
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
            self._record(endpoint, shadow, job, len(mine), bad)
