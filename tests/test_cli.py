"""The ``membus`` CLI end to end against a real redis-server and an Edge store in a temp dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import redis
import structlog
from typer.testing import CliRunner, Result

import membus
from membus.cli.app import app
from membus.cli.output import unconfigure_logging
from membus.cli.settings import Settings
from membus.core.config import (
    EMBEDDED_WORKER,
    MembusConfig,
    PolicyConfig,
    RankingConfig,
    RedisConfig,
)
from membus.core.keys import TenantKeys, tenants_key

# every hit, however weak: relevance and min_score are tests/test_relevance.py's subject
EVERY_HIT = RankingConfig(min_score=0)

Invoke = Callable[..., Result]
WHO = ["--agent", "alice", "--tenant", "acme"]
# these tests share scopes between commands, not permissions: the documented open mode
OPEN_ENV = {"MEMBUS_POLICY_MODE": "open"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No MEMBUS_* from the outer shell; the CLI's structlog setup must not leak into others."""
    for name in list(os.environ):
        if name.startswith("MEMBUS_"):
            monkeypatch.delenv(name)
    yield
    structlog.reset_defaults()
    unconfigure_logging()


@pytest.fixture
def cli(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    """The CLI on the test Redis, in the open mode (these tests share scopes, not permissions)."""
    for name, value in OPEN_ENV.items():
        monkeypatch.setenv(name, value)
    # every hit, however weak: relevance and min_score are tests/test_relevance.py's subject
    monkeypatch.setenv("MEMBUS_RANKING__MIN_SCORE", "0")
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        base = ["--path", str(tmp_path), "--redis-url", redis_url]
        return runner.invoke(app, [*base, *args], input=input)

    return invoke


def drain(redis_url: str, path: Path) -> None:
    """What a running `membus worker` does, in process: commit everything published so far."""

    async def go() -> None:
        config = MembusConfig(
            policy=PolicyConfig(mode="open"),
            redis=RedisConfig(url=redis_url),
            worker=EMBEDDED_WORKER,
            writers=1,
            ranking=EVERY_HIT,
        )
        async with membus.open(path, config) as bus:
            await bus.drain(timeout_s=20)

    anyio.run(go)


def json_lines(text: str) -> list[object]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.slow
def test_publish_worker_recall_round_trip(cli: Invoke, redis_url: str, tmp_path: Path) -> None:
    out = cli(
        "--json",
        "publish",
        "printer on floor 3 jams on A3",
        "--scope",
        "team/support",
        *WHO,
        "--kind",
        "incident",
        "--meta",
        "ticket=42",
        "--no-wait",  # no writer yet: drain() below plays `membus worker`
    )
    assert out.exit_code == 0, out.output
    (receipt,) = json_lines(out.stdout)
    assert isinstance(receipt, dict) and receipt["scope"] == "team/support"

    batch = tmp_path / "drafts.jsonl"
    batch.write_text(
        '{"content": "VPN drops every hour on macOS", "scope": "team/it"}\n\n'
        '{"content": "refunds over 500 need a manager", "scope": "team/support/billing"}\n'
    )
    out = cli("publish", *WHO, "--file", str(batch), "--json", "--no-wait")
    assert out.exit_code == 0, out.output
    assert len(json_lines(out.stdout)) == 2

    drain(redis_url, tmp_path)

    out = cli("recall", "printer jams", *WHO, "--scope", "team/support", "-k", "5", "--json")
    assert out.exit_code == 0, out.output
    hits = orjson.loads(out.stdout)
    contents = [h["memory"]["content"] for h in hits]
    assert contents[0] == "printer on floor 3 jams on A3"
    assert "VPN drops every hour on macOS" not in contents  # outside the scope
    assert hits[0]["memory"]["kind"] == "incident"
    assert hits[0]["memory"]["metadata"] == {"ticket": "42"}
    assert hits[0]["score"] > 0

    out = cli("recall", "printer", *WHO, "--kind", "nothing-of-this-kind", "--json")
    assert orjson.loads(out.stdout) == []
    out = cli("recall", "printer", *WHO)  # the human table
    assert out.exit_code == 0 and "team/support" in out.stdout

    out = cli("tail", *WHO, "--from", "0", "--count", "3", "--json")
    assert out.exit_code == 0, out.output
    changes = json_lines(out.stdout)
    assert [c["op"] for c in changes] == ["upsert"] * 3  # type: ignore[index]


@pytest.mark.slow
def test_stats_json_reports_streams_groups_and_memories(
    cli: Invoke, redis_url: str, tmp_path: Path
) -> None:
    assert cli("publish", "hello", "--scope", "s", *WHO, "--no-wait").exit_code == 0
    before = orjson.loads(cli("stats", "--json").stdout)
    assert before["tenants"]["acme"]["events"] == 1
    drain(redis_url, tmp_path)
    out = cli("--json", "stats")
    assert out.exit_code == 0, out.output
    stats = orjson.loads(out.stdout)
    assert stats["memories"] == 1
    acme = stats["tenants"]["acme"]
    assert {"events": 1, "changes": 1, "dlq": 0}.items() <= acme.items()
    (group,) = acme["groups"]
    assert group["group"] == "writers" and group["pending"] == 0 and group["lag"] == 0


def test_invalid_input_exits_2_with_a_clear_message(cli: Invoke) -> None:
    out = cli("publish", "x", "--scope", "team/../secrets", *WHO)
    assert out.exit_code == 2
    assert out.stderr.startswith("error: invalid event: scope:") and "'..'" in out.stderr
    assert out.stdout == ""

    out = cli("--json", "publish", "x", "--scope", "Team", *WHO)
    assert out.exit_code == 2
    err = orjson.loads(out.stderr)["error"]
    assert err["code"] == "invalid_input" and err["problems"][0]["field"] == "scope"

    bad_line = cli("publish", *WHO, "--file", "-", input='{"content": "x", "scope": "ok"}\n{}\n')
    assert bad_line.exit_code == 2 and "line 2" in bad_line.stderr
    assert cli("recall", "q", *WHO, "--since", "yesterday").exit_code == 2
    assert cli("publish", "x", "--scope", "s", "--agent", "alice ", "--tenant", "t").exit_code == 2


def test_unreachable_redis_exits_4(tmp_path: Path) -> None:
    url = "redis://127.0.0.1:1/0"
    out = CliRunner().invoke(
        app, ["--path", str(tmp_path), "--redis-url", url, "dlq", "list", "--tenant", "acme"]
    )
    assert out.exit_code == 4 and out.stderr.startswith("error: redis unavailable")


@pytest.mark.slow
def test_dlq_list_replay_drop_round_trip(cli: Invoke, redis_url: str, tmp_path: Path) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = TenantKeys("acme")
    r.sadd(tenants_key(), "acme")
    r.xadd(keys.events, {"e": "not json"})
    drain(redis_url, tmp_path)  # the writer parks it

    letters = orjson.loads(cli("dlq", "list", "--tenant", "acme", "--json").stdout)
    (letter,) = letters
    assert letter["reason"] == "invalid" and letter["fields"] == {"e": "not json"}
    assert "id" in letter and cli("dlq", "list", "--tenant", "acme").exit_code == 0

    out = cli("dlq", "replay", "--tenant", "acme", "--id", letter["id"], "--json")
    assert out.exit_code == 0, out.output
    (done,) = orjson.loads(out.stdout)["replayed"]
    replayed: Any = r.xrange(keys.events, min=done["position"], max=done["position"])
    assert replayed[0][1] == {"e": "not json"}
    assert r.xlen(keys.dlq) == 0

    drain(redis_url, tmp_path)  # parked again
    out = cli("dlq", "replay", "--tenant", "acme", "--id", letter["id"], "--json")
    assert out.exit_code == 2 and orjson.loads(out.stderr)["error"]["code"] == "not_found"
    assert cli("dlq", "drop", "--tenant", "acme").exit_code == 2  # neither --id nor --all
    out = cli("dlq", "drop", "--tenant", "acme", "--all")
    assert out.exit_code == 0 and out.stdout.strip() == "dropped 1"
    assert r.xlen(keys.dlq) == 0
    r.close()


@pytest.mark.slow
def test_worker_process_commits_and_exits_0_on_sigterm(
    cli: Invoke, redis_url: str, tmp_path: Path
) -> None:
    args = ["--path", str(tmp_path), "--redis-url", redis_url, "worker", "--concurrency", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "membus.cli", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("MEMBUS_")}, **OPEN_ENV},
    )
    try:
        assert proc.stderr is not None
        # signal handlers are in place once it says so (a warning may come first: unpinned)
        lines = [proc.stderr.readline()]
        while "running" not in lines[-1] and len(lines) < 5:
            lines.append(proc.stderr.readline())
        assert "running" in lines[-1], lines
        assert cli("publish", "from outside", "--scope", "s", *WHO).exit_code == 0
        r = redis.Redis.from_url(redis_url, decode_responses=True)
        deadline = time.monotonic() + 15
        while r.xlen(TenantKeys("acme").changes) < 1:
            assert time.monotonic() < deadline, "the worker did not commit"
            time.sleep(0.05)
        r.close()
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        assert "1 written" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_env_settings_and_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMBUS_REDIS_URL", "redis://env:6379/0")
    monkeypatch.setenv("MEMBUS_WORKER__BATCH_SIZE", "7")
    monkeypatch.setenv("MEMBUS_STORE_ENGINE", "qdrant")
    monkeypatch.setenv("MEMBUS_PATH", "/data/membus")
    monkeypatch.setenv("MEMBUS_STORE_BUILD_UNDER_LOAD_S", "42")
    config = Settings.load(redis_url="redis://flag:6379/0").to_config()
    assert config.redis.url == "redis://flag:6379/0"
    assert config.store.build_under_load_s == 42.0
    assert config.worker.batch_size == 7 and config.worker.min_idle_ms == 30_000
    assert config.store.engine == "qdrant" and config.writers == 0
    assert Settings.load().data_dir == Path("/data/membus")
    monkeypatch.setenv("MEMBUS_WORKER__BATCH_SIZE", "0")
    out = CliRunner().invoke(app, ["stats"])
    assert out.exit_code == 2 and "worker.batch_size" in out.stderr


