"""One endpoint at run time: routes, shadows, the request path and its bookkeeping.

The request path (`predict`) reads the router and a route's current version
once, predicts, records, and hands a copy to the shadow mirror; nothing on it
waits for the registry. Everything that changes what is served (a moved
alias, a rollback, new weights) happens on the endpoint's one loader thread
and ends in a single assignment.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import random
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._errors import Conflict, InvalidInput, NotFound, TetherError
from .._schema import RecordSchemaError
from .batching import Batcher
from .config import EndpointConfig
from .guard import Unprocessable, finite_number
from .instruments import Instruments
from .logs import version_fields
from .pool import LoadedModel, ModelPool
from .route_slots import RouteSlot
from .router import WeightedRouter
from .shadow import MirrorJob, agree
from .targets import keep_earlier_loaded, poll_target, rollback_slot

if TYPE_CHECKING:
    from .._contract import RegistryAPI

log = logging.getLogger("tether.serving")

#: Predictions remembered for feedback, by request id.
RECENT_REQUESTS = 100_000
#: What scikit-learn (and libraries checking inputs its way) says of values it cannot
#: take: infinity or NaN, often made by the model itself from a huge finite value.
_INPUT_FAULTS = ("contains infinity", "contains nan", "value too large for dtype")


def _fingerprint(records: Any) -> str:
    """What a request asked, as a digest: the same id with the same records is a retry."""
    from .._digest import blake3_hex

    return blake3_hex(json.dumps(records, sort_keys=True, default=str).encode())


#: A number of at least this magnitude is no measurement: it is there to overflow what
#: the model does with it (a scaler, a polynomial feature).
IMPLAUSIBLE = 1e100


def _implausible(records: Any, budget: int = 1_000_000) -> bool:
    """Whether ``records`` hold a non-finite number or one of at least ``IMPLAUSIBLE``
    magnitude, or text that is one of those ("nan", "1e400"), looking at no more than
    ``budget`` values. A missing value (None) is not one: a column with gaps is normal
    input, and counting every refusal beside one as the caller's hid a broken version
    from its rollback (a review); ``_refused_before`` judges those."""
    stack: list[Any] = [records]
    while stack and budget > 0:
        value = stack.pop()
        budget -= 1
        if isinstance(value, bool):
            continue
        if isinstance(value, str):  # "nan", "-inf", "1e400": numpy makes them numbers
            try:
                value = float(value)
            except (ValueError, OverflowError):
                continue
        if isinstance(value, float):
            if not math.isfinite(value) or abs(value) >= IMPLAUSIBLE:
                return True
        elif isinstance(value, int):
            if abs(value) >= IMPLAUSIBLE:
                return True
        elif isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
    return False


def _inputs_fault(error: Exception) -> bool:
    """Whether the model's exception says the *values* it got are unusable (a ValueError
    from its input check), rather than that the model is broken."""
    text = str(error).lower()
    return isinstance(error, ValueError) and any(fault in text for fault in _INPUT_FAULTS)


def _refused_before(call: _Call) -> str | None:
    """The version the route served before ``call``'s (kept loaded for rollback), if it
    refuses ``call``'s records as the model's input check does too: then the refusal
    is the records', not the version's, and no rollback could help."""
    earlier = next((m for m in reversed(call.slot.previous)
                    if m.version.digest != call.loaded.version.digest), None)
    if earlier is None:
        return None
    try:
        earlier.predict(call.records)
    except Exception as error:  # whatever it is, it only decides who is at fault
        return earlier.ref if _inputs_fault(error) else None
    return None


#: What a request id several requests gave is remembered as (see `Endpoint._remember`).
_REUSED: tuple[str, str, Any, str] = ("", "", None, "")
#: An answer check (see `Endpoint.predict`): raises a TetherError to refuse it.
Check = Callable[["LoadedModel", list[Any]], None]


class PredictionFailed(TetherError):
    """The model raised while predicting."""

    code = "prediction_failed"
    http_status = 500

    def __init__(self, message: str, *, model: LoadedModel) -> None:
        super().__init__(message)
        self.model = model

    def to_dict(self) -> dict[str, str | None]:
        return {**super().to_dict(), "ref": self.model.ref, "digest": self.model.digest}


@dataclass(frozen=True)
class _Call:
    """A request between validation and prediction."""

    route: str
    slot: RouteSlot
    loaded: LoadedModel
    window: Any
    labels: tuple[str, ...]
    started: float
    records: list[dict[str, Any]]
    inputs: Any


@dataclass(frozen=True)
class Served:
    request_id: str
    route: str
    model: LoadedModel
    predictions: list[Any]



def _same_job(a: Callable[[], None], b: Callable[[], None]) -> bool:
    """Whether two queued jobs do the same thing (the same function on the same slot)."""
    return bool(getattr(a, "func", a) == getattr(b, "func", b)
                and getattr(a, "args", ()) == getattr(b, "args", ()))

class Endpoint:
    def __init__(self, config: EndpointConfig, registry: RegistryAPI, instruments: Instruments,
                 mirror: Callable[[MirrorJob], None], *, deployment: str | None = None) -> None:
        self.config = config
        self.name = config.name
        self.registry = registry
        self.instruments = instruments
        self._mirror = mirror
        self.pool = ModelPool(registry, trusted=config.trusted,
                              trusted_until=config.trusted_until,
                              env_policy=config.env_policy, deployment=deployment)
        window = config.rollback.window
        self.slots = {r.name: RouteSlot(r.name, r.target, window) for r in config.routes}
        self.shadows = [RouteSlot(f"shadow-{i}", s.target, window)
                        for i, s in enumerate(config.shadows)]
        self.router = WeightedRouter({r.name: r.weight for r in config.routes})
        self.rollbacks: deque[dict[str, Any]] = deque(maxlen=20)
        #: False when a replica of a stored deployment: the lease holder judges the rules
        #: over every replica's windows (see follower.py), not each process on its own.
        self.judge_locally = True
        self._loader = ThreadPoolExecutor(1, thread_name_prefix=f"tether-load-{self.name}")
        #: Guards each slot's busy flag and pending job (submit runs on request threads).
        self._submitting = threading.Lock()
        # request id -> (route, digest, predictions, fingerprint): atoms and tuples only, so the
        # garbage collector stops tracking them and a full collection stays short.
        self._recent: dict[str, tuple[str, str, Any, str]] = {}
        self._served: dict[str, LoadedModel] = {}
        self._recent_lock = threading.Lock()
        self._sample = max((s.sample for s in config.shadows), default=0.0)
        self._batcher = Batcher(lambda: self.config.batching,
                                observe=lambda rows: instruments.batch_rows.observe(
                                    rows, self.name))
        self._update_weight_gauges()

    # -- start and stop -----------------------------------------------------------------

    def start(self) -> None:
        """Load every route and shadow now; the registry's refusal is raised as is."""
        for slot in [*self.slots.values(), *self.shadows]:
            poll_target(self, slot, now=True)
        if self.config.rollback.rules:
            for slot in self.slots.values():
                keep_earlier_loaded(self, slot)

    def stop(self) -> None:
        self._loader.shutdown(wait=True, cancel_futures=True)

    @property
    def ready(self) -> bool:
        weights = self.router.weights
        return all(slot.current is not None for name, slot in self.slots.items()
                   if weights.get(name, 0) > 0)

    # -- the request path ---------------------------------------------------------------

    def predict(self, records: Any, key: str | None = None, request_id: str | None = None,
                *, version: str | None = None, check: Check | None = None) -> Served:
        """Predict ``records`` on the route the router (or ``version``) picks.

        ``records`` are objects of named fields, or positional rows (lists of
        values in the order of the version's input schema). ``version`` (a
        semantic version or sequence number) pins the route serving it.
        ``check(loaded, predictions)`` refuses an answer the request cannot take
        (an OIP output it names that the model does not give) before anything
        is counted: the caller's error, as a refused record is.
        """
        call = self._begin(records, key, version)
        try:
            predictions = call.loaded.predict_prepared(call.inputs)
        except Exception as error:
            raise self._failed(call, error) from error
        return self._finish(call, predictions, request_id, check)

    async def predict_async(self, records: Any, key: str | None = None,
                            request_id: str | None = None, *, version: str | None = None,
                            inline: bool = True, check: Check | None = None) -> Served:
        """`predict` from the event loop: batched when the endpoint batches.

        Call `arrive` once the request's body is read (before it is decoded); this
        counts it off again, so a batch waits for requests already on their way.
        """
        batcher = self.batcher
        self.arrived()
        if batcher is None:
            if inline:
                return self.predict(records, key, request_id, version=version, check=check)
            return await asyncio.to_thread(self.predict, records, key, request_id,
                                           version=version, check=check)
        batcher.inline = inline
        call = self._begin(records, key, version)
        try:
            predictions = await batcher.predict(call.loaded, call.inputs, len(call.records))
        except Exception as error:
            raise self._failed(call, error) from error
        return self._finish(call, predictions, request_id, check)

    @property
    def batcher(self) -> Batcher | None:
        """The batcher while the deployment file asks for batching (it may change live)."""
        return self._batcher if self.config.batching is not None else None

    def arrive(self) -> None:
        """A request for this endpoint started (see `predict_async`)."""
        self._batcher.arrive()

    def arrived(self) -> None:
        """The request counted by `arrive` is read (or refused): call once."""
        self._batcher.arrived()

    def _begin(self, records: Any, key: str | None, version: str | None) -> _Call:
        if not isinstance(records, list) or not records:
            raise RecordSchemaError("records must be a non-empty list of objects",
                                    field=None, index=None)
        if len(records) > self.config.max_records:
            raise InvalidInput(f"{len(records)} records is over this endpoint's limit of "
                               f"{self.config.max_records}")
        if version is not None:
            route = self.route_serving(version)
        else:
            if key is None and self.config.sticky_field and isinstance(records[0], dict):
                value = records[0].get(self.config.sticky_field)
                key = None if value is None else str(value)
            route = self.router.choose(key)
        slot = self.slots[route]
        loaded = slot.current
        if loaded is None:
            raise NotFound(f"route {route!r} of {self.name} has no version loaded yet",
                           hint=slot.problem)
        started = time.perf_counter()
        # A refused record is the caller's error: it never reaches the window that
        # rollback rules judge, so no client can make a version look broken.
        try:
            if not isinstance(records[0], Mapping):
                records = loaded.named(records)
            inputs = loaded.prepare(records, self.config.allow_non_finite)
        except RecordSchemaError as error:
            self._count_invalid(loaded, error.field)
            raise
        except TetherError:
            self._count_invalid(loaded, None)
            raise
        except Exception as error:  # records no check foresaw: still the caller's
            self._count_invalid(loaded, None)
            log.warning("records refused: %s: %s", type(error).__name__, error,
                        extra={"endpoint": self.name, "route": route})
            raise RecordSchemaError(f"records cannot be read as this model's inputs: "
                                    f"{type(error).__name__}", field=None, index=None) from None
        return _Call(route, slot, loaded, slot.window, (self.name, *loaded.labels), started,
                     records, inputs)

    def _failed(self, call: _Call, error: Exception) -> TetherError:
        loaded, route = call.loaded, call.route
        earlier = None
        if _inputs_fault(error) and (_implausible(call.records)
                                     or (earlier := _refused_before(call)) is not None):
            # The model refused values no real record has: the caller's error, as a refused
            # record is. Counted, 1e308 through a scaler rolled production back. With
            # ordinary values the same refusal is the version's own fault (a scaler that
            # divides by zero) and counts, so a broken version is still rolled back:
            # unless the version the route served before refuses them alike (1e80 through
            # a polynomial of degree 4 overflows every version of it: rolling back to one
            # cannot help, and eight such requests from anyone rolled production back).
            self._count_invalid(loaded, None)
            log.warning("records refused by the model: %s", error,
                        extra={"endpoint": self.name, "route": route,
                               **version_fields(loaded.version)})
            also = f"; so does {earlier}, served before it" if earlier else ""
            return Unprocessable(f"{loaded.ref} refused these inputs: {error}{also}",
                                 hint="send values the model can take (finite, and not so "
                                 "large that scaling them overflows)")
        elapsed = time.perf_counter() - call.started
        call.window.record_request(False, elapsed)
        self.instruments.requests.inc(*call.labels, route)
        self.instruments.errors.inc(*call.labels, route, type(error).__name__)
        self.instruments.latency.observe(elapsed, *call.labels)
        log.error("prediction failed: %s: %s", type(error).__name__, error,
                  extra={"endpoint": self.name, "route": route, "records": len(call.records),
                         **version_fields(loaded.version)})
        return PredictionFailed(f"{loaded.ref} failed to predict: {type(error).__name__}: "
                                f"{error}", model=loaded)

    def _finish(self, call: _Call, predictions: list[Any], request_id: str | None,
                check: Check | None = None) -> Served:
        loaded, route, labels, records = call.loaded, call.route, call.labels, call.records
        if check is not None:
            try:
                check(loaded, predictions)
            except TetherError:
                self._count_invalid(loaded, None)
                raise
        elapsed = time.perf_counter() - call.started
        call.window.record_request(True, elapsed)
        self.instruments.requests.inc(*labels, route)
        self.instruments.latency.observe(elapsed, *labels)
        self.instruments.records.inc(*labels, amount=len(records))
        self.instruments.predictions(labels, predictions)
        loaded.drift.observe(records)
        # Unguessable: an id is what feedback names, and a guessed one could be reused
        # by another caller (see _remember).
        chosen = request_id is not None
        request_id = request_id or secrets.token_hex(12)
        self._remember(request_id, route, loaded, predictions,
                       _fingerprint(records) if chosen else "")
        if self.shadows and (self._sample >= 1.0 or random.random() < self._sample):
            self._mirror(MirrorJob(self.name, loaded, records, predictions,
                                   self._comparison_recorder(call.slot, loaded)))
        return Served(request_id, route, loaded, predictions)

    def route_serving(self, version: str) -> str:
        """The route serving ``version`` (semantic version or sequence number, or
        ``MODEL@`` either where the routes serve several models); NotFound if none.

        Among several, the first with traffic; the router is not consulted.
        """
        weights = self.router.weights
        model, _, number = version.rpartition("@")
        found = [name for name, slot in self.slots.items() if slot.current is not None
                 and model in ("", slot.current.version.name)
                 and number in (slot.current.version.semver, str(slot.current.version.seq))]
        if not found:
            served = sorted({f"{s.current.version.semver} (seq {s.current.version.seq})"
                             for s in self.slots.values() if s.current is not None})
            raise NotFound(f"no route of {self.name} serves version {version!r}",
                           hint=f"versions served: {', '.join(served) or 'none yet'}")
        models = sorted({self.slots[name].current.version.name  # type: ignore[union-attr]
                         for name in found})
        if len(models) > 1:
            # Two models' 1.0.0: the first route's answered, and the other was unreachable.
            raise Conflict(f"version {number} of {self.name} is served for models "
                           f"{', '.join(models)}: say which",
                           hint=f"name it as MODEL@{number}, e.g. {models[0]}@{number}")
        with_traffic = [name for name in found if weights.get(name, 0) > 0]
        return (with_traffic or found)[0]

    def version_labels(self) -> list[str]:
        """How callers name the versions served: their numbers, or MODEL@number where
        the routes serve more than one model."""
        served = self.versions()
        several = len({m.version.name for m in served}) > 1
        return [f"{m.version.name}@{m.version.semver}" if several else m.version.semver
                for m in served]

    def versions(self) -> list[LoadedModel]:
        """The distinct versions the routes serve, in route order."""
        seen: dict[str, LoadedModel] = {}
        for slot in self.slots.values():
            if slot.current is not None:
                seen.setdefault(slot.current.digest, slot.current)
        return list(seen.values())

    def count_refused(self) -> None:
        """Count a request refused before it reached a version (its body or protocol)."""
        self.instruments.invalid.inc(self.name, "")

    def _count_invalid(self, loaded: LoadedModel, field: str | None) -> None:
        # Label by declared fields only: a caller's own keys must not mint label sets.
        known = loaded.signature is not None and field in loaded.signature.inputs.names
        self.instruments.invalid.inc(self.name, field if known and field else "")

    def _comparison_recorder(self, slot: RouteSlot,
                             loaded: LoadedModel) -> Callable[[int, int], None]:
        def record(compared: int, disagreed: int) -> None:
            if slot.current is loaded:
                slot.window.record_value("shadow_disagreement", disagreed, compared)
        return record

    def _remember(self, request_id: str, route: str, loaded: LoadedModel,
                  predictions: list[Any], fingerprint: str = "") -> None:
        digest = loaded.digest
        if digest not in self._served:
            self._served[digest] = loaded
        frozen: Any = tuple(predictions)
        if not all(v is None or isinstance(v, int | float | str) for v in frozen):
            frozen = json.dumps(predictions)
        with self._recent_lock:
            recent = self._recent
            # An id given twice for other records names no one prediction: feedback on it
            # is refused. Kept as it was, a second caller reusing someone's id (OIP lets
            # the caller choose it) took over the first one's feedback, booked on its own
            # version. The same records again are a retry: the first answer stands.
            earlier = recent.get(request_id)
            if earlier is None:
                recent[request_id] = (route, digest, frozen, fingerprint)
            elif earlier is not _REUSED and not (fingerprint and earlier[3] == fingerprint):
                recent[request_id] = _REUSED
            if len(recent) > RECENT_REQUESTS:
                del recent[next(iter(recent))]

    def shadow_models(self) -> list[LoadedModel]:
        return [s.current for s in self.shadows if s.current is not None]

    # -- feedback -----------------------------------------------------------------------

    def feedback(self, items: list[Any]) -> dict[str, Any]:
        """Ground truth or metric values for earlier requests, by their request id."""
        accepted, unknown, reused = 0, [], []
        for index, item in enumerate(items):
            if not isinstance(item, Mapping) or not isinstance(item.get("request_id"), str):
                raise InvalidInput(f"feedback item {index} needs a request_id",
                                   hint='{"request_id": "...", "truth": [...]} or '
                                        '{"request_id": "...", "metrics": {"NAME": 1.0}}')
            extra = set(item) - {"request_id", "truth", "metrics"}
            if extra:
                raise InvalidInput(f"feedback item {index}: unknown key {sorted(extra)[0]!r}",
                                   hint="keys: request_id, truth, metrics")
            with self._recent_lock:
                entry = self._recent.get(item["request_id"])
            if entry is None:
                unknown.append(item["request_id"])
                continue
            if entry is _REUSED:
                reused.append(item["request_id"])
                continue
            route, digest, frozen, _fingerprint_of = entry
            loaded = self._served[digest]
            predictions = json.loads(frozen) if isinstance(frozen, str) else list(frozen)
            for name, total, count in _feedback_values(item, predictions, index):
                labels = (self.name, *loaded.labels, name)
                self.instruments.feedback.inc(*labels, amount=count)
                self.instruments.feedback_sum.inc(*labels, amount=total)
                slot = self.slots.get(route)
                if slot is not None and slot.current is loaded:
                    slot.window.record_value(f"feedback.{name}", total, count)
            accepted += 1
        answer: dict[str, Any] = {"accepted": accepted, "unknown": unknown}
        if reused:
            answer["reused"] = reused  # ids several requests gave: whose truth is it?
        return answer

    # -- changing what is served --------------------------------------------------------

    def set_weights(self, weights: Mapping[str, float], *, merge: bool = True,
                    actor: str | None = None) -> dict[str, float]:
        """Replace (or, with ``merge``, update) route weights.

        Every weight must be a finite number of at least 0 and they must add up
        to more than 0 (Unprocessable, 422, otherwise).
        """
        unknown = sorted(set(weights) - set(self.slots))
        if unknown:
            raise InvalidInput(f"{self.name} has no route {unknown[0]!r}",
                               hint=f"routes: {', '.join(self.slots)}")
        for name, weight in weights.items():
            if not finite_number(weight) or weight < 0:
                raise Unprocessable(f"route {name!r}: weight {weight!r} is not a finite "
                                    "number of at least 0")
        new = {**self.router.weights, **weights} if merge else dict(weights)
        total = sum(float(w) for w in new.values())
        if not (0 < total < math.inf):
            raise Unprocessable(f"the weights of {self.name} would add up to {total:g}",
                                hint="give at least one route a weight above 0, "
                                     "and keep the total finite")
        for name, weight in new.items():
            if weight > 0 and self.slots[name].current is None:
                raise InvalidInput(f"route {name!r} has no version loaded; it cannot take traffic",
                                   hint=self.slots[name].problem)
        self.router.set_weights(new)
        self._update_weight_gauges()
        log.info("weights set", extra={"endpoint": self.name, "weights": new,
                                       **({"actor": actor} if actor else {})})
        return self.router.weights

    def _update_weight_gauges(self) -> None:
        for name, weight in self.router.weights.items():
            self.instruments.weights.set(weight, self.name, name)

    def submit(self, slot: RouteSlot, job: Callable[[], None]) -> None:
        """Run ``job`` on the loader thread; while ``slot`` has one running, the newest job
        asked for runs after it (dropped, a re-pin asked for during a load never ran: a
        review)."""
        with self._submitting:
            if slot.busy:
                # Each distinct job once, in the order asked: a tick's poll must not
                # replace a re-pin asked for before it (a review: it did, for good).
                if not any(_same_job(job, queued) for queued in slot.pending):
                    slot.pending.append(job)
                return
            slot.busy = True
        self._start(slot, job)

    def _start(self, slot: RouteSlot, job: Callable[[], None]) -> None:
        def run() -> None:
            try:
                job()
            except Exception:  # logged; the endpoint keeps serving
                log.exception("background task failed", extra={"endpoint": self.name,
                                                               "route": slot.name})
            finally:
                with self._submitting:
                    following = slot.pending.pop(0) if slot.pending else None
                    if following is None:
                        slot.busy = False
                if following is not None:
                    self._start(slot, following)

        try:
            self._loader.submit(run)
        except RuntimeError:  # shutting down
            with self._submitting:
                slot.busy, slot.pending = False, []

    def check(self) -> None:
        """Poll targets and judge rollback rules (the supervisor calls this every tick)."""
        if self.config.rollback.rules and self.judge_locally:
            weights = self.router.weights
            for name, slot in self.slots.items():
                if slot.current is not None and not slot.busy and weights.get(name, 0) > 0:
                    self._judge(slot)
        for slot in [*self.slots.values(), *self.shadows]:
            self.submit(slot, functools.partial(poll_target, self, slot))

    def poll_now(self) -> None:
        """Poll every route's and shadow's target on the loader thread, now."""
        for slot in [*self.slots.values(), *self.shadows]:
            self.submit(slot, functools.partial(poll_target, self, slot))

    def _judge(self, slot: RouteSlot) -> None:
        from .rollback import first_breach

        rules = self.config.rollback
        breach = first_breach(rules.rules, slot.window.snapshot(), rules.min_requests)
        if breach is not None:
            self.submit(slot, lambda: rollback_slot(self, slot, breach))

    # -- reading ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        weights = self.router.weights
        return {
            "name": self.name,
            "ready": self.ready,
            "routes": [slot.describe(weights.get(name)) for name, slot in self.slots.items()],
            "shadows": [slot.describe(None) for slot in self.shadows],
            "rules": [r.describe() for r in self.config.rollback.rules],
            "rollbacks": list(self.rollbacks),
        }

    def drift(self) -> list[dict[str, Any]]:
        """Per served version: PSI/KS per feature against its reference statistics."""
        seen: dict[str, LoadedModel] = {}
        for slot in self.slots.values():
            if slot.current is not None:
                seen.setdefault(slot.current.digest, slot.current)
        out = []
        for loaded in seen.values():
            report = loaded.drift.report() if loaded.drift.enabled else {}
            out.append({"ref": loaded.ref, "digest": loaded.digest,
                        "reference": loaded.drift.enabled, "features": report})
        return out

    def note_rollback(self, entry: dict[str, Any]) -> None:
        self.rollbacks.appendleft(entry)
        self.instruments.rollbacks.inc(self.name, entry["route"])


