"""The ``membus`` command line: run writers, publish, recall, tail, inspect and repair.

Every command reads its configuration through ``Settings`` (env ``MEMBUS_*``, overridden by the
global flags). On the embedded default (no Redis URL) a command owns the whole data directory for
its lifetime, in-process writers included; with a Redis URL, commands that only need streams
(publish, tail, dlq, and stats while a worker holds an edge store) do not open the store at all,
so they run beside ``membus worker``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import re
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import anyio
import anyio.abc
import orjson
import redis.asyncio as aioredis
import structlog
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from membus.bus import Bus, Draft, Receipt
from membus.dlq import drop, list_dead, replay
from membus.embedder import HashingEmbedder, Vectors, make_embedder
from membus.envelope import Event, invalid_from, validate_name
from membus.errors import (
    Conflict,
    InvalidInput,
    MembusError,
    PermissionDenied,
    StoreLocked,
    Unavailable,
)
from membus.feed import Change
from membus.gate import Identity
from membus.runtime import connect, maintain_loop, make_store
from membus.runtime import open as open_bus
from membus.settings import Settings
from membus.store import Hit, Memory, RecallFilter, StoreMeta
from membus.streams import REDIS_DOWN, unavailable
from membus.worker import Writer, consumer_name

T = TypeVar("T")

app = typer.Typer(
    name="membus",
    help="Event-driven shared memory bus for teams of AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
dlq_app = typer.Typer(
    help="Dead letters: events the writers could not process.", no_args_is_help=True
)
app.add_typer(dlq_app, name="dlq")

_SHARED_HINT = (
    "the data directory {path} is owned by another membus process (e.g. `membus worker`); to "
    "share a bus between processes, point them all at one Redis (--redis-url / MEMBUS_REDIS_URL)"
)
_PUBLISH_CHUNK = 500

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
AgentOpt = Annotated[str, typer.Option("--agent", "-a", help="Acting agent name.")]
TenantOpt = Annotated[str, typer.Option("--tenant", "-t", help="Tenant.")]


@dataclass(frozen=True)
class State:
    settings: Settings
    json: bool


# -- plumbing ---------------------------------------------------------------------------------


def _exit_code(exc: MembusError) -> int:
    if isinstance(exc, PermissionDenied):
        return 3
    if isinstance(exc, Unavailable):
        return 4
    return 2


def _fail(exc: MembusError, as_json: bool) -> NoReturn:
    if as_json:
        typer.echo(orjson.dumps({"error": exc.to_dict()}).decode(), err=True)
    else:
        typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(_exit_code(exc))


def _state(ctx: typer.Context, json_flag: bool = False) -> State:
    state: State = ctx.obj
    return State(state.settings, state.json or json_flag)


def _run(state: State, fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return anyio.run(fn)
    except MembusError as exc:
        _fail(exc, state.json)


def _emit_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, default=str).decode() + "\n")
    sys.stdout.flush()


def _say(state: State, message: str) -> None:
    """Human progress notes go to stderr, so stdout stays the command's result."""
    if not state.json:
        typer.echo(message, err=True)


def _configure_logging(settings: Settings, as_json: bool) -> None:
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    tail: list[Any] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if as_json or settings.log_json
        else [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            *tail,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # sys.stderr looked up per logger, not bound once: a swapped stream may be closed later
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )


def _identity(agent: str, tenant: str) -> Identity:
    return Identity(tenant=validate_name(tenant, "tenant"), agent=validate_name(agent, "agent"))


class _NoStore:
    """Stands in for the store where a command needs Redis only; touching it is a bug.

    ``count`` answers 0 so ``Bus.stats`` works; the caller reports the count as unknown.
    """

    def _no(self) -> NoReturn:
        raise Unavailable("this command runs without the memory store")

    async def open(self, meta: StoreMeta) -> None:
        self._no()

    async def upsert(self, memories: Sequence[Memory], vectors: Vectors) -> None:
        self._no()

    async def search(self, vector: Vectors, flt: RecallFilter, k: int) -> list[Hit]:
        self._no()

    async def get(self, tenant: str, ids: Sequence[str]) -> list[Memory]:
        self._no()

    async def delete(self, tenant: str, ids: Sequence[str]) -> int:
        self._no()

    async def count(self, tenant: str | None = None) -> int:
        return 0

    async def scroll(
        self, tenant: str, limit: int = 256, offset: str | None = None
    ) -> tuple[list[Memory], str | None]:
        self._no()

    async def maintain(self) -> None:
        return None

    async def close(self) -> None:
        return None


