"""Access, Audit, Dead letters, Erasure and Health: governing what the agents remember.

Who sees what: an operator key sees its tenant's policy, audit trail, dead letters and health
and may ask the what-if for any agent; an agent key sees the policy lines that apply to its own
agent, asks the what-if for itself only, reads the audit trail under scopes where it holds
``admin`` (as ``GET /v1/audit``), and sees the dead letters of scopes where it holds ``admin``.
Memories, the feed and erasure go through the bus as the key's agent, operator or not.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.responses import Response

from membus.access.audit import AuditRecord
from membus.access.gate import PRIVATE_RULE, Action, Identity, OpenGate, PrivateGate
from membus.access.policy import CasbinGate
from membus.access.watch import ACTIONS as _ACTIONS
from membus.access.watch import LEVELS, ROLE, PolicySet, canonical_line, own_scope_rule
from membus.console.web import (
    LABELS,
    Caller,
    caller,
    console,
    first,
    form,
    instant,
    number,
    param,
    redirect,
    render,
    words,
)
from membus.core.envelope import invalid_from, validate_scope
from membus.errors import InvalidInput, PermissionDenied
from membus.stream import dlq

router = APIRouter()
Who = Annotated[Caller, Depends(caller)]
ACTIONS: list[Action] = list(_ACTIONS)


def _operator_only(who: Caller, what: str) -> None:
    if not who.operator:
        raise PermissionDenied(
            who.principal.agent, "see", what, who.principal.tenant, "needs an operator key"
        )


# -- access -------------------------------------------------------------------------------------


class PolicyView:
    """The tenant's lines in force, as the gate holds them, and the agents they name."""

    def __init__(self, tenant: str, policy: PolicySet | None, builtin: str) -> None:
        self.tenant, self.builtin = tenant, builtin
        self.rules = [] if policy is None else policy.rules.get(tenant, [])
        self.links = [] if policy is None else policy.links.get(tenant, [])
        self.clearances = [] if policy is None else policy.clearances.get(tenant, [])

    def roles(self, agent: str) -> set[str]:
        held, todo = set(), [agent]
        while todo:
            name = todo.pop()
            for member, role in self.links:
                if member == name and role not in held:
                    held.add(role)
                    todo.append(role)
        return held

    def lines(self, agent: str | None) -> list[str]:
        """Every line of the tenant (``agent`` None), or those that apply to ``agent``."""
        subjects = None if agent is None else {agent, "*", *self.roles(agent)}
        out = [self.builtin]
        out += [r.text for r in self.rules if subjects is None or r.sub in subjects]
        out += [
            f"g, {m}, {r}, {self.tenant}"
            for m, r in self.links
            if subjects is None or m in subjects
        ]
        out += [
            f"g2, {m}, {LABELS[lvl]}, {self.tenant}"
            for m, lvl in self.clearances
            if subjects is None or m in subjects
        ]
        return out

    def agents(self) -> list[str]:
        named = {r.sub for r in self.rules} | {m for m, _ in self.links}
        named |= {m for m, _ in self.clearances}
        return sorted(n for n in named if n != "*" and not n.startswith(ROLE))

    def clearance_line(self, agent: str, level: int) -> str | None:
        subjects = {agent, "*", *self.roles(agent)}
        for m, lvl in self.clearances:
            if m in subjects and lvl == level:
                return f"g2, {m}, {LABELS[lvl]}, {self.tenant}"
        return None


async def policy_view(request: Request, tenant: str) -> PolicyView:
    gate = console(request).bus.gate
    if isinstance(gate, CasbinGate):
        text = await gate.source.load()
        return PolicyView(tenant, PolicySet.parse(text), own_scope_rule(tenant).text)
    if isinstance(gate, OpenGate):
        return PolicyView(tenant, None, "open gate: every agent may do everything in its tenant")
    if isinstance(gate, PrivateGate):
        return PolicyView(tenant, None, PRIVATE_RULE)
    return PolicyView(tenant, None, f"{type(gate).__name__}: no lines to show")


