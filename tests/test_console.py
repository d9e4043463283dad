"""The web console in process (httpx over ASGI): sign-in, CSRF, and the gate behind every page.

The browser tests (tests/test_console_browser.py) drive the same pages in Chromium.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import orjson
import pytest

from membus.access.audit import AuditRecord
from membus.bus.api import Bus
from membus.core.keys import TenantKeys
from membus.stream import dlq
from tests.console_kit import (
    ALICE,
    BOB,
    OPS,
    PROM,
    REVOKE,
    ZED,
    console_app,
    console_bus,
    csrf_of,
    park,
    sign_in,
)

pytestmark = pytest.mark.anyio

PAGES = ["/ui/memories", "/ui/feed", "/ui/access", "/ui/audit", "/ui/dead-letters"]
PAGES += ["/ui/erasure", "/ui/health"]


@asynccontextmanager
async def console(
    tmp_path: Path, redis_url: str, base_url: str = "http://membus"
) -> AsyncIterator[tuple[Bus, httpx.AsyncClient]]:
    async with console_bus(tmp_path, redis_url) as bus:
        transport = httpx.ASGITransport(app=console_app(bus))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
            yield bus, http


def session_cookie(r: httpx.Response) -> str:
    return next(
        v for k, v in r.headers.multi_items() if k == "set-cookie" and "membus_console=" in v
    )


@pytest.mark.slow
async def test_every_page_asks_to_sign_in_first(tmp_path: Path, redis_url: str) -> None:
    """No session: a page redirects to the sign-in form, a POST is refused, nothing is shown."""
    async with console(tmp_path, redis_url) as (_, http):
        for path in [*PAGES, "/ui/memories/01J00000000000000000000000", "/ui/feed/stream"]:
            r = await http.get(path)
            assert (r.status_code, r.headers["location"]) == (303, "/ui/login"), path
        for path in ["/ui/erasure", "/ui/access/what-if", "/ui/dead-letters", "/ui/logout"]:
            r = await http.post(path, data={"confirm": "yes", "scope": "team"})
            assert r.status_code == 401, path
        # a made-up session cookie is no session
        http.cookies.set("membus_console", "forged-session-token", path="/ui")
        assert (await http.get("/ui/memories")).status_code == 303


@pytest.mark.slow
async def test_sign_in_cookie_is_strict_http_only_and_never_the_key(
    tmp_path: Path, redis_url: str
) -> None:
    """The cookie is an opaque session token (HttpOnly, SameSite=Strict, path /ui, Secure over
    https); unknown and metrics-only keys are refused; sign-out ends the session server-side."""
    async with console(tmp_path, redis_url) as (_, http):
        form = await http.get("/ui/login")
        nonce = form.text.split('name="nonce" value="')[1].split('"')[0]
        r = await http.post("/ui/login", data={"key": "mbk_not-a-key-0123456789", "nonce": nonce})
        assert r.status_code == 401 and "not known" in r.text
        form = await http.get("/ui/login")
        nonce = form.text.split('name="nonce" value="')[1].split('"')[0]
        r = await http.post("/ui/login", data={"key": PROM, "nonce": nonce})
        assert r.status_code == 403
        form = await http.get("/ui/login")
        nonce = form.text.split('name="nonce" value="')[1].split('"')[0]
        r = await http.post("/ui/login", data={"key": ALICE, "nonce": nonce})
        assert r.status_code == 303
        cookie = next(
            v for k, v in r.headers.multi_items() if k == "set-cookie" and "membus_console=" in v
        )
        attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
        assert {"httponly", "path"} <= attrs and "samesite=strict" in cookie.lower()
        assert "secure" not in attrs  # plain http: a Secure cookie would never come back
        assert ALICE not in cookie
        token = cookie.split("membus_console=")[1].split(";")[0]
        page = await http.get("/ui/memories")
        assert page.status_code == 200 and "alice@acme" in page.text
        await http.post("/ui/logout", data={"csrf": csrf_of(page.text)})
        # the old token, replayed by whoever copied it, no longer opens anything
        http.cookies.clear()
        http.cookies.set("membus_console", token, path="/ui")
        assert (await http.get("/ui/memories")).status_code == 303
    async with console(tmp_path / "https", redis_url, "https://membus") as (_, http):
        form = await http.get("/ui/login")
        nonce = form.text.split('name="nonce" value="')[1].split('"')[0]
        r = await http.post("/ui/login", data={"key": ALICE, "nonce": nonce})
        cookie = next(
            v for k, v in r.headers.multi_items() if k == "set-cookie" and "membus_console=" in v
        )
        assert "secure" in {a.strip().lower() for a in cookie.split(";")}


@pytest.mark.slow
async def test_every_post_needs_the_session_csrf_token_and_our_origin(
    tmp_path: Path, redis_url: str
) -> None:
    """A forged cross-site POST (no token, a wrong token, another origin) changes nothing: no
    erasure, no policy change, no dead letter replayed; a login without the form's nonce is
    refused (no signing a browser in under an attacker's key)."""
    async with console(tmp_path, redis_url) as (bus, http):
        await bus.agent("ops", "acme").publish("keep me", "team/x")
        await bus.drain(10)
        letter = await park(bus, "ops", "team/x", "parked")
        csrf = await sign_in(http, OPS)
        posts = {
            "/ui/erasure": {"scope": "team", "confirm": "yes"},
            "/ui/access/policy": {"line": REVOKE, "op": "remove"},
            "/ui/dead-letters": {"id": letter, "op": "drop"},
            "/ui/access/what-if": {"agent": "alice", "scope": "team/x"},
            "/ui/logout": {},
        }
        for path, data in posts.items():
            for token, headers in (
                (None, {}),
                ("x" * len(csrf), {}),
                (csrf, {"origin": "https://evil.example"}),
            ):
                body = data if token is None else {**data, "csrf": token}
                r = await http.post(path, data=body, headers=headers)
                assert r.status_code == 403, (path, token, headers)
        assert [m.content for m in (await bus.list(bus.agent("ops", "acme").identity)).memories]
        assert len(await dlq.list_dead(bus.redis, "acme")) == 1
        alice = bus.agent("alice", "acme").identity
        assert (await bus.gate.decision(alice, "recall", "team/x")).allowed
        assert (await http.get("/ui/memories")).status_code == 200  # still signed in
        # the same POSTs with the token do act
        r = await http.post("/ui/dead-letters", data={"id": letter, "op": "drop", "csrf": csrf})
        assert r.status_code == 200 and "Dropped" in r.text
        # login CSRF: a form posted from elsewhere carries no nonce matching our cookie
        http.cookies.clear()
        r = await http.post("/ui/login", data={"key": OPS, "nonce": "guessed"})
        assert r.status_code == 403


@pytest.mark.slow
async def test_agent_key_sees_nothing_of_another_agents_private_scope(
    tmp_path: Path, redis_url: str
) -> None:
    """Attacker: alice's key tries every page and every parameter on bob's private scope (its
    memories, versions, as-of views, feed, policy lines, what-if, audit, dead letters, erasure,
    health). Bob's secret and his memory ids never appear, and nothing of his is erased."""
    secret, old = "bob's locker code is 4711", "bob's locker code was 1234"
    leaks = ("4711", "1234", "code is", "code was")  # the parts no query of alice's names
    async with console(tmp_path, redis_url) as (bus, http):
        bob = bus.agent("bob", "acme")
        await bob.publish(old, "agent/bob/notes", subject="locker", key="code")
        await bus.drain(10)
        await bob.publish(secret, "agent/bob/notes", subject="locker", key="code")
        await bob.publish("team note", "team/general")
        await bus.drain(10)
        mine = [m.id for m in await bob.history(subject="locker", key="code")]
        assert len(mine) == 2
        letter = await park(bus, "bob", "agent/bob/notes", secret)
        csrf = await sign_in(http, ALICE)
        gets = [*PAGES]
        for mid in mine:
            gets += [f"/ui/memories/{mid}", f"/ui/erasure?memory_id={mid}"]
        for q in (
            "scope=agent/bob",
            "scope=agent/bob/notes",
            "scope=agent",
            "agent=bob",
            "subject=locker",
            "q=locker+code",
            "q=locker&scope=agent/bob",
            "as_of=2100-01-01T00:00",
            "kind=fact&agent=bob&since=2000-01-01T00:00",
            f"cursor={'A' * 40}",
            # the context panel (issue 20): the same gate, whatever the tiers look for
            "budget=500",
            "q=locker+code&budget=500",
            "subject=locker&budget=500",
            "budget=500&scope=agent/bob",
        ):
            gets += [f"/ui/memories?{q}", f"/ui/feed?{q}"]
        for q in ("scope=agent/bob", "scope=agent", "agent=bob&scope=team", "format=csv"):
            gets += [f"/ui/audit?{q}", f"/ui/audit?{q}&format=jsonl"]
        # (a stream alice may open never ends over ASGI: the browser test reads her live feed)
        gets += ["/ui/feed/stream?scope=agent/bob", "/ui/feed/stream?scope=agent/bob/notes"]
        gets += ["/ui/access?agent=bob", "/ui/health?tenant=acme", "/ui/dead-letters?all=1"]
        seen = []
        for path in gets:
            r = await http.get(path)
            seen.append((path, r.status_code, r.text))
            if any(mid in path for mid in mine) and path.startswith("/ui/memories/"):
                # bob's id reads exactly like an id that never existed
                assert r.status_code == 404
                fake = await http.get("/ui/memories/" + "0" * 8 + mine[0][8:])
                assert r.text.replace(path.rsplit("/", 1)[1], "?") == fake.text.replace(
                    "0" * 8 + mine[0][8:], "?"
                )
        posts = [
            ("/ui/access/what-if", {"agent": "bob", "scope": "agent/bob/notes"}),
            ("/ui/dead-letters", {"id": letter, "op": "replay"}),
            ("/ui/dead-letters", {"id": letter, "op": "drop"}),
            ("/ui/erasure", {"memory_ids": " ".join(mine), "confirm": "yes"}),
            ("/ui/erasure", {"agent": "bob", "confirm": "yes"}),
            ("/ui/erasure", {"scope": "agent/bob", "confirm": "yes"}),
            ("/ui/access/policy", {"line": "p, alice, acme, agent/bob/*, recall", "op": "add"}),
        ]
        for path, data in posts:
            r = await http.post(path, data={**data, "csrf": csrf})
            seen.append((f"{path} {data}", r.status_code, r.text))
        for path, status, text in seen:
            assert status < 500, (path, text)
            assert not any(leak in text for leak in leaks), path
            # (an id alice typed may be echoed back to her; no other id of bob's may show)
            assert not any(mid in text for mid in mine if mid not in path), path
            assert "agent/bob/notes" not in text or "agent/bob/notes" in path, path
        # nothing of bob's was touched, and the policy was not widened
        assert [m.id for m in await bob.history(subject="locker", key="code")] == mine
        assert len(await dlq.list_dead(bus.redis, "acme")) == 1
        alice = bus.agent("alice", "acme").identity
        assert not (await bus.gate.decision(alice, "recall", "agent/bob/notes")).allowed
        # what alice may see she does see (the test would pass on an empty console otherwise)
        page = await http.get("/ui/memories")
        assert "team note" in page.text
        ctx = await http.get("/ui/memories?q=team+note&budget=300")
        assert "The context alice would get for this query" in ctx.text
        assert ctx.text.count("team note") >= 2  # in the list and in the context panel


@pytest.mark.slow
async def test_policy_edits_stay_in_the_operators_tenant(tmp_path: Path, redis_url: str) -> None:
    """Only an operator key edits the policy, and only its own tenant's lines."""
    async with console(tmp_path, redis_url) as (bus, http):
        csrf = await sign_in(http, ZED)  # operator of tenant "other"
        for line in ("p, zed, acme, team/*, recall", "g, zed, role:team, acme"):
            r = await http.post("/ui/access/policy", data={"line": line, "csrf": csrf})
            assert r.status_code == 403, line
        zed_in_acme = bus.agent("zed", "acme").identity
        assert not (await bus.gate.decision(zed_in_acme, "recall", "team/x")).allowed
        csrf = await sign_in(http, BOB)  # an agent key, not an operator
        r = await http.post(
            "/ui/access/policy", data={"line": "p, bob, acme, agent/alice/*, recall", "csrf": csrf}
        )
        assert r.status_code == 403
        page = await http.get("/ui/access")
        assert "role:team" in page.text and "p, ops," not in page.text  # bob's lines only
        csrf = await sign_in(http, OPS)
        r = await http.post(
            "/ui/access/policy", data={"line": REVOKE, "op": "remove", "csrf": csrf}
        )
        assert (r.status_code, r.headers["location"]) == (303, "/ui/access")
        alice = bus.agent("alice", "acme").identity
        assert not (await bus.gate.decision(alice, "recall", "team/x")).allowed


@pytest.mark.slow
async def test_audit_downloads_and_a_formula_never_reaches_a_spreadsheet(
    tmp_path: Path, redis_url: str
) -> None:
    """CSV and JSONL hold the filtered records; a cell that would run as a formula is quoted."""
    async with console(tmp_path, redis_url) as (bus, http):
        await bus.agent("alice", "acme").publish("x", "team/x")
        await bus.audit.record(
            AuditRecord(
                tenant="acme",
                agent="alice",
                action="recall",
                scope="team/x",
                decision="deny",
                reason='=HYPERLINK("http://evil.example")',
            )
        )
        csrf = await sign_in(http, OPS)
        assert csrf
        r = await http.get("/ui/audit?agent=alice&format=csv")
        assert r.headers["content-disposition"].startswith("attachment")
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert {row["action"] for row in rows} == {"recall", "publish"}
        assert all(row["agent"] == "alice" for row in rows)
        assert [row["reason"] for row in rows if row["reason"]] == [
            '\'=HYPERLINK("http://evil.example")'
        ]
        r = await http.get("/ui/audit?agent=alice&decision=deny&format=jsonl")
        lines = [orjson.loads(line) for line in r.text.splitlines()]
        assert [(x["action"], x["decision"]) for x in lines] == [("recall", "deny")]
        page = await http.get("/ui/audit?decision=deny")
        assert "HYPERLINK" not in page.text or "&#34;" in page.text or "&quot;" in page.text
        # headers that keep the pages from being framed, sniffed or scripted from elsewhere
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert page.headers["x-frame-options"] == "DENY"
        assert TenantKeys("acme").events  # the tenant the records came from
