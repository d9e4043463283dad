"""The demo's support team: three agents, what each one publishes and what each one asks.

The agents are the ones ``policies/example.csv`` describes for tenant ``acme``, so the casbin gate
decides their accesses for real: alice and bob hold ``role:support`` (publish, recall, subscribe
in ``team/support/*``), carol is the support lead (also reads bob's ``agent/bob/handover``), and
bob is a contractor kept out of ``team/support/billing/*`` by the policy's one explicit deny. Every
agent may use its own ``agent/<self>/*`` and nothing else of another agent's.

The scenario is scripted (no model calls) so the demo runs offline and gives the same shape of
output every time; only event ids and timestamps differ between runs. Each step names the earlier
step it reacts to, which becomes the event's ``causation_id`` once that step has an id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

import membus
from membus.errors import Unavailable

TENANT: Final = "acme"
TEAM_SCOPE: Final = "team/support"
BILLING_SCOPE: Final = "team/support/billing"  # inside the team scope; denied to bob
TICKET: Final = "T-1042"  # doubles as the correlation id tying the whole conversation together
_POLICY: Final = Path("policies") / "example.csv"

Where = Literal["team", "billing", "private", "handover"]


def private_scope(agent: str) -> str:
    """Each agent's own notebook: readable by its owner only (the gate's built-in rule)."""
    return f"agent/{agent}"


def handover_scope(agent: str) -> str:
    """Part of an agent's own subtree that the policy opens to support leads, exactly."""
    return f"{private_scope(agent)}/handover"


def step_scope(agent: str, where: Where) -> str:
    return {
        "team": TEAM_SCOPE,
        "billing": BILLING_SCOPE,
        "private": private_scope(agent),
        "handover": handover_scope(agent),
    }[where]


class Step(BaseModel):
    """One publication in the script."""

    model_config = ConfigDict(frozen=True)

    ref: str  # name other steps use to point at this one
    content: str
    where: Where = "team"
    kind: str = "observation"
    subject: str | None = None
    key: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    caused_by: str | None = None  # ref of an earlier step (any agent's)


class Question(BaseModel):
    """What an agent asks its memory after the team has worked the ticket."""

    model_config = ConfigDict(frozen=True)

    query: str
    expect: str  # ref of the step a sensible answer should surface


