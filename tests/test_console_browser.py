"""The console in a real browser: Playwright driving Debian's Chromium, headless.

One server (the real embedded stack under uvicorn, in a thread with its own event loop) and one
browser serve the whole module; each test opens fresh browser contexts (its own cookies) for
the keys it signs in with. Screenshots of every page, at 1280x800 and at phone width, go to
``artifacts/console/`` (or ``$MEMBUS_ARTIFACTS/console``), which git ignores.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, expect, sync_playwright

from membus.bus.api import Bus
from tests.console_kit import ALICE, OPS, REVOKE, console_app, console_bus, park
from tests.redis_proc import RedisProcess, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("MEMBUS_ARTIFACTS", ROOT / "artifacts")) / "console"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
PAGES = ["memories", "feed", "access", "audit", "dead-letters", "erasure", "health"]
T = TypeVar("T")
FOLLOWING = re.compile("following", re.IGNORECASE)


def chromium() -> str | None:
    """Debian's chromium; installed here when missing and we may (root, apt-get), as .ci/run
    does. Playwright's own browser download needs a CDN this project does not rely on."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "chromium"],
            env=env,
            capture_output=True,
            timeout=900,
            check=False,
        )
        found = shutil.which("chromium")
    return found


class Served:
    """The console over a real bus, served by uvicorn from a thread with its own event loop
    (Playwright's sync API owns the test's thread)."""

    def __init__(self, tmp: Path, redis_url: str) -> None:
        self.tmp, self.redis_url = tmp, redis_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: uvicorn.Server | None = None
        self.bus: Bus | None = None
        self.failed: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by start()
            self.failed = exc
            self.ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        async with console_bus(self.tmp, self.redis_url) as bus:
            self.bus = bus
            config = uvicorn.Config(
                console_app(bus),  # type: ignore[arg-type]
                host="127.0.0.1",
                port=self.port,
                log_config=None,
                lifespan="off",
                timeout_graceful_shutdown=1,
            )
            self.server = uvicorn.Server(config)
            serving = asyncio.create_task(self.server.serve())
            while not self.server.started:  # noqa: ASYNC110 (uvicorn has no started event)
                await asyncio.sleep(0.01)
            self.ready.set()
            await serving

    def start(self) -> Served:
        self.thread.start()
        self.ready.wait(60)
        if self.failed is not None:
            raise self.failed
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.thread.join(30)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the server's loop (where the bus lives) and wait for it."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    @property
    def the_bus(self) -> Bus:
        assert self.bus is not None
        return self.bus


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    redis = RedisProcess(tmp_path_factory.mktemp("console-redis")).start()
    server = Served(tmp_path_factory.mktemp("console-data"), redis.url).start()
    yield server
    server.stop()
    redis.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium()
    if path is None:
        pytest.skip(
            "no chromium: not on PATH and `apt-get install -y chromium` was not possible "
            "here (not root, or no apt); .ci/run installs it"
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def sign_in(browser: Browser, served: Served, key: str, viewport: Any = None) -> Page:
    context = browser.new_context(viewport=viewport or DESKTOP, accept_downloads=True)
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.goto(served.url + "/ui/memories")  # not signed in: sent to the form
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    page.get_by_label("API key").fill(key)
    page.get_by_label("API key").press("Enter")  # keyboard: the form submits on Enter
    expect(page).to_have_url(re.compile(r"/ui/memories$"))
    return page


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def unlabelled(page: Page) -> list[str]:
    """Form controls a screen reader could not name."""
    found: list[str] = page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
            .map(e => e.name || e.id)"""
    )
    return found


def visible_text(page: Page, url: str) -> str:
    page.goto(url)
    return page.content()


def test_memories_appear_and_every_page_renders(browser: Browser, served: Served) -> None:
    """Agents publish and their memories appear; a keyed fact shows its versions and the store
    as of a past time; every page renders with labelled controls at 1280x800 and at phone
    width (no page wider than the screen), and the audit trail downloads."""
    bus = served.the_bus
    alice, bob = bus.agent("alice", "acme"), bus.agent("bob", "acme")

    async def publish() -> datetime:
        await alice.publish(
            "Customer 42 is on the basic plan.", "team/support", subject="customer:42", key="plan"
        )
        await bus.drain(10)
        # the form takes whole seconds: a mark on a second boundary between the two versions
        between = (datetime.now(UTC) + timedelta(seconds=1)).replace(microsecond=0)
        await asyncio.sleep((between - datetime.now(UTC)).total_seconds() + 0.05)
        await bob.publish(
            "Customer 42 upgraded to the premium plan.",
            "team/support",
            subject="customer:42",
            key="plan",
        )
        await alice.publish("Customer 7 prefers email over phone.", "team/support")
        await bob.publish("Release 2.3 ships on Thursday.", "team/eng", kind="event")
        await alice.publish("Escalations go to the on-call lead first.", "team/support")
        await bus.drain(10)
        return between

    between = served.run(publish())
    page = sign_in(browser, served, OPS)
    asked: list[str] = []  # every URL the pages load: nothing from a CDN or any other origin
    page.on("request", lambda r: asked.append(r.url))
    assert "membus_console" not in page.evaluate("document.cookie")  # HttpOnly: no script
    expect(page.get_by_text("Customer 42 upgraded to the premium plan.")).to_be_visible()
    expect(page.get_by_text("Release 2.3 ships on Thursday.")).to_be_visible()
    expect(page.get_by_text("Customer 42 is on the basic plan.")).to_have_count(0)  # superseded
    shot(page, "memories")

    page.get_by_role("link", name="Customer 42 upgraded to the premium plan.").click()
    expect(page.get_by_role("heading", name="Versions")).to_be_visible()
    expect(page.get_by_text("Customer 42 is on the basic plan.")).to_be_visible()
    shot(page, "memory-versions")

    page.goto(served.url + "/ui/memories")
    page.get_by_label("The store as of (UTC)").fill(between.strftime("%Y-%m-%dT%H:%M:%S"))
    page.get_by_label("Subjects").fill("customer:42")
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_text("Customer 42 is on the basic plan.")).to_be_visible()
    expect(page.get_by_text("Customer 42 upgraded to the premium plan.")).to_have_count(0)
    shot(page, "memories-as-of")

    page.goto(served.url + "/ui/memories")
    # a question in the memory's own words: the default relevance threshold (issue 16) drops
    # a paraphrase that shares only "customer 7" with it
    page.get_by_label("Search by meaning").fill("does customer 7 prefer email or phone")
    page.get_by_label("Search by meaning").press("Enter")
    expect(page.locator("tbody tr").first).to_contain_text("Customer 7 prefers email")

    page.goto(served.url + "/ui/access")
    page.get_by_label("Agent", exact=True).fill("alice")
    page.get_by_label("Scope", exact=True).fill("team/support")
    page.get_by_label("Item label").select_option("confidential")
    page.get_by_role("button", name="Ask").click()
    verdict = page.locator(".verdict")
    expect(verdict).to_contain_text("Denied")
    expect(verdict).to_contain_text("g2, *, internal, acme")
    page.get_by_label("Item label").select_option("internal")
    page.get_by_role("button", name="Ask").click()
    expect(verdict).to_contain_text("Allowed")
    expect(verdict).to_contain_text("p, role:team, acme, team/*")
    shot(page, "access-what-if")

    page.goto(served.url + "/ui/audit?agent=alice")
    expect(page.locator("tbody")).to_contain_text("publish")
    for fmt, first_line in (("CSV", "at,agent,action"), ("JSONL", '{"at":')):
        with page.expect_download() as got:
            page.get_by_role("link", name=fmt).click()
        body = Path(got.value.path()).read_text()
        assert body.startswith(first_line), body[:80]
        assert "alice" in body

    for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        for name in PAGES:
            page.goto(f"{served.url}/ui/{name}")
            expect(page.get_by_role("heading", level=1)).to_be_visible()
            assert unlabelled(page) == [], name
            assert page.evaluate("document.documentElement.scrollWidth <= innerWidth + 1"), name
            shot(page, f"{name}-{size}")
    assert asked and all(url.startswith(served.url + "/") for url in asked), asked
    # keyboard: the skip link is the first stop and lands on the page's content
    page.set_viewport_size(DESKTOP)
    page.goto(served.url + "/ui/memories")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.context.close()


def test_forget_from_the_console_removes_it_from_recall_and_the_feed(
    browser: Browser, served: Served
) -> None:
    """A memory seen live in the feed, forgotten from the Erasure page (after confirming):
    the report counts it, the feed drops it, recall no longer finds it."""
    bus = served.the_bus
    ops = bus.agent("ops", "acme")
    feed = sign_in(browser, served, OPS)
    feed.goto(served.url + "/ui/feed?scope=team/ops")
    expect(feed.locator("#feed-status")).to_contain_text(FOLLOWING)
    served.run(ops.publish("The vault combination is 31-7-19.", "team/ops", subject="vault"))
    row = feed.locator("#feed tr", has_text="The vault combination is 31-7-19.")
    expect(row).to_have_count(1)
    shot(feed, "feed-live")

    async def find() -> list[str]:
        hits = await ops.recall("vault combination", scopes=["team/ops"])
        return [h.memory.id for h in hits if "31-7-19" in h.memory.content]

    [memory_id] = served.run(find())
    erase = feed.context.new_page()
    erase.goto(f"{served.url}/ui/erasure?memory_id={memory_id}")
    expect(erase.get_by_label("Memory ids")).to_have_value(memory_id)
    erase.get_by_role("button", name="Forget").click()  # not confirmed: nothing happens
    expect(erase.get_by_role("alert")).to_contain_text("Tick the confirmation")
    assert served.run(find()) == [memory_id]
    erase.get_by_label("I understand").focus()
    erase.keyboard.press("Space")
    erase.get_by_role("button", name="Forget").click()
    report = erase.locator(".report")
    expect(report).to_contain_text("Memories erased")
    expect(report.locator("dd").first).to_have_text("1")
    expect(report).to_contain_text(memory_id)
    shot(erase, "erasure-report")

    expect(row).to_have_count(0)  # the live feed dropped it on the delete notice
    expect(feed.locator("#feed")).to_contain_text(f"memory {memory_id} forgotten")
    assert served.run(find()) == []
    feed.reload()
    expect(feed.locator("#feed-status")).to_contain_text(FOLLOWING)
    feed.wait_for_timeout(500)  # the backlog has been delivered by now
    assert "31-7-19" not in feed.content()
    feed.context.close()


def test_a_revoked_grant_hides_a_memory_from_the_agents_view(
    browser: Browser, served: Served
) -> None:
    """Alice sees a team memory; an operator removes her role on the Access page; her very
    next page no longer shows it, and its own page reads as not found."""
    bus = served.the_bus

    async def publish() -> str:
        receipt = await bus.agent("bob", "acme").publish("Team lunch is on Friday.", "team/lunch")
        await bus.drain(10)
        [m] = (await bus.list(bus.agent("ops", "acme").identity, scopes=["team/lunch"])).memories
        assert receipt.event_id in m.source_events
        return m.id

    memory_id = served.run(publish())
    alice = sign_in(browser, served, ALICE)
    alice.goto(served.url + "/ui/memories?scope=team/lunch")
    expect(alice.get_by_text("Team lunch is on Friday.")).to_be_visible()

    ops = sign_in(browser, served, OPS)
    ops.goto(served.url + "/ui/access")
    expect(ops.locator(".lines")).to_contain_text(REVOKE)
    ops.get_by_label("Policy line").fill(REVOKE)
    ops.get_by_role("button", name="Remove line").click()
    expect(ops.locator(".lines")).not_to_contain_text(REVOKE)
    shot(ops, "access-revoked")

    alice.goto(served.url + "/ui/memories")
    expect(alice.get_by_role("status")).to_contain_text("0 memories")
    assert "Team lunch" not in alice.content()
    alice.goto(f"{served.url}/ui/memories/{memory_id}")
    expect(alice.get_by_role("heading", level=1)).to_have_text("Not found")
    # and back: the grant restored, the memory shows again
    ops.get_by_label("Policy line").fill(REVOKE)
    ops.get_by_role("button", name="Add line").click()
    expect(ops.locator(".lines")).to_contain_text(REVOKE)
    alice.goto(served.url + "/ui/memories?scope=team/lunch")
    expect(alice.get_by_text("Team lunch is on Friday.")).to_be_visible()
    alice.context.close()
    ops.context.close()


def test_a_dead_letter_replayed_from_the_console_is_committed(
    browser: Browser, served: Served
) -> None:
    """A parked event shows with its reason; Replay sends it back and writers commit it."""
    bus = served.the_bus
    letter = served.run(park(bus, "ops", "team/ops", "Parked, then replayed from the console."))
    ops = sign_in(browser, served, OPS)
    ops.goto(served.url + "/ui/dead-letters")
    row = ops.locator(f'tr[data-letter="{letter}"]')
    expect(row).to_contain_text("poison")
    expect(row).to_contain_text("Parked, then replayed from the console.")
    shot(ops, "dead-letters-parked")
    row.get_by_role("button", name=f"Replay {letter}").click()
    expect(ops.get_by_role("status").first).to_contain_text(f"Replayed {letter}")
    expect(ops.locator(f'tr[data-letter="{letter}"]')).to_have_count(0)
    served.run(bus.drain(10))
    ops.goto(served.url + "/ui/memories?scope=team/ops")
    expect(ops.get_by_text("Parked, then replayed from the console.")).to_be_visible()
    ops.context.close()


def test_an_agent_key_sees_nothing_of_another_agents_private_scope(
    browser: Browser, served: Served
) -> None:
    """Attacker in the browser: alice opens every page, with every parameter aimed at bob's
    private scope, and follows the live feed while bob writes there. None of it shows."""
    bus = served.the_bus
    bob = bus.agent("bob", "acme")
    leaks = ("8642", "1357", "pin is")

    async def private() -> None:
        await bob.publish("bob's pin is 8642", "agent/bob/notes", subject="pin", key="pin")
        await bus.drain(10)
        await park(bus, "bob", "agent/bob/notes", "bob's pin is 8642 (parked)")

    served.run(private())
    alice = sign_in(browser, served, ALICE)
    alice.goto(served.url + "/ui/feed")
    expect(alice.locator("#feed-status")).to_contain_text(FOLLOWING)
    served.run(bob.publish("bob's new pin is 1357", "agent/bob/notes", subject="pin", key="pin"))
    served.run(bob.publish("team ping from bob", "team/general"))
    expect(alice.locator("#feed")).to_contain_text("team ping from bob")
    feed_html = alice.content()
    assert not any(leak in feed_html for leak in leaks)
    urls = [f"{served.url}/ui/{name}" for name in PAGES]
    for q in ("scope=agent/bob", "agent=bob", "subject=pin", "q=pin", "as_of=2100-01-01T00:00"):
        urls += [f"{served.url}/ui/memories?{q}", f"{served.url}/ui/feed?{q}"]
    urls += [f"{served.url}/ui/audit?scope=agent/bob", f"{served.url}/ui/audit?scope=agent"]
    started = time.monotonic()
    for url in urls:
        html = visible_text(alice, url)
        assert not any(leak in html for leak in leaks), url
        if "/ui/feed" in url:
            alice.wait_for_timeout(200)  # whatever the stream would deliver, let it arrive
            assert not any(leak in alice.content() for leak in leaks), url
    assert time.monotonic() - started < 120
    alice.goto(served.url + "/ui/health")
    expect(alice.get_by_role("heading", level=1)).to_have_text("Not allowed")
    shot(alice, "agent-view-health-refused")
    alice.goto(served.url + "/ui/access")
    assert "agent/bob" not in alice.locator(".lines").inner_text()
    alice.context.close()
