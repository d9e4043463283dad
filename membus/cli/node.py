"""Operating a running node: the CLI on a data directory that ``membus serve``/``mcp`` holds.

Qdrant Edge lets one process open a store. While a node (``serve`` or ``mcp``) holds an embedded
data directory it also listens on ``127.0.0.1:<any free port>`` for the CLI, and writes
``node.json`` into the directory: its pid, that address and a random 256-bit token. The file is
0600 (the data directory's master secret and store are no less private), never in Redis, removed
on a clean stop, and ignored when its pid is not alive or it is not ours.

The token itself never crosses the socket. The CLI first sends a fresh nonce and checks the
node's HMAC of it, so a stale file cannot lead the CLI to whoever listens on that port now; each
call then carries an HMAC of its nonce and body, and each answer one of the nonce, both keyed by
the token. The node runs the call as ``membus.cli.calls`` runs it in process: the same function,
with the caller's ``--agent``/``--tenant`` at the same gate (holding the file is holding the data
directory, whose owner could open the store directly anyway).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import anyio
import httpx
import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from membus.errors import MembusError, Unavailable

NODE_FILE: Final = "node.json"
_HOST: Final = "127.0.0.1"  # loopback only: the node endpoint is for this machine's operator
_TIMEOUT_S: Final = 60.0


class NodeInfo(BaseModel):
    """What ``node.json`` holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    pid: int
    url: str
    token: str  # hex; 32 random bytes


def _mac(token: str, *parts: bytes) -> str:
    return hmac.new(bytes.fromhex(token), b"\0".join(parts), hashlib.sha256).hexdigest()


def request_mac(token: str, nonce: str, path: str, body: bytes) -> str:
    return _mac(token, b"request", nonce.encode(), path.encode(), hashlib.sha256(body).digest())


def answer_mac(token: str, nonce: str) -> str:
    return _mac(token, b"answer", nonce.encode())


# -- the file ---------------------------------------------------------------------------------


def write_node_file(directory: Path, info: NodeInfo) -> Path:
    """Write ``node.json`` 0600 from the start (never readable by others, not even briefly)."""
    path = directory / NODE_FILE
    tmp = directory / f".{NODE_FILE}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(orjson.dumps(info.model_dump()))
    os.replace(tmp, path)
    return path


def remove_node_file(directory: Path, info: NodeInfo) -> None:
    """Remove ``node.json`` if it is still this node's."""
    path = directory / NODE_FILE
    with contextlib.suppress(OSError):
        if read_node_file(directory, check_pid=False) == info:
            path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: not a node of ours
        return False
    return True


def read_node_file(directory: Path, *, check_pid: bool = True) -> NodeInfo | None:
    """The node described in ``directory``, or None: no file, not ours (owner or mode), not
    parseable, or (``check_pid``) its process is gone."""
    path = directory / NODE_FILE
    try:
        st = path.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            return None  # planted by someone else, or readable by others: do not trust it
        info = NodeInfo.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None
    if check_pid and not _alive(info.pid):
        return None
    return info


# -- the client side --------------------------------------------------------------------------


