"""The admin CLI (audit, forget, policy, keys, serve, eval) against a real redis-server.

Each test names the promise it protects: what an operator or a script reading ``--json`` relies
on, and the exit codes (2 fix the call, 3 denied, 4 try later) that tell them apart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import structlog
from typer.testing import CliRunner, Result

from membus.access.signing import authority_public_key, load_master
from membus.access.watch import DEFAULT_CHANNEL
from membus.cli.app import app
from membus.cli.output import unconfigure_logging
from membus.cli.settings import Settings
from membus.core.keys import TenantKeys, tenants_key
from membus.service.auth import ApiKeys
from tests.redis_proc import free_port

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "policies" / "example.csv"
Invoke = Callable[..., Result]
ALICE = ["--agent", "alice", "--tenant", "acme"]
CAROL = ["--agent", "carol", "--tenant", "acme"]


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
    """The CLI on the test Redis with the example policy; one in-process writer, so ``recall``
    commits what earlier commands published before it searches."""
    monkeypatch.setenv("MEMBUS_WRITERS", "1")
    # every hit, however weak: relevance and min_score are tests/test_relevance.py's subject
    monkeypatch.setenv("MEMBUS_RANKING__MIN_SCORE", "0")
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        base = ["--path", str(tmp_path / "bus"), "--redis-url", redis_url, "--policy", str(POLICY)]
        return runner.invoke(app, [*base, *args])

    return invoke


def _json(out: Result) -> Any:
    assert out.exit_code == 0, out.output
    return orjson.loads(out.stdout)


# -- audit --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_audit_lists_allowed_calls_and_the_denied_publish(cli: Invoke) -> None:
    assert (
        cli("publish", "printer jams", "--scope", "team/support", *ALICE, "--no-wait").exit_code
        == 0
    )
    assert cli("recall", "printer", *ALICE, "--json").exit_code == 0
    denied = cli("publish", "reorg plan", "--scope", "org/plans", *ALICE)
    assert denied.exit_code == 3 and "may not publish" in denied.stderr

    records = _json(cli("audit", "--tenant", "acme", "--json"))
    seen = [(r["action"], r["scope"], r["decision"]) for r in records]
    assert seen == [  # newest first
        ("publish", "org/plans", "deny"),
        ("recall", "*", "allow"),
        ("publish", "team/support", "allow"),
    ]
    assert records[0]["agent"] == "alice" and "rule" not in records[0]  # nothing allowed it
    assert "team/support/*" in records[2]["rule"]
    assert "printer" not in orjson.dumps(records).decode()  # ids only, never content

    (deny,) = _json(cli("audit", "--tenant", "acme", "--decision", "deny", "--json"))
    assert deny["scope"] == "org/plans"
    assert _json(cli("audit", "--tenant", "acme", "--action", "recall", "--json"))[0]["agent"]
    assert len(_json(cli("audit", "--tenant", "acme", "--since", "1h", "--limit", "2", "--json")))
    assert _json(cli("audit", "--tenant", "acme", "--agent", "bob", "--json")) == []
    assert _json(cli("audit", "--tenant", "acme", "--until", "2000-01-01", "--json")) == []
    table = cli("audit", "--tenant", "acme", "--scope", "org")
    assert table.exit_code == 0 and "org/plans" in table.stdout and "deny" in table.stdout
    assert cli("audit", "--tenant", "acme", "--since", "last week").exit_code == 2
    assert cli("audit", "--tenant", "acme", "--action", "delete").exit_code == 2


# -- forget -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_forget_erases_what_it_reports_and_respects_the_gate(cli: Invoke) -> None:
    for text, subject in (("refund for order 7", "order-7"), ("refund for order 8", "order-8")):
        out = cli(
            "publish", text, "--scope", "team/support", "--subject", subject, *CAROL, "--no-wait"
        )
        assert out.exit_code == 0, out.output
    hits = _json(cli("recall", "refund", *CAROL, "--json"))
    assert len(hits) == 2

    # alice is support, not a lead: she may not forget in team/support
    assert cli("forget", *ALICE, "--scope", "team/support").exit_code == 3
    assert cli("forget", *CAROL).exit_code == 2  # no criterion: refused, not "everything"

    report = _json(cli("forget", *CAROL, "--subject", "order-7", "--json"))
    assert report["memories"] == 1 and report["tombstones"] >= 1
    (gone,) = report["memory_ids"]
    left = _json(cli("recall", "refund", *CAROL, "--json"))
    assert [h["memory"]["subject"] for h in left] == ["order-8"]

    out = cli("forget", *CAROL, "--memory-id", left[0]["memory"]["id"])
    assert out.exit_code == 0 and out.stdout.startswith("forgot 1 memories")
    assert _json(cli("recall", "refund", *CAROL, "--json")) == []
    forgets = _json(cli("audit", "--tenant", "acme", "--action", "forget", "--json"))
    assert [(f["agent"], f["decision"]) for f in forgets] == [
        ("carol", "allow"),
        ("carol", "allow"),
        ("alice", "deny"),
    ]
    # the audit says who forgot and how much, never what (issue 15: no erased ids in it)
    assert forgets[1]["memory_ids"] == [] and forgets[1]["result_count"] == 1
    assert gone not in orjson.dumps(forgets).decode()


def test_denied_forget_on_the_embedded_bus_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """An error raised inside the embedded runtime's task group reaches the user as itself."""
    args = ["--path", str(tmp_path), "--policy", str(POLICY), "forget", *ALICE, "--scope", "org"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 3, out.output
    assert out.stderr.strip().splitlines() == [
        "error: agent 'alice' may not forget scope 'org' in tenant 'acme'"
    ]


# -- policy -------------------------------------------------------------------------------------


def test_policy_check_prints_decision_and_rule_and_exits_3_on_deny(cli: Invoke) -> None:
    out = cli("policy", "check", *CAROL, "--action", "forget", "--scope", "team/support/x")
    assert out.exit_code == 0
    assert out.stdout.startswith("allow  p, role:support-lead, acme, team/support/*, forget")

    bob = ["--agent", "bob", "--tenant", "acme"]
    out = cli(
        "policy", "check", *bob, "--action", "recall", "--scope", "team/support/billing/q", "--json"
    )
    assert out.exit_code == 3
    assert orjson.loads(out.stdout) == {
        "tenant": "acme",
        "agent": "bob",
        "action": "recall",
        "scope": "team/support/billing/q",
        "decision": "deny",
        "rule": "p, bob, acme, team/support/billing/*, recall|subscribe, deny",
    }
    assert cli("policy", "check", *bob, "--action", "recall", "--scope", "a/../b").exit_code == 2
    # a question, not an act: nothing is audited
    assert _json(cli("audit", "--tenant", "acme", "--json")) == []


def test_policy_check_without_a_policy_reports_the_private_default(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No policy: only the agent's own agent/<self> is allowed, a refusal says how to grant
    (exit 3); MEMBUS_POLICY_MODE=open reports the open gate."""
    own = ["--redis-url", redis_url, "policy", "check", *ALICE, "--action", "recall"]
    out = CliRunner().invoke(app, [*own, "--scope", "agent/alice/notes"])
    assert out.exit_code == 0 and out.stdout.startswith("allow  private default")
    out = CliRunner().invoke(app, [*own, "--scope", "agent/alice2"])
    assert out.exit_code == 3 and "MEMBUS_POLICY_MODE=open" in out.stdout
    monkeypatch.setenv("MEMBUS_POLICY_MODE", "open")
    args = [
        "--redis-url",
        redis_url,
        "policy",
        "check",
        *ALICE,
        "--action",
        "admin",
        "--scope",
        "org",
    ]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0 and out.stdout.startswith("allow  open gate")


def test_policy_reload_rereads_and_announces_to_other_processes(
    cli: Invoke, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    listener = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    listener.subscribe(DEFAULT_CHANNEL)
    try:
        out = _json(cli("policy", "reload", "--json"))
        assert out["source"] == str(POLICY) and out["lines"] == 17 and out["announced"]
        deadline = time.monotonic() + 5
        msg = None
        while msg is None and time.monotonic() < deadline:
            msg = listener.get_message(timeout=0.2)
        assert msg is not None and orjson.loads(msg["data"])["revision"] == out["revision"]
    finally:
        listener.close()
        client.close()

    no_policy = CliRunner().invoke(app, ["--redis-url", redis_url, "policy", "reload"])
    assert no_policy.exit_code == 2 and "no policy configured" in no_policy.stderr


# -- keys and serve -----------------------------------------------------------------------------


def test_keys_new_mints_a_metrics_only_key_for_prometheus(tmp_path: Path) -> None:
    """``--metrics-only`` mints the key compose's Prometheus holds: stdout is the key alone (so
    ``> deploy/secrets/metrics.key`` works), the file records the role; a key cannot be both
    operator and metrics-only."""
    keys = tmp_path / "keys.json"
    args = ["keys", "new", "--agent", "prometheus", "--tenant", "ops", "--file", str(keys)]
    out = CliRunner().invoke(app, [*args, "--metrics-only"])
    assert out.exit_code == 0, out.output
    key = out.stdout.strip()
    assert out.stdout == key + "\n" and "(metrics only)" in out.stderr
    scraper = ApiKeys.from_file(keys).authenticate(key)
    assert scraper.metrics_only and not scraper.operator
    both = CliRunner().invoke(app, [*args, "--metrics-only", "--operator"])
    assert both.exit_code == 2 and "either operator or metrics_only" in both.stderr
    assert len(orjson.loads(keys.read_text())["keys"]) == 1


def test_keys_new_prints_the_key_once_and_stores_only_its_digest(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    out = CliRunner().invoke(app, ["keys", "new", *ALICE, "--file", str(keys)])
    assert out.exit_code == 0, out.output
    key = out.stdout.strip()
    assert key.startswith("mbk_") and "shown only this once" in out.stderr
    op = CliRunner().invoke(
        app,
        [
            "--json",
            "keys",
            "new",
            "--agent",
            "ops",
            "--tenant",
            "acme",
            "--operator",
            "--file",
            str(keys),
        ],
    )
    op_key = _json(op)["key"]

    text = keys.read_text()
    assert key not in text and op_key not in text  # digests only
    assert [e["agent"] for e in orjson.loads(text)["keys"]] == ["alice", "ops"]
    assert keys.stat().st_mode & 0o077 == 0
    auth = ApiKeys.from_file(keys)
    alice = auth.authenticate(key)
    assert (alice.tenant, alice.agent, alice.operator) == ("acme", "alice", False)
    assert auth.authenticate(op_key).operator

    bad = CliRunner().invoke(
        app, ["keys", "new", "--agent", "alice\t", "--tenant", "acme", "--file", str(keys)]
    )
    assert bad.exit_code == 2 and len(ApiKeys.from_file(keys)) == 2
    # an id as users know it is kept as given; the key acts as its encoded name
    out = CliRunner().invoke(
        app, ["--json", "keys", "new", "-a", "Al!ce", "-t", "acme", "--file", str(keys)]
    )
    assert _json(out)["agent"] == "Al!ce" and _json(out)["name"] == "x--_41_l_21_ce"
    assert ApiKeys.from_file(keys).authenticate(_json(out)["key"]).agent == "x--_41_l_21_ce"


def test_keys_authority_prints_the_public_key_writers_pin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`membus keys authority` creates the master (0600) where the door keeps it and prints only
    the authority's public key, the value MEMBUS_SIGNING_AUTHORITY takes (settings accept it)."""
    master = tmp_path / "api" / "signing.key"
    monkeypatch.setenv("MEMBUS_SIGNING_MASTER_FILE", str(master))
    out = CliRunner().invoke(app, ["keys", "authority"])
    assert out.exit_code == 0, out.output
    authority = out.stdout.strip()
    assert authority == authority_public_key(load_master(master))
    assert master.stat().st_mode & 0o077 == 0 and master.read_text().strip() not in out.output
    again = _json(CliRunner().invoke(app, ["--json", "keys", "authority"]))
    assert again == {"authority": authority, "master_file": str(master)}
    monkeypatch.setenv("MEMBUS_SIGNING_AUTHORITY", authority)
    assert Settings.load().to_config().signing.authority == authority
    master.chmod(0o644)  # readable by others: refused, naming the setting
    bad = CliRunner().invoke(app, ["keys", "authority"])
    assert bad.exit_code != 0 and "signing.master_file" in bad.output


@pytest.mark.slow
def test_serve_answers_health_and_exits_0_on_sigterm(redis_url: str, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    key = CliRunner().invoke(app, ["keys", "new", *ALICE, "--file", str(keys)]).stdout.strip()
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "membus.cli",
            "--path",
            str(tmp_path / "bus"),
            "--redis-url",
            redis_url,
            "serve",
            "--port",
            str(port),
            "--api-keys",
            str(keys),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MEMBUS_")},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                health = httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "serve did not start listening"
                time.sleep(0.1)
        assert health.json() == {"status": "ok"}
        me = httpx.get(f"{base}/v1/whoami", headers={"Authorization": f"Bearer {key}"})
        assert me.status_code == 200 and me.json()["agent"] == "alice"

        # the port is taken now: a second server says so in one line
        taken = CliRunner().invoke(
            app,
            [
                "--redis-url",
                redis_url,
                "--path",
                str(tmp_path / "2"),
                "serve",
                "--port",
                str(port),
                "--api-keys",
                str(keys),
            ],
        )
        assert taken.exit_code == 2 and "cannot listen" in taken.stderr

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_without_a_keys_file_exits_2() -> None:
    out = CliRunner().invoke(app, ["serve"])
    assert out.exit_code == 2 and "API keys file" in out.stderr


# -- eval, stats, settings ----------------------------------------------------------------------


@pytest.mark.slow
def test_eval_locomo_json_prints_exactly_one_object(tmp_path: Path) -> None:
    fixture = ROOT / "tests" / "fixtures" / "locomo_tiny.json"
    out = CliRunner().invoke(app, ["eval", "locomo", "--dataset", str(fixture), "--json"])
    assert out.exit_code == 0, out.output
    (line,) = out.stdout.strip().splitlines()
    result = orjson.loads(line)
    assert result["questions"] > 0 and "recall@5" in result and "bm25" in result
    assert result["context"] == "in reply to"
    bare = CliRunner().invoke(
        app, ["eval", "locomo", "--dataset", str(fixture), "--context", "none", "--json"]
    )
    assert bare.exit_code == 0 and orjson.loads(bare.stdout)["context"] is None
    missing = CliRunner().invoke(app, ["eval", "locomo", "--dataset", str(tmp_path / "no.json")])
    assert missing.exit_code == 2 and "not found" in missing.stderr


def test_stats_with_redis_down_exits_4_with_one_line(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    out = CliRunner().invoke(app, ["--path", str(tmp_path), "--redis-url", url, "stats"])
    assert out.exit_code == 4, out.output
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: redis unavailable")
    out = CliRunner().invoke(app, ["--json", "--path", str(tmp_path), "--redis-url", url, "stats"])
    assert out.exit_code == 4 and orjson.loads(out.stderr)["error"]["code"] == "unavailable"


def test_policy_and_service_settings_come_from_env_and_flags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MEMBUS_POLICY_FILE", str(POLICY))
    monkeypatch.setenv("MEMBUS_POLICY_SHARED", "true")
    monkeypatch.setenv("MEMBUS_POLICY_REDACT_SCOPES", "team, org")
    monkeypatch.setenv("MEMBUS_PORT", "9000")
    settings = Settings.load()
    policy = settings.to_config().policy
    assert policy.file == POLICY and policy.shared and policy.redact_scopes == ["team", "org"]
    assert (settings.host, settings.port) == ("127.0.0.1", 9000)

    other = tmp_path / "other.csv"
    other.write_text(POLICY.read_text())
    assert Settings.load(policy_file=other).to_config().policy.file == other  # the flag wins

    monkeypatch.setenv("MEMBUS_POLICY_FILE", str(tmp_path / "missing.csv"))
    out = CliRunner().invoke(app, ["--redis-url", "redis://127.0.0.1:1/0", "stats"])
    assert out.exit_code == 2 and "missing.csv does not exist" in out.stderr
    monkeypatch.setenv("MEMBUS_POLICY_FILE", str(POLICY))
    monkeypatch.setenv("MEMBUS_POLICY_REDACT_SCOPES", "team/../x")
    assert CliRunner().invoke(app, ["--redis-url", "redis://127.0.0.1:1/0", "stats"]).exit_code == 2


@pytest.mark.slow
def test_mcp_command_binds_identity_from_flags_or_refuses(tmp_path: Path) -> None:
    """`membus mcp` serves stdio for one identity given at start; without one it refuses."""
    exe = [sys.executable, "-m", "membus.cli"]
    env = {k: v for k, v in os.environ.items() if k not in ("MEMBUS_API_KEY", "MEMBUS_URL")}
    ok = subprocess.run(
        [*exe, "--path", str(tmp_path / "d"), "mcp", "--agent", "alice", "--tenant", "acme"],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr  # stdin closed: the session ends, the bus closes
    refused = subprocess.run(
        [*exe, "mcp"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert refused.returncode == 2 and "--agent and --tenant" in refused.stderr


@pytest.mark.slow
def test_serve_says_where_it_listens_once_ready(redis_url: str, tmp_path: Path) -> None:
    """With --port 0 the only way to find the server is to be told: the first line is the URL,
    printed once connections are accepted (JSON on stdout with --json)."""
    keys = tmp_path / "keys.json"
    CliRunner().invoke(app, ["keys", "new", *ALICE, "--file", str(keys)])
    exe = [sys.executable, "-m", "membus.cli", "--path", str(tmp_path / "bus")]
    proc = subprocess.Popen(
        [*exe, "--redis-url", redis_url, "serve", "--port", "0", "--api-keys", str(keys), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MEMBUS_")},
    )
    try:
        assert proc.stdout is not None
        url = json.loads(proc.stdout.readline())["listening"]
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        assert httpx.get(f"{url}/healthz", timeout=5).json() == {"status": "ok"}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, proc.communicate()


def test_dlq_list_shows_whole_ids_on_a_narrow_terminal(redis_url: str) -> None:
    """`dlq list` must show ids that `dlq drop --id` accepts: never folded or cut with '…'."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    entry = client.xadd(TenantKeys("acme").dlq, {"e": "{not json", "reason": "invalid"})
    client.sadd(tenants_key(), "acme")
    out = CliRunner().invoke(
        app,
        ["--redis-url", redis_url, "dlq", "list", "--tenant", "acme"],
        env={"COLUMNS": "40"},
    )
    assert out.exit_code == 0, out.output
    assert entry in out.stdout