@asynccontextmanager
async def _redis_only(state: State) -> AsyncIterator[Bus]:
    """A bus over Redis alone, for commands that never touch the store."""
    config = state.settings.to_config()
    assert config.redis.url is not None
    client = aioredis.Redis.from_url(
        config.redis.url, decode_responses=True, socket_timeout=config.redis.socket_timeout_s
    )
    try:
        try:
            await client.ping()
        except REDIS_DOWN as exc:
            raise unavailable(exc) from exc
        yield Bus(client, _NoStore(), HashingEmbedder(config.embedder.dim), config)
    finally:
        await client.aclose()


def _with_hint(exc: Conflict, settings: Settings) -> Conflict:
    """The edge store's lock is how a second process learns the embedded directory is taken."""
    if settings.embedded and isinstance(exc, StoreLocked):
        return Conflict(_SHARED_HINT.format(path=settings.data_dir))
    return exc


@asynccontextmanager
async def _bus(state: State, *, needs_store: bool) -> AsyncIterator[Bus]:
    settings = state.settings
    async with AsyncExitStack() as stack:
        if settings.embedded or needs_store:
            try:
                bus = await stack.enter_async_context(
                    open_bus(settings.data_dir, settings.to_config())
                )
            except Conflict as exc:
                raise _with_hint(exc, settings) from None
        else:
            bus = await stack.enter_async_context(_redis_only(state))
        yield bus