def _feedback_values(item: Mapping[str, Any], predictions: list[Any],
                     index: int) -> list[tuple[str, float, int]]:
    """(metric, sum, count) triples from one feedback item."""
    out: list[tuple[str, float, int]] = []
    if "truth" in item:
        truth = item["truth"] if isinstance(item["truth"], list) else [item["truth"]]
        if len(truth) != len(predictions):
            raise InvalidInput(f"feedback item {index}: {len(truth)} truths for "
                               f"{len(predictions)} predictions")
        pairs = list(zip(predictions, truth, strict=True))
        out.append(("accuracy", float(sum(agree(p, t) for p, t in pairs)), len(pairs)))
        for t in truth:
            if _is_number(t) and not finite_number(t):
                raise Unprocessable(f"feedback item {index}: truth {t!r} is not a finite number")
        numeric = [(p, t) for p, t in pairs if finite_number(p) and finite_number(t)]
        if numeric:
            total = sum(abs(float(p) - float(t)) for p, t in numeric)
            if not math.isfinite(total):
                raise Unprocessable(f"feedback item {index}: the absolute error is not finite")
            out.append(("abs_error", total, len(numeric)))
    metrics = item.get("metrics") or {}
    if not isinstance(metrics, Mapping):
        raise InvalidInput(f"feedback item {index}: metrics must be an object of numbers")
    for name, value in metrics.items():
        if not str(name).replace("_", "").isalnum() or len(str(name)) > 64:
            raise InvalidInput(f"feedback item {index}: metric {str(name)[:64]!r} needs a "
                               "plain name (letters, digits, '_', at most 64)")
        if not finite_number(value):
            raise Unprocessable(f"feedback item {index}: metric {name!r} must be a finite "
                                f"number, not {value!r}")
        out.append((str(name), float(value), 1))
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
