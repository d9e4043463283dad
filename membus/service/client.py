"""``membus.Client``: the bus's agent API over HTTP, for code that talks to a membus service.

The surface mirrors an in-process ``Agent`` (the API key *is* the agent), with the same models
and the same error types, so moving from embedded to a service is one line::

    agent = bus.agent("alice", tenant="acme")                        # embedded
    agent = Client("https://membus.internal", api_key=os.environ["MEMBUS_API_KEY"])  # service

``SyncClient`` is the blocking twin. Neither retries on its own unless ``retries`` is set, and
then only answers that mean nothing was done (429, 503): a publish is never sent twice after a
network error, because the first may have reached the stream.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Final

import anyio
import httpx
import orjson
from pydantic import ValidationError

from membus.bus.draft import Draft, Receipt
from membus.bus.erasure import ErasureReport
from membus.core.envelope import invalid_from
from membus.errors import MembusError, Unavailable
from membus.recall.heat import Access
from membus.service.wire import (
    AccessStats,
    Hits,
    Receipts,
    WhoAmI,
    error_from_body,
)
from membus.store.port import Hit
from membus.stream.feed import Change

DEFAULT_TIMEOUT_S: Final = 30.0
# the service sends a keepalive every 15 s by default: silence for longer means a dead link
SSE_READ_TIMEOUT_S: Final = 60.0
_MAX_BACKOFF_S: Final = 5.0


def _draft(content: str, scope: str, fields: dict[str, Any]) -> Draft:
    try:
        return Draft(content=content, scope=scope, **fields)
    except ValidationError as exc:  # the same InvalidInput the in-process bus raises
        raise invalid_from(exc, "publish arguments") from None


def _drafts_body(drafts: Sequence[Draft]) -> dict[str, Any]:
    return {"drafts": [d.model_dump(mode="json", exclude_none=True) for d in drafts]}


def _recall_body(query: str, k: int, **filters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"query": query, "k": k}
    for name, value in filters.items():
        if value is None:
            continue
        if isinstance(value, datetime):
            body[name] = value.isoformat()
        elif isinstance(value, bool | int | float):  # working, min_score: not lists
            body[name] = value
        elif isinstance(value, str):  # a lone scope is a list of one, never a list of chars
            body[name] = [value]
        else:
            body[name] = list(value)
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
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        for attempt in range(self.retries + 1):
            try:
                resp = await self._http.request(
                    method,
                    path,
                    content=None if body is None else orjson.dumps(body),
                    headers={"content-type": "application/json"} if body is not None else None,
                )
            except httpx.HTTPError as exc:
                raise _unreachable(exc) from exc
            if resp.status_code < 400:
                return orjson.loads(resp.content)
            if resp.status_code in (429, 503) and attempt < self.retries:
                await anyio.sleep(_retry_wait(resp))
                continue
            raise _error(resp)
        raise AssertionError("unreachable")  # pragma: no cover

    async def publish(self, content: str, scope: str, **fields: Any) -> Receipt:
        draft = _draft(content, scope, fields)
        body = draft.model_dump(mode="json", exclude_none=True)
        return Receipt.model_validate(await self._call("POST", "/v1/publish", body))

    async def publish_many(self, drafts: Sequence[Draft]) -> list[Receipt]:
        if not drafts:
            return []
        raw = await self._call("POST", "/v1/publish/batch", _drafts_body(drafts))
        return Receipts.model_validate(raw).receipts

    async def recall(self, query: str, *, k: int = 5, **filters: Any) -> list[Hit]:
        """Same options as ``Agent.recall``: scopes, kinds, subjects, agents, since, until,
        as_of, working."""
        raw = await self._call("POST", "/v1/recall", _recall_body(query, k, **filters))
        return Hits.model_validate(raw).hits

    async def access(self, memory_ids: Sequence[str]) -> dict[str, Access]:
        """Recall statistics (count, last time) of memories this agent may recall."""
        raw = await self._call("POST", "/v1/access", {"memory_ids": list(memory_ids)})
        return AccessStats.model_validate(raw).access

    async def forget(self, **criteria: Any) -> ErasureReport:
        """memory_ids, subject, agent and/or scope; within what this agent may forget."""
        body = {k: v for k, v in criteria.items() if v is not None}
        return ErasureReport.model_validate(await self._call("POST", "/v1/forget", body))

    async def whoami(self) -> WhoAmI:
        return WhoAmI.model_validate(await self._call("GET", "/v1/whoami"))

    async def subscribe(
        self,
        scopes: Sequence[str] | None = None,
        *,
        start: str = "$",
        group: str | None = None,
        reconnect: bool = True,
        until_now: bool = False,
    ) -> AsyncIterator[Change]:
        """Follow changes (SSE). With ``reconnect`` a dropped link or a 503 resumes after the
        last position seen, so nothing is missed and nothing is seen twice on our side.
        ``until_now``: the service ends the stream once caught up, and so does this."""
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
        self._http.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        for attempt in range(self.retries + 1):
            try:
                resp = self._http.request(
                    method,
                    path,
                    content=None if body is None else orjson.dumps(body),
                    headers={"content-type": "application/json"} if body is not None else None,
                )
            except httpx.HTTPError as exc:
                raise _unreachable(exc) from exc
            if resp.status_code < 400:
                return orjson.loads(resp.content)
            if resp.status_code in (429, 503) and attempt < self.retries:
                time.sleep(_retry_wait(resp))
                continue
            raise _error(resp)
        raise AssertionError("unreachable")  # pragma: no cover

    def publish(self, content: str, scope: str, **fields: Any) -> Receipt:
        draft = _draft(content, scope, fields)
        body = draft.model_dump(mode="json", exclude_none=True)
        return Receipt.model_validate(self._call("POST", "/v1/publish", body))

    def publish_many(self, drafts: Sequence[Draft]) -> list[Receipt]:
        if not drafts:
            return []
        raw = self._call("POST", "/v1/publish/batch", _drafts_body(drafts))
        return Receipts.model_validate(raw).receipts

    def recall(self, query: str, *, k: int = 5, **filters: Any) -> list[Hit]:
        raw = self._call("POST", "/v1/recall", _recall_body(query, k, **filters))
        return Hits.model_validate(raw).hits

    def access(self, memory_ids: Sequence[str]) -> dict[str, Access]:
        raw = self._call("POST", "/v1/access", {"memory_ids": list(memory_ids)})
        return AccessStats.model_validate(raw).access

    def forget(self, **criteria: Any) -> ErasureReport:
        body = {k: v for k, v in criteria.items() if v is not None}
        return ErasureReport.model_validate(self._call("POST", "/v1/forget", body))

    def whoami(self) -> WhoAmI:
        return WhoAmI.model_validate(self._call("GET", "/v1/whoami"))

    def subscribe(
        self,
        scopes: Sequence[str] | None = None,
        *,
        start: str = "$",
        group: str | None = None,
        reconnect: bool = True,
    ) -> Iterator[Change]:
        """Blocking iterator over the change feed; close it (or break) to stop following."""
        follow = _Follow(start)
        timeout = httpx.Timeout(DEFAULT_TIMEOUT_S, read=SSE_READ_TIMEOUT_S)
        while True:
            try:
                params = _changes_params(scopes, follow.position, group)
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
                if not reconnect:
                    return  # the service closed the stream (shutting down)
            time.sleep(follow.next_wait())
