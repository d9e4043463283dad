"""An agent in its own process, talking to membus over HTTP: ``python -m agents.http_agent``.

Runs against ``membus serve`` or the compose stack. It publishes a few observations into its own
scope, each answered once the writers have committed it, and recalls them with provenance.

    MEMBUS_URL      the service (default http://127.0.0.1:8080)
    MEMBUS_API_KEY  a key from ``membus keys new --agent carol --tenant acme``
"""

from __future__ import annotations

import os
import sys

import anyio

import membus
from membus.errors import MembusError

NOTES = [
    "The acme rollout is blocked on the billing migration; ETA Thursday.",
    "Customer 4711 asked for a refund twice; escalate to a lead if it comes up again.",
    "Support rota: dana covers the weekend, carol the Monday morning queue.",
]


async def main(url: str, key: str) -> None:
    async with membus.Client(url, key, retries=3) as agent:
        me = await agent.whoami()
        scope = f"agent/{me.agent}/notes"  # every agent may write its own scope under any policy
        # wait=True: each publish answers once the writers committed that very event (or says
        # why not: no writer running, or parked in the dead-letter stream with the reason)
        for text in NOTES:
            receipt = await agent.publish(text, scope, kind="observation", wait=True)
            print(f"published and committed {receipt.event_id} at {receipt.position}")
        hits = await agent.recall("who covers the weekend rota", k=3, scopes=[scope])
        for hit in hits:
            m = hit.memory
            print(f"{hit.score:.2f}  {m.content}  (by {', '.join(m.agents)}, {m.scope})")


def run() -> int:
    url = os.environ.get("MEMBUS_URL", "http://127.0.0.1:8080")
    key = os.environ.get("MEMBUS_API_KEY")
    if not key:
        print("set MEMBUS_API_KEY (membus keys new --agent carol --tenant acme)", file=sys.stderr)
        return 2
    try:
        anyio.run(main, url, key)
    except MembusError as exc:
        print(f"membus: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