async def _reach(request: Request, who: Identity) -> list[dict[str, Any]]:
    """Per action, the scopes ``who`` may act on (subtree roots, exact scopes, carve-outs)."""
    gate = console(request).bus.gate
    out = []
    for action in ACTIONS:
        g = await gate.grant(who, action, None)
        out.append(
            {
                "action": action,
                "all": g.all_scopes,
                "include": [f"{s}/*" for s in g.include],
                "exact": g.exact,
                "exclude": [f"{s}/*" for s in g.exclude] + g.exclude_exact,
                "clearance": LABELS[g.clearance],
            }
        )
    return out


@router.get("/access")
async def access(request: Request, who: Who) -> Response:
    return await _access_page(request, who)


async def _access_page(
    request: Request, who: Caller, result: dict[str, Any] | None = None
) -> Response:
    tenant = who.principal.tenant
    view = await policy_view(request, tenant)
    agents = view.agents() if who.operator else []
    agents = sorted({*agents, who.principal.agent})
    table = [
        {"agent": a, "reach": await _reach(request, Identity(tenant=tenant, agent=a))}
        for a in agents
    ]
    editable = who.operator and isinstance(console(request).bus.gate, CasbinGate)
    asked = result or {"agent": who.principal.agent, "action": "recall", "label": "public"}
    return render(
        request,
        "access.html",
        who,
        page="access",
        lines=view.lines(None if who.operator else who.principal.agent),
        table=table,
        actions=ACTIONS,
        labels=LABELS,
        editable=editable,
        result=result,
        values={k: asked.get(k, "") for k in ("agent", "action", "scope", "label")},
    )


@router.post("/access/what-if")
async def what_if(request: Request, who: Who) -> Response:
    """May agent X <action> scope Y for an item labelled Z? With the lines that decided."""
    fields = await form(request, who)
    tenant, me = who.principal.tenant, who.principal.agent
    agent = first(fields, "agent") or me
    if agent != me and not who.operator:
        raise PermissionDenied(me, "ask the what-if for another agent in", "access", tenant)
    asked = first(fields, "action") or "recall"
    if asked not in ACTIONS:
        raise InvalidInput(f"action must be one of {', '.join(ACTIONS)}")
    action = asked
    scope = validate_scope(first(fields, "scope") or "", "scope")
    label = first(fields, "label") or "public"
    if label not in LEVELS:
        raise InvalidInput(f"label must be one of {', '.join(LABELS)}")
    try:
        subject = Identity(tenant=tenant, agent=agent)
    except ValidationError as exc:
        raise invalid_from(exc, "agent") from None
    gate = console(request).bus.gate
    decision = await gate.decision(subject, action, scope)
    clearance = (await gate.grant(subject, "recall", [scope])).clearance
    reads = action in ("recall", "subscribe")
    cleared = not reads or LEVELS[label] <= clearance
    view = await policy_view(request, tenant)
    result = {
        "allowed": decision.allowed and cleared,
        "agent": agent,
        "action": action,
        "scope": scope,
        "label": label,
        "rule": decision.rule,
        "hint": decision.hint,
        "scope_allowed": decision.allowed,
        "reads": reads,
        "cleared": cleared,
        "clearance": LABELS[clearance],
        "clearance_line": view.clearance_line(agent, clearance),
    }
    if request.headers.get("hx-request"):
        return render(request, "what_if.html", who, result=result)
    return await _access_page(request, who, result)  # without script: the whole page


