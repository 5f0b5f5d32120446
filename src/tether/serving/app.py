"""The HTTP surface of a serving process (ASGI, Starlette): thin handlers only.

    POST /v1/endpoints/{name}/predict    {"records": [...], "key": "user-1"}
    POST /v1/endpoints/{name}/feedback   {"request_id": "...", "truth": [...]}
    GET  /v1/endpoints/{name}/drift      PSI / KS per feature and version
    GET  /v1/endpoints/{name}            routes, weights, health, rollbacks
    PUT  /v1/endpoints/{name}/weights    {"weights": {"canary": 20}}
    POST /v1/reload                      re-read the deployment file, poll every target
    GET  /v1/deployment                  every endpoint's status
    GET  /metrics  /healthz  /readyz

    Open Inference Protocol (KServe v2; see protocols.py):
    GET  /v2  /v2/health/live  /v2/health/ready
    GET  /v2/models/{name}[/versions/{v}][/ready]
    POST /v2/models/{name}[/versions/{v}]/infer
    MLflow's scoring protocol:
    POST /invocations (the only endpoint)  /v1/endpoints/{name}/invocations
    GET  /ping  /health

Every protocol predicts through `Endpoint.predict_async`: the same routing,
validation, metrics, shadows, rollback windows and batching.

Weights, feedback and reload need ``Authorization: Bearer TOKEN`` (see auth.py);
reads too when the deployment says ``auth: {protect_reads: true}``. A caller's
mistake is a 4xx and never reaches the windows rollback rules judge.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import __version__
from .. import _strict_json as json_body
from .._errors import Conflict, InvalidInput, NotFound, TetherError, Unavailable
from .._registry.tokens import Unauthenticated
from .._schema import RecordSchemaError
from .auth import deployment_models, endpoint_models
from .drift import PSI_MODERATE, PSI_SIGNIFICANT
from .endpoint import Check, Endpoint, PredictionFailed, Served
from .guard import Unprocessable
from .logs import version_fields
from .metrics import CONTENT_TYPE
from .pool import LoadedModel
from .protocols import (
    InferRequest,
    check_inputs,
    check_outputs,
    infer_response,
    model_metadata,
    parse_infer,
    parse_mlflow,
)
from .runtime import ServingRuntime

log = logging.getLogger("tether.serving")

MAX_BODY = 32 * 1024 * 1024
#: Bodies up to this size are decoded on the event loop (a thread hop costs more).
_DECODE_INLINE = 256 * 1024
#: Seconds a large body waits for the one decoding before it (then 503). Parsing JSON
#: holds the interpreter, thread or not: a 30 MB body still slows every request of the
#: process for about a second while it is parsed.
_LARGE_DECODE_WAIT = 5.0
#: Longest a request body being read may go without a byte.
BODY_SECONDS = 30.0
_PREDICT_KEYS = {"records", "inputs", "key", "request_id"}
#: A caller's request id goes back in a header: printable ASCII only, bounded.
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
Handler = Callable[[Request], Awaitable[Response]]


def json_response(payload: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    body = json_body.dumps(payload)  # NaN and infinities as null: strict JSON
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def error_response(error: TetherError) -> Response:
    payload: dict[str, Any] = dict(error.to_dict())
    status = error.http_status
    headers = None
    if isinstance(error, RecordSchemaError):
        status = 422
        payload.update(field=error.field, index=error.index)
    if isinstance(error, Unauthenticated):
        headers = {"WWW-Authenticate": 'Bearer realm="tether-serving"'}
    return json_response(payload, status, headers or _retry(error))


def _retry(error: TetherError) -> dict[str, str] | None:
    """Retry-After on a 503: the caller may send the same request again shortly."""
    return {"Retry-After": "1"} if isinstance(error, Unavailable) else None


def handled(handler: Handler) -> Handler:
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except TetherError as error:
            return error_response(error)
        except Exception:
            log.exception("unexpected error in %s %s", request.method, request.url.path)
            return json_response({"error": "internal", "message": "internal error; see the "
                                  "server log", "hint": None}, 500)
    return wrapper


async def read_body(request: Request) -> bytes:
    """The body, refused as soon as it passes ``MAX_BODY`` or stalls ``BODY_SECONDS``.

    Counted as it arrives: a chunked body has no Content-Length, and reading it
    whole first held 1.8 GB before the limit said no. A body that trickles in (or
    never ends) is cut off too, instead of holding its socket and its request
    forever.
    """
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise InvalidInput(f"body is over the {MAX_BODY} byte limit")
    parts: list[bytes] = []
    size = 0
    pieces = request.stream().__aiter__()
    while True:
        try:
            # A deadline between pieces, not for the whole body: a slow but steady
            # client (a large body on a poor link) is never cut off.
            part = await asyncio.wait_for(pieces.__anext__(), BODY_SECONDS)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise InvalidInput(f"no byte of the body arrived for {BODY_SECONDS:g} s",
                               hint="send the request's body as you start it") from None
        size += len(part)
        if size > MAX_BODY:
            raise InvalidInput(f"body is over the {MAX_BODY} byte limit")
        parts.append(part)
    return b"".join(parts)


async def read_json(request: Request) -> Any:
    return parse_json(await read_body(request))


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError,
        # and so is an integer of more than 4300 digits
        raise InvalidInput(f"body is not valid JSON: {str(error)[:200]}") from None
    except RecursionError:
        raise InvalidInput("body is not valid JSON: nested too deeply") from None


@dataclass(frozen=True)
class Decoded:
    """A request body of any protocol, as the request path takes it."""

    records: Any
    key: str | None
    request_id: str | None
    version: str | None = None
    extra: Any = None


def checked_request_id(value: Any, name: str = "request_id") -> str | None:
    if value is not None and not (isinstance(value, str) and _REQUEST_ID.fullmatch(value)):
        raise InvalidInput(f"{name} must be 1 to 128 printable ASCII characters without spaces")
    return value  # type: ignore[no-any-return]


def version_header(model: LoadedModel) -> str:
    return f"{model.ref}; digest={model.digest}"


def served_headers(served: Served) -> dict[str, str]:
    return {"X-Model-Version": version_header(served.model), "X-Request-Id": served.request_id}


def primary(endpoint: Endpoint) -> LoadedModel | None:
    """The version of the route with the most traffic (metadata describes it)."""
    weights = endpoint.router.weights
    slots = sorted(endpoint.slots.values(), key=lambda s: -weights.get(s.name, 0))
    return next((s.current for s in slots if s.current is not None), None)


def _message(error: TetherError) -> str:
    return error.message + (f" (hint: {error.hint})" if error.hint else "")


def _status(error: TetherError) -> int:
    return 422 if isinstance(error, RecordSchemaError) else error.http_status


def oip_handled(handler: Handler) -> Handler:
    """Errors in the Open Inference Protocol's shape: ``{"error": "..."}``."""
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except TetherError as error:
            return json_response({"error": _message(error)}, _status(error), _retry(error))
        except Exception:
            log.exception("unexpected error in %s %s", request.method, request.url.path)
            return json_response({"error": "internal error; see the server log"}, 500)
    return wrapper


