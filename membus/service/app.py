"""The membus HTTP service: the bus's API over HTTP, one API key per agent identity.

``create_app(bus, auth, limits)`` builds a FastAPI app over an open ``Bus`` (the caller owns the
bus); ``serve(...)`` opens a bus and runs the app under uvicorn (what ``membus serve`` calls).

Identity comes only from the API key: request bodies reject ``agent``/``tenant`` fields, and the
bus asks its gate at every door with the key's identity. Errors are ``{"error": {"code",
"message", ...}}`` with the statuses in ``membus.service.wire.STATUS``.

Hooks for more endpoints: a route is one function below taking ``who: Caller``; admin routes
check ``"admin"`` on the scope they touch (or require an operator key for service-wide ones:
policy reload, and ``/metrics``, which names every tenant; a metrics-only key may scrape it and
do nothing else). Only ``/healthz`` and ``/readyz`` answer without a key, and they say nothing
about tenants.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Protocol, Union, get_args, get_origin, runtime_checkable

import anyio
from fastapi import Depends, FastAPI, Header, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, TypeAdapter
from starlette.exceptions import HTTPException

from membus.access.audit import AuditRecord, Decision
from membus.access.gate import Gate
from membus.bus.api import Bus
from membus.bus.context import Context
from membus.bus.draft import Draft, Receipt
from membus.bus.erasure import ErasureReport
from membus.bus.memories import MAX_PAGE, ImportReport, MemoryPage, parse_jsonl, to_jsonl
from membus.bus.retract import retract
from membus.core.config import DEFAULT_PATH, MembusConfig
from membus.core.envelope import validate_name, validate_scope
from membus.core.logs import get_logger
from membus.core.redis import REDIS_DOWN
from membus.errors import Conflict, InvalidInput, MembusError, PermissionDenied, Unavailable
from membus.service.auth import ApiKeys, Principal, presented_key
from membus.service.limits import (
    BacklogGuard,
    BodyLimit,
    BodyTooLarge,
    Limits,
    RateLimiter,
    retry_after_header,
)
from membus.service.metrics import Metrics, RequestMetrics
from membus.service.sse import ChangeStream, check_start, resolve_start
from membus.service.wire import (
    ERRORS,
    ERRORS_BY_ID,
    PUBLISH_ERRORS,
    AccessRequest,
    AccessStats,
    Backpressure,
    ContextRequest,
    DateTime,
    ErrorResponse,
    ForgetRequest,
    Hits,
    Memories,
    MemoryId,
    PinRequest,
    Position,
    PublishBatch,
    PublishRequest,
    RateLimited,
    RecallRequest,
    Receipts,
    RetractRequest,
    RetryLater,
    Scopes,
    TooLarge,
    Unauthenticated,
    UpdateRequest,
    WhoAmI,
    WireName,
    WireScope,
    error_body,
    status_of,
)
from membus.store.port import Memory

NDJSON = "application/x-ndjson"
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="the API key")


# one Server-Sent Event as received: `open` (data: the position), `change` (a Change), or
# `error` (the error JSON, then the stream ends); data is JSON text
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"enum": ["open", "change", "error"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
    "required": ["event", "data"],
}


@runtime_checkable
class Reloadable(Protocol):
    """A gate whose policy can be reloaded from its source (``membus.access.policy.CasbinGate``)."""

    async def reload(self) -> int: ...


class AuditPage(BaseModel):
    records: list[AuditRecord]


class PolicyVersion(BaseModel):
    """The policy's version after a reload."""

    version: int


