"""The MLflow Model Registry REST API (``/api/2.0/mlflow``) over Tether's registry.

An unmodified ``mlflow.MlflowClient`` pointed at a Tether server can create
registered models and versions, tag them, set and resolve aliases, search and
delete. MLflow's version numbers are Tether's sequence numbers; a version
created through this API records its MLflow ``source`` and ``run_id`` in its
flavor (it has no files in Tether's store). Errors use MLflow's format:
``{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": ...}``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._errors import InvalidInput, NotFound, TetherError
from .._metadata.clock import parse_iso
from .._records import ModelInfo, ModelVersion
from .._registry import catalog
from .._registry.log_version import commit_version
from .._registry.registry import Registry

_CODES = {
    "not_found": ("RESOURCE_DOES_NOT_EXIST", 404),
    "registry_not_found": ("RESOURCE_DOES_NOT_EXIST", 404),
    "conflict": ("RESOURCE_ALREADY_EXISTS", 400),
    "permission_denied": ("PERMISSION_DENIED", 403),
    "unauthenticated": ("UNAUTHENTICATED", 401),
    "policy_violation": ("INVALID_STATE", 400),
}


class MlflowError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def _ms(iso: str) -> int:
    return int(parse_iso(iso).timestamp() * 1000)


def _tags(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in sorted(tags.items())]


def version_json(v: ModelVersion) -> dict[str, Any]:
    mlflow = v.flavor if v.flavor.get("name") == "mlflow" else {}
    return {
        "name": v.name,
        "version": str(v.seq),
        "creation_timestamp": _ms(v.created_at),
        "last_updated_timestamp": _ms(v.created_at),
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


def model_json(m: ModelInfo, latest: list[ModelVersion]) -> dict[str, Any]:
    return {
        "name": m.name,
        "creation_timestamp": _ms(m.created_at),
        "last_updated_timestamp": _ms(m.updated_at),
        "description": m.description,
        "latest_versions": [version_json(v) for v in latest],
        "tags": _tags(m.tags),
        "aliases": [{"alias": a, "version": ""} for a in m.aliases],
    }


# -- the filter syntax of search_registered_models / search_model_versions -----------

_CLAUSE = re.compile(
    r"""\s*(?P<key>`[^`]+`|[A-Za-z_][\w.]*(?:\.`[^`]+`)?)\s*
        (?P<op>!=|=|LIKE|ILIKE|IN|NOT\s+IN)\s*
        (?P<value>'(?:[^']|'')*'|"(?:[^"]|"")*"|\((?:[^)]*)\)|-?\d+)\s*""",
    re.IGNORECASE | re.VERBOSE,
)


def _unquote(text: str) -> str:
    if text[:1] in "'\"":
        return text[1:-1].replace(text[0] * 2, text[0])
    return text


def parse_filter(text: str | None) -> list[tuple[str, str, Any]]:
    """``name LIKE 'a%' AND tags.team = 'x'`` into (key, op, value) clauses."""
    if not text or not text.strip():
        return []
    clauses = []
    for part in re.split(r"\s+AND\s+", text.strip(), flags=re.IGNORECASE):
        match = _CLAUSE.fullmatch(part)
        if not match:
            raise MlflowError(
                "INVALID_PARAMETER_VALUE", f"Invalid filter '{text}': cannot parse '{part}'"
            )
        key = match["key"].replace("`", "")
        if key.startswith("tag."):  # MLflow accepts both spellings
            key = "tags." + key[4:]
        op = " ".join(match["op"].upper().split())
        raw = match["value"]
        value: Any
        if raw.startswith("("):
            value = [_unquote(v.strip()) for v in raw[1:-1].split(",") if v.strip()]
        else:
            value = _unquote(raw)
        clauses.append((key, op, value))
    return clauses


def _like(pattern: str, value: str, *, case: bool) -> bool:
    regex = (
        "^"
        + "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
        + "$"
    )
    return re.match(regex, value, 0 if case else re.IGNORECASE) is not None


