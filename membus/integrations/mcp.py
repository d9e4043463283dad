"""membus as an MCP server (``membus mcp``): tools remember / recall / forget / list_scopes /
get_context, and the prompt ``context`` (the rendered context for a turn, as messages);
list_memories / get_memory / memory_history.

One server process serves ONE identity, fixed when it starts (an API key, or ``--agent/--tenant``
on an embedded bus) and held by the ``MemoryPort`` it wraps. Tool arguments never carry an agent
or tenant: arguments naming one are rejected, as is any argument a tool does not declare, so a
prompt-injected model cannot act as someone else.

Change notifications: the change feed this identity may read is the resource
``membus://changes`` (reading it returns the latest changes since the server started). The server
keeps no copy of them: only stream positions; a read fetches the changes again from the feed
through the identity's live grant, so an erased change or a revoked grant is never served. Each
committed change announces ``notifications/resources/updated`` for it: to ``subscriptions/listen``
streams on 2026-07-28 connections and to ``resources/subscribe`` subscribers on earlier ones.

The MCP SDK (``pip install 'membus[mcp]'``) is imported here only, so the default install does
not need it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

import anyio
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from membus.access.gate import Identity
from membus.bus.api import Bus
from membus.bus.draft import Draft
from membus.core.config import MembusConfig
from membus.core.envelope import Label, invalid_from
from membus.core.logs import get_logger
from membus.errors import InvalidInput, MembusError
from membus.integrations.port import AgentPort, ClientPort, MemoryPort
from membus.store.port import Hit, Memory
from membus.stream.feed import Change

if TYPE_CHECKING:
    import mcp_types as types
    from mcp.server import Server
    from mcp.server.context import ServerRequestContext
    from mcp.server.session import ServerSession
    from mcp.server.subscriptions import SubscriptionBus

CHANGES_URI: Final = "membus://changes"
RECENT_CHANGES: Final = 100
WAIT_S: Final = 10.0
# names a caller might use to pick an identity; refused with a message that says why
IDENTITY_ARGS: Final = frozenset(
    {"agent", "tenant", "agent_id", "tenant_id", "agent_name", "identity", "as_agent", "user_id"}
)


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # argument names that look like an identity but are filters of this tool (never who acts)
    filters: ClassVar[frozenset[str]] = frozenset()


class RememberArgs(_Args):
    """Publish one memory to a scope (a '/'-path such as team/support)."""

    content: str = Field(description="what to remember, in plain text")
    scope: str | None = Field(
        default=None,
        description="where: a '/'-separated lowercase path, e.g. team/support (default: this "
        "agent's private scope, agent/<name>)",
    )
    kind: str = Field(default="observation", description="e.g. observation, fact, preference")
    subject: str | None = Field(default=None, description="what or whom it is about")
    key: str | None = Field(default=None, description="a key within the subject")
    metadata: dict[str, Any] = Field(default_factory=dict)
    label: Label = Field(
        default="public",
        description="sensitivity: public, internal, confidential or restricted; only agents "
        "cleared for it recall it",
    )
    wait: bool = Field(
        default=True, description="return once it is searchable (false: as soon as published)"
    )


class RecallArgs(_Args):
    """Search memories by meaning within the scopes this agent may read."""

    query: str
    k: int = Field(default=5, ge=1, le=100, description="how many memories at most")
    scopes: list[str] | None = Field(default=None, description="subtrees to search (default: all)")
    kinds: list[str] | None = None
    subjects: list[str] | None = None
    agents: list[str] | None = Field(default=None, description="only what these agents said")
    since: datetime | None = Field(default=None, description="only memories created since")
    as_of: datetime | None = Field(default=None, description="what held at this past time")
    min_score: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="drop memories scoring less (scores are evidence in 0..1; default: the "
        "server's threshold, so no memory means nothing relevant is known)",
    )


class ForgetArgs(_Args):
    """Erase memories (and their source events) matching every criterion given."""

    filters: ClassVar[frozenset[str]] = frozenset({"agent"})
    memory_ids: list[str] | None = Field(default=None, description="these memories")
    subject: str | None = None
    agent: str | None = Field(
        default=None,
        description="only what this agent contributed (a filter: the server still acts as "
        "its own identity)",
    )
    scope: str | None = Field(default=None, description="that scope and everything below")

    @model_validator(mode="after")
    def _some(self) -> ForgetArgs:
        given = (self.memory_ids, self.subject, self.agent, self.scope)
        if all(v is None for v in given):
            raise ValueError("give at least one of memory_ids, subject, agent, scope")
        return self


class ListMemoriesArgs(_Args):
    """List memories this agent may read, newest first, a page at a time (no query needed)."""

    scopes: list[str] | None = Field(default=None, description="subtrees (default: all)")
    kinds: list[str] | None = None
    subjects: list[str] | None = None
    agents: list[str] | None = Field(default=None, description="only what these agents said")
    since: datetime | None = None
    until: datetime | None = None
    as_of: datetime | None = Field(default=None, description="what held at this past time")
    limit: int = Field(default=20, ge=1, le=100, description="memories per page")
    cursor: str | None = Field(default=None, description="the cursor of the previous page")


class GetMemoryArgs(_Args):
    """One memory by id, with its provenance."""

    memory_id: str


class MemoryHistoryArgs(_Args):
    """Every version of a fact, newest first: by a memory's id, or by subject and key."""

    memory_id: str | None = None
    subject: str | None = None
    key: str | None = None
    scope: str | None = Field(default=None, description="with subject and key: only this scope")
    limit: int = Field(default=20, ge=1, le=100)


