"""The envelope is the front door: anything an agent sends is either a valid, canonical event or an
``InvalidInput`` naming the bad field, never another exception and never a half-written memory."""

from __future__ import annotations

import enum
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import membus
from membus.core.config import MembusConfig, PolicyConfig, RankingConfig, RedisConfig
from membus.core.envelope import (
    MAX_CONTENT_BYTES,
    MAX_FUTURE_SKEW_S,
    MAX_SCOPE_SEGMENTS,
    Event,
    check_created_at,
)
from membus.core.keys import TenantKeys, tenants_key
from membus.errors import InvalidInput

# every hit, however weak: relevance and min_score are tests/test_relevance.py's subject
EVERY_HIT = RankingConfig(min_score=0)

NAME_RE = r"[a-z0-9][a-z0-9_-]{0,63}"
SCOPE_RE = re.compile(rf"{NAME_RE}(/{NAME_RE}){{0,{MAX_SCOPE_SEGMENTS - 1}}}")
KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

NASTY_SCOPES = [
    "team/a/../b",
    "team/a*",
    "team/*",
    "team/\u0430",  # Cyrillic a
    "t\u0435am/a",  # Cyrillic e
    "team/a/",
    "/team/a",
    "team//a",
    "",
    ".",
    "..",
    "team/./a",
    "TEAM/A",
    "team/a\n",
    "team/a\x00",
    "team\\a",
    "team/" + "a" * 65,
    "/".join(["s"] * (MAX_SCOPE_SEGMENTS + 1)),
    "team/a b",
    "team/\uff41",  # fullwidth 'a'
    "team/a\u200b",  # zero-width space
]

segment = st.from_regex(re.compile(r"[a-z0-9][a-z0-9_-]{0,8}"), fullmatch=True)
any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=60)
huge_text = st.builds(
    lambda ch, n: ch * n,
    st.sampled_from(["a", "é", "€", "😀", " ", "\t"]),
    st.integers(MAX_CONTENT_BYTES // 4 - 50, MAX_CONTENT_BYTES + 50),
)
scopes = st.one_of(
    st.sampled_from(NASTY_SCOPES),
    st.lists(segment, min_size=1, max_size=MAX_SCOPE_SEGMENTS + 2).map("/".join),
    st.lists(st.one_of(segment, any_text), min_size=1, max_size=4).map("/".join),
    any_text,
)
names = st.one_of(
    segment, st.sampled_from(["", "Bad", "a" * 65, "\u0430gent", "a/b", "-x"]), any_text
)
texts = st.one_of(any_text, huge_text, st.sampled_from(["", "   ", "ok\x00", "tab\tok\nline"]))
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
)
metadata = st.dictionaries(
    st.one_of(any_text, st.text(min_size=60, max_size=70)),
    st.recursive(
        json_leaf,
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.dictionaries(any_text, children, max_size=4)
        ),
        max_leaves=30,
    ),
    max_size=6,
) | st.builds(lambda n: {"big": "x" * n}, st.integers(8000, 9000))
wrong_types = st.one_of(st.integers(), st.none(), st.lists(st.integers(), max_size=2), st.binary())


