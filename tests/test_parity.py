"""One surface: the operations and parameters of ``Agent`` on every other surface.

``Agent`` is the reference. Each surface (``SyncAgent``, ``Client``, ``SyncClient``, the HTTP
routes from the OpenAPI schema, the CLI commands from the typer app, the MCP tools) is read
into ``{operation: {parameter: detail}}``, translated to Agent's names through ``ROUTES``,
``COMMANDS``, ``TOOLS`` and ``RENAMES`` (a spelling, not a difference), and compared. Python
surfaces must match in name, kind, type and default; the others in name.

Every difference must be declared in ``DIFFERENCES``, the one table of them, and every
declaration must still be a difference (a stale line fails too, so the table stays true):

- a parameter or operation added to Agent and every surface: no line;
- added to Agent but not yet to a surface: one line, ``PENDING`` (someone is on it),
  ``GAP`` (known, nobody is) or ``DELIBERATE`` (and why);
- a new route, command or tool: one line in ``ROUTES``/``COMMANDS``/``TOOLS``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, cast

import pytest

from membus.access.gate import PrivateGate
from membus.bus.api import Agent, Bus
from membus.core.config import MembusConfig
from membus.runtime.sync import SyncAgent, SyncBus
from membus.service.client import Client, SyncClient

ROOT = Path(__file__).resolve().parent.parent

Surface = dict[str, dict[str, str]]  # operation -> parameter -> detail ("" where untyped)
Why = tuple[Literal["deliberate", "pending", "gap"], str]
DELIBERATE: Literal["deliberate"] = "deliberate"
PENDING: Literal["pending"] = "pending"  # another engineer is adding it: drop the line then
GAP: Literal["gap"] = "gap"  # known and wanted, nobody is on it yet

# -- how each surface spells Agent's operations -----------------------------------------------

# (method, path) -> operation; several routes may serve one operation (their parameters join)
ROUTES: dict[tuple[str, str], str] = {
    ("POST", "/v1/publish"): "publish",
    ("POST", "/v1/publish/batch"): "publish_many",
    ("POST", "/v1/recall"): "recall",
    ("POST", "/v1/access"): "access",
    ("GET", "/v1/changes"): "subscribe",
    ("POST", "/v1/forget"): "forget",
    ("POST", "/v1/retract"): "retract",
    ("GET", "/v1/scopes"): "scopes",
    ("GET", "/v1/memories"): "list",
    ("GET", "/v1/memories/{memory_id}"): "get",
    ("PATCH", "/v1/memories/{memory_id}"): "update",
    ("DELETE", "/v1/memories/{memory_id}"): "delete",
    ("GET", "/v1/memories/{memory_id}/history"): "history",
    ("GET", "/v1/history"): "history",
    ("GET", "/v1/export"): "export",
    ("POST", "/v1/import"): "import_memories",
    ("POST", "/v1/context"): "context",
    ("POST", "/v1/pin"): "pin",
    ("POST", "/v1/unpin"): "unpin",
    ("GET", "/v1/whoami"): "whoami",
    ("GET", "/v1/audit"): "audit",
    ("POST", "/v1/admin/policy/reload"): "policy_reload",
}
# CLI command (space-separated path) -> operation; operator commands keep their own name
COMMANDS: dict[str, str] = {
    "tail": "subscribe",
    "memories list": "list",
    "memories get": "get",
    "memories history": "history",
    "memories update": "update",
    "memories delete": "delete",
    "memories export": "export",
    "memories import": "import_memories",
}
# MCP tool -> operation
TOOLS: dict[str, str] = {
    "remember": "publish",
    "list_scopes": "scopes",
    "get_context": "context",
    "list_memories": "list",
    "get_memory": "get",
    "memory_history": "history",
}

# (surface, operation) -> {surface's parameter name: Agent's}; "*": every operation
RENAMES: dict[tuple[str, str], dict[str, str]] = {
    # query parameters are singular and repeatable: ?scope=a&scope=b
    **{
        ("HTTP", op): {"scope": "scopes", "kind": "kinds", "subject": "subjects", "agent": "agents"}
        for op in ("list", "export")
    },
    ("HTTP", "subscribe"): {"from": "start"},
    # the CLI acts as the agent it names: --agent/--tenant are its identity, not a filter
    ("CLI", "*"): {"agent": "@agent", "tenant": "@tenant", "json_flag": "@json"},
    ("CLI", "publish"): {"meta": "metadata"},
    ("CLI", "recall"): {"scope": "scopes", "kind": "kinds", "subject": "subjects"},
    ("CLI", "subscribe"): {"scope": "scopes"},
    ("CLI", "forget"): {"by_agent": "agent"},
    ("CLI", "list"): {
        "scope": "scopes",
        "kind": "kinds",
        "subject": "subjects",
        "by_agent": "agents",
    },
    ("CLI", "export"): {"scope": "scopes", "output": "@output"},
    ("CLI", "update"): {"meta": "metadata"},
    ("CLI", "import_memories"): {"file": "records"},
    ("CLI", "context"): {
        "scope": "scopes",
        "kind": "kinds",
        "subject": "subjects",
        "budget": "budget_tokens",
    },
}

OPERATOR = "an operator command, not an agent operation (no Agent method by design)"

# -- the one table of differences --------------------------------------------------------------

# (surface, operation, parameter or None for the whole operation, or "*" for every operation)
DIFFERENCES: dict[tuple[str, str, str | None], Why] = {
    # Python clients
    **{
        (s, "whoami", None): (DELIBERATE, "an API key's identity; an Agent has .identity")
        for s in ("Client", "SyncClient", "HTTP")
    },
    ("Client", "aclose", None): (DELIBERATE, "closes the HTTP connections"),
    ("SyncClient", "close", None): (DELIBERATE, "closes the HTTP connections"),
    **{
        (s, "subscribe", "reconnect"): (DELIBERATE, "resume after a dropped HTTP link")
        for s in ("Client", "SyncClient")
    },
    **{
        (s, "subscribe", "consumer"): (
            DELIBERATE,
            "over HTTP a group's consumer is the key's agent (one name per connection)",
        )
        for s in ("Client", "SyncClient", "HTTP")
    },
    # read your writes: waiting is the default where users expect it (issue 16, item 2)
    **{
        ("SyncAgent", op, "wait"): (DELIBERATE, "a blocking caller reads its writes: waits")
        for op in ("publish", "publish_many")
    },
    ("MCP", "publish", "timeout_s"): (DELIBERATE, "remember always waits, with the default"),
    # HTTP
    ("HTTP", "subscribe", "last-event-id"): (DELIBERATE, "SSE's own resume header"),
    ("HTTP", "import_memories", "records"): (
        DELIBERATE,
        "the records are the body, as JSON lines (application/x-ndjson)",
    ),
    ("HTTP", "audit", None): (DELIBERATE, "admin: the audit trail (needs admin on the scope)"),
    ("HTTP", "policy_reload", None): (DELIBERATE, "admin: operator keys only"),
    # CLI: operator commands
    **{
        ("CLI", c, None): (DELIBERATE, OPERATOR)
        for c in (
            "worker",
            "stats",
            "optimize",
            "dlq list",
            "dlq replay",
            "dlq drop",
            "audit",
            "policy check",
            "policy reload",
            "serve",
            "mcp",
            "keys new",
            "keys authority",
            "keys list",
            "keys revoke",
            "keys rotate",
            "demo",
            "bench",
            "eval locomo",
            "eval tokens",
        )
    },
    ("CLI", "*", "@agent"): (DELIBERATE, "the CLI acts as the agent it names"),
    ("CLI", "*", "@tenant"): (DELIBERATE, "the CLI acts as the agent it names"),
    ("CLI", "*", "@json"): (DELIBERATE, "output format"),
    ("CLI", "publish", "file"): (DELIBERATE, "publish_many: a file of drafts, one per line"),
    ("CLI", "publish_many", None): (DELIBERATE, "`publish --file`"),
    ("CLI", "publish", "timeout_s"): (DELIBERATE, "spelled --wait-timeout"),
    ("CLI", "publish", "wait_timeout"): (DELIBERATE, "timeout_s, as a CLI reads better"),
    ("CLI", "recall", "wait"): (DELIBERATE, "drain pending events first (embedded default)"),
    **{
        ("CLI", op, "wait"): (DELIBERATE, "drain pending events first (embedded default)")
        for op in ("list", "get", "history", "export")
    },
    ("CLI", "export", "@output"): (DELIBERATE, "a file to write the JSON lines to (else stdout)"),
    ("CLI", "subscribe", "count"): (DELIBERATE, "exit after N changes"),
    ("CLI", "subscribe", "consumer"): (DELIBERATE, "a group's consumer is the named agent"),
    ("CLI", "subscribe", "until_now"): (GAP, "tail --until-now"),
    ("CLI", "publish", "label"): (GAP, "publish --label"),
    ("CLI", "publish", "created_at"): (GAP, "publish --created-at (a --file draft has it)"),
    ("CLI", "publish", "causation_id"): (GAP, "a --file draft has it"),
    ("CLI", "publish", "correlation_id"): (GAP, "a --file draft has it"),
    ("CLI", "recall", "agents"): (GAP, "recall --by-agent"),
    ("CLI", "recall", "as_of"): (GAP, "recall --as-of"),
    ("CLI", "recall", "working"): (GAP, "recall --working"),
    **{
        ("CLI", op, None): (GAP, "not asked of the CLI by issue #16")
        for op in ("retract", "access", "scopes")
    },
    # context (issue 20): the token counter is a Python callable, which no wire carries
    **{
        (s, "context", "counter"): (DELIBERATE, "a callable: the service's default counter")
        for s in ("Client", "SyncClient", "HTTP", "CLI", "MCP")
    },
    ("CLI", "context", "wait"): (DELIBERATE, "drain pending events first (embedded default)"),
    ("CLI", "context", "agents"): (GAP, "context --by-agent"),
    ("CLI", "context", "working"): (GAP, "context --no-working"),
    **{
        (s, op, None): (GAP, "pinning from the CLI or a model: not asked by issue #20")
        for s in ("CLI", "MCP")
        for op in ("pin", "unpin")
    },
    **{
        ("MCP", "context", p): (GAP, "get_context takes query, budget, subjects, scopes")
        for p in ("agents", "kinds", "working")
    },
    # MCP
    **{
        ("MCP", "publish", p): (DELIBERATE, "a model remembers now, without causal ids")
        for p in ("created_at", "causation_id", "correlation_id")
    },
    ("MCP", "recall", "until"): (GAP, "with since (item 4)"),
    ("MCP", "recall", "working"): (GAP, "recall what is not consolidated yet"),
    ("MCP", "subscribe", None): (DELIBERATE, "the membus://changes resource and its updates"),
    ("MCP", "publish_many", None): (DELIBERATE, "a model remembers one thing at a time"),
    **{
        ("MCP", op, None): (GAP, "not asked of MCP by issue #16")
        for op in ("update", "delete", "export", "import_memories", "retract", "access")
    },
}

# -- reading each surface ----------------------------------------------------------------------


def python_surface(cls: type) -> Surface:
    """Public methods defined on ``cls``: each parameter's kind, type and default."""
    out: Surface = {}
    for name, fn in vars(cls).items():
        if name.startswith("_") or not inspect.isfunction(fn):
            continue
        params = list(inspect.signature(fn).parameters.values())[1:]  # self
        out[name] = {p.name: _detail(p) for p in params}
    return out