@router.post("/access/policy")
async def change_policy(request: Request, who: Who) -> Response:
    """Add or remove a policy line of the operator's own tenant; every process obeys it within
    ``PROPAGATION_BOUND_S`` (the gate announces the change)."""
    fields = await form(request, who)
    _operator_only(who, "policy")
    gate = console(request).bus.gate
    if not isinstance(gate, CasbinGate):
        raise InvalidInput("this service has no editable policy (no policy file configured)")
    line = canonical_line(first(fields, "line") or "")
    parsed = PolicySet.parse([line])
    tenants = {r.tenant for rs in parsed.rules.values() for r in rs}
    tenants |= set(parsed.links) | set(parsed.clearances)
    if tenants != {who.principal.tenant}:  # one tenant's operator never edits another's lines
        raise PermissionDenied(
            who.principal.agent, "change the policy of", line, who.principal.tenant
        )
    if first(fields, "op") == "remove":
        await gate.remove_policy(line)
    else:
        await gate.add_policy(line)
    return redirect(request, "/access")  # post/redirect/get: a reload never re-sends the edit


# -- audit --------------------------------------------------------------------------------------

_AUDIT_FIELDS = (
    "at",
    "agent",
    "action",
    "scope",
    "scopes",
    "decision",
    "rule",
    "result_count",
    "memory_ids",
    "event_ids",
    "reason",
)


@router.get("/audit")
async def audit(request: Request, who: Who) -> Response:
    """The trail: operator keys the whole tenant, others under a scope they hold admin on."""
    bus, tenant = console(request).bus, who.principal.tenant
    scope = param(request, "scope")
    if scope is not None:
        validate_scope(scope, "scope")
    decision = param(request, "decision")
    if decision not in (None, "allow", "deny"):
        raise InvalidInput("decision must be allow or deny")
    if not who.operator:
        if scope is None:
            raise InvalidInput("give a scope: an agent key reads the trail under a scope")
        d = await bus.gate.decision(who.identity, "admin", scope)
        if not d.allowed:
            await bus.audit.record(_audited(who, scope, False, d.rule))
            raise PermissionDenied(who.principal.agent, "admin", scope, tenant, d.hint)
    await bus.audit.record(_audited(who, scope or "*", True, None))  # reading it is on it
    await bus.audit.flush()  # a person reading the trail expects what just happened on it
    records = await bus.audit.query(
        tenant,
        agent=param(request, "agent"),
        scope=scope,
        action=param(request, "action"),
        decision=decision,  # type: ignore[arg-type]
        since=instant(param(request, "since"), "since"),
        until=instant(param(request, "until"), "until"),
        limit=number(param(request, "limit"), "limit", 100, 1, 10_000),
    )
    fmt = param(request, "format")
    if fmt == "csv":
        return _download(_csv(records), "text/csv; charset=utf-8", "audit.csv")
    if fmt == "jsonl":
        body = b"".join(r.to_json() + b"\n" for r in records)
        return _download(body, "application/x-ndjson", "audit.jsonl")
    values = {
        k: request.query_params.get(k, "")
        for k in ("scope", "agent", "action", "decision", "since", "until", "limit")
    }
    query = urlencode([(k, v) for k, v in request.query_params.items() if k != "format"])
    return render(
        request,
        "audit.html",
        who,
        page="audit",
        records=records,
        values=values,
        actions=ACTIONS,
        query=query,
    )


def _audited(who: Caller, scope: str, allowed: bool, rule: str | None) -> AuditRecord:
    return AuditRecord(
        tenant=who.principal.tenant,
        agent=who.principal.agent,
        action="admin",
        scope=scope,
        decision="allow" if allowed else "deny",
        rule=rule or ("operator key" if who.operator and allowed else None),
    )


def _cell(value: Any) -> str:
    text = " ".join(value) if isinstance(value, list) else "" if value is None else str(value)
    # a spreadsheet runs a cell starting with = + - @ as a formula: never let the trail do that
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv(records: Sequence[AuditRecord]) -> bytes:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(_AUDIT_FIELDS)
    for r in records:
        row = r.model_dump(mode="json")
        w.writerow([_cell(row.get(f)) for f in _AUDIT_FIELDS])
    return out.getvalue().encode()


def _download(body: bytes, media_type: str, name: str) -> Response:
    return Response(
        body,
        media_type=media_type,
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )


