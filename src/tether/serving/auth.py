"""Who may change a running deployment: bearer tokens, checked per request.

A mutating request (weights, feedback, reload) carries ``Authorization: Bearer
TOKEN``, where TOKEN is either

- a registry token (``tether token create``), whose principal holds a role on
  every model the endpoint serves: ``approver`` for weights and reload when a
  route follows a protected alias (the registry's ``protected_aliases``,
  ``production`` by default: the role that may move that alias), else
  ``contributor``; ``contributor`` for feedback (the role that may write
  versions); ``reader`` for reads when the deployment protects them; or
- the serving token, read at start-up from the environment variable the
  deployment file names (``auth: {token_env: TETHER_SERVING_TOKEN}``), which
  may do everything on this process.

No token is 401, a token whose principal lacks the role 403, each with a JSON
message naming what is needed. Tokens and roles are remembered for
``CACHE_SECONDS``, as by the registry server: a revoked token or role stops
working within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .._errors import InvalidInput, PermissionDenied
from .._policy import role_rank, role_to_move
from .._reference import SelectorKind, parse_reference
from .._registry.tokens import Unauthenticated
from .config import AuthConfig, Deployment, EndpointConfig

if TYPE_CHECKING:
    from starlette.requests import Request

    from .._contract import RegistryAPI

#: Aliases whose moves need the approver role when the registry does not say (as the server).
#: Principal name for callers holding the deployment's serving token.
SERVING_PRINCIPAL = "serving-token"
CACHE_SECONDS = 5.0
#: Serving tokens shorter than this are refused at start-up.
MIN_TOKEN_LENGTH = 16


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.headers.get("x-tether-token") or None


class ServingAuth:
    """Checks a request's token against the serving token and the registry's tokens."""

    def __init__(self, registry: RegistryAPI, config: AuthConfig) -> None:
        self.registry = registry
        self.protect_reads = config.protect_reads
        self.token_env = config.token_env
        self._serving_token: str | None = None
        if config.token_env:
            secret = os.environ.get(config.token_env, "")
            if len(secret) < MIN_TOKEN_LENGTH:
                state = "is not set" if not secret else f"is shorter than {MIN_TOKEN_LENGTH}"
                raise InvalidInput(
                    f"the deployment's auth.token_env names ${config.token_env}, which {state}",
                    hint=f"export {config.token_env}=$(python -c 'import secrets; "
                         f"print(secrets.token_urlsafe(32))'), or drop auth.token_env to "
                         "accept registry tokens only")
            self._serving_token = secret
        self._cache: dict[tuple[Any, ...], tuple[float, Any]] = {}
        self._lock = threading.Lock()

    # -- what each action needs -------------------------------------------------------

    def steering_role(self, endpoint: EndpointConfig) -> str:
        """The role that may change an endpoint's weights: the one that may move its aliases."""
        setting = self._protected_setting()
        for route in endpoint.routes:
            ref = parse_reference(route.target)
            if ref.kind is SelectorKind.ALIAS and role_to_move(ref.value, setting) == "approver":
                return "approver"
        return "contributor"

    def require(self, request: Request, *, role: str, models: Iterable[str],
                action: str) -> str:
        """The caller's principal, or Unauthenticated (401) / PermissionDenied (403)."""
        models = sorted(set(models))
        scope = f" on {', '.join(models)}" if models else ""
        token = bearer(request)
        if token is None:
            raise Unauthenticated(
                f"{action} needs a token: send 'Authorization: Bearer TOKEN' with a registry "
                f"token whose principal has role {role}{scope}"
                + (f", or the serving token (${self.token_env})" if self.token_env else ""),
                hint="create one with `tether token create PRINCIPAL --role "
                     f"{role}{' --model ' + models[0] if len(models) == 1 else ''}`")
        if self._serving_token is not None and hmac.compare_digest(
                token.encode(), self._serving_token.encode()):
            return SERVING_PRINCIPAL
        principal = self._principal(token)
        scopes: list[str | None] = [*models] or [None]
        for model in scopes:
            held = self._roles(principal, model)
            if not any(role_rank(r) >= role_rank(role) for r in held):
                where = f" on model {model}" if model else ""
                raise PermissionDenied(
                    f"{action} needs role {role}{where}; {principal} has "
                    f"{', '.join(held) or 'no role'}{where}",
                    hint=f"an admin can run `tether role grant {principal} {role}"
                         + (f" --model {model}`" if model else "`"))
        return principal

    def require_read(self, request: Request, models: Iterable[str], action: str) -> None:
        if self.protect_reads:
            self.require(request, role="reader", models=models, action=action)

    # -- the registry's side ------------------------------------------------------------

    def _principal(self, token: str) -> str:
        key = ("token", hashlib.sha256(token.encode()).hexdigest())
        return str(self._cached(key, lambda: self._authenticate(token)))

    def _authenticate(self, token: str) -> str:
        # Embedded: the tokens table; remote: the registry server, asked with this token.
        return self.registry.authenticate(token)

    def _roles(self, principal: str, model: str | None) -> tuple[str, ...]:
        return tuple(self._cached(("roles", principal, model),
                                  lambda: self.registry.roles(principal, model)))

    def _protected_setting(self) -> str | None:
        value = self._cached(("protected",), lambda: self.registry.get_setting("protected_aliases"))
        return None if value is None else str(value)

    def _cached(self, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = compute()  # raises: failures are not remembered
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (now + CACHE_SECONDS, value)
        return value


def endpoint_models(endpoint: EndpointConfig) -> set[str]:
    """The models an endpoint serves (routes and shadows)."""
    targets = [r.target for r in endpoint.routes] + [s.target for s in endpoint.shadows]
    return {parse_reference(t).name for t in targets}


def deployment_models(deployment: Deployment) -> set[str]:
    return {m for e in deployment.endpoints for m in endpoint_models(e)}