_MLFLOW_CODES = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                 404: "RESOURCE_DOES_NOT_EXIST", 415: "BAD_REQUEST",
                 422: "INVALID_PARAMETER_VALUE", 500: "INTERNAL_ERROR",
                 503: "TEMPORARILY_UNAVAILABLE"}


def mlflow_error(message: str, status: int, hint: str | None) -> Response:
    payload = {"error_code": _MLFLOW_CODES.get(status, "BAD_REQUEST"), "message": message}
    if hint:
        payload["hint"] = hint
    return json_response(payload, status)


def mlflow_handled(handler: Handler) -> Handler:
    """Errors in MLflow's shape: ``{"error_code": "BAD_REQUEST", "message": "..."}``."""
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except TetherError as error:
            response = mlflow_error(error.message, _status(error), error.hint)
            response.headers.update(_retry(error) or {})
            if isinstance(error, Unauthenticated):
                response.headers["WWW-Authenticate"] = 'Bearer realm="tether-serving"'
            return response
        except Exception:
            log.exception("unexpected error in %s %s", request.method, request.url.path)
            return mlflow_error("internal error; see the server log", 500, None)
    return wrapper


def create_app(runtime: ServingRuntime, *, inline: bool = True) -> Starlette:
    """The ASGI app over a started runtime; it stops the runtime at shutdown.

    ``inline`` predicts on the event loop (fastest for small models, whose
    predictions take well under a millisecond); otherwise in the thread pool.
    """
    access_log = runtime.deployment.server.access_log
    auth = runtime.auth
    large_decodes = asyncio.Semaphore(1)

    async def find(request: Request) -> Endpoint:
        name = request.path_params["name"]
        if name not in runtime.endpoints and auth.protect_reads:  # names are not public
            await run_in_threadpool(auth.require, request, role="reader", models=(),
                                    action="reading endpoints")
        return runtime.endpoint(name)

    async def may_read(request: Request, endpoint: Endpoint | None, action: str) -> None:
        if auth.protect_reads:
            models = (endpoint_models(endpoint.config) if endpoint is not None
                      else deployment_models(runtime.deployment))
            await run_in_threadpool(auth.require, request, role="reader", models=models,
                                    action=action)

    async def serve(request: Request, endpoint: Endpoint,
                    decode: Callable[[bytes], Decoded],
                    check: Check | None = None) -> tuple[Served, Any]:
        """Read, decode and predict one request of any protocol (PredictionFailed raised)."""
        await may_read(request, endpoint, f"predicting on {endpoint.name}")
        try:
            body = await read_body(request)
        except TetherError:
            endpoint.count_refused()  # too large, or too slow to arrive
            raise
        # Counted once its body is in: a batch waits for requests being decoded, not
        # for one whose body trickles in (one such socket made every request of a
        # batching endpoint wait the whole max_wait_ms).
        endpoint.arrive()
        try:
            if len(body) < _DECODE_INLINE:
                decoded = decode(body)
            else:
                # A large body is parsed off the event loop (30 MB of JSON held every
                # request, health checks included, for 6 s: a review), one at a time per
                # process (parsed JSON takes many times its size in memory).
                try:
                    await asyncio.wait_for(large_decodes.acquire(), _LARGE_DECODE_WAIT)
                except TimeoutError:
                    # One client's stream of large bodies must not queue everyone
                    # else's forever (a review): the caller retries, or sends less.
                    raise Unavailable(
                        "busy decoding other large request bodies; nothing was predicted",
                        hint="retry shortly; send large tensors with the binary extension "
                        "of the Open Inference Protocol, or in smaller batches") from None
                try:
                    decoded = await run_in_threadpool(decode, body)
                finally:
                    large_decodes.release()
        except BaseException as error:
            endpoint.arrived()
            if isinstance(error, TetherError):
                endpoint.count_refused()
            raise
        key = request.headers.get("x-request-key") or decoded.key
        served = await endpoint.predict_async(decoded.records, key, decoded.request_id,
                                              version=decoded.version, inline=inline,
                                              check=check)
        if access_log:
            log.info("predicted", extra={"endpoint": endpoint.name, "route": served.route,
                                         "request_id": served.request_id,
                                         "records": len(served.predictions),
                                         **version_fields(served.model.version)})
        return served, decoded.extra

    def decode_tether(body: bytes) -> Decoded:
        data = parse_json(body)
        if isinstance(data, list):
            data = {"records": data}
        if not isinstance(data, dict) or ("records" in data) == ("inputs" in data):
            raise RecordSchemaError('body must be {"records": [{...}, ...]} or '
                                    '{"inputs": [[...], ...]}', field=None, index=None)
        unknown = set(data) - _PREDICT_KEYS
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}",
                               hint="fields: records (or inputs), key, request_id")
        records = data["records"] if "records" in data else data["inputs"]
        if "inputs" in data and not (isinstance(records, list) and all(
                not isinstance(r, dict) for r in records)):
            raise RecordSchemaError('inputs must be a list of rows: {"inputs": [[5.1, 3.5], '
                                    '...]}; send objects as "records"', field=None, index=None)
        request_id = checked_request_id(data.get("request_id"))
        key = data.get("key")
        return Decoded(records, None if key is None else str(key), request_id)

    @handled
    async def predict(request: Request) -> Response:
        endpoint = await find(request)
        try:
            served, _ = await serve(request, endpoint, decode_tether)
        except PredictionFailed as error:
            response = error_response(error)
            response.headers["X-Model-Version"] = f"{error.model.ref}; digest={error.model.digest}"
            return response
        model = served.model
        payload = {"predictions": served.predictions, "model": model.version.name,
                   "version": model.version.semver, "ref": model.ref, "digest": model.digest,
                   "route": served.route, "request_id": served.request_id}
        return json_response(payload, headers=served_headers(served))

    # -- the Open Inference Protocol ------------------------------------------------------

    def oip_find(request: Request) -> Endpoint:
        return runtime.endpoint(request.path_params["name"])

    def oip_model(endpoint: Endpoint, version: str | None) -> LoadedModel:
        if version is not None:
            loaded = endpoint.slots[endpoint.route_serving(version)].current
        else:
            loaded = primary(endpoint)
        if loaded is None:
            raise NotFound(f"{endpoint.name} has no version loaded yet")
        return loaded

    @oip_handled
    async def oip_server_metadata(request: Request) -> Response:
        return json_response({"name": "tether", "version": __version__,
                              "extensions": ["binary_tensor_data"]})

    @oip_handled
    async def oip_live(request: Request) -> Response:
        return json_response({"live": True})

    @oip_handled
    async def oip_ready(request: Request) -> Response:
        ready = runtime.ready
        return json_response({"ready": ready}, 200 if ready else 400)

    @oip_handled
    async def oip_model_metadata(request: Request) -> Response:
        endpoint = await find(request)
        await may_read(request, endpoint, f"reading the metadata of {endpoint.name}")
        loaded = oip_model(endpoint, request.path_params.get("version"))
        version = request.path_params.get("version")
        versions = [version] if version is not None else endpoint.version_labels()
        platform = f"tether-{loaded.version.flavor.get('name', 'unknown')}"
        body = model_metadata(endpoint.name, versions, loaded.signature, platform)
        return json_response(body, headers={"X-Model-Version": version_header(loaded)})

    @oip_handled
    async def oip_model_ready(request: Request) -> Response:
        endpoint = await find(request)
        await may_read(request, endpoint, f"reading the status of {endpoint.name}")
        version = request.path_params.get("version")
        if version is None:
            ready = endpoint.ready
        else:
            try:
                endpoint.route_serving(version)
                ready = True
            except NotFound:
                ready = False
        return json_response({"name": endpoint.name, "ready": ready}, 200 if ready else 400)

    @oip_handled
    async def oip_infer(request: Request) -> Response:
        endpoint = await find(request)
        version = request.path_params.get("version")
        header_length = request.headers.get("inference-header-content-length")

        asked: list[InferRequest] = []

        def decode(body: bytes) -> Decoded:
            parsed = parse_infer(body, header_length, endpoint.config.max_records)
            request_id = checked_request_id(parsed.request_id, "id")
            asked.append(parsed)
            return Decoded(parsed.records, None, request_id, version, parsed)

        def check(loaded: LoadedModel, predictions: list[Any]) -> None:
            check_inputs(loaded.signature, asked[0])
            check_outputs(predictions, loaded.signature, asked[0])

        try:
            served, parsed = await serve(request, endpoint, decode, check)
        except PredictionFailed as error:
            return json_response({"error": error.message}, 500,
                                 headers={"X-Model-Version": version_header(error.model)})
        model = served.model
        body, json_length = infer_response(endpoint.name, model.version.semver,
                                           served.request_id, served.predictions,
                                           model.signature, parsed)
        headers = served_headers(served)
        if json_length is None:
            return Response(body, headers=headers, media_type="application/json")
        headers["Inference-Header-Content-Length"] = str(json_length)
        return Response(body, headers=headers, media_type="application/octet-stream")

    # -- MLflow's scoring protocol --------------------------------------------------------

    def decode_mlflow(body: bytes) -> Decoded:
        return Decoded(parse_mlflow(parse_json(body)), None, None)

    @mlflow_handled
    async def invocations(request: Request) -> Response:
        if "name" in request.path_params:
            endpoint = await find(request)
        elif len(runtime.endpoints) == 1:
            endpoint = next(iter(runtime.endpoints.values()))
        else:
            raise InvalidInput("this server has several endpoints; /invocations cannot tell "
                               "which one", hint="POST /v1/endpoints/NAME/invocations, NAME "
                               f"one of {', '.join(sorted(runtime.endpoints))}")
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() == "text/csv":
            return mlflow_error("CSV bodies are not supported", 415,
                                "send JSON (dataframe_split, dataframe_records, instances or "
                                "inputs) with Content-Type: application/json")
        try:
            served, _ = await serve(request, endpoint, decode_mlflow)
        except PredictionFailed as error:
            response = mlflow_error(error.message, 500, None)
            response.headers["X-Model-Version"] = version_header(error.model)
            return response
        return json_response({"predictions": served.predictions},
                             headers=served_headers(served))

    async def ping(request: Request) -> Response:
        return json_response({"status": "ok"})

    @handled
    async def feedback(request: Request) -> Response:
        endpoint = await find(request)
        await run_in_threadpool(auth.require, request, role="contributor",
                                models=endpoint_models(endpoint.config),
                                action=f"sending feedback to {endpoint.name}")
        data = await read_json(request)
        items = data if isinstance(data, list) else [data]
        return json_response(endpoint.feedback(items))

    @handled
    async def drift(request: Request) -> Response:
        endpoint = await find(request)
        await may_read(request, endpoint, f"reading the drift of {endpoint.name}")
        versions = await run_in_threadpool(endpoint.drift)
        return json_response({"endpoint": endpoint.name, "versions": versions,
                              "thresholds": {"moderate": PSI_MODERATE,
                                             "significant": PSI_SIGNIFICANT}})

    @handled
    async def endpoint_status(request: Request) -> Response:
        endpoint = await find(request)
        await may_read(request, endpoint, f"reading the status of {endpoint.name}")
        return json_response(endpoint.status())

    @handled
    async def weights(request: Request) -> Response:
        endpoint = await find(request)
        if runtime.follower is not None:
            name = runtime.follower.name
            raise Conflict(f"this replica follows deployment {name} in the registry; its "
                           "weights change there, for every replica",
                           hint=f"tether deploy weights {name} ROUTE=WEIGHT ...")

        def allowed() -> str:  # the registry is read: off the event loop
            return auth.require(request, role=auth.steering_role(endpoint.config),
                                models=endpoint_models(endpoint.config),
                                action=f"changing the weights of {endpoint.name}")

        who = await run_in_threadpool(allowed)
        data = await read_json(request)
        if not isinstance(data, dict) or set(data) != {"weights"} or not isinstance(
                data["weights"], dict) or not data["weights"]:
            raise InvalidInput('body must be {"weights": {"ROUTE": NUMBER, ...}}')
        values = data["weights"]
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise Unprocessable(f"route {name!r}: weight {value!r} is not a number")
        return json_response({"endpoint": endpoint.name,
                              "weights": endpoint.set_weights(values, actor=who)})

    @handled
    async def reload(request: Request) -> Response:
        def allowed() -> str:
            who = ""
            for endpoint in runtime.endpoints.values():
                who = auth.require(request, role=auth.steering_role(endpoint.config),
                                   models=endpoint_models(endpoint.config),
                                   action="reloading the deployment")
            return who

        who = await run_in_threadpool(allowed)
        log.info("reload requested", extra={"actor": who})
        return json_response(await run_in_threadpool(runtime.reload))

    @handled
    async def deployment(request: Request) -> Response:
        await may_read(request, None, "reading the deployment")
        return json_response(await run_in_threadpool(runtime.status))

    @handled
    async def metrics(request: Request) -> Response:
        await may_read(request, None, "reading metrics")
        text = await run_in_threadpool(runtime.instruments.render)
        return Response(text, media_type=CONTENT_TYPE)

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(request: Request) -> Response:
        states = {name: e.ready for name, e in runtime.endpoints.items()}
        ready = all(states.values())
        return json_response({"ready": ready, "endpoints": states}, 200 if ready else 503)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(runtime.stop)

    routes = [
        Route("/v1/endpoints/{name}/predict", predict, methods=["POST"]),
        Route("/v1/endpoints/{name}/feedback", feedback, methods=["POST"]),
        Route("/v1/endpoints/{name}/drift", drift, methods=["GET"]),
        Route("/v1/endpoints/{name}/weights", weights, methods=["PUT"]),
        Route("/v1/endpoints/{name}", endpoint_status, methods=["GET"]),
        Route("/v1/reload", reload, methods=["POST"]),
        Route("/v1/deployment", deployment, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/v2", oip_server_metadata, methods=["GET"]),
        Route("/v2/health/live", oip_live, methods=["GET"]),
        Route("/v2/health/ready", oip_ready, methods=["GET"]),
        Route("/v2/models/{name}", oip_model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/ready", oip_model_ready, methods=["GET"]),
        Route("/v2/models/{name}/infer", oip_infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}", oip_model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/ready", oip_model_ready, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/infer", oip_infer, methods=["POST"]),
        Route("/invocations", invocations, methods=["POST"]),
        Route("/v1/endpoints/{name}/invocations", invocations, methods=["POST"]),
        Route("/ping", ping, methods=["GET"]),
        Route("/health", ping, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
