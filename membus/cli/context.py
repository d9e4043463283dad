"""What every command runs with: its settings and output mode, shared options, error handling."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, TypeVar

import anyio
import anyio.abc
import typer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from membus.cli.output import fail
from membus.cli.settings import Settings
from membus.core.ids import encode_id
from membus.errors import MembusError

if TYPE_CHECKING:
    from membus.access.gate import Identity

# not streams.REDIS_DOWN: that includes OSError, and a missing file is no outage
_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)

T = TypeVar("T")

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
AgentOpt = Annotated[
    str, typer.Option("--agent", "-a", help="Acting agent id (any text: e-mail, UUID, any case).")
]
TenantOpt = Annotated[str, typer.Option("--tenant", "-t", help="Tenant id (any text).")]


@dataclass(frozen=True)
class State:
    settings: Settings
    json: bool


def command_state(ctx: typer.Context, json_flag: bool = False) -> State:
    """``--json`` counts both before the command (global) and after it."""
    state: State = ctx.obj
    return State(state.settings, state.json or json_flag)


def run(state: State, fn: Callable[[], Awaitable[T]]) -> T:
    from membus.core.redis import unavailable

    try:
        return anyio.run(fn)
    except MembusError as exc:
        fail(exc, state.json)
    except _REDIS_DOWN as exc:
        # a library call that did not translate its connection error: still "try again later"
        fail(unavailable(exc), state.json)
    except BaseExceptionGroup as group:
        only = _sole(group)
        if isinstance(only, MembusError):
            fail(only, state.json)
        if isinstance(only, _REDIS_DOWN):
            fail(unavailable(only), state.json)
        if isinstance(only, SystemExit):  # e.g. uvicorn's exit on a failed startup, logged
            raise only from None
        raise


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one real error inside (nested) task-group wrapping, ignoring cancellations."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        elif not isinstance(exc, asyncio.CancelledError):  # anyio.run runs asyncio
            leaves.append(exc)

    walk(group)
    return leaves[0] if len(leaves) == 1 else None


def identity(agent: str, tenant: str) -> Identity:
    """The identity of ``--agent``/``--tenant`` as given (e-mail, UUID, any case): encoded
    like every door encodes ids (``membus.core.ids.encode_id``)."""
    from membus.access.gate import Identity

    return Identity(tenant=encode_id(tenant, "tenant"), agent=encode_id(agent, "agent"))