def _matches(fields: Callable[[str], Any], clauses: list[tuple[str, str, Any]]) -> bool:
    for key, op, value in clauses:
        actual = fields(key)
        actual = "" if actual is None else str(actual)
        if op == "=" and actual != str(value):
            return False
        if op == "!=" and actual == str(value):
            return False
        if op == "LIKE" and not _like(str(value), actual, case=True):
            return False
        if op == "ILIKE" and not _like(str(value), actual, case=False):
            return False
        if op == "IN" and actual not in value:
            return False
        if op == "NOT IN" and actual in value:
            return False
    return True


class MlflowApi:
    def __init__(self, api: Any) -> None:
        self.api = api

    async def params(self, request: Request) -> dict[str, Any]:
        if request.method == "GET":
            out: dict[str, Any] = {}
            for key, value in request.query_params.multi_items():
                if key in out:
                    out[key] = (
                        [*out[key], value] if isinstance(out[key], list) else [out[key], value]
                    )
                else:
                    out[key] = value
            return out
        body = await request.body()
        if not body:
            return {}
        try:
            data = json.loads(body)
        except json.JSONDecodeError as error:
            raise MlflowError("MALFORMED_REQUEST", f"Malformed JSON body: {error}") from error
        if not isinstance(data, dict):
            raise MlflowError("MALFORMED_REQUEST", "Body must be a JSON object")
        return data

    def caller(self, request: Request, role: str, model: str | None, action: str) -> Registry:
        reg, who = self.api.as_caller(request)
        self.api.need(reg, who, role, model, action)
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
                code, status = _CODES.get(error.code, ("INVALID_PARAMETER_VALUE", 400))
                return JSONResponse(
                    {"error_code": code, "message": error.message}, status_code=status
                )
            return JSONResponse(result)

        return endpoint

    @staticmethod
    def need(params: dict[str, Any], *keys: str) -> list[Any]:
        values = []
        for key in keys:
            value = params.get(key)
            if value in (None, ""):
                raise MlflowError(
                    "INVALID_PARAMETER_VALUE", f"Missing value for required parameter '{key}'."
                )
            values.append(value)
        return values

    def _version(self, reg: Registry, name: str, version: str) -> ModelVersion:
        if not str(version).isdigit():
            raise MlflowError(
                "INVALID_PARAMETER_VALUE", f"Model version must be an integer, got '{version}'"
            )
        try:
            return reg.get(f"{name}@{int(version)}")
        except NotFound as error:
            raise MlflowError(
                "RESOURCE_DOES_NOT_EXIST",
                f"Model Version (name={name}, version={version}) not found",
                404,
            ) from error

    def _latest(self, reg: Registry, name: str) -> list[ModelVersion]:
        found = reg.versions(name)
        return found[-1:]

    # -- registered models -------------------------------------------------------

    async def create_model(self, request: Request, p: dict[str, Any]) -> Any:
        (name,) = self.need(p, "name")
        reg = self.caller(request, "contributor", name, "creating a registered model")
        tags = {t["key"]: t.get("value", "") for t in p.get("tags") or []}
        try:
            info = await run_in_threadpool(
                lambda: catalog.create_model(
                    reg, name, description=p.get("description") or "", tags=tags
                )
            )
        except TetherError as error:
            if error.code == "conflict":
                raise MlflowError(
                    "RESOURCE_ALREADY_EXISTS", f"Registered Model (name={name}) already exists."
                ) from error
            raise
        return {"registered_model": model_json(info, [])}

    async def get_model(self, request: Request, p: dict[str, Any]) -> Any:
        (name,) = self.need(p, "name")
        reg = self.caller(request, "reader", name, "reading registered models")
        info = await run_in_threadpool(self._model_info, reg, name)
        return {
            "registered_model": model_json(info, await run_in_threadpool(self._latest, reg, name))
        }

    @staticmethod
    def _model_info(reg: Registry, name: str) -> ModelInfo:
        try:
            return catalog.model_info(reg, name)
        except NotFound as error:
            raise MlflowError(
                "RESOURCE_DOES_NOT_EXIST", f"Registered Model with name={name} not found", 404
            ) from error

    async def update_model(self, request: Request, p: dict[str, Any]) -> Any:
        (name,) = self.need(p, "name")
        reg = self.caller(request, "contributor", name, "updating a registered model")
        await run_in_threadpool(self._model_info, reg, name)
        info = await run_in_threadpool(
            lambda: catalog.update_model(reg, name, description=p.get("description"))
        )
        return {"registered_model": model_json(info, [])}

    async def rename_model(self, request: Request, p: dict[str, Any]) -> Any:
        raise MlflowError(
            "INVALID_PARAMETER_VALUE",
            "Tether does not rename models: a name is part of every reference, "
            "lock and audit event. Create a new model instead.",
        )

    async def delete_model(self, request: Request, p: dict[str, Any]) -> Any:
        (name,) = self.need(p, "name")
        reg = self.caller(request, "admin", name, "deleting a registered model")
        await run_in_threadpool(self._model_info, reg, name)
        await run_in_threadpool(catalog.delete_model, reg, name)
        return {}

    async def set_model_tag(self, request: Request, p: dict[str, Any]) -> Any:
        name, key = self.need(p, "name", "key")
        reg = self.caller(request, "contributor", name, "tagging a registered model")
        await run_in_threadpool(self._model_info, reg, name)
        await run_in_threadpool(
            lambda: catalog.update_model(reg, name, set_tags={key: str(p.get("value", ""))})
        )
        return {}

    async def delete_model_tag(self, request: Request, p: dict[str, Any]) -> Any:
        name, key = self.need(p, "name", "key")
        reg = self.caller(request, "contributor", name, "untagging a registered model")
        info = await run_in_threadpool(self._model_info, reg, name)
        if key not in info.tags:
            raise MlflowError(
                "RESOURCE_DOES_NOT_EXIST", f"No tag with name: {key} in model {name}", 404
            )
        await run_in_threadpool(lambda: catalog.update_model(reg, name, delete_tags=[key]))
        return {}

    async def search_models(self, request: Request, p: dict[str, Any]) -> Any:
        reg = self.caller(request, "reader", None, "searching registered models")
        clauses = parse_filter(p.get("filter"))
        for key, _, _ in clauses:
            if key != "name" and not key.startswith("tags."):
                raise MlflowError(
                    "INVALID_PARAMETER_VALUE",
                    f"Invalid attribute key '{key}' specified. Valid keys are 'name' and tags.",
                )
        models = await run_in_threadpool(reg.models)

        def fields(m: ModelInfo) -> Callable[[str], Any]:
            return lambda key: m.name if key == "name" else m.tags.get(key[5:])

        found = [m for m in models if _matches(fields(m), clauses)]
        found = _order(
            found,
            p.get("order_by"),
            {
                "name": lambda m: m.name,
                "last_updated_timestamp": lambda m: m.updated_at,
                "timestamp": lambda m: m.updated_at,
            },
        )
        page, token = _page(found, p)
        latest = {m.name: await run_in_threadpool(self._latest, reg, m.name) for m in page}
        return {
            "registered_models": [model_json(m, latest[m.name]) for m in page],
            **({"next_page_token": token} if token else {}),
        }

    async def latest_versions(self, request: Request, p: dict[str, Any]) -> Any:
        (name,) = self.need(p, "name")
        reg = self.caller(request, "reader", name, "reading versions")
        await run_in_threadpool(self._model_info, reg, name)
        return {
            "model_versions": [
                version_json(v) for v in await run_in_threadpool(self._latest, reg, name)
            ]
        }

    # -- model versions ------------------------------------------------------------

    async def create_version(self, request: Request, p: dict[str, Any]) -> Any:
        name, source = self.need(p, "name", "source")
        reg = self.caller(request, "contributor", name, "creating a model version")
        await run_in_threadpool(self._model_info, reg, name)
        tags = {t["key"]: t.get("value", "") for t in p.get("tags") or []}
        values: dict[str, Any] = {
            "manifest": [],
            # Each MLflow create is a new version: the request time keeps identical
            # sources from collapsing into one Tether version.
            "flavor": {
                "name": "mlflow",
                "source": source,
                "run_id": p.get("run_id") or "",
                "run_link": p.get("run_link") or "",
                "created_ms": time.time_ns() // 1000,
                "framework_packages": [],
            },
            "signature": None,
            "input_example": None,
            "params": {},
            "metrics": {},
            "data": {},
            "lineage": {"mlflow": {"run_id": p.get("run_id"), "model_id": p.get("model_id")}},
            "environment": {},
            "tags": tags,
            "notes": p.get("description") or "",
            "author": reg.actor,
        }
        version = await run_in_threadpool(commit_version, reg, name, values, None)
        return {"model_version": version_json(version)}

    async def get_version(self, request: Request, p: dict[str, Any]) -> Any:
        name, version = self.need(p, "name", "version")
        reg = self.caller(request, "reader", name, "reading versions")
        return {
            "model_version": version_json(
                await run_in_threadpool(self._version, reg, name, version)
            )
        }

    async def update_version(self, request: Request, p: dict[str, Any]) -> Any:
        name, version = self.need(p, "name", "version")
        reg = self.caller(request, "contributor", name, "updating a model version")
        v = await run_in_threadpool(self._version, reg, name, version)
        updated = await run_in_threadpool(
            lambda: catalog.update_version(reg, v.ref, notes=p.get("description"))
        )
        return {"model_version": version_json(updated)}

    async def delete_version(self, request: Request, p: dict[str, Any]) -> Any:
        name, version = self.need(p, "name", "version")
        reg = self.caller(request, "admin", name, "deleting a model version")
        v = await run_in_threadpool(self._version, reg, name, version)
        await run_in_threadpool(catalog.delete_version, reg, v.ref)
        return {}

    async def set_version_tag(self, request: Request, p: dict[str, Any]) -> Any:
        name, version, key = self.need(p, "name", "version", "key")
        reg = self.caller(request, "contributor", name, "tagging a model version")
        v = await run_in_threadpool(self._version, reg, name, version)
        await run_in_threadpool(
            lambda: catalog.update_version(reg, v.ref, set_tags={key: str(p.get("value", ""))})
        )
        return {}

    async def delete_version_tag(self, request: Request, p: dict[str, Any]) -> Any:
        name, version, key = self.need(p, "name", "version", "key")
        reg = self.caller(request, "contributor", name, "untagging a model version")
        v = await run_in_threadpool(self._version, reg, name, version)
        await run_in_threadpool(lambda: catalog.update_version(reg, v.ref, delete_tags=[key]))
        return {}

    async def search_versions(self, request: Request, p: dict[str, Any]) -> Any:
        reg = self.caller(request, "reader", None, "searching model versions")
        clauses = parse_filter(p.get("filter"))
        allowed = {"name", "run_id", "source_path", "version_number"}
        for key, _, _ in clauses:
            if key not in allowed and not key.startswith("tags."):
                raise MlflowError(
                    "INVALID_PARAMETER_VALUE", f"Invalid attribute key '{key}' specified."
                )
        names = [v for k, op, v in clauses if k == "name" and op == "="]
        model_names = names or [m.name for m in await run_in_threadpool(reg.models)]
        found: list[ModelVersion] = []
        for model in model_names:
            try:
                found.extend(await run_in_threadpool(reg.versions, model))
            except NotFound:
                continue

        def fields(v: ModelVersion) -> Callable[[str], Any]:
            values = {
                "name": v.name,
                "run_id": v.flavor.get("run_id", ""),
                "source_path": v.flavor.get("source", ""),
                "version_number": v.seq,
            }
            return lambda key: v.tags.get(key[5:]) if key.startswith("tags.") else values.get(key)

        found = [v for v in found if _matches(fields(v), clauses)]
        found = _order(
            found,
            p.get("order_by") or ["version_number DESC"],
            {
                "name": lambda v: v.name,
                "version_number": lambda v: v.seq,
                "creation_timestamp": lambda v: v.created_at,
                "last_updated_timestamp": lambda v: v.created_at,
            },
        )
        page, token = _page(found, p, default=10000)
        return {
            "model_versions": [version_json(v) for v in page],
            **({"next_page_token": token} if token else {}),
        }

    async def download_uri(self, request: Request, p: dict[str, Any]) -> Any:
        name, version = self.need(p, "name", "version")
        reg = self.caller(request, "reader", name, "reading versions")
        v = await run_in_threadpool(self._version, reg, name, version)
        return {"artifact_uri": version_json(v)["source"]}

    async def transition_stage(self, request: Request, p: dict[str, Any]) -> Any:
        raise MlflowError(
            "INVALID_PARAMETER_VALUE",
            "Stages are deprecated in MLflow and not supported by Tether; use aliases "
            "(set_registered_model_alias).",
        )

    # -- aliases ---------------------------------------------------------------------

    async def set_alias(self, request: Request, p: dict[str, Any]) -> Any:
        name, alias, version = self.need(p, "name", "alias", "version")
        from . import auth

        reg, who = self.api.as_caller(request)
        role = "approver" if alias in auth.protected_aliases(reg) else "contributor"
        self.api.need(reg, who, role, name, f"moving {name}@{alias}")
        v = await run_in_threadpool(self._version, reg, name, version)
        await run_in_threadpool(lambda: reg.promote(v.ref, alias, reason="via MLflow API"))
        return {}

    async def delete_alias(self, request: Request, p: dict[str, Any]) -> Any:
        name, alias = self.need(p, "name", "alias")
        from . import auth

        reg, who = self.api.as_caller(request)
        role = "approver" if alias in auth.protected_aliases(reg) else "contributor"
        self.api.need(reg, who, role, name, f"deleting {name}@{alias}")
        await run_in_threadpool(reg.delete_alias, name, alias)
        return {}

    async def get_by_alias(self, request: Request, p: dict[str, Any]) -> Any:
        name, alias = self.need(p, "name", "alias")
        reg = self.caller(request, "reader", name, "reading aliases")
        try:
            version = await run_in_threadpool(reg.get, f"{name}@{alias}")
        except NotFound as error:
            raise MlflowError(
                "INVALID_PARAMETER_VALUE", f"Registered model alias {alias} not found."
            ) from error
        return {"model_version": version_json(version)}


def _order(items: list[Any], order_by: Any, keys: dict[str, Callable[[Any], Any]]) -> list[Any]:
    clauses = order_by if isinstance(order_by, list) else [order_by] if order_by else []
    for clause in reversed(clauses):
        parts = str(clause).split()
        key = parts[0]
        if key not in keys:
            raise MlflowError("INVALID_PARAMETER_VALUE", f"Invalid order by key '{key}' specified.")
        descending = len(parts) > 1 and parts[1].upper() == "DESC"
        items = sorted(items, key=keys[key], reverse=descending)
    return items


def _page(items: list[Any], p: dict[str, Any], default: int = 100) -> tuple[list[Any], str | None]:
    try:
        limit = int(p.get("max_results") or default)
        start = int(p.get("page_token") or 0)
    except ValueError as error:
        raise MlflowError(
            "INVALID_PARAMETER_VALUE", f"Invalid page token or max_results: {error}"
        ) from error
    if limit < 1 or limit > 200000:
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Invalid value for max_results: {limit}")
    page = items[start : start + limit]
    token = str(start + limit) if start + limit < len(items) else None
    return page, token


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


__all__ = ["InvalidInput", "mlflow_routes", "parse_filter"]
