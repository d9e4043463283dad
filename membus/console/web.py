"""What every console page shares: the signed-in caller, forms, rendering, errors, headers.

Pages call the bus with the caller's own identity, so each one is behind the gate that guards
the HTTP API: the console adds no read path of its own. Operator keys see the tenant's
governance views (policy, audit trail, dead letters, health); memories are read as the key's
agent, whoever holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from membus.access.gate import Identity
from membus.bus.api import Bus
from membus.console.session import COOKIE, Session, Sessions, check_token, same_origin
from membus.errors import InvalidInput, MembusError
from membus.service.app import Service
from membus.service.auth import Principal
from membus.service.wire import RateLimited, status_of

HERE = Path(__file__).resolve().parent
LABELS = ("public", "internal", "confidential", "restricted")
# the console's pages load only their own files: no inline script or style, no other origin
_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    # same-origin, not no-referrer: under no-referrer a browser sends "Origin: null" on our own
    # form posts, and the origin check below needs the real one
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    """Adds the headers above to every console response (streams included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *((k, v) for k, v in _HEADERS if k not in have),
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


class SignIn(Exception):
    """No session: a page asks the browser to sign in first."""


@dataclass
class Console:
    """The console's state, one per app: the service it sits beside and the open sessions."""

    svc: Service
    sessions: Sessions
    templates: Environment

    @property
    def bus(self) -> Bus:
        return self.svc.bus


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        enable_async=False,
    )
    env.filters["when"] = when
    env.filters["label"] = lambda n: LABELS[n] if isinstance(n, int) and 0 <= n < 4 else str(n)
    return env


def when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass
class Caller:
    """The signed-in principal of one request, with its session (for the CSRF token)."""

    principal: Principal
    session: Session
    token: str

    @property
    def identity(self) -> Identity:
        return self.principal.identity

    @property
    def operator(self) -> bool:
        return self.principal.operator


def console(request: Request) -> Console:
    ui: Console = request.app.state.console
    return ui


def base(request: Request) -> str:
    """Where the console is mounted (``/ui``): links and cookies are made from it."""
    return str(request.scope.get("root_path", "")).rstrip("/")


async def caller(request: Request) -> Caller:
    ui = console(request)
    token = request.cookies.get(COOKIE)
    session = ui.sessions.find(token)
    if session is None or token is None:
        raise SignIn()
    who = session.principal
    try:  # the console spends the agent's request budget like every other door
        ui.svc.rate.take(who.tenant, who.agent)
    except RateLimited:
        ui.svc.metrics.rate_limited.labels(who.tenant).inc()
        raise
    request.state.caller = got = Caller(who, session, token)
    return got


async def form(request: Request, who: Caller) -> dict[str, list[str]]:
    """A POST's fields, once its CSRF token and origin check out (urlencoded: all our forms)."""
    body = (await request.body()).decode("utf-8", "replace")
    fields = parse_qs(body, keep_blank_values=True)
    if not same_origin(request):
        check_token(who.session.csrf, None)
    token = request.headers.get("x-csrf-token") or first(fields, "csrf")
    check_token(who.session.csrf, token)
    return fields


def first(fields: dict[str, list[str]], name: str) -> str | None:
    got = fields.get(name)
    value = got[0].strip() if got else ""
    return value or None


def param(request: Request, name: str) -> str | None:
    value = request.query_params.get(name, "").strip()
    return value or None


def words(value: str | None) -> list[str] | None:
    """Several values in one field, split on commas and spaces; None when empty."""
    got = [w for w in (value or "").replace(",", " ").split() if w]
    return got or None


def instant(value: str | None, field: str) -> datetime | None:
    """An ISO time from a form (a datetime-local field has no zone: it is read as UTC)."""
    if value is None:
        return None
    try:
        got = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"{field}: not a time, e.g. 2026-01-31T09:00",
            [{"field": field, "problem": "not an ISO time"}],
        ) from None
    return got if got.tzinfo is not None else got.replace(tzinfo=UTC)


def number(value: str | None, field: str, default: int, lo: int, hi: int) -> int:
    if value is None:
        return default
    try:
        got = int(value)
    except ValueError:
        got = lo - 1
    if not lo <= got <= hi:
        raise InvalidInput(f"{field} must be a whole number from {lo} to {hi}")
    return got


def render(
    request: Request,
    template: str,
    who: Caller | None,
    status: int = 200,
    **values: Any,
) -> HTMLResponse:
    ui = console(request)
    html = ui.templates.get_template(template).render(
        ui=base(request),
        who=who,
        csrf=who.session.csrf if who is not None else None,
        page=values.pop("page", None),
        **values,
    )
    return HTMLResponse(html, status_code=status)


def redirect(request: Request, to: str) -> Response:
    return RedirectResponse(base(request) + to, status_code=303)


async def on_error(request: Request, exc: Exception) -> Response:
    """A refusal or bad input shows as a page (or, for htmx, a fragment) with its status."""
    assert isinstance(exc, MembusError)
    status = status_of(exc)
    who: Caller | None = getattr(request.state, "caller", None)
    template = "error_fragment.html" if request.headers.get("hx-request") else "error.html"
    return render(request, template, who, status, page="error", error=exc, code=status)


async def on_sign_in(request: Request, exc: Exception) -> Response:
    if request.method == "GET" and not request.headers.get("hx-request"):
        return redirect(request, "/login")
    response = render(request, "error.html", None, 401, page="error", code=401, error=None)
    response.headers["HX-Redirect"] = base(request) + "/login"
    return response
