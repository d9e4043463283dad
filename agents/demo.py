"""A support team sharing memory over membus: ``python -m agents.demo [--path DIR] [--json]``.

Three agents (see ``agents/support_team.py``) work one ticket in tenant ``acme``: they publish
facts, a preference and tool results to the shared scope ``team/support``, a billing decision to
``team/support/billing``, private notes to ``agent/<name>`` and a handover note to
``agent/bob/handover``, each event pointing at the one it reacts to. A subscriber follows the team
feed while they work; after ``drain()`` every agent recalls by meaning and the output shows what
came back, from whom (source agents, event ids) and how close (score).

The bus runs the casbin gate on ``policies/example.csv``, so the demo then shows the permission
layer deciding for real: one allowed share (carol, a support lead, reads bob's handover), one
denied access (bob, a contractor, asks for the billing notes: ``PermissionDenied``), the audit
records of both, and that no agent's recall over everything it may read holds another agent's
private notes. Runs offline on the embedded default (``membus.open``) in a few seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import structlog
from redis.exceptions import ResponseError
from rich.console import Console
from rich.table import Table

import membus
from agents.support_team import (
    PERMISSIONS,
    TEAM,
    TEAM_SCOPE,
    TENANT,
    TICKET,
    Role,
    demo_policy,
    handover_scope,
    private_scope,
    step_scope,
    team_step_count,
)
from membus import Agent, Bus, Change, Hit, MembusConfig, PermissionDenied, PolicyConfig, Receipt
from membus.access.audit import AuditRecord
from membus.core.config import EMBEDDED_WORKER
from membus.core.keys import TenantKeys

RECALL_K = 3
# "everything I may read" in this demo: more than the tenant holds, so nothing hides behind k
RECALL_ALL_K = 100
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
            f"  [cyan]feed[/]    {change.scope:<20} {change.kind:<11} "
            f"{', '.join(change.agents):<6} {' '.join(_short(e) for e in change.event_ids)}"
        )
        if len(seen) >= expected:
            all_seen.set()


async def _publish_role(
    agent: Agent, role: Role, ids: dict[str, str], out: _Out
) -> list[dict[str, Any]]:
    published: list[dict[str, Any]] = []
    for step in role.steps:
        scope = step_scope(role.name, step.where)
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
                "where": step.where,
                "kind": step.kind,
                "subject": step.subject,
                "key": step.key,
                "causation_id": cause,
                "caused_by": step.caused_by,
            }
        )
        why = f" ← {step.caused_by}" if cause else ""
        out.print(
            f"  [green]publish[/] {scope:<20} {step.kind:<11} "
            f"{role.name:<6} {_short(receipt.event_id)}{why}"
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


def _recall_table(title: str, recall: dict[str, Any]) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False, expand=True)
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
        # no scopes: everything the policy lets this agent read, and nothing else
        hits = await agent.recall(role.question.query, k=RECALL_K)
        recalls[role.name] = {
            "query": role.question.query,
            "scopes": None,
            "expected": role.question.expect,
            "found_expected": ids[role.question.expect]
            in {e for h in hits for e in h.memory.source_events},
            "hits": [_hit_summary(h, refs) for h in hits],
        }
        # a listing, not a question: every hit counts, however weakly it matches
        own = await agent.recall(
            f"{role.name} notes", k=RECALL_ALL_K, scopes=[private_scope(role.name)], min_score=0
        )
        notebooks[role.name] = {
            "scope": private_scope(role.name),
            "memories": [
                {"event_id": e, "scope": h.memory.scope, "agents": h.memory.agents}
                for h in own
                for e in h.memory.source_events
            ],
        }
    return recalls, notebooks


# -- the permission layer, shown ---------------------------------------------------------------


def _audit_line(rec: AuditRecord) -> dict[str, Any]:
    return rec.model_dump(mode="json", exclude={"tenant", "reason", "event_ids"})


async def _share_and_deny(bus: Bus, team: dict[str, Agent], ids: dict[str, str]) -> dict[str, Any]:
    """One allowed share and one denied access, then the audit records both calls left."""
    p = PERMISSIONS
    refs = {event_id: ref for ref, event_id in ids.items()}
    since = datetime.now(UTC)

    reader, scope = team[p.share_reader], handover_scope(p.share_owner)
    hits = await reader.recall(p.share_query, k=RECALL_K, scopes=[scope])
    allowed = {
        "agent": reader.name,
        "action": "recall",
        "scope": scope,
        "query": p.share_query,
        "expected": p.share_expect,
        "found_expected": ids[p.share_expect] in {e for h in hits for e in h.memory.source_events},
        "rule": (await bus.gate.decision(reader.identity, "recall", scope)).rule,
        "hits": [_hit_summary(h, refs) for h in hits],
    }

    intruder = team[p.denied_agent]
    denied: dict[str, Any] = {"agent": intruder.name, "action": "recall", "scope": p.denied_scope}
    try:
        leaked = await intruder.recall(p.denied_query, k=RECALL_K, scopes=[p.denied_scope])
        denied |= {"raised": None, "leaked": [_hit_summary(h, refs) for h in leaked]}
    except PermissionDenied as exc:  # the typed error names who, what and where
        error = {"agent": exc.agent, "action": exc.action, "scope": exc.scope}
        denied |= {"raised": type(exc).__name__, "error": exc.to_dict() | error}
    # why, straight from the gate (the audit record says what the door decided)
    denied["rule"] = (await bus.gate.decision(intruder.identity, "recall", p.denied_scope)).rule

    await bus.audit.flush()  # the flusher would write within milliseconds; do not race it
    records = await bus.audit.query(TENANT, since=since, action="recall", newest_first=False)
    mine = [
        r
        for r in records
        if (r.agent, r.scope) in {(reader.name, scope), (intruder.name, p.denied_scope)}
    ]
    return {
        "enforced": True,
        "gate": type(bus.gate).__name__,
        "allowed": allowed,
        "denied": denied,
        "audit": [_audit_line(r) for r in mine],
    }


async def _privacy(team: dict[str, Agent]) -> dict[str, dict[str, Any]]:
    """Each agent recalls over everything it may read: whose scopes come back, counted."""
    out: dict[str, dict[str, Any]] = {}
    for name, agent in team.items():
        # a listing, not a question: every hit counts, however weakly it matches
        hits = await agent.recall(f"{TICKET} notes", k=RECALL_ALL_K, min_score=0)
        scopes = [h.memory.scope for h in hits]
        notebooks = {private_scope(other) for other in team if other != name}
        out[name] = {
            "memories": len(scopes),
            "scopes": sorted(set(scopes)),
            "own_private": scopes.count(private_scope(name)),
            # other agents' notebooks proper: 0 for everyone, or privacy is broken
            "others_private": sum(1 for s in scopes if s in notebooks),
            # parts of others' subtrees a policy line opened (carol: agent/bob/handover)
            "others_shared": sum(
                1 for s in scopes if any(s.startswith(n + "/") for n in notebooks)
            ),
        }
    return out


def _print_permissions(out: _Out, perm: dict[str, Any], privacy: dict[str, Any]) -> None:
    allowed, denied = perm["allowed"], perm["denied"]
    out.print(f"[bold]permissions[/] enforced by {perm['gate']} on {perm['policy']}\n")
    out.print(
        f"  [green]allowed[/] {allowed['agent']} recall {allowed['scope']}: {allowed['rule']}"
    )
    out.print(_recall_table(f"{allowed['agent']} asks: “{allowed['query']}”", allowed))
    if denied["raised"]:
        out.print(
            f"\n  [red]denied[/]  {denied['agent']} recall {denied['scope']}: {denied['rule']}\n"
            f"          raised {denied['raised']}: {denied['error']['message']}"
        )
    else:
        out.print(f"\n  [bold red]NOT denied[/]: {denied['agent']} read {denied['scope']}")
    out.print(f"\n  audit records of those two calls (stream membus:{{{TENANT}}}:audit):")
    for rec in perm["audit"]:
        colour = "green" if rec["decision"] == "allow" else "red"
        results = "" if rec["result_count"] is None else f" results={rec['result_count']}"
        out.print(
            f"    {rec['at'][11:23]} {rec['agent']:<6} {rec['action']} {rec['scope']:<20} "
            f"[{colour}]{rec['decision']}[/]{results} rule={rec['rule'] or '-'}"
        )
    out.print("\n  each agent's recall over everything it may read:")
    for name, seen in privacy.items():
        out.print(
            f"    {name:<6} {seen['memories']:>2} memories: own notes {seen['own_private']}, "
            f"others' private notes [bold]{seen['others_private']}[/], "
            f"opened to it by policy {seen['others_shared']}  ({', '.join(seen['scopes'])})"
        )


async def run_demo(path: Path, *, json_output: bool = False) -> dict[str, Any]:
    """Run the support-team workflow on a bus under ``path``; print it and return a summary."""
    out = _Out(None if json_output else Console(highlight=False))
    expected_team = team_step_count()
    ids: dict[str, str] = {}  # step ref -> event id
    events: list[dict[str, Any]] = []
    seen: list[Change] = []
    policy = demo_policy()
    config = MembusConfig(worker=EMBEDDED_WORKER, policy=PolicyConfig(file=policy))

    out.print(f"[bold]membus demo[/] — support team in tenant [bold]{TENANT}[/], ticket {TICKET}")
    for role in TEAM:
        out.print(f"  [bold]{role.name:<6}[/] {role.job:<10} {role.duty}")
    out.print()

    async with membus.open(path, config) as bus:
        team = {role.name: bus.agent(role.name, TENANT) for role in TEAM}
        start = await _feed_position(bus, TENANT)
        all_seen = anyio.Event()
        async with anyio.create_task_group() as tg:
            # the resolver (a lead) closes the loop, so it is the one watching the team's feed
            tg.start_soon(_follow_team, team["carol"], start, seen, expected_team, all_seen, out)
            for role in TEAM:
                events += await _publish_role(team[role.name], role, ids, out)
            await bus.drain(timeout_s=30.0)
            with anyio.move_on_after(FEED_GRACE_S):
                await all_seen.wait()
            tg.cancel_scope.cancel()

        recalls, private_notes = await _recall_all(team, ids)
        permissions = await _share_and_deny(bus, team, ids)
        permissions["policy"] = str(policy)
        privacy = await _privacy(team)

    summary: dict[str, Any] = {
        "tenant": TENANT,
        "team_scope": TEAM_SCOPE,
        "published": {
            role.name: {
                "team": sum(
                    1 for e in events if e["agent"] == role.name and e["where"] != "private"
                ),
                "private": sum(
                    1 for e in events if e["agent"] == role.name and e["where"] == "private"
                ),
            }
            for role in TEAM
        },
        "events": events,
        "changes_seen": [
            c.model_dump(include={"position", "scope", "kind", "subject", "agents", "event_ids"})
            for c in seen
        ],
        "recalls": recalls,
        "private_notes": private_notes,
        "privacy": privacy,
        "permissions": permissions,
    }

    if json_output:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        out.print(f"\n  team feed: {len(seen)} change(s) seen for {expected_team} team event(s)\n")
        for name, recall in recalls.items():
            out.print(_recall_table(f"{name} asks: “{recall['query']}”", recall))
            out.print()
        _print_permissions(out, permissions, privacy)
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