async def _on_signals(
    stop: anyio.Event | None,
    scope: anyio.CancelScope,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """First SIGTERM/SIGINT sets ``stop`` (finish the batch in hand); the next one cancels."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for _ in signals:
            if stop is None or stop.is_set():
                scope.cancel()
                return
            stop.set()


# -- global options ---------------------------------------------------------------------------


@app.callback()
def _global(
    ctx: typer.Context,
    path: Annotated[
        Path | None, typer.Option("--path", help="Data directory [env MEMBUS_PATH; ./.membus].")
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option("--redis-url", help="Redis URL; unset: embedded redis-server.")
    ] = None,
    store_engine: Annotated[
        str | None, typer.Option("--store-engine", help="edge (in-process) or qdrant.")
    ] = None,
    store_url: Annotated[
        str | None, typer.Option("--store-url", help="Qdrant server URL (engine qdrant).")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    try:
        settings = Settings.load(
            path=path, redis_url=redis_url, store_engine=store_engine, store_url=store_url
        )
    except MembusError as exc:
        _fail(exc, json_output)
    _configure_logging(settings, json_output)
    ctx.obj = State(settings, json_output)


# -- writing ----------------------------------------------------------------------------------


@app.command()
def worker(
    ctx: typer.Context,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, max=64, help="Writer tasks.")
    ] = 1,
    json_flag: JsonFlag = False,
) -> None:
    """Run writers until SIGTERM/SIGINT; the batch in hand is finished before exiting."""
    state = _state(ctx, json_flag)
    settings = state.settings

    async def go() -> dict[str, int]:
        config = settings.to_config()
        async with AsyncExitStack() as stack:
            try:
                redis, store, embedder = await stack.enter_async_context(
                    connect(config, settings.data_dir)
                )
            except Conflict as exc:
                raise _with_hint(exc, settings) from None
            stop = anyio.Event()
            writers = [
                Writer(
                    redis,
                    store,
                    embedder,
                    config.worker,
                    consumer=consumer_name(n),
                    retention=config.retention if n == 0 else None,
                )
                for n in range(concurrency)
            ]
            async with anyio.create_task_group() as outer:
                await outer.start(_on_signals, stop, outer.cancel_scope)
                _say(state, f"membus worker: {concurrency} writer(s) running; SIGTERM/Ctrl-C stops")
                async with anyio.create_task_group() as tg:
                    for w in writers:
                        tg.start_soon(w.run, stop)
                    tg.start_soon(maintain_loop, store, writers, stop)
                outer.cancel_scope.cancel()
        return {
            "processed": sum(w.processed for w in writers),
            "parked": sum(w.parked for w in writers),
        }

    result = _run(state, go)
    if state.json:
        _emit_json(result)
    else:
        _say(state, f"membus worker: stopped ({result['processed']} written, "
             f"{result['parked']} parked)")  # fmt: skip


@app.command()
def publish(
    ctx: typer.Context,
    agent: AgentOpt,
    tenant: TenantOpt,
    content: Annotated[str | None, typer.Argument(help="What to remember.")] = None,
    scope: Annotated[str | None, typer.Option("--scope", "-s", help="e.g. team/support")] = None,
    kind: Annotated[str | None, typer.Option("--kind")] = None,
    subject: Annotated[str | None, typer.Option("--subject")] = None,
    key: Annotated[str | None, typer.Option("--key")] = None,
    meta: Annotated[list[str] | None, typer.Option("--meta", help="k=v, repeatable.")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="JSON lines of drafts ('-': stdin).")
    ] = None,
    json_flag: JsonFlag = False,
) -> None:
    """Publish one observation, or a file of them (one Draft JSON object per line)."""
    state = _state(ctx, json_flag)

    def drafts() -> list[tuple[int, Draft]]:
        if file is not None:
            if content is not None:
                raise InvalidInput("give CONTENT or --file, not both")
            return _read_drafts(sys.stdin.read() if str(file) == "-" else _read(file))
        if content is None or scope is None:
            raise InvalidInput("CONTENT and --scope are required (or --file)")
        fields = {"kind": kind, "subject": subject, "key": key}
        try:
            return [
                (
                    1,
                    Draft(
                        content=content,
                        scope=scope,
                        metadata=_parse_meta(meta or []),
                        **{k: v for k, v in fields.items() if v is not None},
                    ),
                )
            ]
        except ValidationError as exc:
            raise invalid_from(exc, "publish") from None

    async def go() -> list[Receipt]:
        who = _identity(agent, tenant)
        numbered = drafts()
        for line, d in numbered:  # all or nothing: no line goes out if one is bad
            try:
                Event.build(tenant=who.tenant, agent=who.agent, **d.model_dump(exclude_none=True))
            except InvalidInput as exc:
                where = f"line {line}: " if file is not None else ""
                raise InvalidInput(f"{where}{exc}", exc.problems) from None
        items = [d for _, d in numbered]
        receipts: list[Receipt] = []
        async with _bus(state, needs_store=False) as bus:
            with Progress(
                console=Console(stderr=True), disable=state.json or len(items) < _PUBLISH_CHUNK
            ) as progress:
                task = progress.add_task("publishing", total=len(items))
                for i in range(0, len(items), _PUBLISH_CHUNK):
                    chunk = items[i : i + _PUBLISH_CHUNK]
                    receipts += await bus.publish_many(who, chunk)
                    progress.advance(task, len(chunk))
        return receipts

    for r in _run(state, go):
        if state.json:
            _emit_json(r.model_dump(mode="json"))
        else:
            typer.echo(f"{r.event_id}  {r.position}  {r.tenant}/{r.scope}")


def _read(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read {file}: {exc.strerror}") from None


def _read_drafts(text: str) -> list[tuple[int, Draft]]:
    out: list[tuple[int, Draft]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((n, Draft.model_validate_json(line)))
            except ValidationError as exc:
                raise invalid_from(exc, f"line {n}") from None
    if not out:
        raise InvalidInput("the file holds no drafts")
    return out


def _parse_meta(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--meta {pair!r}: expected key=value")
        out[key] = value
    return out


_AGE = re.compile(r"(\d+)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _parse_when(value: str | None, field: str) -> datetime | None:
    """An ISO time (naive means UTC) or an age such as ``30m``, ``2h``, ``7d``."""
    if value is None:
        return None
    age = _AGE.fullmatch(value.strip())
    if age:
        return datetime.now(UTC) - timedelta(seconds=int(age[1]) * _UNIT_S[age[2]])
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"--{field}: expected an ISO time or an age like 30m, 2h, 7d; got {value!r}"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# -- reading ----------------------------------------------------------------------------------


@app.command()
def recall(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="What to look for, in words.")],
    agent: AgentOpt,
    tenant: TenantOpt,
    k: Annotated[int, typer.Option("-k", "--k", help="How many hits.")] = 5,
    scope: Annotated[list[str] | None, typer.Option("--scope", "-s", help="Repeatable.")] = None,
    kind: Annotated[list[str] | None, typer.Option("--kind", help="Repeatable.")] = None,
    subject: Annotated[list[str] | None, typer.Option("--subject", help="Repeatable.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO time or 30m/2h/7d.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO time or 30m/2h/7d.")] = None,
    wait: Annotated[
        bool | None,
        typer.Option("--wait/--no-wait", help="Drain pending events first [default: embedded]."),
    ] = None,
    json_flag: JsonFlag = False,
) -> None:
    """Top-k memories by meaning."""
    state = _state(ctx, json_flag)

    async def go() -> list[Hit]:
        who = _identity(agent, tenant)
        after, before = _parse_when(since, "since"), _parse_when(until, "until")
        async with _bus(state, needs_store=True) as bus:
            # in-process writers (embedded default): commit what earlier commands published
            if wait if wait is not None else bus.config.writers > 0:
                await bus.drain()
            return await bus.recall(
                who,
                query,
                k=k,
                scopes=scope,
                kinds=kind,
                subjects=subject,
                since=after,
                until=before,
            )

    hits = _run(state, go)
    if state.json:
        _emit_json([h.model_dump(mode="json") for h in hits])
        return
    table = Table("score", "scope", "kind", "agents", "content", "created")
    for h in hits:
        m = h.memory
        table.add_row(
            f"{h.score:.3f}",
            m.scope,
            m.kind,
            ",".join(m.agents),
            m.content if len(m.content) <= 80 else m.content[:79] + "…",
            m.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    Console().print(table)


@app.command()
def tail(
    ctx: typer.Context,
    agent: AgentOpt,
    tenant: TenantOpt,
    scope: Annotated[list[str] | None, typer.Option("--scope", "-s", help="Repeatable.")] = None,
    start: Annotated[
        str, typer.Option("--from", help="Position: '$' = new only, '0' = from the start.")
    ] = "$",
    group: Annotated[str | None, typer.Option("--group", help="Share the feed in a group.")] = None,
    count: Annotated[int | None, typer.Option("--count", min=1, help="Exit after N.")] = None,
    json_flag: JsonFlag = False,
) -> None:
    """Follow the change feed, one line per committed change. Ctrl-C exits."""
    state = _state(ctx, json_flag)

    def show(c: Change) -> None:
        if state.json:
            _emit_json(c.model_dump(mode="json"))
            return
        sys.stdout.write(
            f"{c.position} {c.op} {c.scope} [{c.kind}] {','.join(c.agents)}: {c.content or ''}\n"
        )
        sys.stdout.flush()

    async def go() -> None:
        who = _identity(agent, tenant)
        async with _bus(state, needs_store=False) as bus, anyio.create_task_group() as tg:
            await tg.start(_on_signals, None, tg.cancel_scope)
            seen = 0
            async for change in bus.subscribe(who, scope, start=start, group=group):
                show(change)
                seen += 1
                if count is not None and seen >= count:
                    break
            tg.cancel_scope.cancel()

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C before the receiver was in place
        _run(state, go)


# -- operations -------------------------------------------------------------------------------


@app.command()
def stats(ctx: typer.Context, json_flag: JsonFlag = False) -> None:
    """Stream lengths, pending, lag and dead letters per tenant and writer group."""
    state = _state(ctx, json_flag)

    async def go() -> dict[str, Any]:
        try:
            async with _bus(state, needs_store=True) as bus:
                return await bus.stats()
        except Conflict:
            if state.settings.embedded:
                raise
        # an edge store held by a running worker: report the streams without the memory count
        async with _bus(state, needs_store=False) as bus:
            return {**await bus.stats(), "memories": None}

    out = _run(state, go)
    if state.json:
        _emit_json(out)
        return
    memories = "unknown (store in use)" if out["memories"] is None else out["memories"]
    table = Table(
        "tenant", "events", "changes", "dlq", "group", "pending", "lag", "consumers",
        caption=f"memories: {memories}",
    )  # fmt: skip
    for tenant, t in out["tenants"].items():
        rows = t["groups"] or [{"group": "-", "pending": "", "lag": "", "consumers": ""}]
        for g in rows:
            table.add_row(
                tenant, str(t["events"]), str(t["changes"]), str(t["dlq"]),
                g["group"], str(g["pending"]), str(g["lag"]), str(g["consumers"]),
            )  # fmt: skip
    Console().print(table)


@app.command()
def optimize(ctx: typer.Context, json_flag: JsonFlag = False) -> None:
    """Build the Qdrant Edge HNSW index now (blocks this process while it runs)."""
    state = _state(ctx, json_flag)
    from membus.store_edge import EdgeStore

    async def go() -> dict[str, Any]:
        config = state.settings.to_config()
        if config.store.engine != "edge":
            raise InvalidInput(
                "optimize builds the Qdrant Edge index; a Qdrant server does its own"
            )
        embedder = make_embedder(config.embedder.name, config.embedder.dim)
        store = make_store(config, state.settings.data_dir)
        assert isinstance(store, EdgeStore)
        await store.open(StoreMeta(embedder=embedder.name, dim=embedder.dim))
        try:
            with Console(stderr=True).status("building the index…"):
                await store.optimize()
            return {"optimized": True, "memories": await store.count()}
        finally:
            await store.close()

    out = _run(state, go)
    if state.json:
        _emit_json(out)
    else:
        typer.echo(f"index built ({out['memories']} memories)")


@dlq_app.command("list")
def dlq_list(
    ctx: typer.Context,
    tenant: TenantOpt,
    count: Annotated[int, typer.Option("--count", "-n", min=1)] = 50,
    start: Annotated[str, typer.Option("--start", help="From this id ('(id': after it).")] = "-",
    json_flag: JsonFlag = False,
) -> None:
    """Show parked entries, oldest first."""
    state = _state(ctx, json_flag)

    async def go() -> list[Any]:
        async with _bus(state, needs_store=False) as bus:
            return await list_dead(bus.redis, tenant, count, start)

    letters = _run(state, go)
    if state.json:
        _emit_json([d.model_dump(mode="json") for d in letters])
        return
    table = Table("id", "reason", "tries", "parked", "error", "content")
    for d in letters:
        content = str((d.event or {}).get("content", d.fields.get("e", "")))
        table.add_row(
            d.id, d.reason, str(d.deliveries), d.parked_at.strftime("%Y-%m-%d %H:%M:%S"),
            d.error[:60], content[:40],
        )  # fmt: skip
    Console().print(table)


def _which(ids: Sequence[str] | None, everything: bool) -> list[str] | None:
    if bool(ids) == everything:
        raise InvalidInput("give --id (repeatable) or --all")
    return None if everything else list(ids or [])


IdsOpt = Annotated[list[str] | None, typer.Option("--id", help="Dead-letter id; repeatable.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every dead letter of the tenant.")]


@dlq_app.command("replay")
def dlq_replay(
    ctx: typer.Context,
    tenant: TenantOpt,
    ids: IdsOpt = None,
    everything: AllOpt = False,
    json_flag: JsonFlag = False,
) -> None:
    """Put dead letters back on the events stream (e.g. after fixing their cause)."""
    state = _state(ctx, json_flag)

    async def go() -> list[Any]:
        which = _which(ids, everything)
        async with _bus(state, needs_store=False) as bus:
            return await replay(bus.redis, tenant, which)

    done = _run(state, go)
    if state.json:
        _emit_json({"replayed": [r.model_dump(mode="json") for r in done]})
    else:
        for r in done:
            typer.echo(f"{r.id} -> events {r.position}")
        typer.echo(f"replayed {len(done)}")


@dlq_app.command("drop")
def dlq_drop(
    ctx: typer.Context,
    tenant: TenantOpt,
    ids: IdsOpt = None,
    everything: AllOpt = False,
    json_flag: JsonFlag = False,
) -> None:
    """Delete dead letters for good."""
    state = _state(ctx, json_flag)

    async def go() -> int:
        which = _which(ids, everything)
        async with _bus(state, needs_store=False) as bus:
            return await drop(bus.redis, tenant, which)

    n = _run(state, go)
    if state.json:
        _emit_json({"dropped": n})
    else:
        typer.echo(f"dropped {n}")


# -- showcases --------------------------------------------------------------------------------


def _load(module: str, name: str) -> Callable[..., Any]:
    # imported by name: optional pieces that pull in more than the core needs
    try:
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as exc:
        raise Unavailable(f"{module}.{name} is not available: {exc}") from None


def _finish(result: Any) -> None:
    """run_demo/run_bench print their own report (or one JSON object); only await if needed."""
    if inspect.isawaitable(result):
        anyio.run(lambda: result)


@app.command()
def demo(ctx: typer.Context, json_flag: JsonFlag = False) -> None:
    """A support team of agents sharing memory, end to end (in a temp dir unless --path)."""
    state = _state(ctx, json_flag)

    async def go(path: Path) -> Any:
        run_demo = _load("agents.demo", "run_demo")
        return await run_demo(path, json_output=state.json)

    if state.settings.path is not None:
        _run(state, lambda: go(state.settings.data_dir))
        return
    with tempfile.TemporaryDirectory(prefix="membus-demo-", ignore_cleanup_errors=True) as tmp:
        _run(state, lambda: go(Path(tmp)))


@app.command()
def bench(
    ctx: typer.Context,
    memories: Annotated[int, typer.Option("--memories", min=1)] = 100_000,
    embedder: Annotated[str, typer.Option("--embedder")] = "hashing",
    quick: Annotated[bool, typer.Option("--quick", help="A small, fast run.")] = False,
    json_flag: JsonFlag = False,
) -> None:
    """Measure publish-to-recall throughput and latency."""
    state = _state(ctx, json_flag)
    try:
        run_bench = _load("membus.bench", "run_bench")
        result = run_bench(memories, json_output=state.json, embedder=embedder, quick=quick)
        _finish(result)
    except MembusError as exc:
        _fail(exc, state.json)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
