"""The MLflow Model Registry REST API (``/api/2.0/mlflow``) over Tether's registry.

An unmodified ``mlflow.MlflowClient`` pointed at a Tether server can create
registered models and versions, tag them, set and resolve aliases, search and
delete. MLflow's version numbers are Tether's sequence numbers; a version
created through this API records its MLflow ``source`` and ``run_id`` in its
flavor (it has no files in Tether's store). Errors use MLflow's format:
``{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": ...}``.
"""

from __future__ import annotations

import functools
import json
import logging
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
from .bodies import PayloadTooLarge, describe, read_json_body
from .checks import MAX_LIMIT, parse_limit

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


class MlflowError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


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
#
# Parsed by a tokenizer that only moves forward and matched by a LIKE matcher
# without backtracking: a reader's filter costs time linear in its length (and,
# per compared value, at most pattern x value character steps, done in C), never
# the exponential time of a pattern translated into a backtracking regex.

#: Longest filter string accepted.
MAX_FILTER = 16 * 1024

_SPACE = re.compile(r"\s*")
_KEY = re.compile(r"`[^`]+`|[A-Za-z_]\w*(?:\.(?:\w+|`[^`]+`))*")
_OP = re.compile(r"!=|=|NOT\s+IN|ILIKE|LIKE|IN", re.IGNORECASE)
_VALUE = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\([^)]*\)|-?\d+")
_AND = re.compile(r"\s+AND\s+", re.IGNORECASE)


def _unquote(text: str) -> str:
    if text[:1] in "'\"":
        return text[1:-1].replace(text[0] * 2, text[0])
    return text


def _filter_error(text: str, at: int, expected: str) -> MlflowError:
    shown = text if len(text) <= 200 else text[:200] + "..."
    near = text[at : at + 40]
    return MlflowError(
        "INVALID_PARAMETER_VALUE",
        f"Invalid filter '{shown}': expected {expected} at character {at}"
        + (f" (near '{near}')" if near else " (at the end)"),
    )


def parse_filter(text: Any) -> list[tuple[str, str, Any]]:
    """``name LIKE 'a%' AND tags.team = 'x'`` into (key, op, value) clauses."""
    if text is None:
        return []
    if not isinstance(text, str):
        raise MlflowError(
            "INVALID_PARAMETER_VALUE", f"filter must be a string, not {describe(text)}"
        )
    if len(text) > MAX_FILTER:
        raise MlflowError(
            "INVALID_PARAMETER_VALUE",
            f"filter is {len(text)} characters long; the limit is {MAX_FILTER}",
        )
    clauses: list[tuple[str, str, Any]] = []
    pos = _SPACE.match(text).end()  # type: ignore[union-attr]
    if pos == len(text):
        return []
    while True:
        key = _KEY.match(text, pos)
        if not key:
            raise _filter_error(text, pos, "an attribute name")
        pos = _SPACE.match(text, key.end()).end()  # type: ignore[union-attr]
        op = _OP.match(text, pos)
        if not op:
            raise _filter_error(text, pos, "a comparison (=, !=, LIKE, ILIKE, IN, NOT IN)")
        pos = _SPACE.match(text, op.end()).end()  # type: ignore[union-attr]
        raw = _VALUE.match(text, pos)
        if not raw:
            raise _filter_error(text, pos, "a quoted string, a number or a (list)")
        name = key[0].replace("`", "")
        if name.startswith("tag."):  # MLflow accepts both spellings
            name = "tags." + name[4:]
        value: Any
        if raw[0].startswith("("):
            value = [_unquote(v.strip()) for v in raw[0][1:-1].split(",") if v.strip()]
        else:
            value = _unquote(raw[0])
        clauses.append((name, " ".join(op[0].upper().split()), value))
        end = _SPACE.match(text, raw.end()).end()  # type: ignore[union-attr]
        if end == len(text):
            return clauses
        joint = _AND.match(text, raw.end())
        if not joint:
            raise _filter_error(text, end, "AND or the end of the filter")
        pos = joint.end()


class _Like:
    """A SQL LIKE pattern (``%`` any run, ``_`` any one character), matched without
    backtracking: the pieces between ``%`` are found left to right, each at its
    leftmost place (which is always a right choice), literal pieces by ``str.find``
    and pieces with ``_`` by a regex free of repetition."""

    def __init__(self, pattern: str, case: bool) -> None:
        self.case = case
        if not case:
            pattern = pattern.lower()
        self.pieces = pattern.split("%")
        self.finders = [self._finder(piece) for piece in self.pieces]

    @staticmethod
    def _finder(piece: str) -> re.Pattern[str] | None:
        if "_" not in piece:
            return None
        return re.compile(".".join(re.escape(part) for part in piece.split("_")), re.DOTALL)

    def _at(self, index: int, value: str, start: int) -> bool:
        piece, finder = self.pieces[index], self.finders[index]
        if finder is None:
            return value.startswith(piece, start)
        return finder.match(value, start) is not None

    def matches(self, value: str) -> bool:
        if not self.case:
            value = value.lower()
        pieces = self.pieces
        if len(pieces) == 1:
            return len(value) == len(pieces[0]) and self._at(0, value, 0)
        first, last = pieces[0], pieces[-1]
        if len(first) + len(last) > len(value):
            return False
        end = len(value) - len(last)
        if not self._at(0, value, 0) or not self._at(len(pieces) - 1, value, end):
            return False
        pos = len(first)
        for index in range(1, len(pieces) - 1):
            piece, finder = pieces[index], self.finders[index]
            if not piece:
                continue
            if finder is None:
                found = value.find(piece, pos, end)
            else:
                hit = finder.search(value, pos, end)
                found = hit.start() if hit else -1
            if found < 0:
                return False
            pos = found + len(piece)
        return True