def _detail(p: inspect.Parameter) -> str:
    default = "required" if p.default is inspect.Parameter.empty else repr(p.default)
    kind = "keyword-only" if p.kind is inspect.Parameter.KEYWORD_ONLY else p.kind.name.lower()
    return f"{kind} {p.annotation} = {default}"


def http_spec() -> dict[str, Any]:
    """The service's OpenAPI schema, every route included, built without a connection."""
    from membus.service.app import create_app
    from membus.service.auth import ApiKeys

    class Reloadable(PrivateGate):  # so the admin reload route is in the schema too
        async def reload(self) -> int:
            return 0

    # the schema needs no connection: a stand-in bus with a config and a gate builds the app
    stand_in = SimpleNamespace(redis=None, config=MembusConfig(), gate=Reloadable())
    return create_app(cast(Any, stand_in), ApiKeys.from_keys({})).openapi()


def http_surface() -> Surface:
    """Parameters of every /v1 route (path, query, header, JSON body fields) by operation."""
    spec = http_spec()
    schemas = spec["components"]["schemas"]
    out: Surface = {}
    for path, methods in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue  # health, readiness and metrics are for operators
        for method, op in methods.items():
            route = (method.upper(), path)
            assert route in ROUTES, f"{route} serves no known operation: map it in ROUTES"
            params = out.setdefault(ROUTES[route], {})
            params.update({p["name"]: "" for p in op.get("parameters", [])})
            for content in op.get("requestBody", {}).get("content", {}).values():
                ref = content.get("schema", {}).get("$ref", "")
                if ref:
                    body = schemas[ref.rsplit("/", 1)[1]]
                    params.update(dict.fromkeys(body.get("properties", {}), ""))
    return out


