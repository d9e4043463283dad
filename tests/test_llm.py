"""The optional LLM consolidator: decisions over a real HTTP server, fallback on every failure,
and ``apply`` keeping every decision inside the fact's scope."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from membus.core.envelope import Event
from membus.store.port import Memory
from membus.writer.llm import (
    Consolidator,
    Decision,
    Fact,
    FallbackConsolidator,
    InvalidProposal,
    LlmConsolidatorConfig,
    Neighbour,
    OpenAIConsolidator,
    Write,
    apply,
    make_consolidator,
    messages,
    parse_decision,
    provenance,
    with_provenance,
)
from tests.log_capture import capture_logs
from tests.redis_proc import free_port
from tests.test_service import running

pytestmark = pytest.mark.anyio

FACT = Fact(
    content="Alice moved to Paris in May.",
    scope="team/a",
    kind="observation",
    subject="alice",
    key=None,
    agent="scout",
    created_at=datetime(2025, 5, 2, 12, 0, tzinfo=UTC),
)
OWN = "team/a:tOWN"
BERLIN = Neighbour("m-berlin", "team/a:tBERLIN", "Alice lives in Berlin.", 0.82)
TEA = Neighbour("m-tea", "team/a:tTEA", "Alice likes green tea.", 0.41)
NEAR = [BERLIN, TEA]


@dataclass
class FakeOpenAI:
    """Speaks the chat-completions shape; each request takes the next scripted reply."""

    replies: list[tuple[int, str]] = field(default_factory=list)  # (status, message content)
    raw: list[str | None] = field(default_factory=list)  # a raw body instead of a completion
    hang: bool = False
    requests: list[tuple[dict[str, Any], dict[str, str]]] = field(default_factory=list)
    release: anyio.Event = field(default_factory=anyio.Event)

    async def completions(self, request: Request) -> Response:
        self.requests.append((orjson.loads(await request.body()), dict(request.headers)))
        if self.hang:
            await self.release.wait()
        body = self.raw.pop(0) if self.raw else None
        if body is not None:
            return PlainTextResponse(body)
        status, content = self.replies.pop(0)
        if status != 200:
            return JSONResponse({"error": {"message": "boom"}}, status_code=status)
        return JSONResponse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": "fake-4o-2025",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
            }
        )


@asynccontextmanager
async def serving(fake: FakeOpenAI) -> AsyncIterator[str]:
    """The fake on a real uvicorn server on a free port; yields the ``/v1`` base URL."""
    app = Starlette(routes=[Route("/v1/chat/completions", fake.completions, methods=["POST"])])
    async with running(app) as url:
        try:
            yield f"{url}/v1"
        finally:
            fake.release.set()  # before the server stops: a held request must not stall it


def answer(action: str, target: Any = None, reason: str = "because") -> str:
    return orjson.dumps({"action": action, "target": target, "reason": reason}).decode()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("action", "target", "expected"),
    [
        ("add", None, None),
        ("update", 1, "m-berlin"),
        ("delete", "1", "m-berlin"),
        ("none", 2, "m-tea"),
    ],
)
async def test_each_action_parsed_from_a_real_endpoint(
    action: str, target: Any, expected: str | None
) -> None:
    fake = FakeOpenAI(replies=[(200, answer(action, target, "the move supersedes Berlin"))])
    async with serving(fake) as url:
        port = OpenAIConsolidator(url, "fake-4o", api_key="sk-test", timeout_s=5)
        try:
            decision = await port.decide(FACT, NEAR)
        finally:
            await port.aclose()
    assert decision == Decision(
        action=action, target=expected, reason="the move supersedes Berlin", model="fake-4o-2025"
    )
    [(body, headers)] = fake.requests
    assert headers["authorization"] == "Bearer sk-test"
    assert body["model"] == "fake-4o"
    assert body["response_format"] == {"type": "json_object"}
    system, user = body["messages"]
    assert system["role"] == "system" and '"update"' in system["content"]
    assert "Alice moved to Paris in May." in user["content"]
    shown = orjson.loads(user["content"])["memories"]
    assert [(m["n"], m["text"]) for m in shown] == [
        (1, "Alice lives in Berlin."),
        (2, "Alice likes green tea."),
    ]


def test_the_prompt_carries_the_fact_and_the_numbered_neighbours() -> None:
    system, user = messages(FACT, NEAR)
    assert all(a in system["content"] for a in ('"add"', '"update"', '"delete"', '"none"'))
    data = orjson.loads(user["content"])
    assert data["fact"] == {
        "text": FACT.content,
        "kind": "observation",
        "subject": "alice",
        "key": None,
        "agent": "scout",
        "at": "2025-05-02T12:00:00+00:00",
    }
    assert [m["n"] for m in data["memories"]] == [1, 2]
    assert data["memories"][0]["text"] == BERLIN.content
    assert "m-berlin" not in user["content"]  # numbers, not ids: nothing to mistype


@pytest.mark.parametrize(
    "text",
    [
        '```json\n{"action": "update", "target": 1, "reason": "newer"}\n```',
        'Sure! Here it is: {"action": "UPDATE", "target": "[1]", "reason": "newer"} Hope it helps',
        '{"note": {"x": 1}} then {"action": "update", "target": "m-berlin", "reason": "newer"}',
        '{"action": "replace", "target": "#1", "reason": "newer"}',
    ],
)
def test_answers_are_parsed_robustly(text: str) -> None:
    d = parse_decision(text, NEAR, "m")
    assert (d.action, d.target, d.reason, d.model) == ("update", "m-berlin", "newer", "m")


@pytest.mark.parametrize(
    "text",
    [
        "I think you should update the first one.",
        '{"action": "merge", "target": 1}',
        '{"action": "update", "target": 3}',
        '{"action": "delete", "target": "m-elsewhere"}',
        '{"action": "none", "target": null}',
        '{"action": "update"',
    ],
)
def test_unusable_answers_are_invalid_proposals(text: str) -> None:
    with pytest.raises(InvalidProposal):
        parse_decision(text, NEAR, "m")


async def test_an_invalid_target_falls_back_to_the_rules() -> None:
    fake = FakeOpenAI(replies=[(200, answer("update", 7))])
    async with serving(fake) as url:
        llm = FallbackConsolidator(OpenAIConsolidator(url, "fake-4o"))
        try:
            assert await llm.decide(FACT, NEAR, tenant="acme") is None
        finally:
            await llm.aclose()
    assert (llm.failures, llm.decisions, dict(llm.failure_kinds)) == (1, 0, {"invalid": 1})


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "kind"),
    [
        ({"replies": [(500, "")]}, "unavailable"),
        ({"replies": [(429, "")]}, "unavailable"),
        ({"hang": True}, "unavailable"),
        ({"raw": ["<html>bad gateway</html>"]}, "invalid"),
        ({"replies": [(200, "as an AI model I cannot decide")]}, "invalid"),
    ],
    ids=["http-500", "http-429", "timeout", "not-a-completion", "no-json"],
)
async def test_endpoint_failures_fall_back_and_are_counted(
    script: dict[str, Any], kind: str
) -> None:
    fake = FakeOpenAI(**script)
    async with serving(fake) as url:
        # the hanging server answers only once released: a short client timeout ends the wait
        # (the others get a generous one, so a slow machine cannot turn them into timeouts)
        timeout = 0.3 if fake.hang else 30
        llm = FallbackConsolidator(OpenAIConsolidator(url, "fake-4o", timeout_s=timeout))
        try:
            with capture_logs() as logs:
                got = await llm.decide(FACT, NEAR, tenant="acme", event_id="01EVENT")
        finally:
            await llm.aclose()
    assert got is None
    assert (llm.failures, dict(llm.failure_kinds)) == (1, {kind: 1})
    [entry] = [e for e in logs if e["event"] == "llm_consolidator_fell_back"]
    assert entry["log_level"] == "warning"
    assert (entry["tenant"], entry["scope"], entry["event"], entry["kind"]) == (
        "acme",
        "team/a",
        "llm_consolidator_fell_back",
        kind,
    )


async def test_an_unreachable_endpoint_falls_back() -> None:
    port = OpenAIConsolidator(f"http://127.0.0.1:{free_port()}/v1", "fake-4o", timeout_s=2)
    llm = FallbackConsolidator(port)
    try:
        assert await llm.decide(FACT, NEAR) is None
    finally:
        await llm.aclose()
    assert dict(llm.failure_kinds) == {"unavailable": 1}


class Scripted:
    """A port that records what it was offered and answers (or raises) as told."""

    def __init__(self, result: Decision | Exception | object) -> None:
        self.result = result
        self.offered: list[Sequence[Neighbour]] = []

    async def decide(self, fact: Fact, neighbours: Sequence[Neighbour]) -> Decision:
        self.offered.append(neighbours)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result  # type: ignore[return-value]


async def test_an_exception_from_the_port_falls_back_with_bound_context() -> None:
    port = Scripted(RuntimeError("model server on fire"))
    assert isinstance(port, Consolidator)
    llm = FallbackConsolidator(port)
    with capture_logs() as logs:
        assert await llm.decide(FACT, NEAR, tenant="acme", event_id="01EVENT") is None
    assert dict(llm.failure_kinds) == {"error": 1}
    [entry] = logs
    assert entry["tenant"] == "acme" and entry["scope"] == "team/a"
    assert "model server on fire" in entry["error"]


@pytest.mark.parametrize(
    "result",
    [
        Decision(action="update", target="m-elsewhere", reason="", model="x"),
        {"action": "add"},
    ],
    ids=["foreign-target", "not-a-decision"],
)
async def test_a_port_proposal_is_checked_against_what_was_offered(result: object) -> None:
    llm = FallbackConsolidator(Scripted(result))
    assert await llm.decide(FACT, NEAR) is None
    assert dict(llm.failure_kinds) == {"invalid": 1}


async def test_only_same_scope_no_more_sensitive_neighbours_are_offered() -> None:
    other_scope = Neighbour("m-b", "team/b:tX", "Alice lives in Rome.", 0.95)
    child_scope = Neighbour("m-c", "team/a/sub:tX", "Alice lives in Oslo.", 0.93)
    secret = Neighbour("m-s", "team/a:tS", "Alice's salary.", 0.9, sensitivity=2)
    weak = Neighbour("m-w", "team/a:tW", "Bob exists.", 0.05)
    port = Scripted(Decision(action="none", target="m-berlin", reason="same", model="x"))
    llm = FallbackConsolidator(port, k=1, min_score=0.1)
    got = await llm.decide(FACT, [other_scope, child_scope, secret, weak, TEA, BERLIN])
    assert got is not None and got.target == "m-berlin"
    assert port.offered == [[BERLIN]]
    assert (llm.decisions, llm.failures, dict(llm.actions)) == (1, 0, {"none": 1})


async def test_with_nothing_to_offer_the_model_is_not_asked() -> None:
    port = Scripted(RuntimeError("must not be called"))
    llm = FallbackConsolidator(port)
    assert await llm.decide(FACT, [Neighbour("m-b", "team/b:tX", "x", 0.9)]) is None
    assert (port.offered, llm.skipped, llm.failures) == ([], 1, 0)


def decision(action: str, target: str | None) -> Decision:
    return Decision(action=action, target=target, reason="r", model="m")


def test_apply_places_the_fact_for_each_action() -> None:
    assert apply(None, OWN, NEAR) == (Write(OWN, "assert"),)
    assert apply(decision("add", None), OWN, NEAR) == ((OWN, "assert"),)
    assert apply(decision("update", "m-berlin"), OWN, NEAR) == ((BERLIN.slot, "assert"),)
    assert apply(decision("none", "m-tea"), OWN, NEAR) == ((TEA.slot, "assert"),)
    delete = decision("delete", "m-berlin")
    assert apply(delete, OWN, NEAR, may_retract=True) == (
        Write(BERLIN.slot, "retract"),
        Write(OWN, "assert"),
    )
    # without the forget right a delete is only an add
    assert apply(delete, OWN, NEAR) == ((OWN, "assert"),)


@pytest.mark.parametrize("action", ["update", "none", "delete"])
def test_apply_refuses_a_target_in_another_scope(action: str) -> None:
    """Even if a port proposes it (and whatever the neighbours list says), a decision never
    reaches a memory of another scope: not a parent, child or sibling scope."""
    for slot in ("team/b:tX", "team/a/sub:tX", "team:tX", "other:tX"):
        foreign = Neighbour("m-x", slot, "Alice lives in Rome.", 0.99)
        got = apply(decision(action, "m-x"), OWN, [foreign], may_retract=True)
        assert got == (Write(OWN, "assert"),), slot


def test_apply_refuses_unknown_keyed_own_and_too_sensitive_targets() -> None:
    keyed = Neighbour("m-k", "team/a:kKEY", "Alice: home Berlin", 0.9)
    secret = Neighbour("m-s", "team/a:tS", "secret", 0.9, sensitivity=3)
    itself = Neighbour("m-own", OWN, "Alice moved to Paris", 0.99)
    own = (Write(OWN, "assert"),)
    assert apply(decision("update", "m-gone"), OWN, NEAR) == own
    assert apply(decision("update", "m-k"), OWN, [keyed]) == own
    assert apply(decision("update", "m-berlin"), "team/a:kMINE", NEAR) == (
        ("team/a:kMINE", "assert"),
    )
    assert apply(decision("delete", "m-own"), OWN, [itself], may_retract=True) == own
    assert apply(decision("update", "m-s"), OWN, [secret], sensitivity=1) == own
    assert apply(decision("update", "m-s"), OWN, [secret], sensitivity=3) == (
        (secret.slot, "assert"),
    )
    # a keyed memory may still be withdrawn by a fact that invalidates it
    assert apply(decision("delete", "m-k"), OWN, [keyed], may_retract=True)[0] == (
        keyed.slot,
        "retract",
    )


def test_decisions_validate_their_target() -> None:
    with pytest.raises(ValueError, match="target"):
        Decision(action="update", target=None, reason="", model="m")
    with pytest.raises(ValueError, match="target"):
        Decision(action="add", target="m-berlin", reason="", model="m")
    d = decision("update", "m-berlin")
    assert Decision.model_validate_json(d.model_dump_json()) == d  # persisted per event id


def test_provenance_records_the_decision_in_the_facts_metadata() -> None:
    d = decision("update", "m-berlin")
    assert provenance(d) == {
        "consolidator": {"action": "update", "target": "m-berlin", "model": "m", "reason": "r"}
    }
    event = Event.build(
        tenant="acme", scope="team/a", agent="scout", content="x", metadata={"a": 1}
    )
    assert with_provenance(event, d).metadata == {"a": 1, **provenance(d)}
    assert with_provenance(event, None) is event


async def test_off_by_default_and_the_key_stays_out_of_reprs() -> None:
    assert make_consolidator(LlmConsolidatorConfig()) is None
    config = LlmConsolidatorConfig(base_url="http://127.0.0.1:1/v1", api_key="sk-secret")
    assert "sk-secret" not in repr(config)
    llm = make_consolidator(config)
    assert isinstance(llm, FallbackConsolidator) and llm.k == 5
    await llm.aclose()


async def test_json_mode_can_be_turned_off_for_servers_that_reject_it() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(orjson.loads(request.content))
        return httpx.Response(200, json={"choices": [{"message": {"content": answer("add")}}]})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        port = OpenAIConsolidator("http://llm/v1/", "m", json_mode=False, client=client)
        got = await port.decide(FACT, NEAR)
        await port.aclose()  # the caller's client stays open
        assert not client.is_closed
    assert (got.action, got.model) == ("add", "m")  # no model in the reply: the configured one
    assert "response_format" not in seen[0]


async def test_a_port_that_never_answers_is_cut_off_by_the_deadline() -> None:
    class Stuck:
        async def decide(self, fact: Fact, neighbours: Sequence[Neighbour]) -> Decision:
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

    llm = FallbackConsolidator(Stuck(), deadline_s=0.05)
    assert await llm.decide(FACT, NEAR) is None
    assert dict(llm.failure_kinds) == {"unavailable": 1}


def test_facts_and_neighbours_from_events_and_memories() -> None:
    event = Event.build(tenant="acme", scope="team/a", agent="scout", content="x", label="internal")
    assert Fact.of(event) == Fact(
        "x", "team/a", "observation", None, None, "scout", event.created_at, "internal"
    )
    m = Memory.from_event(event)
    assert Neighbour.of(m, 0.7) is None  # no slot: written before consolidation
    slotted = m.model_copy(update={"slot": "team/a:tX"})
    assert Neighbour.of(slotted, 0.7) == Neighbour(m.id, "team/a:tX", "x", 0.7, 1)