# -- dead letters -------------------------------------------------------------------------------


async def _letters(request: Request, who: Caller) -> list[dlq.DeadLetter]:
    """The dead letters this caller may handle: all of the tenant for an operator key, else
    those whose event names a scope where the agent holds ``admin`` (content included)."""
    bus = console(request).bus
    letters = await dlq.list_dead(bus.redis, who.principal.tenant, count=200)
    if who.operator:
        return letters
    mine = []
    for letter in letters:
        scope = (letter.event or {}).get("scope")
        if (
            isinstance(scope, str)
            and (await bus.gate.decision(who.identity, "admin", scope)).allowed
        ):
            mine.append(letter)
    return mine


@router.get("/dead-letters")
async def dead_letters(request: Request, who: Who) -> Response:
    letters = await _letters(request, who)
    return render(
        request, "dead_letters.html", who, page="dead-letters", letters=letters, done=None
    )


@router.post("/dead-letters")
async def dead_letters_act(request: Request, who: Who) -> Response:
    """Replay (back to the events stream, for writers to commit) or drop, one letter."""
    fields = await form(request, who)
    bus = console(request).bus
    wanted = first(fields, "id") or ""
    mine = {letter.id for letter in await _letters(request, who)}
    if wanted not in mine:  # someone else's letter reads exactly like one that is not there
        raise dlq.DeadLetterNotFound(who.principal.tenant, [wanted[:40]])
    if first(fields, "op") == "drop":
        await dlq.drop(bus.redis, who.principal.tenant, [wanted])
        done = f"Dropped {wanted}."
    else:
        [replayed] = await dlq.replay(bus.redis, who.principal.tenant, [wanted])
        done = f"Replayed {wanted}: back in the events stream at {replayed.position}."
    letters = await _letters(request, who)
    return render(
        request, "dead_letters.html", who, page="dead-letters", letters=letters, done=done
    )


# -- erasure ------------------------------------------------------------------------------------


@router.get("/erasure")
async def erasure(request: Request, who: Who) -> Response:
    values = {"memory_ids": param(request, "memory_id") or ""}
    return render(request, "erasure.html", who, page="erasure", values=values, report=None)


@router.post("/erasure")
async def erase(request: Request, who: Who) -> Response:
    """A forget as the caller (its forget and erase rights), once confirmed."""
    fields = await form(request, who)
    criteria = {
        "memory_ids": words(first(fields, "memory_ids")),
        "subject": first(fields, "subject"),
        "agent": first(fields, "agent"),
        "scope": first(fields, "scope"),
    }
    values = {k: " ".join(v) if isinstance(v, list) else v or "" for k, v in criteria.items()}
    problem = None
    if not any(criteria.values()):
        problem = "Give at least one criterion: memory ids, subject, agent or scope."
    elif first(fields, "confirm") != "yes":
        problem = "Tick the confirmation: erasure cannot be undone."
    if problem is not None:
        return render(
            request,
            "erasure.html",
            who,
            400,
            page="erasure",
            values=values,
            report=None,
            problem=problem,
        )
    report = await console(request).bus.forget(
        who.identity,
        memory_ids=words(first(fields, "memory_ids")),
        subject=first(fields, "subject"),
        agent=first(fields, "agent"),
        scope=first(fields, "scope"),
    )
    return render(request, "erasure.html", who, page="erasure", values=values, report=report)


# -- health -------------------------------------------------------------------------------------


@router.get("/health")
async def health(request: Request, who: Who) -> Response:
    """The figures /metrics has for this tenant: stream lag, pending, writers, DLQ size."""
    _operator_only(who, "health")
    stats = await console(request).bus.stats()
    mine = stats["tenants"].get(who.principal.tenant) or {
        "events": 0,
        "changes": 0,
        "dlq": 0,
        "groups": [],
    }
    template = "health_figures.html" if request.headers.get("hx-request") else "health.html"
    return render(request, template, who, page="health", stats=mine)
