"""Retraction: withdrawing a fact through the event log, not around it.

A retraction is an event of kind ``retraction`` in the fact's scope. It withdraws a key (every
version of ``subject`` + ``key``) or one memory (its ledger slot, so exact repeats of it go too),
as of the retraction's time: writers delete what it covers and keep refusing it on redelivery,
while a later assertion of the same fact stands. Unlike ``forget`` (erasure) the events stay in
the log; publishing one takes both the publish and the forget right on the scope.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from membus.access.gate import Identity
from membus.bus.draft import Draft, Receipt
from membus.core.envelope import validate_scope
from membus.errors import InvalidInput, NotFound
from membus.writer.consolidate import RETRACTION

if TYPE_CHECKING:
    from membus.bus.api import Bus


async def retract(
    bus: Bus,
    who: Identity,
    *,
    memory_id: str | None = None,
    scope: str | None = None,
    subject: str | None = None,
    key: str | None = None,
    reason: str | None = None,
) -> Receipt:
    """Withdraw ``memory_id``, or the key ``subject`` + ``key`` in ``scope``."""
    if memory_id is not None:
        if subject is not None or key is not None:
            raise InvalidInput("retract either memory_id or subject + key, not both")
        found = await bus.store.get(who.tenant, [memory_id])
        grant = await bus.gate.grant(who, "recall", [found[0].scope] if found else None)
        if not found or not grant.admits(found[0].scope, found[0].sensitivity):
            # the same answer for "absent" and "not yours": ids must not probe other scopes
            raise NotFound(f"no memory {memory_id!r} that agent {who.agent!r} can see")
        m = found[0]
        if m.slot is None:
            raise InvalidInput(f"memory {memory_id!r} predates consolidation; forget it instead")
        draft = Draft(
            content=reason or f"retract memory {memory_id}",
            scope=m.scope,
            kind=RETRACTION,
            subject=m.subject,
            metadata={"retracts": m.slot},
        )
    else:
        if scope is None or subject is None or key is None:
            raise InvalidInput("retract needs memory_id, or scope + subject + key")
        draft = Draft(
            content=reason or f"retract {subject} {key}",
            scope=validate_scope(scope),
            kind=RETRACTION,
            subject=subject,
            key=key,
        )
    [receipt] = await bus.publish_many(who, [draft])
    return receipt