# Plausible values, so that most examples differ from a valid event in at most a few fields:
# that is where validation bugs hide (a fully random envelope fails on its first field).
good_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=80
).filter(str.strip)
finite_json = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        good_text,
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(segment, children, max_size=3)
    ),
    max_leaves=12,
)
VALID: dict[str, st.SearchStrategy[Any]] = {
    "tenant": segment,
    "agent": segment,
    "scope": st.lists(segment, min_size=1, max_size=MAX_SCOPE_SEGMENTS).map("/".join),
    "content": good_text,
    "kind": st.from_regex(KIND_RE, fullmatch=True),
    "subject": good_text,
    "key": good_text.map(lambda t: t[:100]),
    "metadata": st.dictionaries(segment, finite_json, max_size=4),
    "causation_id": st.from_regex(re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}"), fullmatch=True),
    "correlation_id": st.from_regex(
        re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}"), fullmatch=True
    ),
    "created_at": st.datetimes(timezones=st.timezones()),
}
NASTY: dict[str, st.SearchStrategy[Any]] = {
    "tenant": names,
    "agent": names,
    "scope": scopes,
    "content": texts,
    "kind": st.one_of(names, st.sampled_from(["Bad Kind!", "x" * 40, "ok\n", "../up", "a*"])),
    "subject": texts,
    "key": texts,
    "metadata": metadata
    | st.dictionaries(segment, st.one_of(st.tuples(st.integers()), st.datetimes()), max_size=2),
    "causation_id": st.one_of(names, any_text),
    "correlation_id": st.one_of(names, any_text),
    "created_at": st.one_of(st.datetimes(), any_text),
    "v": st.integers(-2, 3),
    "id": st.one_of(any_text, st.just("01ARZ3NDEKTSV4RRFFQ69G5FAV")),
    "surprise": any_text,  # a field the schema does not know
}
REQUIRED = ("tenant", "agent", "scope", "content")


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    fields = {name: draw(VALID[name]) for name in REQUIRED}
    for name in sorted(VALID.keys() - set(REQUIRED)):
        if draw(st.booleans()):
            fields[name] = draw(VALID[name])
    for name in draw(st.lists(st.sampled_from(sorted(NASTY)), max_size=3, unique=True)):
        fields[name] = draw(NASTY[name])
    if draw(st.sampled_from(range(10))) == 7:  # a value of the wrong type, or a missing field
        name = draw(st.sampled_from(sorted(fields)))
        if draw(st.booleans()):
            fields[name] = draw(wrong_types)
        else:
            del fields[name]
    return fields


def check_invalid(exc: InvalidInput, fields: dict[str, Any]) -> None:
    assert exc.problems, "InvalidInput must list its problems"
    for p in exc.problems:
        top = p["field"].split(".")[0]
        assert top in Event.model_fields or top in fields, p
        assert p["reason"]


def check_valid(event: Event) -> None:
    """What every accepted event guarantees to the permission layer, the keys and the store."""
    assert SCOPE_RE.fullmatch(event.scope), event.scope
    assert re.fullmatch(NAME_RE, event.tenant) and re.fullmatch(NAME_RE, event.agent)
    assert KIND_RE.fullmatch(event.kind), f"kind {event.kind!r} accepted"
    assert event.content.strip() and not CONTROL_RE.search(event.content)
    assert len(event.content.encode()) <= MAX_CONTENT_BYTES
    assert event.created_at.utcoffset() is not None
    wire = event.to_json()
    back = Event.from_json(wire)
    assert back == event, "round trip through the wire format changed the event"
    assert back.to_json() == wire


@pytest.mark.slow
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(envelopes())
def test_build_returns_valid_event_or_invalid_input_naming_the_field(
    fields: dict[str, Any],
) -> None:
    try:
        event = Event.build(**fields)
    except InvalidInput as exc:
        check_invalid(exc, fields)
    else:
        check_valid(event)


@pytest.mark.parametrize("scope", NASTY_SCOPES)
def test_path_tricks_wildcards_and_lookalikes_in_scope_are_rejected(scope: str) -> None:
    with pytest.raises(InvalidInput) as info:
        Event.build(tenant="acme", agent="a", scope=scope, content="hello")
    assert [p["field"] for p in info.value.problems] == ["scope"]


@pytest.mark.parametrize("kind", ["Bad Kind!", "fact; drop", "x" * 40, "ok\n", "../up"])
def test_kind_is_matched_whole_not_searched(kind: str) -> None:
    """BUG: ``kind`` uses pydantic ``pattern=`` without anchors, and pydantic searches rather than
    full-matches, so any kind *containing* one lowercase letter passes."""
    with pytest.raises(InvalidInput) as info:
        Event.build(tenant="acme", agent="a", scope="team", content="hello", kind=kind)
    assert [p["field"] for p in info.value.problems] == ["kind"]


