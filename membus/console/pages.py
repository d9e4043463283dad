"""Sign-in, the Memories pages and the Live feed."""

from __future__ import annotations

import secrets
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from membus.console.session import (
    COOKIE,
    LOGIN_COOKIE,
    TTL_S,
    check_token,
    clear_cookie,
    same_origin,
    set_cookie,
)
from membus.console.web import (
    Caller,
    base,
    caller,
    console,
    first,
    form,
    instant,
    number,
    param,
    redirect,
    render,
    words,
)
from membus.core.envelope import validate_scope
from membus.core.keys import TenantKeys
from membus.errors import PermissionDenied
from membus.service.auth import presented_key
from membus.service.sse import ChangeStream, check_start
from membus.service.wire import Unauthenticated

router = APIRouter()
Who = Annotated[Caller, Depends(caller)]
PAGE = 50
BACKLOG = 100  # the feed opens with this many recent changes, then follows live


@router.get("/")
async def home(request: Request) -> Response:
    return redirect(request, "/memories")


# -- sign in and out ----------------------------------------------------------------------------


@router.get("/login")
async def login_form(request: Request) -> Response:
    nonce = secrets.token_urlsafe(32)
    response = render(request, "login.html", None, page="login", nonce=nonce)
    set_cookie(response, request, LOGIN_COOKIE, nonce, max_age=3600)
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    ui = console(request)
    fields = parse_qs((await request.body()).decode("utf-8", "replace"))
    # the sign-in form's own token: another site cannot sign this browser in under its key
    if not same_origin(request):
        check_token("", None)
    check_token(request.cookies.get(LOGIN_COOKIE) or "", first(fields, "nonce"))
    try:
        principal = ui.svc.auth.authenticate(presented_key(None, first(fields, "key")))
    except Unauthenticated:
        ui.svc.metrics.auth_failures.inc()
        nonce = secrets.token_urlsafe(32)
        refused = render(request, "login.html", None, 401, page="login", nonce=nonce, failed=True)
        set_cookie(refused, request, LOGIN_COOKIE, nonce, max_age=3600)
        return refused
    if principal.metrics_only:
        raise PermissionDenied(principal.agent, "use a metrics-only key on", "the console")
    ui.sessions.close(request.cookies.get(COOKIE))  # a new sign-in never reuses a session
    token, _ = ui.sessions.open(principal)
    response = redirect(request, "/memories")
    set_cookie(response, request, COOKIE, token, max_age=int(TTL_S))
    clear_cookie(response, request, LOGIN_COOKIE)
    return response


@router.post("/logout")
async def logout(request: Request, who: Who) -> Response:
    await form(request, who)
    console(request).sessions.close(who.token)
    response = redirect(request, "/login")
    clear_cookie(response, request, COOKIE)
    return response


# -- memories -----------------------------------------------------------------------------------


@router.get("/memories")
async def memories(request: Request, who: Who) -> Response:
    """Search (a query: recall by meaning) or list (newest first), with the same filters."""
    bus = console(request).bus
    q = param(request, "q")
    filters: dict[str, Any] = {
        "scopes": words(param(request, "scope")),
        "kinds": words(param(request, "kind")),
        "subjects": words(param(request, "subject")),
        "agents": words(param(request, "agent")),
        "since": instant(param(request, "since"), "since"),
        "until": instant(param(request, "until"), "until"),
        "as_of": instant(param(request, "as_of"), "as_of"),
    }
    limit = number(param(request, "limit"), "limit", PAGE, 1, 200)
    # "the context this identity would get": assembled through the same gate, every memory in
    # it an audited read, as Agent.context (issue 20)
    context = None
    if param(request, "budget") is not None:
        budget = number(param(request, "budget"), "budget", CONTEXT_BUDGET, 1, 100_000)
        context = await bus.context(
            who.identity,
            q,
            budget_tokens=budget,
            subjects=filters["subjects"],
            scopes=filters["scopes"],
            kinds=filters["kinds"],
            agents=filters["agents"],
        )
    cursor, found, scores = None, [], {}
    if q is not None:
        hits = await bus.recall(who.identity, q, k=limit, **filters)
        found = [h.memory for h in hits]
        scores = {h.memory.id: h.score for h in hits}
    else:
        page = await bus.list(who.identity, limit=limit, cursor=param(request, "cursor"), **filters)
        found, cursor = page.memories, page.cursor
    values = {k: request.query_params.get(k, "") for k in _FILTERS}
    return render(
        request,
        "memories.html",
        who,
        page="memories",
        memories=found,
        scores=scores,
        cursor=cursor,
        values=values,
        next_query=_with(request, cursor=cursor) if cursor else None,
        context=context,
    )


CONTEXT_BUDGET = 1000  # tokens, when the form leaves the budget empty
_FILTERS = ("q", "scope", "kind", "subject", "agent", "since", "until", "as_of", "limit", "budget")


def _with(request: Request, **changes: str) -> str:
    query = {k: v for k, v in request.query_params.items() if k in _FILTERS and v}
    return urlencode({**query, **changes})


@router.get("/memories/{memory_id}")
async def memory(request: Request, memory_id: str, who: Who) -> Response:
    """One memory with its provenance and every version of its fact."""
    bus = console(request).bus
    found = await bus.get(who.identity, memory_id)
    versions = await bus.history(who.identity, memory_id)
    return render(request, "memory.html", who, page="memories", memory=found, versions=versions)


# -- live feed ----------------------------------------------------------------------------------


@router.get("/feed")
async def feed(request: Request, who: Who) -> Response:
    scopes = words(param(request, "scope"))
    for s in scopes or ():
        validate_scope(s, "scope")
    stream = base(request) + "/feed/stream" + (f"?{_scope_query(scopes)}" if scopes else "")
    return render(
        request, "feed.html", who, page="feed", scope=" ".join(scopes or []), stream=stream
    )


def _scope_query(scopes: list[str]) -> str:
    return urlencode([("scope", s) for s in scopes])


@router.get("/feed/stream")
async def feed_stream(request: Request, who: Who) -> Response:
    """The change feed as SSE for the page's script: the last ``BACKLOG`` changes this caller
    may see, then live ones, each through the live grant (a revoked grant stops delivery)."""
    ui = console(request)
    bus = ui.bus
    scopes = [s for v in request.query_params.getlist("scope") for s in words(v) or []] or None
    for s in scopes or ():
        validate_scope(s, "scope")
    grant = await bus.gate.grant(who.identity, "subscribe", scopes)
    if grant.empty:
        raise PermissionDenied(
            who.principal.agent, "subscribe", ", ".join(scopes or ["*"]), who.principal.tenant
        )
    resume = request.headers.get("last-event-id")  # EventSource reconnecting: no repeats
    if resume:
        start = check_start(resume)
    else:
        start = await _backlog_start(ui.bus.redis, TenantKeys(who.principal.tenant).changes)
    changes = bus.subscribe(who.identity, scopes, start=start)
    return ChangeStream(changes, start, ui.svc.limits.sse_keepalive_s)


async def _backlog_start(redis: Any, key: str) -> str:
    """The position just before the last ``BACKLOG`` changes (reads resume after it)."""
    recent = await redis.xrevrange(key, max="+", min="-", count=BACKLOG + 1)
    if len(recent) <= BACKLOG:
        return "0"
    raw = recent[-1][0]
    return raw.decode() if isinstance(raw, bytes) else str(raw)