def cli_surface() -> Surface:
    import typer

    from membus.cli.app import app

    def walk(cmd: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, list[str]]]:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                yield from walk(sub, (*prefix, name))
        else:
            yield " ".join(prefix), [p.name for p in cmd.params]

    return {
        COMMANDS.get(name, name): dict.fromkeys(params, "")
        for name, params in walk(typer.main.get_command(app))
    }


def mcp_surface() -> Surface:
    from membus.integrations.mcp import MembusMCP

    # the tool table needs neither a port nor a subscription bus to be read
    tools = MembusMCP(cast(Any, None), cast(Any, None)).tools
    return {
        TOOLS.get(name, name): dict.fromkeys(model.model_fields, "")
        for name, (model, _) in tools.items()
    }


SURFACES: dict[str, Callable[[], Surface]] = {
    "SyncAgent": lambda: python_surface(SyncAgent),
    "Client": lambda: python_surface(Client),
    "SyncClient": lambda: python_surface(SyncClient),
    "HTTP": http_surface,
    "CLI": cli_surface,
    "MCP": mcp_surface,
}
TYPED = {"SyncAgent", "Client", "SyncClient"}

# -- comparing ---------------------------------------------------------------------------------


def renamed(surface: str, op: str, params: dict[str, str]) -> dict[str, str]:
    names = {**RENAMES.get((surface, "*"), {}), **RENAMES.get((surface, op), {})}
    return {names.get(p, p): d for p, d in params.items()}