class ListScopesArgs(_Args):
    """The scopes holding memories this agent may read."""


class GetContextArgs(_Args):
    """The memories to keep in mind for this turn, packed into a token budget: pinned ones,
    what is known about each subject, recent ones, and those relevant to the query; each line
    says where it came from. Returns the rendered text and every item with why it was chosen."""

    query: str | None = Field(default=None, description="what this turn is about")
    budget_tokens: int = Field(default=1000, ge=1, le=100_000, description="tokens to fill")
    subjects: list[str] | None = Field(default=None, description="e.g. customer:42")
    scopes: list[str] | None = Field(default=None, description="subtrees to draw on (default: all)")


CONTEXT_PROMPT: Final = "context"


def memory_json(hit: Hit) -> dict[str, Any]:
    """A hit as the structured content a tool returns: the memory with its provenance."""
    return {**stored_json(hit.memory), "score": hit.score}


def stored_json(m: Memory) -> dict[str, Any]:
    """A memory as a tool returns it: its fields, when it held, and its provenance."""
    shown = ("id", "content", "scope", "kind", "subject", "key", "metadata")
    return {
        **{name: getattr(m, name) for name in shown},
        "valid_from": m.valid_from.isoformat() if m.valid_from else None,
        "valid_to": m.valid_to.isoformat() if m.valid_to else None,
        "provenance": {
            "agents": m.agents,
            "source_events": m.source_events,
            "created_at": m.created_at.isoformat(),
            "updated_at": m.updated_at.isoformat(),
        },
    }


@dataclass
class Feed:
    """Per connection lifetime: where the latest changes sit in the feed (positions only, never
    content: erasure and revocation must reach what a read returns), and who wants to hear."""

    floor: str = "0"  # the window of latest changes starts after this position
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_CHANGES))
    legacy: set[ServerSession] = field(default_factory=set)  # resources/subscribe callers
    error: str | None = None  # why there is no feed (e.g. no subscribe permission anywhere)


Handler = Callable[[Any], Awaitable[dict[str, Any]]]
# run beside an embedded bus while it is open (the CLI's node endpoint)
Beside = Callable[[Bus], AbstractAsyncContextManager[object]]


