"""A subscriber following the change feed over HTTP: ``python -m agents.http_subscriber``.

Prints every committed memory change this key's agent may read, from the beginning of the feed
(``--from-now`` for new changes only), until interrupted. The client resumes after the last
position it saw when the connection drops or the service restarts.

    MEMBUS_URL      the service (default http://127.0.0.1:8080)
    MEMBUS_API_KEY  a key from ``membus keys new --agent ... --tenant ...``
"""

from __future__ import annotations

import os
import sys

import anyio

import membus
from membus.errors import MembusError


async def follow(url: str, key: str, start: str, limit: int | None) -> None:
    async with membus.Client(url, key, retries=3) as agent:
        me = await agent.whoami()
        print(f"following changes visible to {me.agent} in {me.tenant} ...", flush=True)
        seen = 0
        async for change in agent.subscribe(start=start):
            what = change.content if change.content is not None else ""
            print(f"{change.position}  {change.op:<6} {change.scope}  {what}", flush=True)
            seen += 1
            if limit is not None and seen >= limit:
                return


def run() -> int:
    url = os.environ.get("MEMBUS_URL", "http://127.0.0.1:8080")
    key = os.environ.get("MEMBUS_API_KEY")
    if not key:
        print("set MEMBUS_API_KEY (membus keys new --agent ... --tenant ...)", file=sys.stderr)
        return 2
    start = "$" if "--from-now" in sys.argv else "0"
    limit = int(os.environ["MEMBUS_FEED_LIMIT"]) if os.environ.get("MEMBUS_FEED_LIMIT") else None
    try:
        anyio.run(follow, url, key, start, limit)
    except MembusError as exc:
        print(f"membus: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(run())