def differences(name: str, got: Surface, want: Surface) -> dict[tuple[str, str, str | None], str]:
    """Every way ``got`` differs from ``want``, keyed like ``DIFFERENCES``."""
    out: dict[tuple[str, str, str | None], str] = {}
    for op in sorted(want.keys() | got.keys()):
        if op not in got:
            out[name, op, None] = "missing"
            continue
        if op not in want:
            out[name, op, None] = "extra (not on Agent)"
            continue
        have, ref = renamed(name, op, got[op]), want[op]
        for p in sorted(ref.keys() | have.keys()):
            if p not in have:
                out[name, op, p] = "missing"
            elif p not in ref:
                out[name, op, p] = "extra (not on Agent)"
            elif name in TYPED and have[p] != ref[p]:
                out[name, op, p] = f"{have[p]!r}, Agent has {ref[p]!r}"
    return out


def declared(found: dict[tuple[str, str, str | None], str]) -> set[tuple[str, str, str | None]]:
    """The declarations that cover ``found``; a "*" line covers its parameter everywhere."""
    return {(s, "*" if (s, "*", p) in DIFFERENCES else op, p) for s, op, p in found}


@pytest.fixture(scope="module")
def found() -> dict[tuple[str, str, str | None], str]:
    want = python_surface(Agent)
    out: dict[tuple[str, str, str | None], str] = {}
    for name, read in SURFACES.items():
        out.update(differences(name, read(), want))
    return out


