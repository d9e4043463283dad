"""``membus memories …``: see and manage memories as an agent, behind the same gate as recall.

``list``, ``get`` and ``history`` read; ``update`` and ``delete`` write through the event log;
``export`` writes JSON lines (one memory with its provenance per line) and ``import`` reads them
back, idempotently. Each acts as ``--agent`` in ``--tenant``, exactly as that agent's calls would.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO

import typer
from rich.console import Console
from rich.table import Table

from membus.cli.context import AgentOpt, JsonFlag, TenantOpt, command_state, run
from membus.cli.output import emit_json, say
from membus.core.envelope import Label
from membus.errors import InvalidInput

if TYPE_CHECKING:
    from membus.bus.memories import ImportReport
    from membus.store.port import Memory

ScopesOpt = Annotated[
    list[str] | None, typer.Option("--scope", "-s", help="That scope or below; repeatable.")
]
AsOfOpt = Annotated[
    str | None,
    typer.Option("--as-of", help="What held at this time (ISO time or an age: 30m/2h/7d)."),
]
WaitOpt = Annotated[
    bool | None,
    typer.Option(
        "--wait/--no-wait",
        help="Let in-process writers commit pending events first (default: embedded).",
    ),
]
MemoryId = Annotated[str, typer.Argument(help="The memory's id (from list, recall or tail).")]


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_memories(memories: list[Memory]) -> None:
    table = Table("id", "scope", "kind", "subject/key", "content", "from", "to")
    for m in memories:
        began = m.valid_from or m.created_at
        table.add_row(
            m.id,
            m.scope,
            m.kind,
            "/".join(p for p in (m.subject, m.key) if p) or "-",
            _short(m.content),
            began.strftime("%Y-%m-%d %H:%M"),
            m.valid_to.strftime("%Y-%m-%d %H:%M") if m.valid_to else "",
        )
    Console().print(table)


def list_(
    ctx: typer.Context,
    agent: AgentOpt,
    tenant: TenantOpt,
    scope: ScopesOpt = None,
    kind: Annotated[list[str] | None, typer.Option("--kind", help="Repeatable.")] = None,
    subject: Annotated[list[str] | None, typer.Option("--subject", help="Repeatable.")] = None,
    by_agent: Annotated[
        list[str] | None,
        typer.Option("--by-agent", help="Memories this agent contributed; repeatable."),
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO time or 30m/2h/7d.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO time or 30m/2h/7d.")] = None,
    as_of: AsOfOpt = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=1000, help="Memories per page.")
    ] = 50,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="The next page: the cursor a list printed.")
    ] = None,
    wait: WaitOpt = None,
    json_flag: JsonFlag = False,
) -> None:
    """Memories --agent may read, newest first, one page at a time (--cursor for the next)."""
    from membus.cli import calls
    from membus.cli.input import parse_when

    state = command_state(ctx, json_flag)
    page = run(
        state,
        lambda: calls.perform(
            state,
            calls.memories_list,
            agent=agent,
            tenant=tenant,
            scopes=scope,
            kinds=kind,
            subjects=subject,
            agents=by_agent,
            since=parse_when(since, "since"),
            until=parse_when(until, "until"),
            as_of=parse_when(as_of, "as-of"),
            limit=limit,
            cursor=cursor,
            wait=wait,
        ),
    )
    if state.json:
        emit_json(page.model_dump(mode="json"))
        return
    _print_memories(page.memories)
    if page.cursor is not None:
        say(False, f"more: --cursor {page.cursor}")


def get(
    ctx: typer.Context,
    memory_id: MemoryId,
    agent: AgentOpt,
    tenant: TenantOpt,
    wait: WaitOpt = None,
    json_flag: JsonFlag = False,
) -> None:
    """One memory with its provenance (not found: absent, or not readable by --agent)."""
    from membus.cli import calls

    state = command_state(ctx, json_flag)
    m = run(
        state,
        lambda: calls.perform(
            state, calls.memories_get, agent=agent, tenant=tenant, memory_id=memory_id, wait=wait
        ),
    )
    if state.json:
        emit_json(m.model_dump(mode="json"))
        return
    fields = m.model_dump(mode="json")
    for name in ("id", "scope", "kind", "subject", "key", "content", "metadata", "agents"):
        typer.echo(f"{name}: {fields[name]}")
    typer.echo(f"source_events: {', '.join(m.source_events)}")
    typer.echo(f"created: {fields['created_at']}  updated: {fields['updated_at']}")
    typer.echo(f"valid: {fields['valid_from'] or '-'} .. {fields['valid_to'] or 'now'}")


def history(
    ctx: typer.Context,
    agent: AgentOpt,
    tenant: TenantOpt,
    memory_id: Annotated[
        str | None, typer.Argument(help="A memory's id (or give --subject and --key).")
    ] = None,
    subject: Annotated[str | None, typer.Option("--subject", help="The fact's subject.")] = None,
    key: Annotated[str | None, typer.Option("--key", help="The fact's key.")] = None,
    scope: Annotated[
        str | None, typer.Option("--scope", "-s", help="With --subject/--key: only this scope.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=1000, help="Versions at most.")
    ] = 100,
    wait: WaitOpt = None,
    json_flag: JsonFlag = False,
) -> None:
    """Every version of a fact, newest first, with when each held and who said it."""
    from membus.cli import calls

    state = command_state(ctx, json_flag)
    versions = run(
        state,
        lambda: calls.perform(
            state,
            calls.memories_history,
            agent=agent,
            tenant=tenant,
            memory_id=memory_id,
            scope=scope,
            subject=subject,
            key=key,
            limit=limit,
            wait=wait,
        ),
    )
    if state.json:
        emit_json([m.model_dump(mode="json") for m in versions])
    else:
        _print_memories(versions)


def update(
    ctx: typer.Context,
    memory_id: MemoryId,
    content: Annotated[str, typer.Argument(help="The new text.")],
    agent: AgentOpt,
    tenant: TenantOpt,
    meta: Annotated[
        list[str] | None,
        typer.Option("--meta", help="k=v, repeatable; replaces the metadata (default: kept)."),
    ] = None,
    label: Annotated[
        Label | None,
        typer.Option("--label", help="public|internal|confidential|restricted (default: kept)."),
    ] = None,
    json_flag: JsonFlag = False,
) -> None:
    """Publish a new version of a memory (through the event log; the old one is history)."""
    from membus.cli import calls
    from membus.cli.input import parse_meta

    state = command_state(ctx, json_flag)
    r = run(
        state,
        lambda: calls.perform(
            state,
            calls.memories_update,
            agent=agent,
            tenant=tenant,
            memory_id=memory_id,
            content=content,
            metadata=parse_meta(meta) if meta else None,
            label=label,
        ),
    )
    if state.json:
        emit_json(r.model_dump(mode="json"))
    else:
        typer.echo(f"{r.event_id}  {r.position}  {r.tenant}/{r.scope}")


def delete(
    ctx: typer.Context,
    memory_id: MemoryId,
    agent: AgentOpt,
    tenant: TenantOpt,
    json_flag: JsonFlag = False,
) -> None:
    """Forget one memory by id, with its events (as `forget --memory-id`)."""
    from membus.cli import calls

    state = command_state(ctx, json_flag)
    report = run(
        state,
        lambda: calls.perform(
            state, calls.memories_delete, agent=agent, tenant=tenant, memory_id=memory_id
        ),
    )
    if state.json:
        emit_json(report.model_dump(mode="json"))
    else:
        typer.echo(f"forgot {report.memories} memories, {report.events} events")


def export(
    ctx: typer.Context,
    agent: AgentOpt,
    tenant: TenantOpt,
    scope: ScopesOpt = None,
    as_of: AsOfOpt = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write here instead of stdout (created 0600)."),
    ] = None,
    wait: WaitOpt = None,
) -> None:
    """Write JSON lines of every memory --agent may read, with provenance.

    Every version (current, superseded, expired), or what held --as-of; `memories import`
    reads the file back."""
    from membus.bus.memories import to_jsonl
    from membus.cli import calls
    from membus.cli.input import parse_when

    state = command_state(ctx)

    async def go() -> int:
        after = parse_when(as_of, "as-of")
        sink: BinaryIO = _open_output(output) if output is not None else sys.stdout.buffer
        n = 0
        try:
            async for m in calls.perform_stream(
                state,
                calls.memories_export,
                agent=agent,
                tenant=tenant,
                scopes=scope,
                as_of=after,
                wait=wait,
            ):
                sink.write(to_jsonl(m))
                n += 1
            sink.flush()
        finally:
            if output is not None:
                sink.close()
        return n

    n = run(state, go)
    say(state.json, f"exported {n} memories" + (f" to {output}" if output else ""))


def _open_output(path: Path) -> BinaryIO:
    try:
        # owner-only: an export is every memory the agent may read, in clear
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise InvalidInput(f"cannot write {path}: {exc.strerror}") from None
    return os.fdopen(fd, "wb")


def import_(
    ctx: typer.Context,
    agent: AgentOpt,
    tenant: TenantOpt,
    file: Annotated[
        Path, typer.Argument(help="JSON lines from `memories export` ('-': stdin).")
    ] = Path("-"),
    json_flag: JsonFlag = False,
) -> None:
    """Publish exported memories again, as --agent's events dated as they were.

    Importing the same file twice changes nothing, and nothing erased here since the export
    comes back."""
    from membus.bus.memories import parse_jsonl
    from membus.cli import calls

    state = command_state(ctx, json_flag)

    async def go() -> ImportReport:
        if str(file) == "-":
            lines = sys.stdin.buffer.read().splitlines()
        else:
            try:
                lines = file.read_bytes().splitlines()
            except OSError as exc:
                raise InvalidInput(f"cannot read {file}: {exc.strerror}") from None
        records = parse_jsonl(lines)
        return await calls.perform(
            state, calls.memories_import, agent=agent, tenant=tenant, records=records
        )

    report = run(state, go)
    if state.json:
        emit_json(report.model_dump(mode="json"))
    else:
        typer.echo(
            f"imported {report.published}, skipped {report.skipped} already here, "
            f"{report.erased} erased since the export"
        )