class Service:
    """What the routes share; one per app (no module-level state)."""

    def __init__(self, bus: Bus, auth: ApiKeys, limits: Limits) -> None:
        self.bus, self.auth, self.limits = bus, auth, limits
        self.metrics = Metrics()
        self.rate = RateLimiter(limits)
        self.guard = BacklogGuard(bus.redis, bus.config.worker.group, limits)
        self.log = get_logger("membus.service")

    def caller(self, request: Request, *, scrape: bool = False) -> Principal:
        """Authenticate, then charge the agent's rate limit (before any work is done).
        A metrics-only key is refused everywhere but the scrape (``scrape=True``)."""
        headers = request.headers
        try:
            who = self.auth.authenticate(
                presented_key(headers.get("authorization"), headers.get("x-api-key"))
            )
        except Unauthenticated:
            self.metrics.auth_failures.inc()
            raise
        if who.metrics_only and not scrape:
            raise PermissionDenied(who.agent, "use a metrics-only key on", request.url.path)
        try:
            self.rate.take(who.tenant, who.agent)
        except RateLimited:
            self.metrics.rate_limited.labels(who.tenant).inc()
            raise
        return who

    async def admit_publish(self, who: Principal, count: int) -> None:
        try:
            await self.guard.admit(who.tenant, count)
        except Backpressure:
            self.metrics.backpressure.labels(who.tenant).inc()
            raise

    def error_response(self, exc: MembusError) -> JSONResponse:
        status = status_of(exc)
        headers: dict[str, str] = {}
        if isinstance(exc, RetryLater):
            headers["Retry-After"] = retry_after_header(exc.retry_after_s)
        elif status == 503:
            headers["Retry-After"] = "1"
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="membus"'
        if isinstance(exc, PermissionDenied):
            self.metrics.denials.labels(exc.tenant or "-", exc.action).inc()
        if status >= 500:
            self.log.warning("request.unavailable", code=exc.code, error=str(exc))
        return JSONResponse(error_body(exc), status_code=status, headers=headers)


async def _caller(  # async: a sync dependency would hop to a worker thread
    request: Request,
    _b: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
    _k: Annotated[str | None, Security(_api_key)] = None,
) -> Principal:
    """The request's principal (the Security parameters only document the schemes)."""
    svc: Service = request.app.state.membus
    return svc.caller(request)


async def _scraper(
    request: Request,
    _b: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
    _k: Annotated[str | None, Security(_api_key)] = None,
) -> Principal:
    """The principal of a ``/metrics`` scrape: metrics-only keys are accepted here too."""
    svc: Service = request.app.state.membus
    return svc.caller(request, scrape=True)


# module level: routes are annotated with it, and FastAPI resolves names in this module
Caller = Annotated[Principal, Depends(_caller)]
Scraper = Annotated[Principal, Depends(_scraper)]


def _required_body_fields(request: Request) -> list[str]:
    """The required fields of the route's JSON body model (none: not a model body)."""
    route = request.scope.get("route")
    body = route.body_field if isinstance(route, APIRoute) else None
    model = body.field_info.annotation if body is not None else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    return [f.alias or name for name, f in model.model_fields.items() if f.is_required()]


def _install_errors(app: FastAPI, svc: Service) -> None:
    async def membus_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, MembusError)
        return svc.error_response(exc)

    async def invalid_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems: list[dict[str, str]] = []
        for e in exc.errors():
            loc, reason = tuple(e["loc"]), str(e["msg"]).removeprefix("Value error, ")
            missing = _required_body_fields(request) if loc == ("body",) else []
            if e["type"] == "missing" and missing:  # no body at all: name what it must hold
                problems += [{"field": f, "reason": reason} for f in missing]
                continue
            # the field itself: where it travels (body, query, path, header) is not its name
            field = ".".join(str(p) for p in loc[1:]) or str(loc[0])
            problems.append({"field": field, "reason": reason})
        summary = "; ".join(f"{p['field']}: {p['reason']}" for p in problems)
        body = {
            "error": {
                "code": "invalid_input",
                "message": f"invalid request: {summary}",
                "problems": problems,
            }
        }
        return JSONResponse(body, status_code=400)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if isinstance(exc, BodyTooLarge):
            return svc.error_response(TooLarge(exc.limit))
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = {"error": {"code": code, "message": str(exc.detail)}}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def internal(_: Request, exc: Exception) -> Response:
        svc.log.error("request.failed", error=repr(exc))
        body = {"error": {"code": "internal", "message": "internal error; see the service log"}}
        return JSONResponse(body, status_code=500)

    app.add_exception_handler(MembusError, membus_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, internal)