class _Level(enum.IntEnum):
    HIGH = 3


class _Tag(str):
    pass


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        float("-inf"),
        (1, 2),
        datetime(2024, 1, 1, tzinfo=UTC),
        {1, 2},
        _Level.HIGH,
        _Tag("x"),
        0.5,
        -0.0,
        2**63 - 1,
        True,
        None,
        "plain",
    ],
    ids=[
        "nan",
        "inf",
        "-inf",
        "tuple",
        "datetime",
        "set",
        "int-enum",
        "str-subclass",
        "float",
        "negative-zero",
        "big-int",
        "bool",
        "none",
        "str",
    ],
)
def test_metadata_is_rejected_or_travels_unchanged(value: Any) -> None:
    """BUG: orjson writes NaN/±Infinity as ``null``, tuples as lists and datetimes as strings, so
    the accepted event is not the one that travels. Metadata must be rejected or be canonical
    JSON already (then it round-trips), never quietly changed on the wire."""
    try:
        event = Event.build(
            tenant="acme", agent="a", scope="team", content="x", metadata={"v": value}
        )
    except InvalidInput as exc:
        assert exc.problems[0]["field"].startswith("metadata")
    else:
        assert Event.from_json(event.to_json()) == event


def test_from_json_with_reserved_key_is_invalid_input() -> None:
    """Regression: ``from_json`` used to spread the object into ``build(cls, **fields)``, so the
    key ``cls`` raised TypeError instead of InvalidInput (and killed the writer parsing it)."""
    with pytest.raises(InvalidInput):
        Event.from_json(b'{"cls": 1, "tenant": "acme"}')


@pytest.mark.parametrize(
    "raw", [b"", b"not json", b"[]", b"null", b'"x"', b"{", b'{"tenant": "acme"}', b"\xff\xfe"]
)
def test_from_json_rejects_garbage_with_invalid_input(raw: bytes) -> None:
    with pytest.raises(InvalidInput):
        Event.from_json(raw)


def test_deeply_nested_metadata_is_invalid_input_not_recursion_error() -> None:
    deep: dict[str, Any] = {}
    cur = deep
    for _ in range(5000):
        cur["a"] = {}
        cur = cur["a"]
    with pytest.raises(InvalidInput) as info:
        Event.build(tenant="acme", agent="a", scope="team", content="x", metadata=deep)
    assert info.value.problems[0]["field"] == "metadata"


