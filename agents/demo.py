"""A support team sharing memory over membus: ``python -m agents.demo [--path DIR] [--json]``.

Three agents (see ``agents/support_team.py``) work one ticket in tenant ``acme``: they publish
facts, a preference and tool results to the shared scope ``team/support`` and private notes to
``agent/<name>``, each event pointing at the one it reacts to. A subscriber follows the team feed
while they work; after ``drain()`` every agent recalls by meaning and the output shows what came
back, from whom (source agents, event ids) and how close (score). Runs offline on the embedded
default (``membus.open``) in a few seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import structlog
from redis.exceptions import ResponseError
from rich.console import Console
from rich.table import Table

import membus
from agents.support_team import (
    TEAM,
    TEAM_SCOPE,
    TENANT,
    TICKET,
    Role,
    private_scope,
    team_step_count,
)
from membus import Agent, Bus, Change, Hit, Receipt
from membus.keys import TenantKeys

RECALL_K = 3
# drain() says the writers are done; the subscriber may still be one blocking read behind.
FEED_GRACE_S = 5.0


def _short(event_id: str) -> str:
    # ULIDs share their time prefix within a run; the random tail tells them apart
    return "…" + event_id[-6:]


class _Out:
    """Rich output for people; silent when the caller asked for JSON."""

    def __init__(self, console: Console | None) -> None:
        self.console = console

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self.console is not None:
            self.console.print(*args, **kwargs)


async def _feed_position(bus: Bus, tenant: str) -> str:
    """The feed's last id right now, so the subscriber sees exactly this run's changes.

    ``start="$"`` would be resolved only when the subscriber task first runs, which could be
    after the first commits; a reused ``--path`` rules out ``"0"``.
    """
    try:
        info = await bus.redis.xinfo_stream(TenantKeys(tenant).changes)
    except ResponseError:  # no feed yet: everything on it will be ours
        return "0-0"
    return str(info.get("last-generated-id") or "0-0")


async def _follow_team(
    watcher: Agent,
    start: str,
    seen: list[Change],
    expected: int,
    all_seen: anyio.Event,
    out: _Out,
) -> None:
    async for change in watcher.subscribe([TEAM_SCOPE], start=start):
        seen.append(change)
        out.print(
            f"  [cyan]feed[/]    {change.scope:<16} {change.kind:<11} "
            f"{', '.join(change.agents):<10} {' '.join(_short(e) for e in change.event_ids)}"
        )
        if len(seen) >= expected:
            all_seen.set()


async def _publish_role(
    agent: Agent, role: Role, ids: dict[str, str], out: _Out
) -> list[dict[str, Any]]:
    published: list[dict[str, Any]] = []
    for step in role.steps:
        scope = private_scope(role.name) if step.private else TEAM_SCOPE
        cause = ids[step.caused_by] if step.caused_by else None
        receipt: Receipt = await agent.publish(
            step.content,
            scope,
            kind=step.kind,
            subject=step.subject,
            key=step.key,
            metadata=step.metadata,
            causation_id=cause,
            correlation_id=TICKET,
        )
        ids[step.ref] = receipt.event_id
        published.append(
            {
                "ref": step.ref,
                "event_id": receipt.event_id,
                "agent": role.name,
                "scope": scope,
                "kind": step.kind,
                "subject": step.subject,
                "key": step.key,
                "causation_id": cause,
                "caused_by": step.caused_by,
            }
        )
        why = f" ← {step.caused_by}" if cause else ""
        out.print(
            f"  [green]publish[/] {scope:<16} {step.kind:<11} "
            f"{role.name:<10} {_short(receipt.event_id)}{why}"
        )
    return published


def _hit_summary(hit: Hit, refs: dict[str, str]) -> dict[str, Any]:
    m = hit.memory
    return {
        "score": round(hit.score, 4),
        "content": m.content,
        "scope": m.scope,
        "kind": m.kind,
        "subject": m.subject,
        "agents": m.agents,
        "event_ids": m.source_events,
        "refs": [refs.get(e, "?") for e in m.source_events],
    }


def _recall_table(name: str, recall: dict[str, Any]) -> Table:
    table = Table(
        title=f"{name} asks: “{recall['query']}”",
        title_justify="left",
        show_edge=False,
        pad_edge=False,
        expand=True,
    )
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("memory", ratio=1)
    table.add_column("from", no_wrap=True)
    for hit in recall["hits"]:
        mark = "[bold green]✓[/] " if recall["expected"] in hit["refs"] else ""
        table.add_row(
            f"{hit['score']:.3f}",
            f"{mark}{hit['content']}",
            f"{', '.join(hit['agents'])}\n{hit['scope']}\n"
            + " ".join(_short(e) for e in hit["event_ids"]),
        )
    return table


async def _recall_all(
    team: dict[str, Agent], ids: dict[str, str]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Each agent's question by meaning, and what each one's own notebook holds."""
    refs = {event_id: ref for ref, event_id in ids.items()}
    recalls: dict[str, dict[str, Any]] = {}
    notebooks: dict[str, dict[str, Any]] = {}
    for role in TEAM:
        agent = team[role.name]
        # Explicit scopes: under OpenGate every agent could read every notebook in the tenant;
        # asking for team + own keeps the demo honest until the casbin gate lands.
        scopes = [TEAM_SCOPE, private_scope(role.name)]
        hits = await agent.recall(role.question.query, k=RECALL_K, scopes=scopes)
        recalls[role.name] = {
            "query": role.question.query,
            "scopes": scopes,
            "expected": role.question.expect,
            "found_expected": ids[role.question.expect]
            in {e for h in hits for e in h.memory.source_events},
            "hits": [_hit_summary(h, refs) for h in hits],
        }
        own = await agent.recall(f"{role.name} notes", k=10, scopes=[private_scope(role.name)])
        notebooks[role.name] = {
            "scope": private_scope(role.name),
            "memories": [
                {"event_id": e, "scope": h.memory.scope, "agents": h.memory.agents}
                for h in own
                for e in h.memory.source_events
            ],
        }
    return recalls, notebooks