@functools.lru_cache(maxsize=256)
def _like_matcher(pattern: str, case: bool) -> _Like:
    return _Like(pattern, case)


def _like(pattern: str, value: str, *, case: bool) -> bool:
    return _like_matcher(pattern, case).matches(value)


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


def mlflow_refusal(error: TetherError) -> tuple[str, str]:
    """An error of the shared body reader as an MLflow error code and message."""
    if error.code == "payload_too_large":
        return "REQUEST_LIMIT_EXCEEDED", error.message
    if isinstance(error, InvalidInput):
        return "MALFORMED_REQUEST", error.message
    return _CODES.get(error.code, ("INVALID_PARAMETER_VALUE", 400))[0], error.message


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
            except Exception:
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
                raise MlflowError(
                    "INVALID_PARAMETER_VALUE", f"Missing value for required parameter '{key}'."
                )
            values.append(_string(key, value))
        return values

    def _version(self, reg: Registry, name: str, version: str) -> ModelVersion:
        if not (version.isascii() and version.isdigit()) or len(version) > 18:
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
        tags = _tag_list(p)
        description = _optional(p, "description") or ""
        try:
            info = await run_in_threadpool(
                lambda: catalog.create_model(reg, name, description=description, tags=tags)
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
        description = _optional(p, "description")
        reg = self.caller(request, "contributor", name, "updating a registered model")
        await run_in_threadpool(self._model_info, reg, name)
        info = await run_in_threadpool(
            lambda: catalog.update_model(reg, name, description=description)
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
        value = _optional(p, "value") or ""
        reg = self.caller(request, "contributor", name, "tagging a registered model")
        await run_in_threadpool(self._model_info, reg, name)
        await run_in_threadpool(lambda: catalog.update_model(reg, name, set_tags={key: value}))
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
        # Filtering, ordering and paging run off the event loop: other requests
        # (health checks, alias reads) never wait for a search.
        return await run_in_threadpool(self._search_models, reg, p)

    def _search_models(self, reg: Registry, p: dict[str, Any]) -> Any:
        clauses = parse_filter(p.get("filter"))
        for key, _, _ in clauses:
            if key != "name" and not key.startswith("tags."):
                raise MlflowError(
                    "INVALID_PARAMETER_VALUE",
                    f"Invalid attribute key '{key}' specified. Valid keys are 'name' and tags.",
                )
        keys: dict[str, Callable[[Any], Any]] = {
            "name": lambda m: m.name,
            "last_updated_timestamp": lambda m: m.updated_at,
            "timestamp": lambda m: m.updated_at,
        }
        order_by = _order_clauses(p.get("order_by"), keys)
        limit, start = _page_args(p)
        models = reg.models()

        def fields(m: ModelInfo) -> Callable[[str], Any]:
            return lambda key: m.name if key == "name" else m.tags.get(key[5:])

        found = _order([m for m in models if _matches(fields(m), clauses)], order_by, keys)
        page, token = _page(found, limit, start)
        return {
            "registered_models": [model_json(m, self._latest(reg, m.name)) for m in page],
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
        tags = _tag_list(p)
        values: dict[str, Any] = {
            "manifest": [],
            # Each MLflow create is a new version: the request time keeps identical
            # sources from collapsing into one Tether version.
            "flavor": {
                "name": "mlflow",
                "source": source,
                "run_id": _optional(p, "run_id") or "",
                "run_link": _optional(p, "run_link") or "",
                "created_ms": time.time_ns() // 1000,
                "framework_packages": [],
            },
            "signature": None,
            "input_example": None,
            "params": {},
            "metrics": {},
            "data": {},
            "lineage": {
                "mlflow": {"run_id": _optional(p, "run_id"), "model_id": _optional(p, "model_id")}
            },
            "environment": {},
            "tags": tags,
            "notes": _optional(p, "description") or "",
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
        description = _optional(p, "description")
        reg = self.caller(request, "contributor", name, "updating a model version")
        v = await run_in_threadpool(self._version, reg, name, version)
        updated = await run_in_threadpool(
            lambda: catalog.update_version(reg, v.ref, notes=description)
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
        value = _optional(p, "value") or ""
        reg = self.caller(request, "contributor", name, "tagging a model version")
        v = await run_in_threadpool(self._version, reg, name, version)
        await run_in_threadpool(lambda: catalog.update_version(reg, v.ref, set_tags={key: value}))
        return {}

    async def delete_version_tag(self, request: Request, p: dict[str, Any]) -> Any:
        name, version, key = self.need(p, "name", "version", "key")
        reg = self.caller(request, "contributor", name, "untagging a model version")
        v = await run_in_threadpool(self._version, reg, name, version)
        await run_in_threadpool(lambda: catalog.update_version(reg, v.ref, delete_tags=[key]))
        return {}

    async def search_versions(self, request: Request, p: dict[str, Any]) -> Any:
        reg = self.caller(request, "reader", None, "searching model versions")
        return await run_in_threadpool(self._search_versions, reg, p)

    def _search_versions(self, reg: Registry, p: dict[str, Any]) -> Any:
        clauses = parse_filter(p.get("filter"))
        allowed = {"name", "run_id", "source_path", "version_number"}
        for key, _, _ in clauses:
            if key not in allowed and not key.startswith("tags."):
                raise MlflowError(
                    "INVALID_PARAMETER_VALUE", f"Invalid attribute key '{key}' specified."
                )
        keys: dict[str, Callable[[Any], Any]] = {
            "name": lambda v: v.name,
            "version_number": lambda v: v.seq,
            "creation_timestamp": lambda v: v.created_at,
            "last_updated_timestamp": lambda v: v.created_at,
        }
        order_by = _order_clauses(p.get("order_by") or ["version_number DESC"], keys)
        limit, start = _page_args(p, default=10000)
        names = [v for k, op, v in clauses if k == "name" and op == "="]
        model_names = names or [m.name for m in reg.models()]
        found: list[ModelVersion] = []
        for model in model_names:
            try:
                found.extend(reg.versions(model))
            except (NotFound, InvalidInput):  # InvalidReference: a name no model can have
                continue

        def fields(v: ModelVersion) -> Callable[[str], Any]:
            values = {
                "name": v.name,
                "run_id": v.flavor.get("run_id", ""),
                "source_path": v.flavor.get("source", ""),
                "version_number": v.seq,
            }
            return lambda key: v.tags.get(key[5:]) if key.startswith("tags.") else values.get(key)

        found = _order([v for v in found if _matches(fields(v), clauses)], order_by, keys)
        page, token = _page(found, limit, start)
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
        reg, _who = self.api.as_caller(request)  # the use case decides who may move it
        v = await run_in_threadpool(self._version, reg, name, version)
        await run_in_threadpool(
            lambda: reg.promote(v.ref, alias, reason="via MLflow API", create=True)
        )
        return {}

    async def delete_alias(self, request: Request, p: dict[str, Any]) -> Any:
        name, alias = self.need(p, "name", "alias")
        reg, _who = self.api.as_caller(request)  # the use case decides who may move it
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


def _order_clauses(order_by: Any, keys: dict[str, Callable[[Any], Any]]) -> list[tuple[str, bool]]:
    """``order_by`` (a string or a list of them, ``"key [ASC|DESC]"``) as (key, descending)."""
    if order_by is None or order_by == "":
        return []
    clauses = order_by if isinstance(order_by, list) else [order_by]
    out = []
    for clause in clauses:
        if not isinstance(clause, str):
            raise MlflowError(
                "INVALID_PARAMETER_VALUE",
                f"order_by must hold strings like 'name DESC', not {describe(clause)}",
            )
        parts = clause.split()
        if not parts or len(parts) > 2 or (len(parts) == 2 and parts[1].upper() not in _DIRS):
            raise MlflowError(
                "INVALID_PARAMETER_VALUE", f"Invalid order_by clause '{clause[:100]}'."
            )
        if parts[0] not in keys:
            raise MlflowError(
                "INVALID_PARAMETER_VALUE", f"Invalid order by key '{parts[0][:100]}' specified."
            )
        out.append((parts[0], len(parts) > 1 and parts[1].upper() == "DESC"))
    return out


_DIRS = ("ASC", "DESC")


def _order(
    items: list[Any], order_by: list[tuple[str, bool]], keys: dict[str, Callable[[Any], Any]]
) -> list[Any]:
    for key, descending in reversed(order_by):
        items = sorted(items, key=keys[key], reverse=descending)
    return items


#: Largest page a search returns.
MAX_RESULTS = 200000


def _page_args(p: dict[str, Any], default: int = 100) -> tuple[int, int]:
    """(max_results, offset) from ``max_results`` and ``page_token``; 400 when malformed."""
    try:
        raw = p.get("max_results")
        limit = default if raw in (None, "") else parse_limit(raw, "max_results", MAX_RESULTS)
        token = p.get("page_token")
        start = 0 if token in (None, "") else parse_limit(token, "page_token", MAX_LIMIT)
    except InvalidInput as error:
        raise MlflowError("INVALID_PARAMETER_VALUE", error.message) from error
    if limit < 1:
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Invalid value for max_results: {limit}")
    return limit, start


def _page(items: list[Any], limit: int, start: int) -> tuple[list[Any], str | None]:
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
