"""The MLflow Model Registry REST API (``/api/2.0/mlflow``) over Tether's registry.

An unmodified ``mlflow.MlflowClient`` pointed at a Tether server can create
registered models and versions, tag them, set and resolve aliases, search and
delete, and gets the answers ``mlflow server`` gives (tests/test_mlflow_compat.py
runs the same calls against both). MLflow's version numbers are Tether's
sequence numbers; a version created through this API records its MLflow
``source`` and ``run_id`` in its flavor (it has no files in Tether's store).
Errors use MLflow's format: ``{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": ...}``.
The search language (filter, order_by, paging) is in :mod:`.mlflow_filter`.

Deliberate refusals, each saying what Tether allows instead: stages, renames,
names Tether does not allow, and deleting a version an alias points at.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._errors import InvalidInput, NotFound, PayloadTooLarge, TetherError, Unavailable
from .._metadata.clock import parse_iso
from .._records import ModelInfo, ModelVersion, VersionValues
from .._registry.registry import Registry
from . import mlflow_filter as search
from .bodies import describe, read_json_body
from .faults import unavailable
from .mlflow_filter import MlflowError, invalid

log = logging.getLogger("tether.server")

_CODES = {
    "not_found": ("RESOURCE_DOES_NOT_EXIST", 404),
    "registry_not_found": ("RESOURCE_DOES_NOT_EXIST", 404),
    "conflict": ("RESOURCE_ALREADY_EXISTS", 400),
    "permission_denied": ("PERMISSION_DENIED", 403),
    "unauthenticated": ("UNAUTHENTICATED", 401),
    "policy_violation": ("INVALID_STATE", 400),
    "payload_too_large": ("REQUEST_LIMIT_EXCEEDED", 413),
}

#: MLflow's limits on tags (mlflow/utils/validation.py).
MAX_TAG_KEY = 250
MAX_TAG_VALUE = 100_000
#: MLflow's stages; every Tether version is in "None".
STAGES = {"none": "None", "staging": "Staging", "production": "Production", "archived": "Archived"}
#: ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``, a source naming another version.
_MODELS_URI = re.compile(r"^models:/([^/@]+)(?:/(\d{1,18})|@([\w-]+))/?\Z")
_RESERVED_VERSION_ALIAS = re.compile(r"^[vV]\d+\Z")


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        shown = "" if isinstance(value, list | dict) else f" {json.dumps(value)[:80]}"
        raise MlflowError(
            "INVALID_PARAMETER_VALUE",
            f"Invalid value{shown} for parameter '{key}' supplied: expected a string, "
            f"got {describe(value)}.",
        )
    return value


def _optional(params: dict[str, Any], key: str) -> str | None:
    """An optional string parameter: absent or null is None, anything else a string."""
    value = params.get(key)
    return None if value is None else _string(key, value)


def _tag_list(params: dict[str, Any]) -> dict[str, str]:
    """MLflow's ``tags``: a list of ``{"key": str, "value": str}`` objects."""
    raw = params.get("tags")
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise MlflowError(
            "INVALID_PARAMETER_VALUE",
            f"Invalid value for parameter 'tags': expected a list of {{key, value}} objects, "
            f"got {describe(raw)}.",
        )
    tags: dict[str, str] = {}
    for tag in raw:
        if not isinstance(tag, dict) or not tag.get("key"):
            raise MlflowError(
                "INVALID_PARAMETER_VALUE",
                f"Invalid tag: expected an object with a 'key', got {describe(tag)}.",
            )
        key = _string("tags.key", tag["key"])
        value = tag.get("value")
        tags[key] = "" if value is None else _string(f"tags.{key}.value", value)
    return tags


def _check_tag(key: str, value: str) -> None:
    if len(key) > MAX_TAG_KEY:
        raise invalid(f"'key' exceeds the maximum length of {MAX_TAG_KEY} characters")
    if len(value) > MAX_TAG_VALUE:
        raise invalid(f"'value' exceeds the maximum length of {MAX_TAG_VALUE} characters")


