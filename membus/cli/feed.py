"""The agent-facing commands: ``publish`` into the bus, ``recall`` by meaning, ``tail`` changes."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import anyio
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import Progress

from membus.cli.context import (
    AgentOpt,
    JsonFlag,
    TenantOpt,
    command_state,
    identity,
    run,
)
from membus.cli.output import emit_json, print_change, print_hits, warn
from membus.core.envelope import Event, invalid_from
from membus.errors import InvalidInput
from membus.stream.committed import DEFAULT_WAIT_S

if TYPE_CHECKING:
    from membus.bus.draft import Draft, Receipt

_PUBLISH_CHUNK = 500


def publish(
    ctx: typer.Context,
    agent: AgentOpt,
    tenant: TenantOpt,
    content: Annotated[str | None, typer.Argument(help="What to remember.")] = None,
    scope: Annotated[
        str | None,
        typer.Option("--scope", "-s", help="e.g. team/support (default: agent/<agent>, private)."),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind",
            help="observation (default), fact, preference, decision, incident, note, or any "
            "lowercase word (a-z, 0-9, _). retraction is reserved: it withdraws a memory.",
        ),
    ] = None,
    subject: Annotated[
        str | None, typer.Option("--subject", help="What or whom it is about, e.g. a customer.")
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key", help="With --subject: a fact; a new value of the key supersedes the old."
        ),
    ] = None,
    meta: Annotated[list[str] | None, typer.Option("--meta", help="k=v, repeatable.")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="JSON lines of drafts ('-': stdin).")
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="Return once writers committed it (searchable), or fail saying why "
            "(no writer running, or dead-lettered).",
        ),
    ] = True,
    wait_timeout: Annotated[
        float, typer.Option("--wait-timeout", min=0.0, help="Seconds --wait waits.")
    ] = DEFAULT_WAIT_S,
    json_flag: JsonFlag = False,
) -> None:
    """Publish one observation, or a file of them (one Draft JSON object per line)."""
    from membus.bus.draft import Draft
    from membus.cli.input import parse_meta, read_drafts
    from membus.cli.target import command_bus

    state = command_state(ctx, json_flag)

    def drafts() -> list[tuple[int, Draft]]:
        if file is not None:
            if content is not None:
                raise InvalidInput("give CONTENT or --file, not both")
            return read_drafts(file)
        if content is None:
            raise InvalidInput("CONTENT is required (or --file)")
        fields = {"kind": kind, "subject": subject, "key": key}
        try:
            return [
                (
                    1,
                    Draft(
                        content=content,
                        scope=scope,
                        metadata=parse_meta(meta or []),
                        **{k: v for k, v in fields.items() if v is not None},
                    ),
                )
            ]
        except ValidationError as exc:
            raise invalid_from(exc, "publish") from None

    async def go() -> list[Receipt]:
        who = identity(agent, tenant)
        numbered = drafts()
        for line, d in numbered:  # all or nothing: no line goes out if one is bad
            try:
                # a draft without a scope gets the agent's own, as the bus gives it
                fields = {"scope": f"agent/{who.agent}", **d.model_dump(exclude_none=True)}
                Event.build(tenant=who.tenant, agent=who.agent, **fields)
            except InvalidInput as exc:
                where = f"line {line}: " if file is not None else ""
                raise InvalidInput(f"{where}{exc}", exc.problems) from None
        items = [d for _, d in numbered]
        receipts: list[Receipt] = []
        async with command_bus(state, needs_store=False) as bus:
            with Progress(
                console=Console(stderr=True), disable=state.json or len(items) < _PUBLISH_CHUNK
            ) as progress:
                task = progress.add_task("publishing", total=len(items))
                for i in range(0, len(items), _PUBLISH_CHUNK):
                    chunk = items[i : i + _PUBLISH_CHUNK]
                    receipts += await bus.publish_many(who, chunk)
                    progress.advance(task, len(chunk))
            if wait:  # all published first: a slow writer does not hold back the rest
                await bus.committed(receipts, timeout_s=wait_timeout)
        return receipts

    for r in run(state, go):
        if state.json:
            emit_json(r.model_dump(mode="json"))
        else:
            typer.echo(f"{r.event_id}  {r.position}  {r.tenant}/{r.scope}")


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
    min_score: Annotated[
        float | None,
        typer.Option(
            "--min-score",
            min=0.0,
            max=1.0,
            help="Drop hits scoring less (0..1; default: the configured threshold, so no hit "
            "means nothing relevant is known; 0 keeps every hit).",
        ),
    ] = None,
    wait: Annotated[
        bool | None,
        typer.Option("--wait/--no-wait", help="Drain pending events first (default: embedded)."),
    ] = None,
    json_flag: JsonFlag = False,
) -> None:
    """Top-k memories by meaning."""
    from membus.cli import calls
    from membus.cli.input import parse_when

    state = command_state(ctx, json_flag)
    answer = run(
        state,
        lambda: calls.perform(
            state,
            calls.recall,
            agent=agent,
            tenant=tenant,
            query=query,
            k=k,
            scopes=scope,
            kinds=kind,
            subjects=subject,
            since=parse_when(since, "since"),
            until=parse_when(until, "until"),
            min_score=min_score,
            wait=wait,
        ),
    )
    if answer.unconsumed:
        warn(
            state.json,
            f"{answer.unconsumed} event(s) of tenant {tenant!r} are pending with no writer "
            "running: this recall does not see them (start `membus worker`)",
        )
    if state.json:
        emit_json([h.model_dump(mode="json") for h in answer.hits])
    else:
        print_hits(answer.hits)


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
    from membus.cli import calls
    from membus.runtime.signals import on_signals

    state = command_state(ctx, json_flag)

    async def go() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(on_signals, None, tg.cancel_scope)
            seen = 0
            feed = calls.perform_stream(
                state,
                calls.subscribe,
                agent=agent,
                tenant=tenant,
                scopes=scope,
                start=start,
                group=group,
            )
            async for change in feed:
                if state.json:
                    emit_json(change.model_dump(mode="json"))
                else:
                    print_change(change)
                seen += 1
                if count is not None and seen >= count:
                    break
            await feed.aclose()
            tg.cancel_scope.cancel()

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C before the receiver was in place
        run(state, go)
