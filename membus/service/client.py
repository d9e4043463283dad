"""``membus.Client``: the bus's agent API over HTTP, for code that talks to a membus service.

The surface mirrors an in-process ``Agent`` (the API key *is* the agent): the same operations,
parameters, models and error types (tests/test_parity.py holds them to it), so moving from
embedded to a service is one line::

    agent = bus.agent("alice", tenant="acme")                        # embedded
    agent = Client("https://membus.internal", api_key=os.environ["MEMBUS_API_KEY"])  # service

``SyncClient`` is the blocking twin. Neither retries on its own unless ``retries`` is set, and
then only answers that mean nothing was done (429, 503): a publish is never sent twice after a
network error, because the first may have reached the stream.

Each operation is built once as a ``_Req`` (method, path, body or query) by a function below and
sent by either class, so the two cannot drift apart on the wire.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote

import anyio
import httpx
import orjson
from pydantic import ValidationError

from membus.bus.context import Context
from membus.bus.draft import Draft, Receipt
from membus.bus.erasure import ErasureReport
from membus.bus.memories import ImportReport, MemoryPage, to_jsonl
from membus.core.envelope import Label, invalid_from
from membus.errors import MembusError, Unavailable
from membus.recall.heat import Access
from membus.service.wire import (
    DEFAULT_HTTP_WAIT_S,
    MAX_WAIT_S,
    AccessStats,
    Hits,
    Memories,
    Receipts,
    Scopes,
    WhoAmI,
    error_from_body,
)
from membus.store.port import Hit, Memory
from membus.stream.feed import Change

DEFAULT_TIMEOUT_S: Final = 30.0
# the service sends a keepalive every 15 s by default: silence for longer means a dead link
SSE_READ_TIMEOUT_S: Final = 60.0
_MAX_BACKOFF_S: Final = 5.0
# an import is sent in parts well under the service's default body limit (1 MiB)
_IMPORT_PART_BYTES: Final = 512 * 1024
NDJSON: Final = "application/x-ndjson"


@dataclass(frozen=True)
class _Req:
    """One HTTP call: a JSON ``body``, raw ``content`` (JSON lines), or neither; ``query``."""

    method: str
    path: str
    body: Any = None
    query: list[tuple[str, str]] | None = None
    content: bytes | None = None
    timeout_s: float | None = None  # None: the client's; a waiting publish needs longer

    def httpx_args(self) -> dict[str, Any]:
        timeout = httpx.USE_CLIENT_DEFAULT if self.timeout_s is None else self.timeout_s
        if self.body is not None:
            return {
                "content": orjson.dumps(self.body),
                "headers": {"content-type": "application/json"},
                "params": self.query,
                "timeout": timeout,
            }
        if self.content is not None:
            return {
                "content": self.content,
                "headers": {"content-type": NDJSON},
                "timeout": timeout,
            }
        return {"params": self.query, "timeout": timeout}


def _list(value: str | Sequence[str] | None) -> list[str] | None:
    """A list parameter; a lone string is a list of one, never a list of characters."""
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _json(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _query(**fields: Any) -> list[tuple[str, str]]:
    """Query parameters: lists repeated, None left out, times in ISO form."""
    out: list[tuple[str, str]] = []
    for name, value in fields.items():
        for v in value if isinstance(value, list) else [value]:
            if v is not None:
                out.append((name, v.isoformat() if isinstance(v, datetime) else str(v)))
    return out


_WAIT_MARGIN_S: Final = 10.0  # beyond the service's own wait: its answer must get back


def _waiting(body: dict[str, Any], wait: bool, timeout_s: float) -> float | None:
    """Ask the service to wait (``wait``); the HTTP timeout this request then needs."""
    if not wait:
        return None
    body.update(wait=True, timeout_s=min(timeout_s, MAX_WAIT_S))
    return min(timeout_s, MAX_WAIT_S) + _WAIT_MARGIN_S


def _publish(
    content: str,
    scope: str | None,
    kind: str,
    subject: str | None,
    key: str | None,
    metadata: dict[str, Any] | None,
    label: Label,
    created_at: datetime | None,
    causation_id: str | None,
    correlation_id: str | None,
    wait: bool,
    timeout_s: float,
) -> _Req:
    try:
        draft = Draft(
            content=content,
            scope=scope,
            kind=kind,
            subject=subject,
            key=key,
            metadata=metadata or {},
            label=label,
            created_at=created_at,
            causation_id=causation_id,
            correlation_id=correlation_id,
        )
    except ValidationError as exc:  # the same InvalidInput the in-process bus raises
        raise invalid_from(exc, "publish arguments") from None
    body = draft.model_dump(mode="json", exclude_none=True)
    return _Req("POST", "/v1/publish", body, timeout_s=_waiting(body, wait, timeout_s))


def _publish_many(drafts: Sequence[Draft], wait: bool, timeout_s: float) -> _Req:
    body: dict[str, Any] = {
        "drafts": [d.model_dump(mode="json", exclude_none=True) for d in drafts]
    }
    return _Req("POST", "/v1/publish/batch", body, timeout_s=_waiting(body, wait, timeout_s))


def _recall(
    query: str,
    k: int,
    scopes: Sequence[str] | None,
    kinds: Sequence[str] | None,
    subjects: Sequence[str] | None,
    agents: Sequence[str] | None,
    since: datetime | None,
    until: datetime | None,
    as_of: datetime | None,
    working: bool,
    min_score: float | None,
) -> _Req:
    body = _json(
        query=query,
        k=k,
        scopes=_list(scopes),
        kinds=_list(kinds),
        subjects=_list(subjects),
        agents=_list(agents),
        since=_iso(since),
        until=_iso(until),
        as_of=_iso(as_of),
        working=working,
        min_score=min_score,  # None left out: the server's default
    )
    return _Req("POST", "/v1/recall", body)


def _forget(
    memory_ids: Sequence[str] | None, subject: str | None, agent: str | None, scope: str | None
) -> _Req:
    body = _json(memory_ids=_list(memory_ids), subject=subject, agent=agent, scope=scope)
    return _Req("POST", "/v1/forget", body)


def _retract(
    memory_id: str | None,
    scope: str | None,
    subject: str | None,
    key: str | None,
    reason: str | None,
) -> _Req:
    body = _json(memory_id=memory_id, scope=scope, subject=subject, key=key, reason=reason)
    return _Req("POST", "/v1/retract", body)


def _memory_path(memory_id: str) -> str:
    # quoted whole: an id is one path segment whatever it holds ("../forget" stays an id)
    return f"/v1/memories/{quote(memory_id, safe='')}"


def _list_memories(
    scopes: Sequence[str] | None,
    kinds: Sequence[str] | None,
    subjects: Sequence[str] | None,
    agents: Sequence[str] | None,
    since: datetime | None,
    until: datetime | None,
    as_of: datetime | None,
    limit: int,
    cursor: str | None,
) -> _Req:
    # query parameters are singular and repeatable: ?scope=a&scope=b
    query = _query(
        scope=_list(scopes),
        kind=_list(kinds),
        subject=_list(subjects),
        agent=_list(agents),
        since=since,
        until=until,
        as_of=as_of,
        limit=limit,
        cursor=cursor,
    )
    return _Req("GET", "/v1/memories", query=query)


def _history(
    memory_id: str | None, scope: str | None, subject: str | None, key: str | None, limit: int
) -> _Req:
    query = _query(memory_id=memory_id, scope=scope, subject=subject, key=key, limit=limit)
    return _Req("GET", "/v1/history", query=query)


def _update(
    memory_id: str, content: str, metadata: dict[str, Any] | None, label: Label | None
) -> _Req:
    body = _json(content=content, metadata=metadata, label=label)
    return _Req("PATCH", _memory_path(memory_id), body)


def _export(scopes: Sequence[str] | None, as_of: datetime | None) -> _Req:
    return _Req("GET", "/v1/export", query=_query(scope=_list(scopes), as_of=as_of))


def _import_parts(records: Sequence[Memory]) -> list[_Req]:
    """JSON lines in parts under the service's default body limit. Each part is refused whole
    or imported; importing is idempotent per tenant, so after a failure the same records can
    simply be sent again."""
    parts: list[bytes] = []
    part = bytearray()
    for m in records:
        line = to_jsonl(m)
        if part and len(part) + len(line) > _IMPORT_PART_BYTES:
            parts.append(bytes(part))
            part = bytearray()
        part += line
    if part or not parts:  # nothing to import still answers with a report (and its tenant)
        parts.append(bytes(part))
    return [_Req("POST", "/v1/import", content=p) for p in parts]


def _merged(raw: Sequence[Any]) -> ImportReport:
    reports = [ImportReport.model_validate(r) for r in raw]
    return ImportReport(
        tenant=reports[0].tenant if reports else "",
        published=sum(r.published for r in reports),
        skipped=sum(r.skipped for r in reports),
        erased=sum(r.erased for r in reports),
        event_ids=[e for r in reports for e in r.event_ids],
    )


def _context_body(
    query: str | None,
    budget_tokens: int,
    subjects: Sequence[str] | None,
    scopes: Sequence[str] | None,
    kinds: Sequence[str] | None,
    agents: Sequence[str] | None,
    working: bool,
) -> dict[str, Any]:
    body: dict[str, Any] = {"budget_tokens": budget_tokens, "working": working}
    if query is not None:
        body["query"] = query
    for name, value in (
        ("subjects", subjects),
        ("scopes", scopes),
        ("kinds", kinds),
        ("agents", agents),
    ):
        if value is not None:  # a lone string is a list of one, never a list of chars
            body[name] = [value] if isinstance(value, str) else list(value)
    return body


def _error(resp: httpx.Response) -> MembusError:
    try:
        body: Any = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        body = resp.text
    return error_from_body(resp.status_code, body)


def _retry_wait(resp: httpx.Response) -> float:
    try:
        return min(float(resp.headers.get("retry-after", "1")), 30.0)
    except ValueError:
        return 1.0


def _unreachable(exc: httpx.HTTPError) -> Unavailable:
    return Unavailable(f"membus service unreachable: {exc!r}")


def _changes_params(
    scopes: Sequence[str] | None, position: str, group: str | None, until_now: bool = False
) -> Any:
    params: list[tuple[str, str]] = [("from", position)]
    if until_now:
        params.append(("until_now", "true"))
    params += [("scopes", s) for s in ([scopes] if isinstance(scopes, str) else scopes or [])]
    if group is not None:
        params.append(("group", group))
    return params


@dataclass
class _SSE:
    """Incremental Server-Sent Events parser (the subset the service emits)."""

    event: str = "message"
    data: list[str] = field(default_factory=list)
    id: str | None = None

    def feed(self, line: str) -> tuple[str, str, str | None] | None:
        if not line:
            out = (self.event, "\n".join(self.data), self.id) if self.data else None
            self.event, self.data, self.id = "message", [], None
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        elif name == "id":
            self.id = value
        return None


class _Follow:
    """Shared state of one subscription: where to resume, how long to back off."""

    def __init__(self, start: str) -> None:
        self.position, self.backoff = start, 0.1

    def handle(self, event: str, data: str, id_: str | None) -> Change | None:
        if id_:
            self.position = id_  # ``open`` carries the resolved start, ``change`` its position
        self.backoff = 0.1
        if event == "change":
            return Change.model_validate_json(data)
        if event == "error":
            raise error_from_body(503, orjson.loads(data))
        return None

    def next_wait(self) -> float:
        wait, self.backoff = self.backoff, min(self.backoff * 2, _MAX_BACKOFF_S)
        return wait


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "User-Agent": "membus-client"}


class Client:
    """Async client; use as ``async with Client(url, key) as agent:`` or call ``aclose()``."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = 0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retries = retries
        self._http = httpx.AsyncClient(
            base_url=url, headers=_headers(api_key), timeout=timeout_s, transport=transport
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections.

        Example: ``await agent.aclose()``"""
        await self._http.aclose()

    async def _call(self, req: _Req) -> Any:
        for attempt in range(self.retries + 1):
            try:
                resp = await self._http.request(req.method, req.path, **req.httpx_args())
            except httpx.HTTPError as exc:
                raise _unreachable(exc) from exc
            if resp.status_code < 400:
                return orjson.loads(resp.content)
            if resp.status_code in (429, 503) and attempt < self.retries:
                await anyio.sleep(_retry_wait(resp))
                continue
            raise _error(resp)
        raise AssertionError("unreachable")  # pragma: no cover

    async def publish(
        self,
        content: str,
        scope: str | None = None,
        *,
        kind: str = "observation",
        subject: str | None = None,
        key: str | None = None,
        metadata: dict[str, Any] | None = None,
        label: Label = "public",
        created_at: datetime | None = None,
        causation_id: str | None = None,
        correlation_id: str | None = None,
        wait: bool = False,
        timeout_s: float = DEFAULT_HTTP_WAIT_S,
    ) -> Receipt:
        """Publish one observation (see ``Agent.publish``); a 201 means it is in the stream, or
        with ``wait`` that it is searchable (the service waits at most ``MAX_WAIT_S``).

        Example: ``await agent.publish("Ana prefers SMS", "team/support", subject="ana")``"""
        req = _publish(
            content,
            scope,
            kind,
            subject,
            key,
            metadata,
            label,
            created_at,
            causation_id,
            correlation_id,
            wait,
            timeout_s,
        )
        return Receipt.model_validate(await self._call(req))

    async def publish_many(
        self, drafts: Sequence[Draft], *, wait: bool = False, timeout_s: float = DEFAULT_HTTP_WAIT_S
    ) -> builtins.list[Receipt]:
        """Publish several drafts, all or nothing, in one request.

        Example: ``await agent.publish_many([Draft(content="a", scope="team/x")])``"""
        if not drafts:
            return []
        return Receipts.model_validate(
            await self._call(_publish_many(drafts, wait, timeout_s))
        ).receipts

    async def recall(
        self,
        query: str,
        *,
        k: int = 5,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        subjects: Sequence[str] | None = None,
        agents: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        as_of: datetime | None = None,
        working: bool = False,
        min_score: float | None = None,
    ) -> builtins.list[Hit]:
        """Top-``k`` memories by meaning within what this agent may read (see ``Agent.recall``).

        Example: ``hits = await agent.recall("how does Ana like to be contacted", k=3)``"""
        req = _recall(
            query, k, scopes, kinds, subjects, agents, since, until, as_of, working, min_score
        )
        return Hits.model_validate(await self._call(req)).hits

    async def access(self, memory_ids: Sequence[str]) -> dict[str, Access]:
        """Recall statistics (count, last time) of memories this agent may recall.

        Example: ``stats = await agent.access([hit.memory.id for hit in hits])``"""
        req = _Req("POST", "/v1/access", {"memory_ids": list(memory_ids)})
        return AccessStats.model_validate(await self._call(req)).access

    async def forget(
        self,
        *,
        memory_ids: Sequence[str] | None = None,
        subject: str | None = None,
        agent: str | None = None,
        scope: str | None = None,
    ) -> ErasureReport:
        """Erase what matches every criterion given, within what this agent may forget.

        Example: ``await agent.forget(subject="customer:42", scope="team/support")``"""
        req = _forget(memory_ids, subject, agent, scope)
        return ErasureReport.model_validate(await self._call(req))

    async def retract(
        self,
        *,
        memory_id: str | None = None,
        scope: str | None = None,
        subject: str | None = None,
        key: str | None = None,
        reason: str | None = None,
    ) -> Receipt:
        """Withdraw a memory or every version of a key through the event log (see
        ``Agent.retract``); ``NotFound`` when this agent cannot see the memory.

        Example: ``await agent.retract(scope="team/crm", subject="customer:42", key="tier")``"""
        req = _retract(memory_id, scope, subject, key, reason)
        return Receipt.model_validate(await self._call(req))

    async def scopes(self) -> builtins.list[str]:
        """The scopes holding at least one memory this agent may read, sorted.

        Example: ``await agent.scopes()`` -> ``["agent/alice", "team/support"]``"""
        return Scopes.model_validate(await self._call(_Req("GET", "/v1/scopes"))).scopes

    async def get(self, memory_id: str) -> Memory:
        """One memory by id; ``NotFound`` when absent or not readable (one answer for both).

        Example: ``memory = await agent.get(hit.memory.id)``"""
        return Memory.model_validate(await self._call(_Req("GET", _memory_path(memory_id))))

    async def list(
        self,
        *,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        subjects: Sequence[str] | None = None,
        agents: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        as_of: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> MemoryPage:
        """Memories this agent may read, newest first, a page at a time; pass ``page.cursor``
        back for the next page (None: no more).

        Example: ``page = await agent.list(scopes=["team/support"], limit=20)``"""
        req = _list_memories(scopes, kinds, subjects, agents, since, until, as_of, limit, cursor)
        return MemoryPage.model_validate(await self._call(req))

    async def history(
        self,
        memory_id: str | None = None,
        *,
        scope: str | None = None,
        subject: str | None = None,
        key: str | None = None,
        limit: int = 100,
    ) -> builtins.list[Memory]:
        """Every version of a memory's fact, or of ``subject`` + ``key``, newest first.

        Example: ``versions = await agent.history(subject="customer:42", key="tier")``"""
        req = _history(memory_id, scope, subject, key, limit)
        return Memories.model_validate(await self._call(req)).memories

    async def update(
        self,
        memory_id: str,
        content: str,
        *,
        metadata: dict[str, Any] | None = None,
        label: Label | None = None,
    ) -> Receipt:
        """Publish a new version of a memory (see ``Agent.update``).

        Example: ``await agent.update(memory.id, "The customer prefers SMS.")``"""
        req = _update(memory_id, content, metadata, label)
        return Receipt.model_validate(await self._call(req))

    async def delete(self, memory_id: str) -> ErasureReport:
        """Erase one memory by id; ``NotFound`` when this agent cannot see it.

        Example: ``await agent.delete(memory.id)``"""
        req = _Req("DELETE", _memory_path(memory_id))
        return ErasureReport.model_validate(await self._call(req))

    async def import_memories(self, records: Sequence[Memory]) -> ImportReport:
        """Publish exported memories as this agent's events, idempotently (see
        ``Agent.import_memories``); sent in parts under the service's body limit.

        Example: ``await agent.import_memories(membus.parse_jsonl(open("export.jsonl")))``"""
        return _merged([await self._call(req) for req in _import_parts(records)])

    async def whoami(self) -> WhoAmI:
        """The identity this API key acts as.

        Example: ``(await agent.whoami()).agent``"""
        return WhoAmI.model_validate(await self._call(_Req("GET", "/v1/whoami")))

    async def export(
        self, *, scopes: Sequence[str] | None = None, as_of: datetime | None = None
    ) -> AsyncIterator[Memory]:
        """Every memory this agent may read, newest first, streamed as JSON lines: every
        version, or with ``as_of`` what held then.

        Example: ``async for m in agent.export(): f.write(membus.to_jsonl(m))``"""
        req = _export(scopes, as_of)
        try:
            async with self._http.stream(req.method, req.path, **req.httpx_args()) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise _error(resp)
                async for line in resp.aiter_lines():
                    if line.strip():
                        yield Memory.model_validate_json(line)
        except httpx.HTTPError as exc:
            raise _unreachable(exc) from exc

    async def subscribe(
        self,
        scopes: Sequence[str] | None = None,
        *,
        start: str = "$",
        group: str | None = None,
        reconnect: bool = True,
        until_now: bool = False,
    ) -> AsyncIterator[Change]:
        """Follow changes (SSE) in ``scopes`` (None: all readable) from ``start`` ("$" now, "0"
        the beginning, or a position); ``group`` shares the feed among this agent's consumers.
        With ``reconnect`` a dropped link or a 503 resumes after the
        last position seen, so nothing is missed and nothing is seen twice on our side.
        ``until_now``: the service ends the stream once caught up, and so does this.

        Example: ``async for change in agent.subscribe(["team/support"]): ...``"""
        follow = _Follow(start)
        timeout = httpx.Timeout(DEFAULT_TIMEOUT_S, read=SSE_READ_TIMEOUT_S)
        while True:
            try:
                params = _changes_params(scopes, follow.position, group, until_now)
                async with self._http.stream(
                    "GET", "/v1/changes", params=params, timeout=timeout
                ) as resp:
                    if resp.status_code >= 400:
                        await resp.aread()
                        raise _error(resp)
                    parser = _SSE()
                    async for line in resp.aiter_lines():
                        got = parser.feed(line)
                        change = follow.handle(*got) if got else None
                        if change is not None:
                            yield change
            except httpx.HTTPError as exc:
                if not reconnect:
                    raise _unreachable(exc) from exc
            except Unavailable:
                if not reconnect:
                    raise
            else:
                if not reconnect or until_now:
                    return  # caught up, or the service closed the stream (shutting down)
            await anyio.sleep(follow.next_wait())

    # -- context for the prompt -----------------------------------------------------------------

    async def context(
        self,
        query: str | None = None,
        *,
        budget_tokens: int,
        subjects: Sequence[str] | None = None,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        agents: Sequence[str] | None = None,
        working: bool = True,
    ) -> Context:
        """``Agent.context`` over HTTP (``POST /v1/context``), counted by the service's
        default token counter.

        Example: ``system = (await client.context("refund?", budget_tokens=800)).render()``"""
        body = _context_body(query, budget_tokens, subjects, scopes, kinds, agents, working)
        return Context.model_validate(await self._call(_Req("POST", "/v1/context", body)))

    async def pin(self, memory_id: str) -> Receipt:
        """``Agent.pin`` over HTTP (``POST /v1/pin``).

        Example: ``await client.pin(hit.memory.id)``"""
        raw = await self._call(_Req("POST", "/v1/pin", {"memory_id": memory_id}))
        return Receipt.model_validate(raw)

    async def unpin(self, memory_id: str) -> Receipt:
        """``Agent.unpin`` over HTTP (``POST /v1/unpin``).

        Example: ``await client.unpin(hit.memory.id)``"""
        raw = await self._call(_Req("POST", "/v1/unpin", {"memory_id": memory_id}))
        return Receipt.model_validate(raw)


class SyncClient:
    """Blocking twin of ``Client``: ``with SyncClient(url, key) as agent: agent.publish(...)``."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = 0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retries = retries
        self._http = httpx.Client(
            base_url=url, headers=_headers(api_key), timeout=timeout_s, transport=transport
        )

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections.

        Example: ``agent.close()``"""
        self._http.close()

    def _call(self, req: _Req) -> Any:
        for attempt in range(self.retries + 1):
            try:
                resp = self._http.request(req.method, req.path, **req.httpx_args())
            except httpx.HTTPError as exc:
                raise _unreachable(exc) from exc
            if resp.status_code < 400:
                return orjson.loads(resp.content)
            if resp.status_code in (429, 503) and attempt < self.retries:
                time.sleep(_retry_wait(resp))
                continue
            raise _error(resp)
        raise AssertionError("unreachable")  # pragma: no cover

    def publish(
        self,
        content: str,
        scope: str | None = None,
        *,
        kind: str = "observation",
        subject: str | None = None,
        key: str | None = None,
        metadata: dict[str, Any] | None = None,
        label: Label = "public",
        created_at: datetime | None = None,
        causation_id: str | None = None,
        correlation_id: str | None = None,
        wait: bool = False,
        timeout_s: float = DEFAULT_HTTP_WAIT_S,
    ) -> Receipt:
        """Publish one observation (see ``Agent.publish``); a 201 means it is in the stream, or
        with ``wait`` that it is searchable (the service waits at most ``MAX_WAIT_S``).

        Example: ``agent.publish("Ana prefers SMS", "team/support", subject="ana")``"""
        req = _publish(
            content,
            scope,
            kind,
            subject,
            key,
            metadata,
            label,
            created_at,
            causation_id,
            correlation_id,
            wait,
            timeout_s,
        )
        return Receipt.model_validate(self._call(req))

    def publish_many(
        self, drafts: Sequence[Draft], *, wait: bool = False, timeout_s: float = DEFAULT_HTTP_WAIT_S
    ) -> builtins.list[Receipt]:
        """Publish several drafts, all or nothing, in one request.

        Example: ``agent.publish_many([Draft(content="a", scope="team/x")])``"""
        if not drafts:
            return []
        raw = self._call(_publish_many(drafts, wait, timeout_s))
        return Receipts.model_validate(raw).receipts

    def recall(
        self,
        query: str,
        *,
        k: int = 5,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        subjects: Sequence[str] | None = None,
        agents: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        as_of: datetime | None = None,
        working: bool = False,
        min_score: float | None = None,
    ) -> builtins.list[Hit]:
        """Top-``k`` memories by meaning within what this agent may read (see ``Agent.recall``).

        Example: ``hits = agent.recall("how does Ana like to be contacted", k=3)``"""
        req = _recall(
            query, k, scopes, kinds, subjects, agents, since, until, as_of, working, min_score
        )
        return Hits.model_validate(self._call(req)).hits

    def access(self, memory_ids: Sequence[str]) -> dict[str, Access]:
        """Recall statistics (count, last time) of memories this agent may recall.

        Example: ``stats = agent.access([hit.memory.id for hit in hits])``"""
        req = _Req("POST", "/v1/access", {"memory_ids": list(memory_ids)})
        return AccessStats.model_validate(self._call(req)).access

    def forget(
        self,
        *,
        memory_ids: Sequence[str] | None = None,
        subject: str | None = None,
        agent: str | None = None,
        scope: str | None = None,
    ) -> ErasureReport:
        """Erase what matches every criterion given, within what this agent may forget.

        Example: ``agent.forget(subject="customer:42", scope="team/support")``"""
        req = _forget(memory_ids, subject, agent, scope)
        return ErasureReport.model_validate(self._call(req))

    def retract(
        self,
        *,
        memory_id: str | None = None,
        scope: str | None = None,
        subject: str | None = None,
        key: str | None = None,
        reason: str | None = None,
    ) -> Receipt:
        """Withdraw a memory or every version of a key through the event log (see
        ``Agent.retract``); ``NotFound`` when this agent cannot see the memory.

        Example: ``agent.retract(scope="team/crm", subject="customer:42", key="tier")``"""
        req = _retract(memory_id, scope, subject, key, reason)
        return Receipt.model_validate(self._call(req))

    def scopes(self) -> builtins.list[str]:
        """The scopes holding at least one memory this agent may read, sorted.

        Example: ``agent.scopes()`` -> ``["agent/alice", "team/support"]``"""
        return Scopes.model_validate(self._call(_Req("GET", "/v1/scopes"))).scopes

    def get(self, memory_id: str) -> Memory:
        """One memory by id; ``NotFound`` when absent or not readable (one answer for both).

        Example: ``memory = agent.get(hit.memory.id)``"""
        return Memory.model_validate(self._call(_Req("GET", _memory_path(memory_id))))

    def list(
        self,
        *,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        subjects: Sequence[str] | None = None,
        agents: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        as_of: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> MemoryPage:
        """Memories this agent may read, newest first, a page at a time; pass ``page.cursor``
        back for the next page (None: no more).

        Example: ``page = agent.list(scopes=["team/support"], limit=20)``"""
        req = _list_memories(scopes, kinds, subjects, agents, since, until, as_of, limit, cursor)
        return MemoryPage.model_validate(self._call(req))

    def history(
        self,
        memory_id: str | None = None,
        *,
        scope: str | None = None,
        subject: str | None = None,
        key: str | None = None,
        limit: int = 100,
    ) -> builtins.list[Memory]:
        """Every version of a memory's fact, or of ``subject`` + ``key``, newest first.

        Example: ``versions = agent.history(subject="customer:42", key="tier")``"""
        req = _history(memory_id, scope, subject, key, limit)
        return Memories.model_validate(self._call(req)).memories

    def update(
        self,
        memory_id: str,
        content: str,
        *,
        metadata: dict[str, Any] | None = None,
        label: Label | None = None,
    ) -> Receipt:
        """Publish a new version of a memory (see ``Agent.update``).

        Example: ``agent.update(memory.id, "The customer prefers SMS.")``"""
        req = _update(memory_id, content, metadata, label)
        return Receipt.model_validate(self._call(req))

    def delete(self, memory_id: str) -> ErasureReport:
        """Erase one memory by id; ``NotFound`` when this agent cannot see it.

        Example: ``agent.delete(memory.id)``"""
        req = _Req("DELETE", _memory_path(memory_id))
        return ErasureReport.model_validate(self._call(req))

    def import_memories(self, records: Sequence[Memory]) -> ImportReport:
        """Publish exported memories as this agent's events, idempotently (see
        ``Agent.import_memories``); sent in parts under the service's body limit.

        Example: ``agent.import_memories(membus.parse_jsonl(open("export.jsonl")))``"""
        return _merged([self._call(req) for req in _import_parts(records)])

    def whoami(self) -> WhoAmI:
        """The identity this API key acts as.

        Example: ``(agent.whoami()).agent``"""
        return WhoAmI.model_validate(self._call(_Req("GET", "/v1/whoami")))

    def export(
        self, *, scopes: Sequence[str] | None = None, as_of: datetime | None = None
    ) -> Iterator[Memory]:
        """Every memory this agent may read, newest first, streamed as JSON lines (see
        ``Client.export``).

        Example: ``for m in agent.export(): f.write(membus.to_jsonl(m))``"""
        req = _export(scopes, as_of)
        try:
            with self._http.stream(req.method, req.path, **req.httpx_args()) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise _error(resp)
                for line in resp.iter_lines():
                    if line.strip():
                        yield Memory.model_validate_json(line)
        except httpx.HTTPError as exc:
            raise _unreachable(exc) from exc

    def subscribe(
        self,
        scopes: Sequence[str] | None = None,
        *,
        start: str = "$",
        group: str | None = None,
        reconnect: bool = True,
        until_now: bool = False,
    ) -> Iterator[Change]:
        """Blocking iterator over the change feed (see ``Client.subscribe``); close it (or
        break) to stop following.

        Example: ``for change in agent.subscribe(["team/support"], until_now=True): ...``"""
        follow = _Follow(start)
        timeout = httpx.Timeout(DEFAULT_TIMEOUT_S, read=SSE_READ_TIMEOUT_S)
        while True:
            try:
                params = _changes_params(scopes, follow.position, group, until_now)
                with self._http.stream("GET", "/v1/changes", params=params, timeout=timeout) as r:
                    if r.status_code >= 400:
                        r.read()
                        raise _error(r)
                    parser = _SSE()
                    for line in r.iter_lines():
                        got = parser.feed(line)
                        change = follow.handle(*got) if got else None
                        if change is not None:
                            yield change
            except httpx.HTTPError as exc:
                if not reconnect:
                    raise _unreachable(exc) from exc
            except Unavailable:
                if not reconnect:
                    raise
            else:
                if not reconnect or until_now:
                    return  # caught up, or the service closed the stream (shutting down)
            time.sleep(follow.next_wait())

    # -- context for the prompt -----------------------------------------------------------------

    def context(
        self,
        query: str | None = None,
        *,
        budget_tokens: int,
        subjects: Sequence[str] | None = None,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        agents: Sequence[str] | None = None,
        working: bool = True,
    ) -> Context:
        """``Client.context``, blocking.

        Example: ``system = client.context("refund?", budget_tokens=800).render()``"""
        body = _context_body(query, budget_tokens, subjects, scopes, kinds, agents, working)
        return Context.model_validate(self._call(_Req("POST", "/v1/context", body)))

    def pin(self, memory_id: str) -> Receipt:
        """``Client.pin``, blocking.

        Example: ``client.pin(hit.memory.id)``"""
        raw = self._call(_Req("POST", "/v1/pin", {"memory_id": memory_id}))
        return Receipt.model_validate(raw)

    def unpin(self, memory_id: str) -> Receipt:
        """``Client.unpin``, blocking.

        Example: ``client.unpin(hit.memory.id)``"""
        raw = self._call(_Req("POST", "/v1/unpin", {"memory_id": memory_id}))
        return Receipt.model_validate(raw)
