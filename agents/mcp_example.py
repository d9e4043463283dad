"""membus over MCP, end to end and offline: ``python -m agents.mcp_example [--path DIR]``.

An MCP server bound to agent ``alice`` of tenant ``acme`` runs over an embedded bus; an
in-process MCP client (what Claude, ADK, OpenAI Agents or CrewAI hosts speak) listens on
``membus://changes``, remembers a fact, hears the change, recalls it with its provenance and
lists the scopes it may read. It also shows that naming another agent in a tool call is refused.

A real host starts the same server as a subprocess over stdio, e.g. in its MCP config::

    {"command": "membus", "args": ["mcp", "--agent", "alice", "--tenant", "acme"]}

The bus is private by default (an agent reaches only its own ``agent/<name>`` scopes); this one
agent writes ``team/ops`` in the open mode (``PolicyConfig(mode="open")``, for demos and
single-agent use; ``MEMBUS_POLICY_MODE=open`` for the CLI). A team gets a policy instead.
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
from mcp import Client
from mcp_types import CallToolResult

import membus
from membus.core.config import EMBEDDED_WORKER
from membus.integrations.mcp import CHANGES_URI, build_server
from membus.integrations.port import AgentPort


async def _tool(client: Client, name: str, **args: Any) -> CallToolResult:
    result = await client.call_tool(name, args)
    assert isinstance(result, CallToolResult)
    return result


async def run_example(path: Path) -> dict[str, Any]:
    """Run the walkthrough on a bus under ``path``; returns what each step saw."""
    out: dict[str, Any] = {}
    # one agent sharing nothing: the open mode (documented for single-agent use) lets it write
    # team/ops without a policy; a team of agents would get a policy instead
    config = membus.MembusConfig(worker=EMBEDDED_WORKER, policy=membus.PolicyConfig(mode="open"))
    async with membus.open(path, config) as bus:
        server = build_server(AgentPort(bus.agent("alice", "acme")))
        async with Client(server, cache=None) as client:
            out["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
            async with client.listen(resource_subscriptions=[CHANGES_URI]) as changes:
                stored = await _tool(
                    client,
                    "remember",
                    content="The VPN gateway moved to vpn2.acme.internal.",
                    scope="team/ops",
                    kind="fact",
                    subject="vpn",
                    wait=True,
                )
                out["remember"] = stored.structured_content
                with anyio.fail_after(10):
                    async for event in changes:
                        out["notified"] = getattr(event, "uri", None)
                        break
            recalled = await _tool(client, "recall", query="where is the vpn gateway")
            out["recall"] = (recalled.structured_content or {}).get("memories", [])
            forged = await _tool(client, "remember", content="hi", scope="team/ops", agent="bob")
            out["forged_refused"] = bool(forged.is_error)
            out["scopes"] = (await _tool(client, "list_scopes")).structured_content
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, help="bus directory (default: a temp dir)")
    args = parser.parse_args()
    # stdout carries the result; bus logs (warnings and up) go to stderr
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )

    async def go() -> dict[str, Any]:
        if args.path is not None:
            return await run_example(args.path)
        with tempfile.TemporaryDirectory(prefix="membus-mcp-") as tmp:
            return await run_example(Path(tmp))

    print(json.dumps(anyio.run(go), indent=2, default=str))


if __name__ == "__main__":
    main()
