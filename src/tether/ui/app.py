"""The web UI: server-rendered pages over the registry use cases.

Each page is a view (``views.py``) that returns a dict; the HTML page renders
it with a Jinja2 template (autoescaped: everything users wrote is text, never
markup) and its JSON twin (``?format=json`` or a ``.json`` suffix) returns it.

Sign-in takes a Tether API token and keeps it, sealed, in an HttpOnly,
SameSite=Strict cookie for 12 hours; sign-out ends the token's UI sessions for
every copy of their cookies (``sessions.py``). Every form carries a CSRF token
derived from that secret; a POST without the right one is refused before
anything runs. Each action then asks for the same role the REST API asks for,
and calls the registry as the signed-in user, so policies, approvals and the
audit log apply unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._errors import InvalidInput, PermissionDenied, TetherError
from .._records import AliasMove
from .._reference import validate_alias_name
from .._registry.registry import Registry
from .._registry.tokens import Unauthenticated, authenticate
from .._same_site import cross_site
from .._strict_json import finite
from . import sessions, views
from .views import Permissions

log = logging.getLogger("tether.ui")

HERE = Path(__file__).parent
COOKIE = "tether_ui"
#: Tokens are remembered this long, so a revoked token stops working within it.
AUTH_CACHE_SECONDS = 5.0
#: Forms are a few short fields; a bigger body is refused unread.
MAX_FORM = 64 * 1024

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

RegistryFactory = Callable[[], Registry]



class _Internal(TetherError):
    """A page that failed on what the registry holds (a row of an unexpected shape)."""

    code = "internal_error"
    http_status = 500

    def __init__(self) -> None:
        super().__init__("this page could not be drawn from what the registry holds",
                         hint="the server log names the record; `tether verify` and "
                         "`tether audit verify` check the registry")


class CsrfRefused(PermissionDenied):
    code = "csrf_refused"


def csrf_token(secret: str) -> str:
    """The form token of a session: unforgeable without the session's secret."""
    return hashlib.blake2b(secret.encode(), key=b"tether-ui-csrf", digest_size=20).hexdigest()


def _split_rules(message: str) -> tuple[str, list[str]]:
    """A refusal's first line and the failed rules the CLI lists under it."""
    head, *rest = message.split("\n")
    rules = [line.strip().removeprefix("- ").strip() for line in rest if line.strip()]
    return head, rules


class Session:
    """Who is signed in for one request."""

    def __init__(self, secret: str, principal: str, registry: Registry) -> None:
        self.secret = secret
        self.principal = principal
        self.registry = registry
        self.perms = Permissions(registry, principal)
        self.csrf = csrf_token(secret)