def _check_alias(alias: str) -> None:
    """MLflow's reserved alias names: ``latest`` and ``v<number>`` name versions."""
    allowed = (
        "an alias may be any name of letters, digits, '_' and '-' except 'latest' and "
        "v<number>, which name versions"
    )
    if alias.lower() == "latest":
        raise invalid(f"'latest' alias name (case insensitive) is reserved: {allowed}.")
    if _RESERVED_VERSION_ALIAS.match(alias):
        raise invalid(f"Version alias name '{alias}' is reserved: {allowed}.")


def _ms(iso: str) -> int:
    return int(parse_iso(iso).timestamp() * 1000)


def _tags(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in sorted(tags.items())]


def version_json(v: ModelVersion, updated: str | None = None) -> dict[str, Any]:
    """``updated``: when MLflow would say the version last changed (its description),
    if after its creation."""
    mlflow = v.flavor if v.flavor.get("name") == "mlflow" else {}
    return {
        "name": v.name,
        "version": str(v.seq),
        "creation_timestamp": _ms(v.created_at),
        "last_updated_timestamp": _ms(updated or v.created_at),
        "current_stage": "None",
        "description": v.notes,
        "source": mlflow.get("source") or f"tether://{v.name}@{v.semver}",
        "run_id": mlflow.get("run_id") or "",
        "run_link": mlflow.get("run_link") or "",
        "status": "READY",
        "tags": _tags(v.tags),
        "aliases": list(v.aliases),
        "user_id": v.author,
    }


def model_json(m: ModelInfo, versions: list[ModelVersion], updated: str) -> dict[str, Any]:
    """``versions``: the model's live versions by number; ``updated``: when MLflow would
    say the model last changed."""
    return {
        "name": m.name,
        "creation_timestamp": _ms(m.created_at),
        "last_updated_timestamp": _ms(updated),
        "description": m.description,
        "latest_versions": [version_json(v) for v in versions[-1:]],
        "tags": _tags(m.tags),
        "aliases": [
            {"alias": alias, "version": str(v.seq)} for v in versions for alias in v.aliases
        ],
    }


def mlflow_refusal(error: TetherError) -> tuple[str, str]:
    """An error of the shared body reader as an MLflow error code and message."""
    if error.code == "payload_too_large":
        return "REQUEST_LIMIT_EXCEEDED", error.message
    if isinstance(error, InvalidInput):
        return "MALFORMED_REQUEST", error.message
    return _CODES.get(error.code, ("INVALID_PARAMETER_VALUE", 400))[0], error.message


# -- when MLflow would say something last changed ---------------------------------------
#
# MLflow moves a version's last_updated_timestamp when its description changes (not
# its tags or aliases), and a model's when it is created, its description changes
# or a version is created or deleted (not its tags or aliases). Tether's records
# keep one updated_at for every change, so the times are read from the audit log,
# which records each change with its time: one query per model shown.


def _version_times(reg: Registry, name: str) -> dict[str, str]:
    """Version ref -> time of its newest description change."""
    out: dict[str, str] = {}
    for event in reg.audit_log(model=name, action="version.updated"):  # newest first
        if event.subject and event.details.get("notes") is not None:
            out.setdefault(event.subject, event.ts)
    return out


def _model_time(reg: Registry, m: ModelInfo) -> str:
    times = [m.created_at]
    for event in reg.audit_log(model=m.name, action="model."):  # newest first
        if event.action == "model.created" or "description" in event.details:
            times.append(event.ts)
            break
    for action in ("version.logged", "version.deleted"):
        times += [e.ts for e in reg.audit_log(model=m.name, action=action, limit=1)]
    # Events of an earlier model of the same name (deleted) are older than this one.
    return max(times, key=_ms)


#: Most query parameters a GET takes: 32,000 repeats of one key (64 KB) held the event
#: loop for 0.6 s each, before any authentication (a review).
MAX_QUERY_ITEMS = 1000


