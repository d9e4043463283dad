"""``membus context``: what an agent would put in front of its model, within a token budget."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from membus.cli.context import AgentOpt, JsonFlag, TenantOpt, command_state, identity, run
from membus.cli.output import emit_json

if TYPE_CHECKING:
    from membus.bus.context import Context


def context(
    ctx: typer.Context,
    agent: AgentOpt,
    tenant: TenantOpt,
    query: Annotated[
        str | None, typer.Argument(help="What the turn is about (none: no recall tier).")
    ] = None,
    budget: Annotated[int, typer.Option("--budget", "-b", min=1, help="Token budget.")] = 1000,
    subject: Annotated[
        list[str] | None, typer.Option("--subject", help="Profile this subject. Repeatable.")
    ] = None,
    scope: Annotated[list[str] | None, typer.Option("--scope", "-s", help="Repeatable.")] = None,
    kind: Annotated[list[str] | None, typer.Option("--kind", help="Repeatable.")] = None,
    wait: Annotated[
        bool | None,
        typer.Option("--wait/--no-wait", help="Drain pending events first (default: embedded)."),
    ] = None,
    json_flag: JsonFlag = False,
) -> None:
    """The context this agent would get: pinned, profile, recent and relevant memories packed
    into --budget tokens. Prints the render (stdout) and what was left out (stderr); --json
    prints every item with why it was chosen."""
    from membus.cli.target import command_bus

    state = command_state(ctx, json_flag)

    async def go() -> Context:
        who = identity(agent, tenant)
        async with command_bus(state, needs_store=True) as bus:
            if wait if wait is not None else bus.config.writers > 0:
                await bus.drain()
            return await bus.context(
                who, query, budget_tokens=budget, subjects=subject, scopes=scope, kinds=kind
            )

    got = run(state, go)
    if state.json:
        emit_json({**got.model_dump(mode="json"), "rendered": got.render()})
        return
    if got.items:
        typer.echo(got.render())
    summary = f"{got.tokens_used}/{got.budget_tokens} tokens, {len(got.items)} memories"
    typer.echo(f"{summary}, {len(got.left_out)} left out for lack of room", file=sys.stderr)