class NodeClient:
    """Calls into a running node; ``connect`` has proved it is the node that wrote the file."""

    def __init__(self, info: NodeInfo, http: httpx.AsyncClient) -> None:
        self.info, self._http = info, http

    def _signed(self, path: str, body: bytes) -> tuple[str, dict[str, str]]:
        nonce = secrets.token_hex(16)
        mac = request_mac(self.info.token, nonce, path, body)
        return nonce, {"x-membus-nonce": nonce, "authorization": f"MembusNode {mac}"}

    def _check(self, resp: httpx.Response, nonce: str) -> None:
        proof = resp.headers.get("x-membus-proof", "")
        if not hmac.compare_digest(proof, answer_mac(self.info.token, nonce)):
            raise Unavailable(
                f"{self.info.url} did not prove it is the membus node that wrote "
                f"{NODE_FILE}; not talking to it"
            )

    async def hello(self) -> None:
        nonce, headers = self._signed("/hello", b"")
        try:
            resp = await self._http.post("/hello", headers=headers)
        except httpx.HTTPError as exc:
            raise Unavailable(f"node at {self.info.url} does not answer: {exc}") from None
        self._check(resp, nonce)

    async def call(self, op: str, kwargs: dict[str, Any]) -> Any:
        body = orjson.dumps({"op": op, "kwargs": kwargs}, default=str)
        nonce, headers = self._signed("/call", body)
        try:
            resp = await self._http.post("/call", content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise Unavailable(f"node at {self.info.url}: {exc}") from None
        self._check(resp, nonce)
        doc = orjson.loads(resp.content)
        if resp.status_code >= 400:
            raise _error(resp.status_code, doc)
        return doc["result"]

    async def stream(self, op: str, kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        body = orjson.dumps({"op": op, "kwargs": kwargs}, default=str)
        nonce, headers = self._signed("/stream", body)
        try:
            async with self._http.stream(
                "POST", "/stream", content=body, headers=headers, timeout=None
            ) as resp:
                self._check(resp, nonce)
                if resp.status_code >= 400:
                    raise _error(resp.status_code, orjson.loads(await resp.aread()))
                async for line in resp.aiter_lines():
                    if not line.strip():
                        continue
                    doc = orjson.loads(line)
                    if "error" in doc:
                        raise _error(500, doc)
                    yield doc["item"]
        except httpx.HTTPError as exc:
            raise Unavailable(f"node at {self.info.url}: {exc}") from None


def _error(status: int, doc: Any) -> MembusError:
    from membus.service.wire import error_from_body

    return error_from_body(status, doc)


@asynccontextmanager
async def connect(directory: Path) -> AsyncIterator[NodeClient | None]:
    """The live node holding ``directory``, proved to be it, or None."""
    info = read_node_file(directory)
    if info is None:
        yield None
        return
    async with httpx.AsyncClient(base_url=info.url, timeout=_TIMEOUT_S, trust_env=False) as http:
        node = NodeClient(info, http)
        try:
            await node.hello()
        except Unavailable:
            yield None
            return
        yield node


# -- the node side ----------------------------------------------------------------------------

Call = Callable[[str, dict[str, Any]], Awaitable[Any]]
Stream = Callable[[str, dict[str, Any]], AsyncIterator[Any]]


def node_app(token: str, call: Call, stream: Stream) -> Any:
    """The node endpoint: ``/hello``, ``/call`` (one JSON answer), ``/stream`` (JSON lines)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from membus.service.wire import error_body, status_of

    def proof(nonce: str) -> dict[str, str]:
        return {"x-membus-proof": answer_mac(token, nonce)}

    async def authorised(request: Request) -> tuple[str, dict[str, Any]] | Response:
        nonce = request.headers.get("x-membus-nonce", "")
        body = await request.body()
        given = request.headers.get("authorization", "").removeprefix("MembusNode ")
        wanted = request_mac(token, nonce, request.url.path, body)
        if len(nonce) < 16 or not hmac.compare_digest(given, wanted):
            # no proof either: a caller without the token learns nothing, not even our MAC
            return JSONResponse({"error": {"code": "unauthenticated"}}, status_code=401)
        if not body:
            return nonce, {}
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return JSONResponse({"error": {"code": "invalid_input"}}, 400, proof(nonce))
        return nonce, doc

    async def hello(request: Request) -> Response:
        got = await authorised(request)
        if isinstance(got, Response):
            return got
        return JSONResponse({"pid": os.getpid()}, headers=proof(got[0]))

    async def call_route(request: Request) -> Response:
        got = await authorised(request)
        if isinstance(got, Response):
            return got
        nonce, doc = got
        try:
            result = await call(str(doc.get("op")), dict(doc.get("kwargs") or {}))
        except MembusError as exc:
            return JSONResponse(error_body(exc), status_of(exc), proof(nonce))
        return Response(
            orjson.dumps({"result": result}, default=str),
            media_type="application/json",
            headers=proof(nonce),
        )

    async def stream_route(request: Request) -> Response:
        got = await authorised(request)
        if isinstance(got, Response):
            return got
        nonce, doc = got
        items = stream(str(doc.get("op")), dict(doc.get("kwargs") or {}))

        async def lines() -> AsyncIterator[bytes]:
            try:
                async for item in items:
                    yield orjson.dumps({"item": item}, default=str) + b"\n"
            except MembusError as exc:
                yield orjson.dumps(error_body(exc)) + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson", headers=proof(nonce))

    return Starlette(
        routes=[
            Route("/hello", hello, methods=["POST"]),
            Route("/call", call_route, methods=["POST"]),
            Route("/stream", stream_route, methods=["POST"]),
        ]
    )


@asynccontextmanager
async def hosting(directory: Path, call: Call, stream: Stream) -> AsyncIterator[NodeInfo]:
    """Serve the node endpoint and advertise it in ``directory`` until the block exits."""
    import uvicorn

    class _Quiet(uvicorn.Server):
        # the process's own server (or MCP's stdio loop) owns SIGTERM/SIGINT; this one stops
        # when the block exits
        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            yield

    token = secrets.token_hex(32)
    server = _Quiet(
        uvicorn.Config(
            node_app(token, call, stream),
            host=_HOST,
            port=0,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        while not server.started:
            if server.should_exit:
                raise Unavailable("the node endpoint did not start")
            await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        info = NodeInfo(pid=os.getpid(), url=f"http://{_HOST}:{port}", token=token)
        write_node_file(directory, info)
        try:
            yield info
        finally:
            remove_node_file(directory, info)
            # force: a `tail` streaming through the node must not hold the node's stop
            server.should_exit = server.force_exit = True