def _is_list(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin in (list, tuple, set, frozenset):
        return True
    if origin in (Union, UnionType, Annotated):
        return any(_is_list(a) for a in get_args(annotation))
    return False


async def _one_value_each(request: Request) -> None:
    """A query parameter of one value given twice is refused: FastAPI would keep the last one,
    so ``?as_of=x&as_of=y`` would pass a check that ``?as_of=y`` alone fails."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    params = route.dependant.query_params  # the routes take theirs directly, not in deps
    single = {f.alias for f in params if not _is_list(f.field_info.annotation)}
    seen = [k for k, _ in request.query_params.multi_items()]
    twice = sorted({k for k in seen if k in single and seen.count(k) > 1})
    if twice:
        raise InvalidInput(
            f"{', '.join(twice)}: given more than once; each takes one value",
            [{"field": k, "reason": "given more than once; it takes one value"} for k in twice],
        )


def _install_schema(app: FastAPI) -> None:
    """FastAPI documents a 422 on every route with parameters, which this service never sends:
    an invalid request is a 400 with ``problems`` (``_install_errors``). State that instead."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = build()
        bad_request = {
            "description": ERRORS[400]["description"],
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
            },
        }
        error_content = bad_request["content"]
        for operations in spec.get("paths", {}).values():
            for op in operations.values():
                responses = op.get("responses", {})
                if responses.pop("422", None) is not None:
                    responses.setdefault("400", bad_request)
                for status, response in responses.items():
                    if int(status) >= 400:  # JSON errors, also on streaming routes (SSE, NDJSON)
                        response["content"] = error_content
        schemas = spec.get("components", {}).get("schemas", {})
        schemas.setdefault("ErrorResponse", TypeAdapter(ErrorResponse).json_schema())
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(
    bus: Bus,
    auth: ApiKeys,
    limits: Limits | None = None,
    *,
    mounts: Sequence[Callable[[FastAPI], None]] = (),
) -> FastAPI:
    """The HTTP API over an open ``bus`` (the caller keeps it open while the app serves).
    ``mounts`` add apps that sit above this layer (``membus.console.mount``: the console)."""
    svc = Service(bus, auth, limits or Limits())
    app = FastAPI(
        dependencies=[Depends(_one_value_each)],
        title="membus",
        version="1",
        description="Shared memory for teams of AI agents: publish observations, recall by "
        "meaning, follow the change feed. Every call acts as the agent its API key names.",
    )
    app.state.membus = svc
    _install_errors(app, svc)
    _install_schema(app)
    app.add_middleware(BodyLimit, limit=svc.limits.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=svc.metrics)

    @app.post("/v1/publish", status_code=201, responses=PUBLISH_ERRORS, tags=["write"])
    async def publish(req: PublishRequest, who: Caller) -> Receipt:
        """Publish one observation (no scope: the agent's private `agent/<name>`). A 201 means
        it is in the stream; writers turn it into a memory shortly after (see the change feed),
        or, with `wait`, before the answer. Refused with 503 while writers lag."""
        [receipt] = await _publish(svc, who, [req.draft()], req.wait, req.timeout_s)
        return receipt

    @app.post("/v1/publish/batch", status_code=201, responses=PUBLISH_ERRORS, tags=["write"])
    async def publish_batch(batch: PublishBatch, who: Caller) -> Receipts:
        """Publish several observations, all or nothing, in one round trip to Redis."""
        receipts = await _publish(svc, who, batch.drafts, batch.wait, batch.timeout_s)
        return Receipts(receipts=receipts)

    @app.post("/v1/recall", responses=ERRORS, tags=["read"])
    async def recall(req: RecallRequest, who: Caller) -> Hits:
        """Top-k memories by meaning, only within scopes this agent may read."""
        with svc.metrics.recall_seconds.time():
            hits = await bus.recall(
                who.identity,
                req.query,
                k=req.k,
                scopes=req.scopes,
                kinds=req.kinds,
                subjects=req.subjects,
                agents=req.agents,
                since=req.since,
                until=req.until,
                as_of=req.as_of,
                working=req.working,
                min_score=req.min_score,
            )
        svc.metrics.recalls.labels(who.tenant).inc()
        return Hits(hits=hits)

    @app.post("/v1/access", responses=ERRORS, tags=["read"])
    async def access(req: AccessRequest, who: Caller) -> AccessStats:
        """How often recall returned each memory and when last; memories this agent may not
        recall are left out."""
        return AccessStats(access=await bus.access(who.identity, req.memory_ids))

    @app.get(
        "/v1/changes",
        response_class=ChangeStream,
        status_code=200,
        responses={
            **ERRORS,
            200: {
                "content": {"text/event-stream": {"schema": SSE_EVENT}},
                "description": "SSE: `open`, then one `change` per change",
            },
        },
        tags=["read"],
    )
    async def changes(
        request: Request,
        who: Caller,
        scopes: Annotated[list[WireScope] | None, Query(description="subtree roots")] = None,
        start: Annotated[
            Position, Query(alias="from", description="'$' now, '0' beginning, or a position")
        ] = "$",
        group: Annotated[
            WireName | None,
            Query(
                description="share the feed across this agent's consumers (groups are per agent)"
            ),
        ] = None,
        last_event_id: Annotated[
            Position | None, Header(description="resume after this id")
        ] = None,
        until_now: Annotated[
            bool, Query(description="end the stream once caught up (no following)")
        ] = False,
    ) -> ChangeStream:
        """Follow committed changes as Server-Sent Events; resume with `Last-Event-ID` or
        `?from=<position>` (each change's SSE id is its position)."""
        for s in scopes or ():
            validate_scope(s, "scopes")
        if group is not None:
            validate_name(group, "group")
        start = check_start(last_event_id or start)
        # the bus asks the gate only once the feed is iterated, after the 200 went out: ask
        # here too, so a refusal is a 403 (and audited like the bus's own refusals)
        grant = await bus.gate.grant(who.identity, "subscribe", scopes)
        if grant.empty:
            await bus.audit.record(_audited(who, "subscribe", scopes, False))
            raise PermissionDenied(
                who.agent, "subscribe", ", ".join(scopes or ["*"]), who.tenant, grant.hint
            )
        start = await resolve_start(bus.redis, who.tenant, start)
        feed = bus.subscribe(who.identity, scopes, start=start, group=group, until_now=until_now)
        gauge = svc.metrics.subscribers.labels(who.tenant)
        gauge.inc()
        key = presented_key(request.headers.get("authorization"), request.headers.get("x-api-key"))

        def still_valid() -> None:
            # the key is read again from the keys file (at most every reload_s): a revoked or
            # rotated key ends the stream it opened, as it would fail its next request
            if svc.auth.authenticate(key).identity != who.identity:
                raise Unauthenticated("the API key now names another agent")

        return ChangeStream(
            feed,
            start,
            svc.limits.sse_keepalive_s,
            on_close=gauge.dec,
            still_valid=still_valid,
            recheck_s=svc.auth.reload_s,
        )

    @app.post("/v1/forget", responses=ERRORS, tags=["write"])
    async def forget_(req: ForgetRequest, who: Caller) -> ErasureReport:
        """Erase matching memories and every copy of their content (events, DLQ, change
        feed): within scopes this agent may forget in, only what it may also recall (scope and
        clearance), unless it holds the ``erase`` right there."""
        return await bus.forget(
            who.identity,
            memory_ids=req.memory_ids,
            subject=req.subject,
            agent=req.agent,
            scope=req.scope,
        )

    @app.post("/v1/retract", status_code=201, responses=ERRORS_BY_ID, tags=["write"])
    async def retract_(req: RetractRequest, who: Caller) -> Receipt:
        """Withdraw a memory (`memory_id`) or every version of a key (`scope` + `subject` +
        `key`) through the event log; needs the publish and forget rights on the scope. A
        memory this agent cannot see is a 404, like one that does not exist."""
        await svc.admit_publish(who, 1)
        return await retract(
            bus,
            who.identity,
            memory_id=req.memory_id,
            scope=req.scope,
            subject=req.subject,
            key=req.key,
            reason=req.reason,
        )

    @app.get("/v1/scopes", responses=ERRORS, tags=["read"])
    async def scopes(who: Caller) -> Scopes:
        """The scopes holding at least one memory this agent may read, sorted."""
        return Scopes(scopes=await bus.scopes(who.identity))

    @app.get("/v1/memories", responses=ERRORS, tags=["memories"])
    async def list_memories(
        who: Caller,
        scope: Annotated[
            list[WireScope] | None,
            Query(description="subtree root; repeatable (none: all readable)"),
        ] = None,
        kind: Annotated[list[str] | None, Query(description="repeatable")] = None,
        subject: Annotated[list[str] | None, Query(description="repeatable")] = None,
        agent: Annotated[
            list[str] | None, Query(description="contributed by this agent; repeatable")
        ] = None,
        since: Annotated[DateTime | None, Query(description="began to hold at or after")] = None,
        until: Annotated[DateTime | None, Query(description="began to hold before")] = None,
        as_of: Annotated[DateTime | None, Query(description="what held at this time")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        cursor: Annotated[
            str | None, Query(description="the previous page's cursor, for the next page")
        ] = None,
    ) -> MemoryPage:
        """Memories this agent may read, newest first, one page at a time; pass the page's
        `cursor` back for the next (null: that was the last)."""
        return await bus.list(
            who.identity,
            scopes=scope,
            kinds=kind,
            subjects=subject,
            agents=agent,
            since=since,
            until=until,
            as_of=as_of,
            limit=limit,
            cursor=cursor,
        )

    @app.get("/v1/memories/{memory_id}", responses=ERRORS_BY_ID, tags=["memories"])
    async def get_memory(memory_id: MemoryId, who: Caller) -> Memory:
        """One memory and its provenance; 404 when absent or not readable (one answer)."""
        return await bus.get(who.identity, memory_id)

    @app.get("/v1/memories/{memory_id}/history", responses=ERRORS_BY_ID, tags=["memories"])
    async def memory_history(
        memory_id: MemoryId, who: Caller, limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100
    ) -> Memories:
        """Every version of this memory's fact, newest first, with validity and provenance."""
        return Memories(memories=await bus.history(who.identity, memory_id, limit=limit))

    @app.get("/v1/history", responses=ERRORS_BY_ID, tags=["memories"])
    async def history(
        who: Caller,
        memory_id: Annotated[
            MemoryId | None, Query(description="a memory (or subject + key)")
        ] = None,
        subject: str | None = None,
        key: str | None = None,
        scope: Annotated[
            WireScope | None, Query(description="the key's scope (none: any readable scope)")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    ) -> Memories:
        """Every version of a memory's fact, or of `subject` + `key`, newest first."""
        versions = await bus.history(
            who.identity, memory_id, scope=scope, subject=subject, key=key, limit=limit
        )
        return Memories(memories=versions)

    @app.patch(
        "/v1/memories/{memory_id}", status_code=201, responses=ERRORS_BY_ID, tags=["memories"]
    )
    async def update_memory(memory_id: MemoryId, req: UpdateRequest, who: Caller) -> Receipt:
        """A new version of the memory, published through the event log (never an in-place
        write); a memory without a key is withdrawn and republished, which needs the forget
        right on its scope too. The receipt is the new version's event."""
        await svc.admit_publish(who, 2)
        return await bus.update(
            who.identity, memory_id, req.content, metadata=req.metadata, label=req.label
        )

    @app.delete("/v1/memories/{memory_id}", responses=ERRORS_BY_ID, tags=["memories"])
    async def delete_memory(memory_id: MemoryId, who: Caller) -> ErasureReport:
        """Erase the memory with its source events and change entries (a forget by id)."""
        return await bus.delete(who.identity, memory_id)

    @app.get(
        "/v1/export",
        response_class=StreamingResponse,
        responses={**ERRORS, 200: {"content": {NDJSON: {}}, "description": "one memory a line"}},
        tags=["memories"],
    )
    async def export(
        who: Caller,
        scope: Annotated[
            list[WireScope] | None,
            Query(description="subtree root; repeatable (none: all readable)"),
        ] = None,
        as_of: Annotated[
            DateTime | None, Query(description="what held then (none: every version)")
        ] = None,
    ) -> StreamingResponse:
        """Every memory this agent may read as JSON lines, newest first: every version, or
        what held `as_of`; `POST /v1/import` reads it back."""
        memories = bus.export(who.identity, scopes=scope, as_of=as_of)
        # the first read asks the gate: a refusal is a 403 before the 200 goes out
        first = await anext(aiter(memories), None)

        async def lines() -> AsyncIterator[bytes]:
            if first is None:
                return
            yield to_jsonl(first)
            async for m in memories:
                yield to_jsonl(m)

        return StreamingResponse(lines(), media_type=NDJSON)

    @app.post(
        "/v1/import",
        responses=ERRORS,
        tags=["memories"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "JSON lines as `GET /v1/export` writes them",
                "content": {NDJSON: {"schema": {"type": "string"}}},
            }
        },
    )
    async def import_(request: Request, who: Caller) -> ImportReport:
        """Publish exported memories as this agent's events, dated as they were; memories
        already imported into this tenant, or erased here since, are skipped (importing twice
        changes nothing). Needs publish on every record's scope, checked before any is sent."""
        records = parse_jsonl((await request.body()).splitlines())
        await svc.admit_publish(who, len(records))
        return await bus.import_memories(who.identity, records)

    @app.get("/v1/audit", responses=ERRORS, tags=["admin"])
    async def audit_query(
        who: Caller,
        scope: Annotated[WireScope, Query(description="records in this scope or below")],
        agent: str | None = None,
        action: str | None = None,
        decision: Decision | None = None,
        since: DateTime | None = None,
        until: DateTime | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> AuditPage:
        """The tenant's audit trail under `scope`; needs `admin` on that scope."""
        d = await bus.gate.decision(who.identity, "admin", validate_scope(scope))
        # who read the trail is itself on the trail
        await bus.audit.record(_audited(who, "admin", [scope], d.allowed, d.rule))
        if not d.allowed:
            raise PermissionDenied(who.agent, "admin", scope, who.tenant, d.hint)
        records = await bus.audit.query(
            who.tenant,
            agent=agent,
            scope=scope,
            action=action,
            decision=decision,
            since=since,
            until=until,
            limit=limit,
        )
        return AuditPage(records=records)

    # in the schema of every deployment: a gate without a policy source answers a typed 409
    @app.post(
        "/v1/admin/policy/reload",
        responses={
            **ERRORS,
            409: {
                **ERRORS[400],
                "description": "conflict: this service's gate has no policy to reload "
                "(an open or fixed gate)",
            },
        },
        tags=["admin"],
    )
    async def policy_reload(who: Caller) -> PolicyVersion:
        """Reload the permission policy from its source now (operator keys only)."""
        if not who.operator:
            raise PermissionDenied(who.agent, "admin", "policy", who.tenant)
        gate: Gate = bus.gate
        if not isinstance(gate, Reloadable):
            raise Conflict(
                f"policy reload is unavailable: the gate ({type(gate).__name__}) has no policy "
                "source to reload; run the service with a casbin policy (policy.mode)"
            )
        return PolicyVersion(version=await gate.reload())

    @app.get("/v1/whoami", responses=ERRORS, tags=["meta"])
    async def whoami(who: Caller) -> WhoAmI:
        """The identity this API key acts as."""
        return WhoAmI(agent=who.agent, tenant=who.tenant, operator=who.operator)

    @app.get("/healthz", tags=["meta"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: ERRORS[503]}, tags=["meta"])
    async def readyz() -> dict[str, str]:
        """Readiness: Redis answers, so publishes can be accepted."""
        try:
            await bus.redis.ping()
        except REDIS_DOWN as exc:
            raise Unavailable(f"redis unavailable: {exc}") from None
        return {"status": "ready"}

    @app.get(
        "/metrics",
        response_class=Response,
        responses={s: ERRORS[s] for s in (401, 403, 429)},
        tags=["meta"],
    )
    async def metrics(who: Scraper) -> Response:
        """Prometheus text format: request rates and latencies, stream lag/pending, DLQ.
        Operator and metrics-only keys only: the figures name every tenant and its activity."""
        if not (who.operator or who.metrics_only):
            raise PermissionDenied(who.agent, "admin", "metrics", who.tenant)
        await svc.metrics.refresh(bus.redis)
        return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4")

    _context_routes(app, bus)
    for add in mounts:
        add(app)
    return app


def _context_routes(app: FastAPI, bus: Bus) -> None:
    """Context for the prompt (``membus.bus.context``): assemble, pin, unpin."""

    @app.post("/v1/context", responses=ERRORS, tags=["read"])
    async def context(req: ContextRequest, who: Caller) -> Context:
        """The memories this agent should put in front of its model, ranked and packed into
        ``budget_tokens``: pinned, the profile of each subject, recent and uncommitted, and
        recall for the query, each with its provenance and why it was chosen; ``left_out``
        names what did not fit. Every included memory counts as a read (audit, heat)."""
        return await bus.context(
            who.identity,
            req.query,
            budget_tokens=req.budget_tokens,
            subjects=req.subjects,
            scopes=req.scopes,
            kinds=req.kinds,
            agents=req.agents,
            working=req.working,
        )

    @app.post("/v1/pin", status_code=201, responses=ERRORS_BY_ID, tags=["write"])
    async def pin(req: PinRequest, who: Caller) -> Receipt:
        """Pin a memory this agent may read into every context that may read it (an event in
        the memory's scope: the publish right there)."""
        return await bus.pin(who.identity, req.memory_id)

    @app.post("/v1/unpin", status_code=201, responses=ERRORS_BY_ID, tags=["write"])
    async def unpin(req: PinRequest, who: Caller) -> Receipt:
        """Undo a pin (an event too)."""
        return await bus.unpin(who.identity, req.memory_id)


def _audited(
    who: Principal, action: str, scopes: list[str] | None, allowed: bool, rule: str | None = None
) -> AuditRecord:
    """Shaped like the bus's own records of multi-scope calls."""
    return AuditRecord(
        tenant=who.tenant,
        agent=who.agent,
        action=action,
        scope=scopes[0] if scopes and len(scopes) == 1 else "*",
        scopes=list(scopes or []),
        decision="allow" if allowed else "deny",
        rule=rule,
    )


async def _publish(
    svc: Service, who: Principal, drafts: Sequence[Draft], wait: bool, timeout_s: float
) -> list[Receipt]:
    await svc.admit_publish(who, len(drafts))
    with svc.metrics.publish_seconds.time():
        receipts = await svc.bus.publish_many(who.identity, drafts)
    svc.metrics.published.labels(who.tenant).inc(len(receipts))
    if wait:  # counted as published first: a wait that times out still published them
        await svc.bus.committed(receipts, timeout_s=timeout_s)
    return receipts


async def serve(
    config: MembusConfig,
    host: str,
    port: int,
    api_keys_file: Path,
    *,
    path: str | Path = DEFAULT_PATH,
    limits: Limits | None = None,
    gate: Gate | None = None,
    on_ready: Callable[[str], None] | None = None,
    mounts: Sequence[Callable[[FastAPI], None]] = (),
    beside: Callable[[Bus], AbstractAsyncContextManager[object]] | None = None,
) -> None:
    """Open a bus (embedded or per ``config``) and serve it until cancelled or signalled;
    ``on_ready`` gets the URL once the server accepts connections (the real port for port 0);
    ``beside`` is entered with the open bus for as long as it serves (``membus serve`` runs its
    node endpoint for the CLI there)."""
    import uvicorn

    from membus.runtime.host import open as open_bus

    auth = ApiKeys.from_file(Path(api_keys_file))
    async with AsyncExitStack() as stack:
        bus = await stack.enter_async_context(open_bus(path, config, gate=gate))
        if beside is not None:
            await stack.enter_async_context(beside(bus))
        app = create_app(bus, auth, limits, mounts=mounts)
        server = uvicorn.Server(
            uvicorn.Config(
                app, host=host, port=port, log_config=None, access_log=False, lifespan="off"
            )
        )
        get_logger("membus.service").info("service.start", host=host, port=port, keys=len(auth))
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            while not server.started:
                if server.should_exit:
                    return
                await anyio.sleep(0.02)
            # a SIGTERM during start-up (a supervisor stopping the whole process group) can
            # close the listening sockets between "started" and here: nothing is ready then
            sockets = [sock for srv in server.servers for sock in srv.sockets]
            if server.should_exit or not sockets:
                return
            if on_ready is not None:
                bound = sockets[0].getsockname()
                shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
                on_ready(f"http://{shown}:{bound[1]}")