class Role(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str  # the agent name the policy knows
    job: str  # what it does on this ticket
    duty: str
    steps: tuple[Step, ...]
    question: Question


ALICE = Role(
    name="alice",
    job="intake",
    duty="role:support: triages tickets, records what the customer reported",
    steps=(
        Step(
            ref="report",
            kind="fact",
            subject=f"ticket:{TICKET}",
            key="report",
            content=(
                f"Ticket {TICKET}: Globex reports the monthly invoice CSV export fails with a "
                "timeout since Tuesday."
            ),
        ),
        Step(
            ref="contact",
            kind="preference",
            subject="customer:globex",
            key="contact-preference",
            content=(
                "Globex wants to be contacted by email only, never by phone; the contact is "
                "dana@globex.example."
            ),
            caused_by="report",
        ),
        Step(
            ref="credit",
            where="billing",
            kind="decision",
            subject="customer:globex",
            key="credit",
            content=(
                "Billing: Globex gets a 10% credit on the March invoice for the export outage, "
                "approved by finance."
            ),
            caused_by="report",
        ),
        Step(
            ref="alice-note",
            where="private",
            kind="note",
            subject=f"ticket:{TICKET}",
            content=(
                "The customer sounded frustrated: second ticket this month. Escalate to the "
                "account manager if it is not fixed today."
            ),
            caused_by="report",
        ),
    ),
    question=Question(query="what caused the invoice export timeout?", expect="root-cause"),
)

BOB = Role(
    name="bob",
    job="researcher",
    duty="role:support, contractor (no billing): digs the root cause out of logs",
    steps=(
        Step(
            ref="log-search",
            kind="tool_result",
            subject=f"ticket:{TICKET}",
            key="log_search",
            metadata={"tool": "log_search", "query": "export timeout globex", "matches": 37},
            content=(
                "log_search found 37 invoice export job timeouts for globex since Tuesday, all "
                "on exports of more than 50k rows."
            ),
            caused_by="report",
        ),
        Step(
            ref="root-cause",
            kind="fact",
            subject=f"ticket:{TICKET}",
            key="root-cause",
            content=(
                "Root cause: release 4.2.0 on Tuesday removed pagination from the invoice CSV "
                "export, so large exports hit the 30 s gateway timeout."
            ),
            caused_by="log-search",
        ),
        Step(
            ref="bob-note",
            where="private",
            kind="note",
            subject="release:4.2.0",
            content=(
                "Checked the status page and the changelog: the 4.2.0 notes mention an export "
                "refactor. My contract ends Friday; keep the platform team thread warm."
            ),
            caused_by="log-search",
        ),
        Step(
            ref="handover",
            where="handover",
            kind="note",
            subject=f"ticket:{TICKET}",
            content=(
                "Handover: the platform team owns the 4.2.0 export refactor; hotfix 4.2.1 with "
                "pagination is due Thursday, ask them whether other customers are affected."
            ),
            caused_by="root-cause",
        ),
    ),
    question=Question(query="how does the customer want to be contacted?", expect="contact"),
)

CAROL = Role(
    name="carol",
    job="resolver",
    duty="role:support-lead: decides the workaround, closes the loop with the customer",
    steps=(
        Step(
            ref="workaround",
            kind="decision",
            subject=f"ticket:{TICKET}",
            key="workaround",
            content=(
                f"Workaround for {TICKET}: export invoices one week at a time until hotfix "
                "4.2.1 restores pagination."
            ),
            caused_by="root-cause",
        ),
        Step(
            ref="ticket-update",
            kind="tool_result",
            subject=f"ticket:{TICKET}",
            key="ticket_update",
            metadata={"tool": "ticket_update", "status": "pending_customer"},
            content=(
                f"ticket_update set {TICKET} to pending customer and emailed the weekly export "
                "workaround to dana@globex.example."
            ),
            caused_by="workaround",
        ),
        Step(
            ref="carol-note",
            where="private",
            kind="note",
            subject=f"ticket:{TICKET}",
            content=(
                f"Follow up on Thursday after hotfix 4.2.1 ships and close {TICKET} if the "
                "export works."
            ),
            caused_by="workaround",
        ),
    ),
    question=Question(query="when should I follow up on the export ticket?", expect="carol-note"),
)

TEAM: Final[tuple[Role, ...]] = (ALICE, BOB, CAROL)


class Permissions(BaseModel):
    """The two accesses the demo shows the gate deciding, both as ``example.csv`` says."""

    model_config = ConfigDict(frozen=True)

    # carol (support lead) reads bob's handover notes: ``agent/bob/handover`` is opened to leads
    share_reader: str = CAROL.name
    share_owner: str = BOB.name
    share_query: str = "handover notes for the export ticket"
    share_expect: str = "handover"
    # bob (contractor) asks for the billing notes: the explicit deny beats role:support's allow
    denied_agent: str = BOB.name
    denied_scope: str = BILLING_SCOPE
    denied_query: str = "what credit does Globex get on the invoice?"


PERMISSIONS: Final = Permissions()


def team_step_count(team: tuple[Role, ...] = TEAM) -> int:
    """How many changes the team feed (``team/support`` and below) carries once committed."""
    return sum(1 for role in team for step in role.steps if step.where in ("team", "billing"))


def demo_policy() -> Path:
    """``example.csv``, the one policy the README documents, wherever this install keeps it.

    Looked up relative to the packages (never the cwd), so ``membus demo`` works from anywhere:
    beside ``membus`` (where a wheel would carry it, as ``membus.access.policy`` looks for its
    model) or in the source tree above ``agents`` (an editable install or a checkout)."""
    candidates = (
        Path(membus.__file__).resolve().parent / _POLICY,
        Path(__file__).resolve().parent.parent / _POLICY,
    )
    for path in candidates:
        if path.is_file():
            return path
    raise Unavailable(
        f"the demo policy {_POLICY} was not found (looked in "
        f"{', '.join(str(c.parent) for c in candidates)}); run the demo from a source checkout "
        "or an editable install"
    )