async def run_demo(path: Path, *, json_output: bool = False) -> dict[str, Any]:
    """Run the support-team workflow on a bus under ``path``; print it and return a summary."""
    out = _Out(None if json_output else Console(highlight=False))
    expected_team = team_step_count()
    ids: dict[str, str] = {}  # step ref -> event id
    events: list[dict[str, Any]] = []
    seen: list[Change] = []

    out.print(f"[bold]membus demo[/] — support team in tenant [bold]{TENANT}[/], ticket {TICKET}")
    for role in TEAM:
        out.print(f"  [bold]{role.name}[/] {role.duty}")
    out.print()

    async with membus.open(path) as bus:
        team = {role.name: bus.agent(role.name, TENANT) for role in TEAM}
        start = await _feed_position(bus, TENANT)
        all_seen = anyio.Event()
        async with anyio.create_task_group() as tg:
            # the resolver closes the loop, so it is the one watching the team's feed
            tg.start_soon(_follow_team, team["resolver"], start, seen, expected_team, all_seen, out)
            for role in TEAM:
                events += await _publish_role(team[role.name], role, ids, out)
            await bus.drain(timeout_s=30.0)
            with anyio.move_on_after(FEED_GRACE_S):
                await all_seen.wait()
            tg.cancel_scope.cancel()

        recalls, private_notes = await _recall_all(team, ids)

        # --- PERMISSIONS (later issue) ----------------------------------------------------
        # With the casbin gate, this is where the demo shows one allowed share (researcher
        # grants intake read on one of its notes, intake recalls it) and one denied access
        # (intake recalling agent/resolver -> PermissionDenied), on this still-open bus.
        # Nothing is enforced yet, so the summary says so instead of pretending.
        permissions: dict[str, Any] = {
            "enforced": False,
            "gate": type(bus.gate).__name__,
            "pending": "allowed share + denied access shown once the casbin gate lands",
        }

    summary: dict[str, Any] = {
        "tenant": TENANT,
        "team_scope": TEAM_SCOPE,
        "published": {
            role.name: {
                "team": sum(
                    1 for e in events if e["agent"] == role.name and e["scope"] == TEAM_SCOPE
                ),
                "private": sum(
                    1 for e in events if e["agent"] == role.name and e["scope"] != TEAM_SCOPE
                ),
            }
            for role in TEAM
        },
        "events": events,
        "changes_seen": [
            {
                "position": c.position,
                "scope": c.scope,
                "kind": c.kind,
                "subject": c.subject,
                "agents": c.agents,
                "event_ids": c.event_ids,
            }
            for c in seen
        ],
        "recalls": recalls,
        "private_notes": private_notes,
        "permissions": permissions,
    }

    if json_output:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        out.print(f"\n  team feed: {len(seen)} change(s) seen for {expected_team} team event(s)\n")
        for name, recall in recalls.items():
            out.print(_recall_table(name, recall))
            out.print()
        out.print(
            f"[yellow]permissions[/]: not enforced yet ({permissions['gate']}: any agent may "
            "read any scope of its tenant). The casbin gate will show one allowed share and one "
            "denied access here."
        )
    return summary


def _quiet_logs() -> None:
    """Library logs go to stderr, warnings and up only, so stdout stays the demo's output."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.demo", description=__doc__)
    parser.add_argument(
        "--path", type=Path, help="data directory (default: a temporary one, removed afterwards)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON summary instead")
    args = parser.parse_args(argv)
    _quiet_logs()
    if args.path is not None:
        anyio.run(lambda: run_demo(args.path, json_output=args.json))
        return 0
    with tempfile.TemporaryDirectory(prefix="membus-demo-", ignore_cleanup_errors=True) as tmp:
        anyio.run(lambda: run_demo(Path(tmp), json_output=args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
