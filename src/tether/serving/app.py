"""The HTTP surface of a serving process (ASGI, Starlette): thin handlers only.

    POST /v1/endpoints/{name}/predict    {"records": [...], "key": "user-1"}
    POST /v1/endpoints/{name}/feedback   {"request_id": "...", "truth": [...]}
    GET  /v1/endpoints/{name}/drift      PSI / KS per feature and version
    GET  /v1/endpoints/{name}            routes, weights, health, rollbacks
    PUT  /v1/endpoints/{name}/weights    {"weights": {"canary": 20}}
    POST /v1/reload                      re-read the deployment file, poll every target
    GET  /v1/deployment                  every endpoint's status
    GET  /metrics  /healthz  /readyz

Weights, feedback and reload need ``Authorization: Bearer TOKEN`` (see auth.py);
reads too when the deployment says ``auth: {protect_reads: true}``. A caller's
mistake is a 4xx and never reaches the windows rollback rules judge.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .._errors import InvalidInput, TetherError
from .._registry.tokens import Unauthenticated
from .._signature import RecordSchemaError
from .auth import deployment_models, endpoint_models
from .drift import PSI_MODERATE, PSI_SIGNIFICANT
from .endpoint import Endpoint, PredictionFailed
from .guard import Unprocessable
from .logs import version_fields
from .metrics import CONTENT_TYPE
from .runtime import ServingRuntime

log = logging.getLogger("tether.serving")

MAX_BODY = 32 * 1024 * 1024
_PREDICT_KEYS = {"records", "key", "request_id"}
#: A caller's request id goes back in a header: printable ASCII only, bounded.
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
Handler = Callable[[Request], Awaitable[Response]]


def json_response(payload: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":"), default=str)
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
    return json_response(payload, status, headers)


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


async def read_json(request: Request) -> Any:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise InvalidInput(f"body is over the {MAX_BODY} byte limit")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError,
        # and so is an integer of more than 4300 digits
        raise InvalidInput(f"body is not valid JSON: {str(error)[:200]}") from None
    except RecursionError:
        raise InvalidInput("body is not valid JSON: nested too deeply") from None


def create_app(runtime: ServingRuntime, *, inline: bool = True) -> Starlette:
    """The ASGI app over a started runtime; it stops the runtime at shutdown.

    ``inline`` predicts on the event loop (fastest for small models, whose
    predictions take well under a millisecond); otherwise in the thread pool.
    """
    access_log = runtime.deployment.server.access_log
    auth = runtime.auth

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

    @handled
    async def predict(request: Request) -> Response:
        endpoint = await find(request)
        await may_read(request, endpoint, f"predicting on {endpoint.name}")
        data = await read_json(request)
        if isinstance(data, list):
            data = {"records": data}
        if not isinstance(data, dict) or "records" not in data:
            raise RecordSchemaError('body must be {"records": [{...}, ...]}', field=None,
                                    index=None)
        unknown = set(data) - _PREDICT_KEYS
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}",
                               hint="fields: records, key, request_id")
        request_id = data.get("request_id")
        if request_id is not None and not (isinstance(request_id, str)
                                           and _REQUEST_ID.fullmatch(request_id)):
            raise InvalidInput("request_id must be 1 to 128 printable ASCII characters "
                               "without spaces")
        key = request.headers.get("x-request-key") or data.get("key")
        args = (data["records"], None if key is None else str(key), request_id)
        try:
            served = endpoint.predict(*args) if inline else await run_in_threadpool(
                endpoint.predict, *args)
        except PredictionFailed as error:
            response = error_response(error)
            response.headers["X-Model-Version"] = f"{error.model.ref}; digest={error.model.digest}"
            return response
        model = served.model
        if access_log:
            log.info("predicted", extra={"endpoint": endpoint.name, "route": served.route,
                                         "request_id": served.request_id,
                                         "records": len(served.predictions),
                                         **version_fields(model.version)})
        payload = {"predictions": served.predictions, "model": model.version.name,
                   "version": model.version.semver, "ref": model.ref, "digest": model.digest,
                   "route": served.route, "request_id": served.request_id}
        headers = {"X-Model-Version": f"{model.ref}; digest={model.digest}",
                   "X-Request-Id": served.request_id}
        return json_response(payload, headers=headers)

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
    ]
    return Starlette(routes=routes, lifespan=lifespan)
