"""The demo's support team: three roles, what each one publishes and what each one asks.

The scenario is scripted (no model calls) so the demo runs offline and gives the same shape of
output every time; only event ids and timestamps differ between runs. Each step names the earlier
step it reacts to, which becomes the event's ``causation_id`` once that step has an id.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

TENANT: Final = "acme"
TEAM_SCOPE: Final = "team/support"
TICKET: Final = "T-1042"  # doubles as the correlation id tying the whole conversation together


def private_scope(agent: str) -> str:
    """Each agent's own notebook; the permission layer will make it readable by its owner only."""
    return f"agent/{agent}"


class Step(BaseModel):
    """One publication in the script."""

    model_config = ConfigDict(frozen=True)

    ref: str  # name other steps use to point at this one
    content: str
    private: bool = False  # True: the agent's own scope, else the team scope
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

    name: str
    duty: str
    steps: tuple[Step, ...]
    question: Question


INTAKE = Role(
    name="intake",
    duty="triages incoming tickets and records what the customer reported",
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
            ref="intake-note",
            private=True,
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

RESEARCHER = Role(
    name="researcher",
    duty="searches logs and changelogs to find the root cause",
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
            ref="researcher-note",
            private=True,
            kind="note",
            subject="release:4.2.0",
            content=(
                "Checked the status page and the changelog: the 4.2.0 notes mention an export "
                "refactor. Ask the platform team whether other customers are affected."
            ),
            caused_by="log-search",
        ),
    ),
    question=Question(query="how does the customer want to be contacted?", expect="contact"),
)

RESOLVER = Role(
    name="resolver",
    duty="decides the fix or workaround and closes the loop with the customer",
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
            ref="resolver-note",
            private=True,
            kind="note",
            subject=f"ticket:{TICKET}",
            content=(
                f"Follow up on Thursday after hotfix 4.2.1 ships and close {TICKET} if the "
                "export works."
            ),
            caused_by="workaround",
        ),
    ),
    question=Question(
        query="when should I follow up on the export ticket?", expect="resolver-note"
    ),
)

TEAM: Final[tuple[Role, ...]] = (INTAKE, RESEARCHER, RESOLVER)


def team_step_count(team: tuple[Role, ...] = TEAM) -> int:
    """How many changes the team feed should carry once everything is committed."""
    return sum(1 for role in team for step in role.steps if not step.private)