def test_content_size_limit_counts_utf8_bytes() -> None:
    ok = "€" * (MAX_CONTENT_BYTES // 3)
    assert Event.build(tenant="acme", agent="a", scope="team", content=ok).content == ok
    with pytest.raises(InvalidInput) as info:
        Event.build(tenant="acme", agent="a", scope="team", content=ok + "€")
    assert info.value.problems[0]["field"] == "content"


# -- through the bus: bad input never reaches Redis ---------------------------------------------


def bus_config(url: str) -> MembusConfig:
    return MembusConfig(
        policy=PolicyConfig(mode="open"), redis=RedisConfig(url=url), writers=0, ranking=EVERY_HIT
    )


BAD_PUBLISH: list[tuple[dict[str, Any], str]] = [
    ({"content": "x", "scope": "team/a/../b"}, "scope"),
    ({"content": "x", "scope": "team/a*"}, "scope"),
    ({"content": "x", "scope": "team/\u0430"}, "scope"),
    ({"content": "x", "scope": "team/a/"}, "scope"),
    ({"content": "   ", "scope": "team"}, "content"),
    ({"content": "a\x00b", "scope": "team"}, "content"),
    ({"content": "x" * (MAX_CONTENT_BYTES + 1), "scope": "team"}, "content"),
    ({"content": "x", "scope": "team", "metadata": {"k": "v" * 9000}}, "metadata"),
    ({"content": "x", "scope": "team", "subject": "s" * 300}, "subject"),
    ({"content": "x", "scope": "team", "causation_id": "not an id!"}, "causation_id"),
]


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize(("kwargs", "field"), BAD_PUBLISH)
async def test_agent_publish_with_bad_input_raises_and_writes_nothing(
    redis_url: str, tmp_path: Path, kwargs: dict[str, Any], field: str
) -> None:
    keys = TenantKeys("acme")
    async with membus.open(tmp_path, bus_config(redis_url)) as bus:
        agent = bus.agent("tester", "acme")
        with pytest.raises(InvalidInput) as info:
            await agent.publish(**kwargs)
        assert field in {p["field"] for p in info.value.problems}
        assert await bus.redis.exists(keys.events, tenants_key()) == 0


@pytest.mark.anyio
async def test_publish_many_is_all_or_nothing(redis_url: str, tmp_path: Path) -> None:
    """One bad draft in a batch: the whole batch is refused before anything is XADDed."""
    async with membus.open(tmp_path, bus_config(redis_url)) as bus:
        agent = bus.agent("tester", "acme")
        await agent.publish("already there", scope="team")
        drafts = [membus.Draft(content=f"good {i}", scope="team") for i in range(5)]
        drafts.insert(3, membus.Draft(content="bad", scope="team/../x"))
        with pytest.raises(InvalidInput):
            await agent.publish_many(drafts)
        assert await bus.redis.xlen(TenantKeys("acme").events) == 1


@pytest.mark.anyio
async def test_unknown_publish_argument_is_refused(redis_url: str, tmp_path: Path) -> None:
    """Agent.publish spells out its parameters: an unknown one fails at the call (and in mypy);
    the untyped Bus.publish answers InvalidInput. Neither writes anything."""
    async with membus.open(tmp_path, bus_config(redis_url)) as bus:
        agent = bus.agent("tester", "acme")
        with pytest.raises(TypeError):
            await agent.publish("x", scope="team", **{"colour": "red"})
        with pytest.raises(InvalidInput):
            await bus.publish(agent.identity, "x", scope="team", colour="red")
        assert await bus.redis.exists(TenantKeys("acme").events) == 0


@pytest.mark.slow
def test_fuzzed_publish_through_the_bus_is_atomic(redis_url: str, tmp_path: Path) -> None:
    """Random drafts through ``SyncAgent.publish``: either one complete entry that decodes back to
    the same event, or InvalidInput and an unchanged stream."""
    stream = TenantKeys("acme").events
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    with membus.open_sync(tmp_path, bus_config(redis_url)) as bus:
        agent = bus.agent("tester", "acme")

        @settings(
            max_examples=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(content=texts, scope=scopes, meta=metadata)
        def publish_one(content: str, scope: str, meta: dict[str, Any]) -> None:
            before = client.xlen(stream)
            try:
                receipt = agent.publish(content, scope=scope, metadata=meta, wait=False)
            except InvalidInput as exc:
                assert exc.problems
                assert client.xlen(stream) == before
                return
            assert client.xlen(stream) == before + 1
            entries = client.xrange(stream, min=receipt.position, max=receipt.position)
            [(_, fields)] = cast(list[tuple[str, dict[str, str]]], entries)
            back = Event.from_json(fields["e"])
            assert (back.id, back.content, back.scope) == (receipt.event_id, content, scope)
            assert back.metadata == meta

        publish_one()
    client.close()


# -- created_at: bounded ahead of the server's clock, free in the past ---------------------------


def test_created_at_bound_is_the_future_only() -> None:
    """The bound in isolation: up to MAX_FUTURE_SKEW_S ahead of the given clock passes, beyond
    that InvalidInput names created_at and the bound; any past date passes (backfill)."""
    now = datetime.now(UTC).timestamp()

    def at(when: datetime) -> Event:
        return Event.build(tenant="acme", scope="team", agent="a", content="x", created_at=when)

    for ok in (
        datetime(1999, 1, 1, tzinfo=UTC),
        datetime.fromtimestamp(now + MAX_FUTURE_SKEW_S, UTC),
    ):
        check_created_at(at(ok), now)
    for bad in (
        datetime.fromtimestamp(now + MAX_FUTURE_SKEW_S + 1, UTC),
        datetime(2999, 1, 1, tzinfo=UTC),
    ):
        with pytest.raises(InvalidInput, match="created_at") as info:
            check_created_at(at(bad), now)
        assert info.value.problems[0]["field"] == "created_at"
        assert f"at most {MAX_FUTURE_SKEW_S:.0f} s in the future" in str(info.value)


@pytest.mark.slow
@pytest.mark.anyio
async def test_created_at_in_the_future_is_refused_at_the_door_naming_field_and_bound(
    redis_url: str, tmp_path: Path
) -> None:
    """The "dated 2999" attack: a version dated ahead of every real update would stay the current
    value of its key for ever. The door refuses a created_at more than MAX_FUTURE_SKEW_S ahead of
    the server's clock with InvalidInput naming the field and the bound, and writes nothing; a
    date within the skew (a publisher whose clock runs a little fast) is accepted."""
    keys = TenantKeys("acme")
    async with membus.open(tmp_path, bus_config(redis_url)) as bus:
        agent = bus.agent("tester", "acme")
        now = datetime.now(UTC)
        for ahead in (
            datetime(2999, 1, 1, tzinfo=UTC),
            now + timedelta(seconds=MAX_FUTURE_SKEW_S + 30),
        ):
            with pytest.raises(InvalidInput) as info:
                await agent.publish("price is 1 EUR", scope="team", key="price", created_at=ahead)
            [problem] = info.value.problems
            assert problem["field"] == "created_at"
            assert f"at most {MAX_FUTURE_SKEW_S:.0f} s in the future" in problem["reason"]
            assert "created_at" in str(info.value)
        with pytest.raises(InvalidInput):  # a batch with one such draft is refused whole
            await agent.publish_many(
                [
                    membus.Draft(content="fine", scope="team"),
                    membus.Draft(content="late", scope="team", created_at=datetime(2999, 1, 1)),
                ]
            )
        assert await bus.redis.exists(keys.events) == 0
        await agent.publish(
            "clock a bit fast", scope="team", created_at=now + timedelta(seconds=60)
        )
        assert await bus.redis.xlen(keys.events) == 1


@pytest.mark.slow
@pytest.mark.anyio
async def test_past_dates_stay_usable_for_backfill(redis_url: str, tmp_path: Path) -> None:
    """Backfill is a real use (eval locomo publishes sessions dated 2023; imports restore old
    versions): a created_at years in the past is accepted as given, and the versions of a key
    are ordered by it, so the later of two backfilled values is current."""
    config = MembusConfig(
        redis=RedisConfig(url=redis_url), policy=PolicyConfig(mode="open"), ranking=EVERY_HIT
    )
    async with membus.open(tmp_path, config) as bus:
        agent = bus.agent("tester", "acme")
        may, june = datetime(2023, 5, 8, 13, 56, tzinfo=UTC), datetime(2023, 6, 1, tzinfo=UTC)
        await agent.publish(
            "caroline lives in boston",
            scope="team",
            subject="caroline",
            key="home",
            created_at=june,
        )
        await agent.publish(
            "caroline lives in paris", scope="team", subject="caroline", key="home", created_at=may
        )
        await bus.drain(timeout_s=10)
        hits = await agent.recall("where does caroline live", k=5)
        [current] = [h.memory for h in hits if not h.memory.history]
        assert current.content == "caroline lives in boston" and current.valid_from == june
        then = await agent.recall("where does caroline live", k=5, as_of=may + timedelta(days=1))
        assert [h.memory.content for h in then] == ["caroline lives in paris"]