class UI:
    def __init__(self, registry_factory: RegistryFactory) -> None:
        self.registry_factory = registry_factory
        self._fernet: Any = None  # see _sealer
        self.templates = Environment(
            loader=FileSystemLoader(str(HERE / "templates")),
            autoescape=select_autoescape(["html", "svg"], default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["fmt"] = views.fmt
        self.templates.filters["q"] = lambda s: quote(str(s), safe="")
        self._auth_cache: dict[str, tuple[float, str]] = {}
        self.verifier = views.ChainVerifier()

    # -- sessions ---------------------------------------------------------------

    def _principal(self, registry: Registry, secret: str) -> str:
        key = hashlib.sha256(secret.encode()).hexdigest()
        now = time.monotonic()
        hit = self._auth_cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        principal = authenticate(registry, secret)
        if len(self._auth_cache) > 10000:
            self._auth_cache.clear()
        self._auth_cache[key] = (now + AUTH_CACHE_SECONDS, principal)
        return principal

    def _sealer(self) -> Any:
        """What seals the token into the cookie (Fernet: encrypted and authenticated), keyed
        by the registry's audit key, which every worker of a server reads.

        Browsers send a site's cookies to every port of its host: a cookie holding the
        API token itself reached any other local service (seen in a browser), which
        could then call the registry as the signed-in user. Sealed, it is of use only
        to this registry's UI.
        """
        if self._fernet is None:
            import base64
            import hmac as hmac_module

            from cryptography.fernet import Fernet
            from cryptography.hazmat.primitives import serialization

            audit_key = getattr(self.registry_factory(), "audit_key", None)
            # A registry without one (a client of a server): a key of this process's own,
            # so its sessions end with it.
            raw = os.urandom(32) if audit_key is None else audit_key.private.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                serialization.NoEncryption())
            key = hmac_module.new(raw, b"tether-ui-cookie", hashlib.sha256).digest()
            self._fernet = Fernet(base64.urlsafe_b64encode(key))
        return self._fernet

    def seal(self, secret: str) -> str:
        return sessions.seal(self._sealer(), secret)

    def unseal(self, cookie: str) -> sessions.Sealed | None:
        return sessions.unseal(self._sealer(), cookie)

    def session(self, request: Request) -> Session | None:
        cookie = request.cookies.get(COOKIE)
        sealed = self.unseal(cookie) if cookie else None
        if sealed is None:
            return None
        registry = self.registry_factory()
        if sessions.signed_out(registry, sealed):
            return None
        try:
            principal = self._principal(registry, sealed.token)
        except Unauthenticated:
            return None
        return Session(sealed.token, principal, registry.as_actor(principal, enforce_roles=True))

    # -- rendering --------------------------------------------------------------

    @staticmethod
    def wants_json(request: Request) -> bool:
        return (
            request.query_params.get("format") == "json"
            or request.url.path.endswith(".json")
            or request.path_params.get("json") is True
        )

    def base(self, request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def render(
        self,
        request: Request,
        template: str,
        data: dict[str, Any],
        session: Session | None,
        *,
        status: int = 200,
        title: str = "",
    ) -> Response:
        if self.wants_json(request):
            # JSON has no NaN or Infinity (a version logged with a missing value in its
            # input example answered a bare 500: a review): null, as JSON readers expect.
            return JSONResponse(finite(data), status_code=status, headers=SECURITY_HEADERS)
        base = self.base(request)
        json_query = dict(request.query_params)
        json_query["format"] = "json"
        context = {
            "data": data,
            "base": base,
            "title": title,
            "session": session,
            "principal": session.principal if session else None,
            "csrf": session.csrf if session else "",
            "path": request.url.path,
            "json_url": f"{request.url.path}?{urlencode(json_query, doseq=True)}",
            "request": request,
        }
        html = self.templates.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def error(
        self, request: Request, error: TetherError, session: Session | None, *, action: str = ""
    ) -> Response:
        if session is not None:
            from .._registry.access import redacted

            error = redacted(session.registry, error)
        head, rules = _split_rules(error.message)
        data = {**error.to_dict(), "title": head, "rules": rules, "action": action}
        return self.render(
            request, "error.html", data, session, status=error.http_status, title="Refused"
        )

    # -- wrappers ---------------------------------------------------------------

    def page(
        self, build: Callable[[Request, Session], tuple[str, dict[str, Any], str]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A signed-in GET page: build(request, session) -> (template, data, title)."""

        async def endpoint(request: Request) -> Response:
            session = await run_in_threadpool(self.session, request)
            if session is None:
                if self.wants_json(request):
                    return self.render(
                        request,
                        "error.html",
                        Unauthenticated("sign in first").to_dict(),
                        None,
                        status=401,
                    )
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                login = f"{self.base(request)}/login?{urlencode({'next': target})}"
                return RedirectResponse(login, status_code=303)
            try:
                _refuse_nul(request)
                template, data, title = await run_in_threadpool(build, request, session)
                # Rendered inside the try: a record of an unexpected shape failed in the
                # template and answered a bare 500 (a review).
                return self.render(request, template, data, session, title=title)
            except TetherError as error:
                return self.error(request, error, session)
            except Exception:
                log.exception("UI page %s failed", request.url.path)
                return self.error(request, _Internal(), session)

        return endpoint

    def action(
        self, run: Callable[[Request, Session, dict[str, str]], dict[str, Any]], label: str
    ) -> Callable[[Request], Awaitable[Response]]:
        """A POST action: CSRF and sign-in checked first, then run(request, session, form)."""

        async def endpoint(request: Request) -> Response:
            session = await run_in_threadpool(self.session, request)
            if session is None:
                return self.error(request, Unauthenticated("sign in first"), None, action=label)
            try:
                fields = await read_form(request)
            except InvalidInput as error:
                return self.error(request, error, session, action=label)
            if not hmac.compare_digest(fields.get("csrf", ""), session.csrf) or not _same_origin(
                request
            ):
                return self.error(
                    request,
                    CsrfRefused(
                        "this form was not sent by this page (CSRF token missing or wrong)",
                        hint="reload the page and try again",
                    ),
                    session,
                    action=label,
                )
            try:
                data = await run_in_threadpool(run, request, session, fields)
            except TetherError as error:
                return self.error(request, error, session, action=label)
            except Exception:
                log.exception("UI action %s failed", request.url.path)
                return self.error(request, _Internal(), session)
            data["action"] = label
            return self.render(request, "done.html", data, session, title="Done")

        return endpoint

    # -- pages ------------------------------------------------------------------

    def models(self, request: Request, session: Session) -> tuple[str, dict[str, Any], str]:
        q = request.query_params
        data = views.models_page(
            session.registry,
            q=q.get("q", ""),
            tag=q.get("tag", ""),
            alias=q.get("alias", ""),
            sort=q.get("sort", "name"),
            page=_int(q.get("page"), 1),
        )
        return "models.html", data, "Models"

    def model(self, request: Request, session: Session) -> tuple[str, dict[str, Any], str]:
        name = _strip_json(request.path_params["name"])
        q = request.query_params
        columns = [c for part in q.getlist("metrics") for c in part.split(",") if c]
        data = views.model_page(
            session.registry, session.perms, name, columns=columns,
            chart_metric=q.get("chart", ""), page=_int(q.get("page"), 1),
        )
        return "model.html", data, name

    def version(self, request: Request, session: Session) -> tuple[str, dict[str, Any], str]:
        name = request.path_params["name"]
        selector = _strip_json(request.path_params["selector"])
        data = views.version_page(session.registry, session.perms, f"{name}@{selector}")
        return "version.html", data, data["version"]["ref"]

    def compare(self, request: Request, session: Session) -> tuple[str, dict[str, Any], str]:
        refs = request.query_params.getlist("v")
        only = request.query_params.get("only") in ("1", "true", "on", "diff")
        data = views.compare_page(session.registry, refs, only_diff=only)
        return "compare.html", data, "Compare"

    def audit(self, request: Request, session: Session) -> tuple[str, dict[str, Any], str]:
        q = request.query_params
        data = views.audit_page(
            session.registry,
            model=q.get("model", ""),
            action=q.get("action", ""),
            actor=q.get("actor", ""),
            q=q.get("q", ""),
            limit=_int(q.get("limit"), 100),
            verify=q.get("verify") == "1",
            verifier=self.verifier,
        )
        return "audit.html", data, "Audit log"

    def deployments(self, request: Request, session: Session) -> tuple[str, dict[str, Any], str]:
        return "deployments.html", views.deployments_page(session.registry), "Deployments"

    def deployment(self, request: Request, session: Session) -> tuple[str, dict[str, Any], str]:
        name = _strip_json(request.path_params["name"])
        return "deployment.html", views.deployment_page(session.registry, name), name

    # -- actions ----------------------------------------------------------------

    @staticmethod
    def _reason(form: dict[str, str]) -> str:
        reason = form.get("reason", "").strip()
        if not reason:
            raise InvalidInput("say why: every action needs a reason (kept in the audit log)")
        if len(reason) > 2000:
            raise InvalidInput("the reason is longer than 2000 characters")
        return reason

    @staticmethod
    def _move(move: AliasMove) -> dict[str, Any]:
        if move.action == "unchanged":
            text = f"{move.model}@{move.alias} already points at {move.version}; nothing changed"
        else:
            was = f" (was {move.previous})" if move.previous else " (new alias)"
            text = f"{move.model}@{move.alias} → {move.version}{was}"
        return {"message": text, "move": move.to_dict(), "model": move.model}

    def do_promote(
        self, request: Request, session: Session, form: dict[str, str]
    ) -> dict[str, Any]:
        name = request.path_params["name"]
        alias = validate_alias_name(form.get("alias", "").strip())
        version = form.get("version", "").strip()
        if not version:
            raise InvalidInput("choose a version to promote")
        reason = self._reason(form)
        create = form.get("create") in ("1", "on", "true")
        move = session.registry.promote(f"{name}@{version}", alias, reason=reason, create=create)
        return self._move(move)

    def do_rollback(
        self, request: Request, session: Session, form: dict[str, str]
    ) -> dict[str, Any]:
        name = request.path_params["name"]
        alias = validate_alias_name(form.get("alias", "").strip())
        reason = self._reason(form)
        generation = _int(form.get("generation"), 0) or None  # the alias as the page showed it
        return self._move(session.registry.rollback(name, alias, reason=reason,
                                                    from_generation=generation))

    def do_approve(
        self, request: Request, session: Session, form: dict[str, str]
    ) -> dict[str, Any]:
        name = request.path_params["name"]
        alias = validate_alias_name(form.get("alias", "").strip())
        version = form.get("version", "").strip()
        reason = self._reason(form)
        ref = f"{name}@{version}"
        approvers = session.registry.approve(ref, alias, comment=reason)
        return {
            "message": f"approved {ref} for {alias} (approvals: {', '.join(approvers)})",
            "model": name,
            "ref": ref,
            "approvers": approvers,
        }

    def do_deprecate(
        self, request: Request, session: Session, form: dict[str, str]
    ) -> dict[str, Any]:
        name = request.path_params["name"]
        version = form.get("version", "").strip()
        undo = form.get("undo") in ("1", "on", "true")
        reason = self._reason(form)
        found = session.registry.deprecate(f"{name}@{version}", reason=reason, undo=undo)
        return {
            "message": f"{found.ref} is now {found.status}",
            "model": name,
            "ref": found.ref,
            "status": found.status,
        }

    # -- sign-in ----------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        target = _safe_next(request.query_params.get("next"), self.base(request))
        if request.method == "GET":
            return self.render(
                request, "login.html", {"next": target, "error": None}, None, title="Sign in"
            )
        try:
            form = await read_form(request)
        except InvalidInput as error:
            return self.error(request, error, None)
        if not _same_origin(request):
            # Another site's page signing the browser in as its own user (login CSRF).
            return self.error(request, CsrfRefused("sign-in form not sent by this site",
                                                   hint="sign in from this site's page"), None)
        secret = form.get("token", "").strip()
        target = _safe_next(form.get("next", ""), self.base(request))
        registry = self.registry_factory()
        try:
            await run_in_threadpool(self._principal, registry, secret)
        except Unauthenticated as error:
            return self.render(
                request,
                "login.html",
                {"next": target, "error": error.message},
                None,
                status=401,
                title="Sign in",
            )
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            await run_in_threadpool(self.seal, secret),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path=self.base(request) or "/",
        )
        return response

    async def logout(self, request: Request) -> Response:
        session = await run_in_threadpool(self.session, request)
        try:
            form = await read_form(request)
        except InvalidInput as error:
            return self.error(request, error, session)
        if session is not None and not hmac.compare_digest(form.get("csrf", ""), session.csrf):
            return self.error(request, CsrfRefused("sign-out form not sent by this page"), session)
        if not _same_origin(request):
            # The cookie is not sent cross-site, so no session was seen and the token check
            # skipped: another site's page signed the browser out (a review).
            return self.error(request, CsrfRefused("sign-out form sent from another site"),
                              session)
        cookie = request.cookies.get(COOKIE)
        sealed = self.unseal(cookie) if cookie else None
        if session is not None and sealed is not None:
            # Deleting the cookie alone ended nothing: a copy of it worked on.
            await run_in_threadpool(sessions.sign_out, self.registry_factory(), sealed)
        response = RedirectResponse(f"{self.base(request)}/login", status_code=303)
        response.delete_cookie(COOKIE, path=self.base(request) or "/")
        return response

    def routes(self) -> list[Route | Mount]:
        page, act = self.page, self.action
        return [
            Route("/", page(self.models)),
            Route("/models.json", page(self.models)),
            Route("/models", page(self.models)),
            Route("/models/{name}", page(self.model)),
            Route("/models/{name}/versions/{selector:path}", page(self.version)),
            Route("/models/{name}/promote", act(self.do_promote, "promote"), methods=["POST"]),
            Route("/models/{name}/rollback", act(self.do_rollback, "rollback"), methods=["POST"]),
            Route("/models/{name}/approve", act(self.do_approve, "approve"), methods=["POST"]),
            Route(
                "/models/{name}/deprecate", act(self.do_deprecate, "deprecate"), methods=["POST"]
            ),
            Route("/compare", page(self.compare)),
            Route("/compare.json", page(self.compare)),
            Route("/audit", page(self.audit)),
            Route("/audit.json", page(self.audit)),
            Route("/deployments", page(self.deployments)),
            Route("/deployments.json", page(self.deployments)),
            Route("/deployments/{name}", page(self.deployment)),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ]


async def read_form(request: Request) -> dict[str, str]:
    """A small URL-encoded form (what every UI form sends); anything else is refused."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise InvalidInput("forms must be sent as application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise InvalidInput(f"the form is larger than {MAX_FORM} bytes")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError) as error:
        raise InvalidInput("the form could not be read") from error
    _refuse_nul(request, [v for pair in pairs for v in pair])
    return dict(pairs)


def _refuse_nul(request: Request, more: list[str] | None = None) -> None:
    """InvalidInput for a NUL in the path, the query or a form: PostgreSQL's driver refuses
    such a string, and `/?q=%00` or `/models/a%00` was a 500 with a traceback (a review)."""
    values = [request.url.path, *(part for pair in request.query_params.multi_items()
                                  for part in pair), *(more or [])]
    if any("\x00" in value for value in values):
        raise InvalidInput("a name or a search holds a NUL character",
                           hint="names and searches are text without control characters")


#: The largest number a page or form field is read as (a page of 10**30 reached SQLite
#: as an OFFSET it could not hold: OverflowError).
_INT_MAX = 2**62


def _int(text: str | None, default: int) -> int:
    try:
        value = int(text) if text and len(text) <= 20 else default
    except ValueError:
        return default
    return value if -_INT_MAX <= value <= _INT_MAX else default


def _strip_json(segment: str) -> str:
    return segment.removesuffix(".json")


def _safe_next(target: str | None, base: str) -> str:
    """Only a path on this site: never another host (no open redirect)."""
    home = base + "/" if base else "/"
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return home
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return home
    return target


def _same_origin(request: Request) -> bool:
    """A POST a browser did not send from another site's page (see _same_site.py)."""
    return not cross_site({k.lower(): v for k, v in request.headers.items()})


def create_ui_app(registry_factory: RegistryFactory) -> Starlette:
    """The UI as an ASGI app; ``registry_factory()`` gives the registry to act on.

    Mount it anywhere (``Mount("/", app=create_ui_app(...))``); links follow
    the mount point.
    """
    ui = UI(registry_factory)
    app = Starlette(routes=ui.routes())
    app.state.ui = ui
    return app

