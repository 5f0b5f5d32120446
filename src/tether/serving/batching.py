"""Server-side batching: concurrent requests to one version predicted together.

Each request is validated on its own (a bad record is that caller's 4xx and
nobody else's), then its prepared inputs wait in the version's queue. The
queue is predicted as one batch when it holds ``max_batch`` records, when
``max_wait_ms`` have passed since its first request, or as soon as no other
request to the endpoint is on its way in: a request counts as arriving from
the moment its handler starts reading the body until it joins a queue, so the
requests already read off the sockets join the batch and a lone request is
never held back waiting for company.

A batch is one call of the model on the concatenated inputs (numpy arrays or
pandas DataFrames of the same columns); the predictions are split back by
record count. If the model raises on a batch, or returns a different number of
predictions than records, every request of the batch is predicted on its own
again, so only a request that fails by itself fails (and counts as an error).

Everything here runs on the event loop thread; with ``inline`` off the batch
prediction itself runs in the thread pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import BatchingConfig

if TYPE_CHECKING:
    from .pool import LoadedModel


@dataclass
class _Item:
    inputs: Any
    rows: int
    future: asyncio.Future[list[Any]]


@dataclass
class _Queue:
    loaded: LoadedModel
    items: list[_Item] = field(default_factory=list)
    rows: int = 0
    timer: asyncio.TimerHandle | None = None
    idle_check: asyncio.Handle | None = None


class Batcher:
    """One endpoint's batch queues, one per loaded version."""

    def __init__(self, settings: Callable[[], BatchingConfig | None], *,
                 observe: Callable[[int], None] | None = None, inline: bool = True) -> None:
        self._settings = settings
        self._observe = observe
        self.inline = inline
        self._queues: dict[int, _Queue] = {}
        #: Requests between the start of their handler and joining a queue.
        self.arriving = 0

    def arrive(self) -> None:
        self.arriving += 1

    def arrived(self) -> None:
        self.arriving -= 1
        settings = self._settings()
        if self.arriving == 0 and settings is not None and settings.eager:
            for key, queue in list(self._queues.items()):
                if queue.items:
                    self._schedule_idle_flush(key, queue)

    async def predict(self, loaded: LoadedModel, inputs: Any, rows: int) -> list[Any]:
        """The predictions for ``inputs`` (``rows`` records), predicted in a batch."""
        settings = self._settings() or BatchingConfig()
        loop = asyncio.get_running_loop()
        key = id(loaded)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(loaded)
        item = _Item(inputs, rows, loop.create_future())
        queue.items.append(item)
        queue.rows += rows
        if queue.rows >= settings.max_batch:
            self._flush(key)
        else:
            if queue.timer is None:
                queue.timer = loop.call_later(settings.max_wait_ms / 1000, self._flush, key)
            if self.arriving == 0 and settings.eager:
                self._schedule_idle_flush(key, queue)
        return await item.future

    def _schedule_idle_flush(self, key: int, queue: _Queue) -> None:
        if queue.idle_check is None:
            # One turn of the loop later: requests already read off the sockets get
            # to start (and count as arriving) before the batch is closed.
            queue.idle_check = asyncio.get_running_loop().call_soon(self._flush_if_idle, key)

    def _flush_if_idle(self, key: int) -> None:
        queue = self._queues.get(key)
        if queue is None:
            return
        queue.idle_check = None
        settings = self._settings()
        if self.arriving == 0 and (settings is None or settings.eager):
            self._flush(key)

    def _flush(self, key: int) -> None:
        queue = self._queues.pop(key, None)
        if queue is None or not queue.items:
            return
        for handle in (queue.timer, queue.idle_check):
            if handle is not None:
                handle.cancel()
        items, loaded = queue.items, queue.loaded
        if self._observe is not None:
            self._observe(queue.rows)
        if self.inline:
            _deliver(items, _run(loaded, items))
        else:
            loop = asyncio.get_running_loop()
            task = loop.run_in_executor(None, _run, loaded, items)
            task.add_done_callback(lambda done: _deliver(items, done.result()))


def _deliver(items: list[_Item], results: list[list[Any] | BaseException]) -> None:
    for item, result in zip(items, results, strict=True):
        if item.future.done():  # the caller went away
            continue
        if isinstance(result, BaseException):
            item.future.set_exception(result)
        else:
            item.future.set_result(result)


def _run(loaded: LoadedModel, items: list[_Item]) -> list[list[Any] | BaseException]:
    """Each item's predictions (or the exception predicting it alone raised)."""
    if len(items) > 1:
        combined = combine([item.inputs for item in items])
        if combined is not None:
            try:
                predictions = loaded.predict_prepared(combined)
            except Exception:
                predictions = None  # find out whose records fail, one request at a time
            total = sum(item.rows for item in items)
            if predictions is not None and len(predictions) == total:
                out: list[list[Any] | BaseException] = []
                start = 0
                for item in items:
                    out.append(predictions[start:start + item.rows])
                    start += item.rows
                return out
    results: list[list[Any] | BaseException] = []
    for item in items:
        try:
            results.append(loaded.predict_prepared(item.inputs))
        except Exception as error:
            results.append(error)
    return results


def combine(inputs: list[Any]) -> Any:
    """Prepared inputs stacked along their first axis; None when they cannot be."""
    first = inputs[0]
    if isinstance(first, np.ndarray):
        if all(isinstance(x, np.ndarray) and x.ndim == first.ndim and x.ndim >= 1
               and x.shape[1:] == first.shape[1:] for x in inputs):
            return np.concatenate(inputs, axis=0)
        return None
    if hasattr(first, "columns") and hasattr(first, "iloc"):
        import pandas as pd

        columns = list(first.columns)
        if all(isinstance(x, pd.DataFrame) and list(x.columns) == columns for x in inputs):
            return pd.concat(inputs, ignore_index=True)
    return None
