"""Administering a bus: read the ``audit`` trail, ``forget`` memories, reload and check ``policy``.

``forget`` and ``policy check`` act as a named agent through the configured gate, exactly as that
agent's own calls would; ``audit`` and ``policy reload`` are operator commands (whoever can reach
Redis may run them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from membus.cli.context import AgentOpt, JsonFlag, TenantOpt, command_state, identity, run
from membus.cli.output import emit_json, exit_code
from membus.core.envelope import validate_scope
from membus.core.ids import encode_id
from membus.errors import InvalidInput, PermissionDenied

if TYPE_CHECKING:
    from membus.access.audit import AuditRecord
    from membus.access.gate import Action, Decision
    from membus.access.policy import CasbinGate
    from membus.bus.erasure import ErasureReport

ActionOpt = Annotated[
    Literal["publish", "recall", "subscribe", "forget", "erase", "admin"] | None,
    typer.Option("--action", help="publish|recall|subscribe|forget|erase|admin."),
]
ScopeOpt = Annotated[str | None, typer.Option("--scope", "-s", help="That scope or below.")]

# -- audit ----------------------------------------------------------------------------------------


def audit(
    ctx: typer.Context,
    tenant: TenantOpt,
    agent: Annotated[str | None, typer.Option("--agent", "-a", help="Acting agent.")] = None,
    scope: ScopeOpt = None,
    action: ActionOpt = None,
    decision: Annotated[
        Literal["allow", "deny"] | None, typer.Option("--decision", help="allow|deny.")
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO time or 30m/2h/7d.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO time or 30m/2h/7d.")] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=100_000, help="Records at most.")
    ] = 100,
    json_flag: JsonFlag = False,
) -> None:
    """Who did what where, allowed or denied, newest first (ids only, never content)."""
    from membus.cli import calls
    from membus.cli.input import parse_when

    state = command_state(ctx, json_flag)

    async def go() -> list[AuditRecord]:
        # raw ids: the operation encodes them (membus.core.ids), here or at a running node
        encode_id(tenant, "tenant")  # refused here already when it cannot be an id
        if agent is not None:
            encode_id(agent, "agent")
        if scope is not None:
            validate_scope(scope)
        return await calls.perform(
            state,
            calls.audit,
            tenant=tenant,
            agent=agent,
            scope=scope,
            action=action,
            decision=decision,
            since=parse_when(since, "since"),
            until=parse_when(until, "until"),
            limit=limit,
        )

    records = run(state, go)
    if state.json:
        emit_json([r.model_dump(mode="json", exclude_none=True) for r in records])
    else:
        _print_audit(records)


def _print_audit(records: list[AuditRecord]) -> None:
    table = Table()
    for name in ("at", "agent", "action", "scope", "decision"):
        table.add_column(name, no_wrap=name != "scope")  # the rule column takes the squeeze
    table.add_column("rule")
    table.add_column("n", justify="right")
    for r in records:
        scope = ",".join(r.scopes) if r.scope == "*" and r.scopes else r.scope
        table.add_row(
            r.at.strftime("%Y-%m-%d %H:%M:%S"),
            r.agent,
            r.action,
            scope,
            r.decision if r.decision == "allow" else "[red]deny[/red]",
            r.rule or "-",
            "" if r.result_count is None else str(r.result_count),
        )
    Console().print(table)


# -- forget ---------------------------------------------------------------------------------------


def forget(
    ctx: typer.Context,
    agent: AgentOpt,
    tenant: TenantOpt,
    memory_ids: Annotated[
        list[str] | None, typer.Option("--memory-id", help="Memory id; repeatable.")
    ] = None,
    subject: Annotated[str | None, typer.Option("--subject", help="Memories about it.")] = None,
    by_agent: Annotated[
        str | None, typer.Option("--by-agent", help="Memories this agent contributed.")
    ] = None,
    scope: ScopeOpt = None,
    json_flag: JsonFlag = False,
) -> None:
    """Erase memories matching every criterion given, with their events, as --agent may."""
    from membus.cli import calls

    state = command_state(ctx, json_flag)

    async def go() -> ErasureReport:
        identity(agent, tenant)
        if not memory_ids and subject is None and by_agent is None and scope is None:
            raise InvalidInput("give at least one of --memory-id, --subject, --by-agent, --scope")
        return await calls.perform(
            state,
            calls.forget,
            agent=agent,
            tenant=tenant,
            memory_ids=memory_ids or None,
            subject=subject,
            by_agent=by_agent,
            scope=scope,
        )

    report = run(state, go)
    if state.json:
        emit_json(report.model_dump(mode="json"))
        return
    counts = ("memories", "events", "pending", "dlq", "changes", "errors", "tombstones")
    typer.echo("forgot " + ", ".join(f"{getattr(report, c)} {c}" for c in counts))
    for memory_id in report.memory_ids:
        typer.echo(f"  {memory_id}")


# -- policy ---------------------------------------------------------------------------------------


def policy_reload(ctx: typer.Context, json_flag: JsonFlag = False) -> None:
    """Re-read the policy from its source, check it, and tell every process to follow it."""
    from membus.access.policy import CasbinGate
    from membus.access.watch import policy_lines
    from membus.cli.target import command_bus

    state = command_state(ctx, json_flag)

    async def go() -> dict[str, Any]:
        async with command_bus(state, needs_store=False) as bus:
            gate = bus.gate
            if not isinstance(gate, CasbinGate):
                raise InvalidInput(
                    "no policy configured: pass --policy FILE or set MEMBUS_POLICY_FILE / "
                    "MEMBUS_POLICY_SHARED"
                )
            await gate.reload()  # a policy that does not parse stops here, announced to no one
            revision = await gate.source.revision()
            if gate.watcher is not None:
                await gate.watcher.announce(revision)
            lines = policy_lines(await gate.source.load())
            return {
                "source": _describe(gate),
                "revision": revision,
                "lines": len(lines),
                "announced": gate.watcher is not None,
            }

    out = run(state, go)
    if state.json:
        emit_json(out)
    else:
        typer.echo(
            f"policy reloaded from {out['source']}: {out['lines']} lines, "
            f"revision {out['revision']}, announced"
        )


def _describe(gate: CasbinGate) -> str:
    from membus.access.watch import FileSource, RedisSource

    if isinstance(gate.source, FileSource):
        return str(gate.source.path)
    if isinstance(gate.source, RedisSource):
        return f"redis {gate.source.lines_key}"
    return type(gate.source).__name__


def policy_check(
    ctx: typer.Context,
    agent: AgentOpt,
    tenant: TenantOpt,
    action: Annotated[
        Literal["publish", "recall", "subscribe", "forget", "erase", "admin"],
        typer.Option("--action", help="publish|recall|subscribe|forget|erase|admin."),
    ],
    scope: Annotated[str, typer.Option("--scope", "-s", help="The scope acted on.")],
    json_flag: JsonFlag = False,
) -> None:
    """Would --agent be allowed --action on --scope? Prints the decision and the deciding rule;
    exits 0 on allow, 3 on deny (nothing is audited: it is a question, not an act)."""
    from membus.cli import calls

    state = command_state(ctx, json_flag)

    async def go() -> Decision:
        identity(agent, tenant)
        validate_scope(scope)
        verb: Action = action
        return await calls.perform(
            state, calls.policy_decision, agent=agent, tenant=tenant, action=verb, scope=scope
        )

    d = run(state, go)
    verdict = "allow" if d.allowed else "deny"
    if state.json:
        emit_json(
            {
                "tenant": tenant,
                "agent": agent,
                "action": action,
                "scope": scope,
                "decision": verdict,
                "rule": d.rule,
                **({"hint": d.hint} if d.hint else {}),  # how to get the right, when known
            }
        )
    else:
        typer.echo(f"{verdict}  {d.rule or d.hint or 'no rule allows it'}")
    if not d.allowed:
        raise typer.Exit(exit_code(PermissionDenied(agent, action, scope, tenant)))