def test_every_difference_from_agent_is_declared(
    found: dict[tuple[str, str, str | None], str],
) -> None:
    undeclared = {
        k: v
        for k, v in found.items()
        if k not in DIFFERENCES and (k[0], "*", k[2]) not in DIFFERENCES
    }
    assert not undeclared, (
        "surfaces differ from Agent in ways tests/test_parity.py does not declare; add the "
        "parameter or operation to the surface, or one line to DIFFERENCES saying why:\n"
        + "\n".join(f"  {k}: {v}" for k, v in sorted(undeclared.items(), key=str))
    )


def test_every_declared_difference_still_exists(
    found: dict[tuple[str, str, str | None], str],
) -> None:
    """A surface that caught up leaves a stale line: remove it (PENDING work has landed)."""
    stale = sorted(DIFFERENCES.keys() - declared(found), key=str)
    assert not stale, "no longer differ from Agent; remove from DIFFERENCES:\n" + "\n".join(
        f"  {k}: {DIFFERENCES[k]}" for k in stale
    )


def test_sync_bus_matches_the_bus() -> None:
    """SyncBus offers a subset of Bus (agents, drain, stats), each with Bus's parameters."""
    sync, bus = python_surface(SyncBus), python_surface(Bus)
    assert sync.keys() == {"agent", "drain", "stats"}
    assert {op: sync[op] for op in sync} == {op: bus[op] for op in sync}


def test_every_agent_operation_is_documented_with_an_example() -> None:
    """What users call says what it does and shows a call, on every Python surface."""
    missing = [
        f"{cls.__name__}.{op}"
        for cls in (Agent, SyncAgent, Client, SyncClient)
        for op in python_surface(cls)
        if "Example" not in (inspect.getdoc(getattr(cls, op)) or "")
    ]
    assert missing == []


@pytest.mark.slow
def test_mypy_strict_rejects_a_misspelt_or_ill_typed_argument(tmp_path: Path) -> None:
    """``publish(subjct=…)`` and ``recall(k="five")`` fail type checking on every Python
    surface (with ``**kwargs: Any`` they passed), and the correct calls pass."""
    from mypy import api

    calls = {
        "bad": ('subjct="s"', 'k="five"'),
        "good": ('subject="s"', "k=5"),
    }
    for case, (publish_arg, recall_arg) in calls.items():
        snippet = tmp_path / f"{case}.py"
        snippet.write_text(
            "import membus\n\n\n"
            "async def use(agent: membus.Agent, client: membus.Client) -> None:\n"
            f'    await agent.publish("x", "team/a", {publish_arg})\n'
            f'    await agent.recall("q", {recall_arg})\n'
            f'    await client.publish("x", "team/a", {publish_arg})\n'
            f'    await client.recall("q", {recall_arg})\n\n\n'
            "def sync(agent: membus.SyncAgent, client: membus.SyncClient) -> None:\n"
            f'    agent.publish("x", "team/a", {publish_arg})\n'
            f'    agent.recall("q", {recall_arg})\n'
            f'    client.publish("x", "team/a", {publish_arg})\n'
            f'    client.recall("q", {recall_arg})\n'
        )
        # the project's configuration, so the cache of test_quality's mypy run is reused
        out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), str(snippet)])
        if case == "good":
            assert status == 0, out + err
            continue
        errors = [line for line in out.splitlines() if ": error:" in line]
        for cls in ("Agent", "Client", "SyncAgent", "SyncClient"):
            assert any(f'"subjct" for "publish" of "{cls}"' in e for e in errors), out
            assert any(f'"k" to "recall" of "{cls}"' in e for e in errors), out
        assert len(errors) == 8, out