class MembusMCP:
    """The handlers behind ``build_server``; one instance per server (and so per identity)."""

    def __init__(self, port: MemoryPort, bus: SubscriptionBus) -> None:
        self.port, self.bus = port, bus
        self.log = get_logger("membus.mcp")
        self.tools: dict[str, tuple[type[_Args], Handler]] = {
            "remember": (RememberArgs, self.remember),
            "recall": (RecallArgs, self.recall),
            "forget": (ForgetArgs, self.forget),
            "list_scopes": (ListScopesArgs, self.list_scopes),
            "list_memories": (ListMemoriesArgs, self.list_memories),
            "get_memory": (GetMemoryArgs, self.get_memory),
            "memory_history": (MemoryHistoryArgs, self.memory_history),
        }
        self.tools["get_context"] = (GetContextArgs, self.get_context)

    # -- tools --------------------------------------------------------------------------------

    async def remember(self, a: RememberArgs) -> dict[str, Any]:
        try:
            draft = Draft(**a.model_dump(exclude={"wait"}))
        except ValidationError as exc:
            raise invalid_from(exc, "remember arguments") from None
        [r] = await self.port.remember([draft], wait_s=WAIT_S if a.wait else None)
        return {**r.model_dump(mode="json"), "searchable": a.wait}

    async def recall(self, a: RecallArgs) -> dict[str, Any]:
        hits = await self.port.recall(
            a.query,
            k=a.k,
            scopes=a.scopes,
            kinds=a.kinds,
            subjects=a.subjects,
            agents=a.agents,
            since=a.since,
            as_of=a.as_of,
            min_score=a.min_score,
        )
        return {"memories": [memory_json(h) for h in hits]}

    async def forget(self, a: ForgetArgs) -> dict[str, Any]:
        report = await self.port.forget(
            memory_ids=a.memory_ids, subject=a.subject, agent=a.agent, scope=a.scope
        )
        return {"forgotten": report.memories, "memory_ids": report.memory_ids}

    async def list_memories(self, a: ListMemoriesArgs) -> dict[str, Any]:
        page = await self.port.list_memories(**a.model_dump())
        return {"memories": [stored_json(m) for m in page.memories], "cursor": page.cursor}

    async def get_memory(self, a: GetMemoryArgs) -> dict[str, Any]:
        return stored_json(await self.port.get_memory(a.memory_id))

    async def memory_history(self, a: MemoryHistoryArgs) -> dict[str, Any]:
        versions = await self.port.memory_history(
            a.memory_id, scope=a.scope, subject=a.subject, key=a.key, limit=a.limit
        )
        return {"versions": [stored_json(m) for m in versions]}

    async def list_scopes(self, a: ListScopesArgs) -> dict[str, Any]:
        return {"scopes": await self.port.list_scopes()}

    async def get_context(self, a: GetContextArgs) -> dict[str, Any]:
        got = await self.port.context(
            a.query, budget_tokens=a.budget_tokens, subjects=a.subjects, scopes=a.scopes
        )
        return {**got.model_dump(mode="json"), "rendered": got.render()}

    async def call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Validate (identity-naming and undeclared arguments refused) and run one tool."""
        if name not in self.tools:
            raise InvalidInput(f"unknown tool {name!r}; tools: {', '.join(self.tools)}")
        model, handler = self.tools[name]
        forged = sorted((IDENTITY_ARGS - model.filters) & arguments.keys())
        if forged:
            who = await self.port.whoami()
            raise InvalidInput(
                f"argument(s) {', '.join(forged)} refused: this server acts only as "
                f"{who.agent}@{who.tenant}, bound when it started; tools take no identity"
            )
        try:
            args = model.model_validate(arguments)
        except ValidationError as exc:
            raise invalid_from(exc, f"{name} arguments") from None
        return await handler(args)

    # -- MCP handlers -------------------------------------------------------------------------

    async def on_list_tools(
        self, ctx: ServerRequestContext[Feed], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        import mcp_types as types

        return types.ListToolsResult(
            tools=[
                types.Tool(
                    name=name,
                    description=(model.__doc__ or name).strip(),
                    input_schema=model.model_json_schema(),
                )
                for name, (model, _) in self.tools.items()
            ]
        )

    async def on_call_tool(
        self, ctx: ServerRequestContext[Feed], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        import mcp_types as types

        try:
            out = await self.call(params.name, dict(params.arguments or {}))
        except MembusError as exc:
            # a tool error the model can read and act on, not a protocol failure
            body = {"error": type(exc).__name__, "message": str(exc)}
            self.log.info("mcp.tool_error", tool=params.name, error=body["error"])
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=f"{body['error']}: {exc}")],
                structured_content=body,
                is_error=True,
            )
        text = orjson.dumps(out).decode()
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text)], structured_content=out
        )

    async def on_list_prompts(
        self, ctx: ServerRequestContext[Feed], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        import mcp_types as types

        args = [
            types.PromptArgument(name="query", description="what this turn is about"),
            types.PromptArgument(name="budget_tokens", description="tokens to fill (1000)"),
            types.PromptArgument(name="subjects", description="comma-separated, e.g. customer:42"),
            types.PromptArgument(name="scopes", description="comma-separated subtrees"),
        ]
        prompt = types.Prompt(
            name=CONTEXT_PROMPT,
            description="Shared memory for this turn, as a message to put before the model's.",
            arguments=args,
        )
        return types.ListPromptsResult(prompts=[prompt])

    async def on_get_prompt(
        self, ctx: ServerRequestContext[Feed], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        """The rendered context as prompt messages (arguments are strings in MCP prompts)."""
        import mcp_types as types

        if params.name != CONTEXT_PROMPT:
            raise InvalidInput(f"unknown prompt {params.name!r}; prompts: {CONTEXT_PROMPT}")
        raw = dict(params.arguments or {})
        split = {
            k: [p.strip() for p in raw[k].split(",") if p.strip()]
            for k in ("subjects", "scopes")
            if raw.get(k)
        }
        arguments: dict[str, Any] = {**raw, **split}
        if "budget_tokens" in raw:
            try:
                arguments["budget_tokens"] = int(raw["budget_tokens"])
            except ValueError:
                raise InvalidInput("budget_tokens must be an integer") from None
        out = await self.call("get_context", arguments)
        text = out["rendered"] or "(no shared memory to show)"
        # the user role: MCP prompt messages have no system role; a client places it
        return types.GetPromptResult(
            description=f"{len(out['items'])} memories, {out['tokens_used']} tokens",
            messages=[
                types.PromptMessage(role="user", content=types.TextContent(type="text", text=text))
            ],
        )

    async def on_list_resources(
        self, ctx: ServerRequestContext[Feed], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        import mcp_types as types

        return types.ListResourcesResult(
            resources=[
                types.Resource(
                    name="changes",
                    uri=CHANGES_URI,
                    mime_type="application/json",
                    description="Latest committed memory changes this agent may read "
                    "(subscribe to be told of new ones)",
                )
            ]
        )

    async def on_read_resource(
        self, ctx: ServerRequestContext[Feed], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        import mcp_types as types
        from mcp.shared.exceptions import MCPError

        if str(params.uri) != CHANGES_URI:
            raise MCPError(types.INVALID_PARAMS, f"unknown resource {params.uri}")
        feed = ctx.lifespan_context
        changes, error = await self.latest(feed)
        body = {
            "changes": [c.model_dump(mode="json") for c in changes],
            "error": error or feed.error,
        }
        return types.ReadResourceResult(
            contents=[
                types.TextResourceContents(
                    uri=CHANGES_URI, mime_type="application/json", text=orjson.dumps(body).decode()
                )
            ]
        )

    async def on_subscribe(
        self, ctx: ServerRequestContext[Feed], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        import mcp_types as types

        if str(params.uri) == CHANGES_URI:
            ctx.lifespan_context.legacy.add(ctx.session)
        return types.EmptyResult()

    async def on_unsubscribe(
        self, ctx: ServerRequestContext[Feed], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        import mcp_types as types

        ctx.lifespan_context.legacy.discard(ctx.session)
        return types.EmptyResult()

    # -- the change feed ----------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, _server: Server[Feed]) -> AsyncIterator[Feed]:
        feed = Feed()
        # a wall-clock stream position, not "$": "$" resolves only when the follower first
        # reads, and a change committed before then would be missed by a fast client
        start = f"{int(time.time() * 1000)}-0"
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._follow, feed, start)
            try:
                yield feed
            finally:
                tg.cancel_scope.cancel()

    async def latest(self, feed: Feed) -> tuple[list[Change], str | None]:
        """The latest changes, read again now through the live grant (what was erased or is no
        longer readable is not there), and why there are none when the read was refused."""
        if not feed.recent:
            return [], None
        try:
            got = [c async for c in self.port.subscribe(None, start=feed.floor, until_now=True)]
        except MembusError as exc:
            return [], f"{type(exc).__name__}: {exc}"
        return got[-RECENT_CHANGES:], None

    async def _follow(self, feed: Feed, start: str) -> None:
        from mcp.shared.subscriptions import ResourceUpdated

        feed.floor = start
        try:
            async for change in self.port.subscribe(None, start=start):
                if len(feed.recent) == feed.recent.maxlen:
                    feed.floor = feed.recent[0]  # the oldest leaves the window
                feed.recent.append(change.position or feed.floor)
                await self.bus.publish(ResourceUpdated(uri=CHANGES_URI))
                for session in list(feed.legacy):
                    try:
                        await session.send_resource_updated(CHANGES_URI)
                    except Exception:  # a closed session: stop telling it
                        feed.legacy.discard(session)
        except MembusError as exc:
            feed.error = f"{type(exc).__name__}: {exc}"
            self.log.warning("mcp.feed_unavailable", error=feed.error)


def membus_version() -> str:
    """The installed membus's version (what MCP clients see in ``serverInfo``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("membus")
    except PackageNotFoundError:  # a source tree run without installing it
        return "0+unknown"