def test_policy_mode_is_private_unless_the_open_mode_is_asked_for(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No policy and no mode: private. ``MEMBUS_POLICY_MODE=open`` opens the tenant; the open
    mode with a policy file is refused (exit 2, naming the setting), never silently one of them;
    a private CLI refuses a shared scope with the way to grant it."""
    assert Settings.load().to_config().policy.mode == "private"
    monkeypatch.setenv("MEMBUS_POLICY_MODE", "OPEN")
    assert Settings.load().to_config().policy.mode == "open"
    policy = tmp_path / "p.csv"
    policy.write_text("p, *, acme, team/*, publish\n")
    with pytest.raises(membus.InvalidInput, match="mode='open'"):
        Settings.load(policy_file=policy).to_config()
    monkeypatch.setenv("MEMBUS_POLICY_MODE", "shared")
    with pytest.raises(membus.InvalidInput, match="policy_mode"):
        Settings.load()


def test_a_private_cli_refuses_shared_scopes_saying_how(
    cli: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI without a policy nor the open mode: a shared scope is refused (exit 3) with the
    policy line and the setting that would allow it; the agent's own scope works."""
    monkeypatch.delenv("MEMBUS_POLICY_MODE")
    out = cli("publish", "hello", "--scope", "team/a", *WHO)
    assert out.exit_code == 3, out.output
    assert "MEMBUS_POLICY_MODE=open" in out.stderr and "p, alice, acme, team/*" in out.stderr
    assert cli("publish", "hello", "--scope", "agent/alice", *WHO, "--no-wait").exit_code == 0


@pytest.mark.slow
def test_tail_follows_and_ctrl_c_exits_0(cli: Invoke, redis_url: str, tmp_path: Path) -> None:
    assert cli("publish", "first", "--scope", "s", *WHO, "--no-wait").exit_code == 0
    drain(redis_url, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "membus.cli", "--redis-url", redis_url, "tail", *WHO, "--from", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("MEMBUS_")}, **OPEN_ENV},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert " upsert s [observation] alice: first" in line
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_publish_waits_for_writers_by_default_and_says_when_none_runs(
    cli: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embedded, the command's own writer commits before it returns: the next command recalls
    it. On a shared Redis with no `membus worker`, the wait ends soon, saying so (exit 4),
    though the event is published; --no-wait returns at once."""
    monkeypatch.setenv("MEMBUS_POLICY_MODE", "open")
    runner, here = CliRunner(), ["--path", str(tmp_path / "embedded")]
    out = runner.invoke(app, [*here, "publish", "gate code is 4711", *WHO, "--json"])
    assert out.exit_code == 0, out.output
    assert orjson.loads(out.stdout)["scope"] == "agent/alice"  # no --scope: private
    out = runner.invoke(app, [*here, "recall", "gate code", *WHO, "--json"])
    assert [h["memory"]["content"] for h in orjson.loads(out.stdout)] == ["gate code is 4711"]

    started = time.monotonic()
    out = cli("publish", "nobody reads this", "--scope", "s", *WHO)
    assert out.exit_code == 4 and "no writer is running" in out.stderr
    assert time.monotonic() - started < 10
    assert cli("publish", "fire and forget", "--scope", "s", *WHO, "--no-wait").exit_code == 0
    out = cli("publish", "mixed-case ids", *["--agent", "Alice@Example.com", "--tenant", "acme"])
    assert out.exit_code == 4  # the id is accepted (encoded); only the writer is missing