class MlflowApi:
    def __init__(self, api: Any) -> None:
        self.api = api

    async def params(self, request: Request) -> dict[str, Any]:
        if request.method == "GET":
            items = request.query_params.multi_items()
            if len(items) > MAX_QUERY_ITEMS:
                raise invalid(f"{len(items)} query parameters are over the limit of "
                              f"{MAX_QUERY_ITEMS}")
            out: dict[str, Any] = {}
            for key, value in items:
                if key not in out:
                    out[key] = value
                elif isinstance(out[key], list):
                    out[key].append(value)  # in place: a copy per repeat was quadratic
                else:
                    out[key] = [out[key], value]
            return out
        try:
            data = await read_json_body(request)
        except PayloadTooLarge as error:
            raise MlflowError("REQUEST_LIMIT_EXCEEDED", error.message, 413) from error
        except InvalidInput as error:
            raise MlflowError(
                "MALFORMED_REQUEST", f"Malformed JSON body: {error.message}"
            ) from error
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise MlflowError(
                "MALFORMED_REQUEST", f"Body must be a JSON object, not {describe(data)}"
            )
        return data

    def caller(self, request: Request) -> Registry:
        """The registry acting for the authenticated caller; the use cases check roles."""
        reg, _who = self.api.as_caller(request)
        return reg  # type: ignore[no-any-return]

    def handler(self, func: Callable[[Request, dict[str, Any]], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                params = await self.params(request)
                result = await func(request, params)
            except MlflowError as error:
                return JSONResponse(
                    {"error_code": error.code, "message": error.message}, status_code=error.status
                )
            except TetherError as error:
                down = unavailable(error, self.api.registry)
                if down is not None:
                    return _unavailable(down)
                error = self.api.as_seen(request, error)
                code, status = _CODES.get(error.code, ("INVALID_PARAMETER_VALUE", 400))
                message = error.message + (f" ({error.hint})" if error.hint else "")
                return JSONResponse({"error_code": code, "message": message}, status_code=status)
            except Exception as error:
                down = unavailable(error, self.api.registry)
                if down is not None:  # an outage: 503 with Retry-After, as on /api/v1
                    log.warning("%s %s: %s", request.method, request.url.path[:200], down.message)
                    return _unavailable(down)
                log.exception("unexpected error in %s %s", request.method, request.url.path)
                return JSONResponse(
                    {
                        "error_code": "INTERNAL_ERROR",
                        "message": "internal error; see the server log",
                    },
                    status_code=500,
                )
            return JSONResponse(result)

        return endpoint

    @staticmethod
    def need(params: dict[str, Any], *keys: str) -> list[str]:
        """Required string parameters, each present, non-empty and a string."""
        values = []
        for key in keys:
            value = params.get(key)
            if value in (None, ""):
                raise invalid(f"Missing value for required parameter '{key}'.")
            values.append(_string(key, value))
        return values

    @staticmethod
    def _version(reg: Registry, name: str, version: str) -> ModelVersion:
        """Version ``version`` of ``name``: any integer MLflow reads (0 and negative ones
        exist nowhere), else INVALID_PARAMETER_VALUE as in MLflow."""
        digits = version[1:] if version[:1] == "-" else version
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
            raise invalid(f"Parameter 'version' must be an integer, got '{version[:40]}'.")
        try:
            if int(version) < 1:
                raise NotFound(f"no version {version}")
            return reg.get(f"{name}@{int(version)}")
        except NotFound as error:
            raise MlflowError(
                "RESOURCE_DOES_NOT_EXIST",
                f"Model Version (name={name}, version={version}) not found",
                404,
            ) from error

    @staticmethod
    def _model_info(reg: Registry, name: str) -> ModelInfo:
        try:
            return reg.model(name)
        except NotFound as error:
            raise MlflowError(
                "RESOURCE_DOES_NOT_EXIST", f"Registered Model with name={name} not found", 404
            ) from error

    @staticmethod
    def _model_json(reg: Registry, info: ModelInfo) -> dict[str, Any]:
        return model_json(info, reg.versions(info.name, files=False), _model_time(reg, info))

    @staticmethod
    def _version_json(reg: Registry, v: ModelVersion) -> dict[str, Any]:
        return version_json(v, _version_times(reg, v.name).get(v.ref))

    # -- registered models -------------------------------------------------------

    async def create_model(self, request: Request, p: dict[str, Any]) -> Any:
        (name,) = self.need(p, "name")
        reg = self.caller(request)
        tags = _tag_list(p)
        for key, value in tags.items():
            _check_tag(key, value)
        description = _optional(p, "description") or ""
        try:
            info = await run_in_threadpool(
                lambda: reg.create_model(name, description=description, tags=tags)
            )
        except TetherError as error:
            if error.code == "conflict":
                raise MlflowError(
                    "RESOURCE_ALREADY_EXISTS", f"Registered Model (name={name}) already exists."
                ) from error
            raise
        return {"registered_model": model_json(info, [], info.created_at)}

    async def get_model(self, request: Request, p: dict[str, Any]) -> Any:
        (name,) = self.need(p, "name")
        reg = self.caller(request)
        info = await run_in_threadpool(self._model_info, reg, name)
        return {"registered_model": await run_in_threadpool(self._model_json, reg, info)}

    async def update_model(self, request: Request, p: dict[str, Any]) -> Any:
        (name,) = self.need(p, "name")
        description = _optional(p, "description")
        reg = self.caller(request)
        await run_in_threadpool(self._model_info, reg, name)
        info = await run_in_threadpool(
            lambda: reg.update_model(name, description=description or "")
        )
        return {"registered_model": await run_in_threadpool(self._model_json, reg, info)}

    async def rename_model(self, request: Request, p: dict[str, Any]) -> Any:
        raise invalid(
            "Tether does not rename models: a name is part of every reference, lock and "
            "audit event. Create a model with the new name and copy versions into it "
            "(copy_model_version)."
        )

    async def delete_model(self, request: Request, p: dict[str, Any]) -> Any:
        (name,) = self.need(p, "name")
        reg = self.caller(request)
        await run_in_threadpool(self._model_info, reg, name)
        await run_in_threadpool(reg.delete_model, name)
        return {}

    async def set_model_tag(self, request: Request, p: dict[str, Any]) -> Any:
        name, key = self.need(p, "name", "key")
        value = _optional(p, "value") or ""
        _check_tag(key, value)
        reg = self.caller(request)
        await run_in_threadpool(self._model_info, reg, name)
        await run_in_threadpool(lambda: reg.update_model(name, set_tags={key: value}))
        return {}

    async def delete_model_tag(self, request: Request, p: dict[str, Any]) -> Any:
        name, key = self.need(p, "name", "key")
        reg = self.caller(request)
        info = await run_in_threadpool(self._model_info, reg, name)
        if key in info.tags:  # a tag that is not there: nothing to do, as in MLflow
            await run_in_threadpool(lambda: reg.update_model(name, delete_tags=[key]))
        return {}

    async def search_models(self, request: Request, p: dict[str, Any]) -> Any:
        reg = self.caller(request)
        # Filtering, ordering and paging run off the event loop: other requests
        # (health checks, alias reads) never wait for a search.
        return await run_in_threadpool(self._search_models, reg, p)

    def _search_models(self, reg: Registry, p: dict[str, Any]) -> Any:
        clauses = search.check(search.parse_filter(p.get("filter")), search.MODELS)
        order_by = search.parse_order_by(p.get("order_by"), search.MODELS)
        if not any(key == "name" for key, _ in order_by):
            order_by.append(("name", False))
        limit, start = search.page_args(p, default=100, least=0, most=1000)
        budget = search.Budget()
        found = [
            m
            for m in reg.models()
            if search.matches(clauses, lambda key, m=m: m.name, m.tags,  # type: ignore[misc]
                              budget)
        ]
        times: dict[str, str] = {}
        if any(key == "last_updated_timestamp" for key, _ in order_by):
            times = {m.name: _model_time(reg, m) for m in found}
        keys: dict[str, Callable[[Any], Any]] = {
            "name": lambda m: m.name,
            "last_updated_timestamp": lambda m: _ms(times[m.name]),
        }
        chosen, token = search.page(search.order(found, order_by, keys), limit, start)
        return {
            "registered_models": [self._model_json(reg, m) for m in chosen],
            **({"next_page_token": token} if token else {}),
        }

    async def latest_versions(self, request: Request, p: dict[str, Any]) -> Any:
        (name,) = self.need(p, "name")
        raw = p.get("stages") or []
        stages = [raw] if isinstance(raw, str) else raw
        if not isinstance(stages, list):
            raise invalid(f"stages must be a list of stage names, not {describe(raw)}")
        for index, stage in enumerate(stages):
            if not isinstance(stage, str):
                raise invalid(f"stages[{index}] must be a stage name, not {describe(stage)}")
        for stage in stages:
            if stage.lower() not in STAGES:
                raise invalid(
                    f"Invalid Model Version stage: {stage[:40]}. Value must be one of "
                    f"{', '.join(STAGES.values())} (every Tether version is in 'None')."
                )
        reg = self.caller(request)
        await run_in_threadpool(self._model_info, reg, name)
        if stages and "none" not in {s.lower() for s in stages}:
            return {"model_versions": []}  # no Tether version is in another stage
        found = (await run_in_threadpool(partial(reg.versions, name, files=False)))[-1:]
        return {
            "model_versions": [await run_in_threadpool(self._version_json, reg, v) for v in found]
        }

    # -- model versions ------------------------------------------------------------

    def _storage(self, request: Request, source: str) -> str | None:
        """Where a ``models:/`` source's bytes are, resolved as MLflow does at creation."""
        uri = _MODELS_URI.match(source)
        if not uri:
            return None
        name, number, alias = uri.groups()
        reg = self.caller(request)
        if alias is not None:
            info = self._model_info(reg, name)
            if alias not in info.aliases:
                raise invalid(f"Registered model alias {alias} not found.")
            v = reg.get(f"{name}@{info.aliases[alias]}")  # see get_model_version_by_alias
        else:
            v = self._version(reg, name, number)
        flavor = v.flavor if v.flavor.get("name") == "mlflow" else {}
        return str(flavor.get("storage_location") or version_json(v)["source"])

    async def create_version(self, request: Request, p: dict[str, Any]) -> Any:
        name, source = self.need(p, "name", "source")
        reg = self.caller(request)
        tags = _tag_list(p)
        for key, value in tags.items():
            _check_tag(key, value)
        await run_in_threadpool(self._model_info, reg, name)
        storage = await run_in_threadpool(self._storage, request, source)
        values = VersionValues(
            manifest=(),
            # Each MLflow create is a new version: the request time keeps identical
            # sources from collapsing into one Tether version.
            flavor={
                "name": "mlflow",
                "source": source,
                **({"storage_location": storage} if storage else {}),
                "run_id": _optional(p, "run_id") or "",
                "run_link": _optional(p, "run_link") or "",
                "created_ms": time.time_ns() // 1000,
                "framework_packages": [],
            },
            signature=None,
            input_example=None,
            params={},
            metrics={},
            data={},
            lineage={
                "mlflow": {"run_id": _optional(p, "run_id"), "model_id": _optional(p, "model_id")}
            },
            environment={},
            tags=tags,
            notes=_optional(p, "description") or "",
        )  # the author is the caller, the registry's actor
        version = await run_in_threadpool(reg.commit, name, values, None)
        return {"model_version": version_json(version)}

    async def get_version(self, request: Request, p: dict[str, Any]) -> Any:
        name, version = self.need(p, "name", "version")
        reg = self.caller(request)
        v = await run_in_threadpool(self._version, reg, name, version)
        return {"model_version": await run_in_threadpool(self._version_json, reg, v)}

    async def update_version(self, request: Request, p: dict[str, Any]) -> Any:
        name, version = self.need(p, "name", "version")
        description = _optional(p, "description") or ""  # MLflow clears it when absent
        reg = self.caller(request)
        v = await run_in_threadpool(self._version, reg, name, version)
        updated = await run_in_threadpool(
            lambda: reg.update_version(v.ref, notes=description)
        )
        return {"model_version": await run_in_threadpool(self._version_json, reg, updated)}

    async def delete_version(self, request: Request, p: dict[str, Any]) -> Any:
        name, version = self.need(p, "name", "version")
        reg = self.caller(request)
        v = await run_in_threadpool(self._version, reg, name, version)
        if v.aliases:
            raise MlflowError(
                "INVALID_STATE",
                f"Tether does not delete a version an alias points at (MLflow drops the "
                f"alias silently): version {v.seq} of {name} is the target of "
                f"{', '.join(v.aliases)}. Delete the alias first (delete_registered_model_alias) "
                "or point it at another version (set_registered_model_alias).",
            )
        await run_in_threadpool(reg.delete_version, v.ref)
        return {}

    async def set_version_tag(self, request: Request, p: dict[str, Any]) -> Any:
        name, version, key = self.need(p, "name", "version", "key")
        value = _optional(p, "value") or ""
        _check_tag(key, value)
        reg = self.caller(request)
        v = await run_in_threadpool(self._version, reg, name, version)
        await run_in_threadpool(lambda: reg.update_version(v.ref, set_tags={key: value}))
        return {}

    async def delete_version_tag(self, request: Request, p: dict[str, Any]) -> Any:
        name, version, key = self.need(p, "name", "version", "key")
        reg = self.caller(request)
        v = await run_in_threadpool(self._version, reg, name, version)
        if key in v.tags:
            await run_in_threadpool(lambda: reg.update_version(v.ref, delete_tags=[key]))
        return {}

    async def search_versions(self, request: Request, p: dict[str, Any]) -> Any:
        reg = self.caller(request)
        return await run_in_threadpool(self._search_versions, reg, p)

    def _search_versions(self, reg: Registry, p: dict[str, Any]) -> Any:
        clauses = search.check(search.parse_filter(p.get("filter")), search.VERSIONS)
        order_by = search.parse_order_by(p.get("order_by"), search.VERSIONS) or [
            ("last_updated_timestamp", True)
        ]
        if not any(key == "name" for key, _ in order_by):
            order_by.append(("name", False))
        if not any(key == "version_number" for key, _ in order_by):
            order_by.append(("version_number", True))
        limit, start = search.page_args(p, default=10000, least=1, most=200_000)
        # Each name once: a filter naming one model 960 times fetched (and answered) its
        # versions 960 times over (a review: 86 s and 50 MB for one request).
        names = list(dict.fromkeys(v for k, op, v in clauses if k == "name" and op == "="))
        model_names = names or [m.name for m in reg.models()]
        found: list[ModelVersion] = []
        times: dict[str, str] = {}
        budget = search.Budget()
        for model in model_names:
            try:
                versions = reg.versions(model, files=False)  # no file list is answered
            except (NotFound, InvalidInput):  # InvalidReference: a name no model can have
                continue
            matching = [v for v in versions
                        if search.matches(clauses, _fields(v), v.tags, budget)]
            if matching:
                found += matching
                times.update(_version_times(reg, model))
        keys: dict[str, Callable[[Any], Any]] = {
            "name": lambda v: v.name,
            "version_number": lambda v: v.seq,
            "creation_timestamp": lambda v: _ms(v.created_at),
            "last_updated_timestamp": lambda v: _ms(times.get(v.ref, v.created_at)),
        }
        chosen, token = search.page(search.order(found, order_by, keys), limit, start)
        return {
            "model_versions": [version_json(v, times.get(v.ref)) for v in chosen],
            **({"next_page_token": token} if token else {}),
        }

    async def download_uri(self, request: Request, p: dict[str, Any]) -> Any:
        name, version = self.need(p, "name", "version")
        reg = self.caller(request)
        v = await run_in_threadpool(self._version, reg, name, version)
        storage = v.flavor.get("storage_location") if v.flavor.get("name") == "mlflow" else None
        return {"artifact_uri": storage or version_json(v)["source"]}

    async def transition_stage(self, request: Request, p: dict[str, Any]) -> Any:
        raise invalid(
            "Tether keeps no stages (MLflow deprecated them): every version is in stage "
            "'None'. Use aliases instead: set_registered_model_alias(name, 'production', "
            "version), and get_model_version_by_alias to read one."
        )

    # -- aliases ---------------------------------------------------------------------

    async def set_alias(self, request: Request, p: dict[str, Any]) -> Any:
        name, alias, version = self.need(p, "name", "alias", "version")
        _check_alias(alias)
        reg = self.caller(request)  # the use case decides who may move it
        v = await run_in_threadpool(self._version, reg, name, version)
        await run_in_threadpool(
            lambda: reg.promote(v.ref, alias, reason="via MLflow API", create=True)
        )
        return {}

    async def delete_alias(self, request: Request, p: dict[str, Any]) -> Any:
        name, alias = self.need(p, "name", "alias")
        reg = self.caller(request)  # the use case decides who may move it
        info = await run_in_threadpool(self._model_info, reg, name)
        if alias in info.aliases:  # an alias that is not there: nothing to do, as in MLflow
            await run_in_threadpool(reg.delete_alias, name, alias)
        return {}

    async def get_by_alias(self, request: Request, p: dict[str, Any]) -> Any:
        name, alias = self.need(p, "name", "alias")
        reg = self.caller(request)
        info = await run_in_threadpool(self._model_info, reg, name)
        if alias.lower() == "latest":  # MLflow's one reserved alias that resolves
            # Every version without its file list, then the newest whole: read whole, a
            # model of 15 versions of 20,000 files each took 4 s and 1 GB a call (a review).
            newest = (await run_in_threadpool(lambda: reg.versions(name, files=False)))[-1:]
            if not newest:
                raise MlflowError(
                    "RESOURCE_DOES_NOT_EXIST", f"Latest version not found for model {name}.", 404
                )
            version = await run_in_threadpool(reg.get, f"{name}@{newest[0].seq}")
        elif alias not in info.aliases:  # never a Tether selector ("7", "~1.2", "sha:...")
            raise invalid(f"Registered model alias {alias} not found.")
        else:
            # By the version it points at: an alias made before names like "v1.2.3" were
            # refused reads as that semantic version in a Tether reference.
            version = await run_in_threadpool(reg.get, f"{name}@{info.aliases[alias]}")
        return {"model_version": await run_in_threadpool(self._version_json, reg, version)}


def _fields(v: ModelVersion) -> Callable[[str], Any]:
    """A version's attributes as MLflow's version filter names them."""
    values = {
        "name": v.name,
        "run_id": v.flavor.get("run_id", ""),
        "source_path": v.flavor.get("source", ""),
        "version_number": v.seq,
    }
    return values.get


def mlflow_routes(api: Any) -> list[Route]:
    m = MlflowApi(api)
    h = m.handler
    table = [
        ("/registered-models/create", "POST", m.create_model),
        ("/registered-models/rename", "POST", m.rename_model),
        ("/registered-models/update", "PATCH", m.update_model),
        ("/registered-models/delete", "DELETE", m.delete_model),
        ("/registered-models/get", "GET", m.get_model),
        ("/registered-models/search", "GET", m.search_models),
        ("/registered-models/get-latest-versions", "POST", m.latest_versions),
        ("/registered-models/get-latest-versions", "GET", m.latest_versions),
        ("/registered-models/set-tag", "POST", m.set_model_tag),
        ("/registered-models/delete-tag", "DELETE", m.delete_model_tag),
        ("/registered-models/alias", "POST", m.set_alias),
        ("/registered-models/alias", "DELETE", m.delete_alias),
        ("/registered-models/alias", "GET", m.get_by_alias),
        ("/model-versions/create", "POST", m.create_version),
        ("/model-versions/update", "PATCH", m.update_version),
        ("/model-versions/transition-stage", "POST", m.transition_stage),
        ("/model-versions/delete", "DELETE", m.delete_version),
        ("/model-versions/get", "GET", m.get_version),
        ("/model-versions/search", "GET", m.search_versions),
        ("/model-versions/get-download-uri", "GET", m.download_uri),
        ("/model-versions/set-tag", "POST", m.set_version_tag),
        ("/model-versions/delete-tag", "DELETE", m.delete_version_tag),
    ]
    grouped: dict[str, dict[str, Any]] = {}
    for path, method, func in table:
        grouped.setdefault(path, {})[method] = h(func)
    routes = []
    for path, methods in grouped.items():
        routes.append(Route(path, _dispatch(methods), methods=list(methods)))
    return routes


def _dispatch(methods: dict[str, Any]) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        return await methods[request.method](request)  # type: ignore[no-any-return]

    return endpoint



def _unavailable(error: Unavailable) -> Response:
    """An outage in MLflow's error shape: 503 TEMPORARILY_UNAVAILABLE with Retry-After."""
    message = error.message + (f" ({error.hint})" if error.hint else "")
    return JSONResponse(
        {"error_code": "TEMPORARILY_UNAVAILABLE", "message": message},
        status_code=503,
        headers={"Retry-After": str(max(1, round(error.retry_after)))},
    )