def build_server(port: MemoryPort, *, name: str = "membus") -> Server[Feed]:
    """An MCP server over ``port``: its tools act as the port's identity, and only as it."""
    from mcp.server import Server
    from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler

    bus = InMemorySubscriptionBus()
    h = MembusMCP(port, bus)
    return Server(
        name,
        version=membus_version(),
        instructions="Shared memory for a team of agents. remember publishes to a scope; "
        "recall searches by meaning within what you may read; list_memories, get_memory and "
        "memory_history browse it; forget erases. Your identity is fixed by this connection.",
        lifespan=h.lifespan,
        on_list_tools=h.on_list_tools,
        on_call_tool=h.on_call_tool,
        on_list_resources=h.on_list_resources,
        on_list_prompts=h.on_list_prompts,
        on_get_prompt=h.on_get_prompt,
        on_read_resource=h.on_read_resource,
        on_subscribe_resource=h.on_subscribe,
        on_unsubscribe_resource=h.on_unsubscribe,
        on_subscriptions_listen=ListenHandler(bus),
    )


@asynccontextmanager
async def open_port(
    config: MembusConfig,
    who: Identity | str,
    *,
    path: str | Path,
    url: str | None = None,
    api_keys_file: Path | None = None,
    beside: Beside | None = None,
) -> AsyncIterator[MemoryPort]:
    """The port ``membus mcp`` serves: over a service (``url`` + API key), else an embedded
    bus as ``who`` (an identity, or the one an API key maps to in ``api_keys_file``);
    ``beside`` is entered with that bus while it is open (``membus mcp`` runs its node endpoint
    for the CLI there)."""
    from membus.runtime.host import open as open_bus
    from membus.service.auth import ApiKeys
    from membus.service.client import Client

    async with AsyncExitStack() as stack:
        if isinstance(who, str) and url is not None:
            client = await stack.enter_async_context(Client(url, who))
            port: MemoryPort = ClientPort(client)
            await port.whoami()  # a bad key fails here, at start, not on the first tool call
        else:
            if isinstance(who, str):
                if api_keys_file is None:
                    raise InvalidInput(
                        "an API key needs a service URL or the service's API keys file"
                    )
                who = ApiKeys.from_file(api_keys_file).authenticate(who).identity
            bus = await stack.enter_async_context(open_bus(path, config))
            if beside is not None:
                await stack.enter_async_context(beside(bus))
            port = AgentPort(bus.agent(who.agent, who.tenant))
        yield port


async def serve_stdio(port: MemoryPort) -> None:
    from mcp.server.stdio import stdio_server

    server = build_server(port)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def main(
    config: MembusConfig,
    who: Identity | str,
    *,
    path: str | Path = ".membus",
    url: str | None = None,
    api_keys_file: Path | None = None,
    beside: Beside | None = None,
) -> None:
    """Serve MCP over stdio until the client closes it. stdout is the protocol: membus logs
    never go there (they go through stdlib logging, to stderr unless configured otherwise)."""

    async def run() -> None:
        async with open_port(
            config, who, path=path, url=url, api_keys_file=api_keys_file, beside=beside
        ) as p:
            await serve_stdio(p)

    anyio.run(run)
