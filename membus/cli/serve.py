"""The long-running doors: ``serve`` the bus over HTTP, ``mcp`` over stdio (keys: ``keys``)."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from types import FrameType
from typing import Annotated

import anyio
import typer
from pydantic import ValidationError

from membus.cli.context import JsonFlag, command_state, run
from membus.cli.output import emit_json, fail, say
from membus.core.envelope import invalid_from
from membus.errors import Conflict, InvalidInput, MembusError

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Deferred:
    """Signal handling around uvicorn, which owns SIGTERM/SIGINT only while it serves.

    uvicorn re-raises the signal that stopped it after restoring the previous handler; with the
    default handlers that would kill the process before the bus is closed (exit -15, an embedded
    redis-server left behind). So the handlers outside uvicorn only take note, and a signal that
    came while the bus was still opening is handed to uvicorn as soon as it listens.
    """

    def __init__(self) -> None:
        self.pending: list[int] = []
        self._previous: dict[int, signal._HANDLER] = {}

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.pending.append(signum)

    def __enter__(self) -> _Deferred:
        self._previous = {s: signal.signal(s, self._note) for s in _SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    async def forward(self) -> None:
        """Until cancelled: once uvicorn has its handlers in place, replay early signals."""
        while True:
            await anyio.sleep(0.05)
            if self.pending and signal.getsignal(signal.SIGTERM) != self._note:
                signal.raise_signal(self.pending.pop(0))
                self.pending.clear()


def serve(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option("--host", help="Listen address (env MEMBUS_HOST; 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", min=0, max=65535, help="(env MEMBUS_PORT; 8080); 0: any free."),
    ] = None,
    api_keys: Annotated[
        Path | None,
        typer.Option("--api-keys", help="API keys file (env MEMBUS_API_KEYS); see `keys new`."),
    ] = None,
    json_flag: JsonFlag = False,
) -> None:
    """Serve the bus over HTTP until SIGTERM/SIGINT (requests in flight are finished).

    The CLI keeps working on the same data directory, through this process; the API keys file
    is re-read when it changes (`membus keys revoke` needs no restart)."""
    state = command_state(ctx, json_flag)
    settings = state.settings
    keys_file = api_keys or settings.api_keys
    if keys_file is None:
        fail(
            InvalidInput(
                "serve needs an API keys file: --api-keys FILE or MEMBUS_API_KEYS "
                "(create one with `membus keys new`)"
            ),
            state.json,
        )
    from membus.cli.calls import node_beside
    from membus.console import mount as console
    from membus.service.app import serve as serve_http

    where = (host or settings.host, settings.port if port is None else port)

    def ready(url: str) -> None:  # once it accepts connections, so a script can wait for it
        if state.json:
            emit_json({"listening": url})
        else:
            say(False, f"membus serve: listening on {url}")

    async def go() -> None:
        config = settings.to_config()
        _can_listen(*where)  # before the bus opens: a taken port is a one-line error
        async with anyio.create_task_group() as tg:
            tg.start_soon(signals.forward)
            await serve_http(
                config,
                *where,
                keys_file,
                path=settings.data_dir,
                on_ready=ready,
                mounts=[console],  # the web console at /ui
                beside=node_beside(settings),
            )
            tg.cancel_scope.cancel()

    with _Deferred() as signals:
        run(state, go)


def _can_listen(host: str, port: int) -> None:
    """Bind and release (as uvicorn will bind: SO_REUSEADDR); racy, but it names the problem."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InvalidInput(f"--host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            raise Conflict(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def mcp(
    ctx: typer.Context,
    agent: Annotated[
        str | None, typer.Option("--agent", help="Embedded: act as this agent (with --tenant).")
    ] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Embedded: its tenant.")] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="Talk to a membus service instead (env MEMBUS_URL).")
    ] = None,
) -> None:
    """Serve MCP tools (remember, recall, forget, list_memories, …) over stdio for ONE identity.

    The identity is bound here, from --agent/--tenant (embedded) or the MEMBUS_API_KEY variable
    (with --url, or checked against MEMBUS_API_KEYS), never from tool arguments. On an embedded
    directory the CLI keeps working beside it, through this process (see `membus.cli.node`).
    """
    state = command_state(ctx)
    settings = state.settings
    from membus.access.gate import Identity
    from membus.integrations.mcp import main as serve_mcp

    key = os.environ.get("MEMBUS_API_KEY")
    who: Identity | str
    if agent and tenant:
        try:
            who = Identity.model_validate({"agent": agent, "tenant": tenant})
        except ValidationError as exc:
            fail(invalid_from(exc, "identity"), state.json)
    elif key:
        who = key
    else:
        fail(InvalidInput("mcp needs --agent and --tenant, or MEMBUS_API_KEY"), state.json)
    from membus.cli.calls import node_beside

    try:
        serve_mcp(
            settings.to_config(),
            who,
            path=settings.data_dir,
            url=url or os.environ.get("MEMBUS_URL"),
            api_keys_file=settings.api_keys,
            beside=node_beside(settings),
        )
    except MembusError as exc:
        fail(exc, state.json)
