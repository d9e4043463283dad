"""A LangGraph graph whose long-term memory is membus: ``python -m agents.langgraph_example``.

Runs offline (no LLM): a two-node support graph. ``learn`` stores what a customer said into the
namespace ``("team", "support", "customers")`` — the scope ``team/support/customers`` — with the
customer id as key; ``answer`` searches that namespace by meaning and replies from what it finds.
Alice's graph learns; a second graph running as bob, with his own store over the same bus,
answers from what alice's learned: shared memory across agents, with the gate between them. The
bus is private by default (each agent reaches only its own ``agent/<name>`` scopes), so the
support team's namespace is shared by a policy line (``SUPPORT_POLICY``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, TypedDict

import anyio
import structlog
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.store.base import BaseStore

import membus
from membus.access.policy import CasbinGate
from membus.access.watch import MemorySource
from membus.integrations.langgraph import MembusStore
from membus.integrations.port import AgentPort

CUSTOMERS = ("team", "support", "customers")
# alice and bob share team/support and below; nothing else of theirs is shared
SUPPORT_POLICY = """
p, role:support, acme, team/support/*, publish|recall|subscribe|forget
g, alice, role:support, acme
g, bob, role:support, acme
"""


class Turn(TypedDict, total=False):
    customer: str
    message: str
    reply: str


async def learn(state: Turn, runtime: Runtime[None]) -> Turn:
    """Remember a stated preference, keyed by customer (a later statement overwrites it)."""
    store = _store(runtime)
    if "prefer" in state["message"]:
        await store.aput(CUSTOMERS, state["customer"], {"preference": state["message"]})
    return {}


async def answer(state: Turn, runtime: Runtime[None]) -> Turn:
    """Reply using what the team knows about this customer."""
    store = _store(runtime)
    known = await store.aget(CUSTOMERS, state["customer"])
    related = await store.asearch(CUSTOMERS, query=state["message"], limit=3)
    if known is not None:
        return {"reply": f"Noted: {known.value['preference']} ({len(related)} related notes)"}
    return {"reply": "Thanks, we will get back to you."}


def _store(runtime: Runtime[None]) -> BaseStore:
    if runtime.store is None:
        raise RuntimeError("compile the graph with store=MembusStore(...)")
    return runtime.store


def build_graph(store: BaseStore) -> Any:
    graph = StateGraph(Turn)
    graph.add_node("learn", learn)
    graph.add_node("answer", answer)
    graph.add_edge(START, "learn")
    graph.add_edge("learn", "answer")
    graph.add_edge("answer", END)
    return graph.compile(store=store)


async def run_example(path: Path) -> dict[str, Any]:
    gate = CasbinGate(MemorySource(SUPPORT_POLICY))
    async with membus.open(path, gate=gate) as bus:
        alice = build_graph(MembusStore(AgentPort(bus.agent("alice", "acme"))))
        bob_store = MembusStore(AgentPort(bus.agent("bob", "acme")))
        bob = build_graph(bob_store)
        first = await alice.ainvoke({"customer": "c-1042", "message": "I prefer e-mail."})
        second = await alice.ainvoke(
            {"customer": "c-1042", "message": "Actually I prefer a phone call."}
        )
        # bob's graph, another agent, sees alice's latest write at once (read-your-writes)
        third = await bob.ainvoke({"customer": "c-1042", "message": "Any update on my refund?"})
        return {
            "replies": [first["reply"], second["reply"], third["reply"]],
            "namespaces": await bob_store.alist_namespaces(),
        }


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
        with tempfile.TemporaryDirectory(prefix="membus-langgraph-") as tmp:
            return await run_example(Path(tmp))

    print(json.dumps(anyio.run(go), indent=2, default=str))


if __name__ == "__main__":
    main()
