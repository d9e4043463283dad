"""The support-team demo keeps working: it is the first thing a newcomer runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agents.demo import run_demo
from agents.support_team import (
    BILLING_SCOPE,
    TEAM,
    TEAM_SCOPE,
    demo_policy,
    handover_scope,
    private_scope,
    team_step_count,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def summary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One demo run shared by the in-process assertions (each run starts a redis-server)."""
    return await run_demo(tmp_path_factory.mktemp("demo"), json_output=True)


@pytest.mark.slow
@pytest.mark.anyio
async def test_every_agent_publishes_to_team_and_own_notebook(summary: dict[str, Any]) -> None:
    for role in TEAM:
        counts = summary["published"][role.name]
        assert counts["team"] > 0, role.name
        assert counts["private"] > 0, role.name


@pytest.mark.slow
@pytest.mark.anyio
async def test_causation_ids_chain_to_earlier_events(summary: dict[str, Any]) -> None:
    """Provenance: every caused event points at an event published before it in this run."""
    earlier: set[str] = set()
    for event in summary["events"]:
        if event["causation_id"] is not None:
            assert event["causation_id"] in earlier
        earlier.add(event["event_id"])


@pytest.mark.anyio
async def test_recall_finds_a_teammates_fact(summary: dict[str, Any]) -> None:
    """alice asks what caused the timeout and gets bob's root cause, with provenance."""
    recall = summary["recalls"]["alice"]
    assert recall["found_expected"]
    root_cause = _event(summary, "root-cause")
    hit = next(h for h in recall["hits"] if root_cause["event_id"] in h["event_ids"])
    assert hit["scope"] == TEAM_SCOPE
    assert hit["agents"] == ["bob"]
    assert hit["score"] > 0  # a fused (dense + lexical) rank score, not a cosine
    assert all(r["found_expected"] for r in summary["recalls"].values())


@pytest.mark.anyio
async def test_feed_carries_every_team_event(summary: dict[str, Any]) -> None:
    team_events = {e["event_id"] for e in summary["events"] if _under(e["scope"], TEAM_SCOPE)}
    assert len(team_events) == team_step_count()
    seen = summary["changes_seen"]
    assert len(seen) >= len(team_events)
    assert team_events <= {e for c in seen for e in c["event_ids"]}
    # the subscription was for the team subtree only: no private note leaks into it
    assert all(_under(c["scope"], TEAM_SCOPE) for c in seen)


@pytest.mark.anyio
async def test_private_notes_live_in_their_owners_scope(summary: dict[str, Any]) -> None:
    notes = summary["private_notes"]["alice"]
    published = {
        e["event_id"]
        for e in summary["events"]
        if e["agent"] == "alice" and e["scope"] == private_scope("alice")
    }
    assert published
    assert {m["event_id"] for m in notes["memories"]} == published
    assert all(m["scope"] == "agent/alice" for m in notes["memories"])
    assert all(m["agents"] == ["alice"] for m in notes["memories"])


@pytest.mark.anyio
async def test_demo_runs_on_the_example_policy(summary: dict[str, Any]) -> None:
    """The casbin gate decides, on the same example.csv the policy README documents."""
    perm = summary["permissions"]
    assert perm["enforced"] is True
    assert perm["gate"] == "CasbinGate"
    assert Path(perm["policy"]) == demo_policy() == ROOT / "policies" / "example.csv"


@pytest.mark.anyio
async def test_allowed_share_lead_reads_the_handover_with_provenance(
    summary: dict[str, Any],
) -> None:
    """carol (support lead) recalls bob's handover scope, opened to leads by one policy line."""
    allowed = summary["permissions"]["allowed"]
    assert (allowed["agent"], allowed["action"]) == ("carol", "recall")
    assert allowed["scope"] == handover_scope("bob")
    assert allowed["rule"] == "p, role:support-lead, acme, agent/bob/handover, recall, allow"
    assert allowed["found_expected"]
    handover = _event(summary, "handover")
    hit = next(h for h in allowed["hits"] if handover["event_id"] in h["event_ids"])
    assert (hit["scope"], hit["agents"], hit["refs"]) == (
        "agent/bob/handover",
        ["bob"],
        ["handover"],
    )
    assert handover["causation_id"] == _event(summary, "root-cause")["event_id"]


@pytest.mark.anyio
async def test_denied_access_raises_a_typed_permission_denied(summary: dict[str, Any]) -> None:
    """bob (contractor) asks for billing notes: the explicit deny beats role:support's allow."""
    denied = summary["permissions"]["denied"]
    assert denied["raised"] == "PermissionDenied", denied.get("leaked")
    assert denied["error"]["code"] == "permission_denied"
    assert (denied["error"]["agent"], denied["error"]["action"], denied["error"]["scope"]) == (
        "bob",
        "recall",
        BILLING_SCOPE,
    )
    assert denied["rule"] == "p, bob, acme, team/support/billing/*, recall|subscribe, deny"


@pytest.mark.anyio
async def test_audit_records_the_allow_and_the_deny(summary: dict[str, Any]) -> None:
    """Both calls left an audit record: who, what, where, decision, and what came back."""
    audit = summary["permissions"]["audit"]
    allow = [r for r in audit if r["decision"] == "allow"]
    deny = [r for r in audit if r["decision"] == "deny"]
    assert len(allow) == 1 and len(deny) == 1, audit
    assert (allow[0]["agent"], allow[0]["action"], allow[0]["scope"]) == (
        "carol",
        "recall",
        handover_scope("bob"),
    )
    assert allow[0]["result_count"] == len(summary["permissions"]["allowed"]["hits"]) >= 1
    assert "role:support-lead" in (allow[0]["rule"] or "")
    assert (deny[0]["agent"], deny[0]["action"], deny[0]["scope"]) == (
        "bob",
        "recall",
        BILLING_SCOPE,
    )
    assert not deny[0]["memory_ids"]
    assert all(r["at"] and r["position"] for r in audit)


@pytest.mark.anyio
async def test_private_notes_of_others_never_appear_in_any_recall(summary: dict[str, Any]) -> None:
    """Recall over everything an agent may read holds its own notebook and no one else's."""
    names = [role.name for role in TEAM]
    for name, seen in summary["privacy"].items():
        assert seen["others_private"] == 0, (name, seen)
        assert seen["own_private"] >= 1, (name, seen)
        others = {private_scope(n) for n in names if n != name}
        assert not others & set(seen["scopes"]), (name, seen)
    # the one opening the policy makes: carol sees bob's handover, nobody else's subtree
    assert summary["privacy"]["carol"]["others_shared"] == 1
    assert summary["privacy"]["alice"]["others_shared"] == 0
    # the deny also holds inside a recall over everything: bob never sees billing
    assert not any(_under(s, BILLING_SCOPE) for s in summary["privacy"]["bob"]["scopes"])
    # and the question recalls obey the same walls
    for name, recall in summary["recalls"].items():
        others = {private_scope(n) for n in names if n != name}
        assert not others & {h["scope"] for h in recall["hits"]}, name


@pytest.mark.slow
def test_module_entry_point_prints_json_from_any_directory(tmp_path: Path) -> None:
    """``python -m agents.demo --json`` in CI, run outside the repo: the policy is found next to
    the package, not the cwd; no stdin, no tty, exit 0, JSON only on stdout."""
    env = {**os.environ, "CI": "true"}
    proc = subprocess.run(
        [sys.executable, "-m", "agents.demo", "--json"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data["published"]) == {role.name for role in TEAM}
    assert data["recalls"]["alice"]["found_expected"]
    assert data["permissions"]["enforced"] is True
    assert data["permissions"]["denied"]["raised"] == "PermissionDenied"


def _event(summary: dict[str, Any], ref: str) -> dict[str, Any]:
    return next(e for e in summary["events"] if e["ref"] == ref)


def _under(scope: str, root: str) -> bool:
    return scope == root or scope.startswith(root + "/")


def _env_example() -> dict[str, str]:
    """``MEMBUS_*`` names in .env.example, commented out or not, with their example values."""
    found: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        text = line.lstrip("# ").strip()
        name, sep, value = text.partition("=")
        if sep and name.startswith("MEMBUS_") and " " not in name:
            found[name] = value
    return found


def test_env_example_lists_exactly_the_settings_membus_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Operators copy .env.example: a renamed or new setting must show up there, and every
    example value must load."""
    settings_mod = pytest.importorskip("membus.cli.settings")
    from pydantic import BaseModel

    settings_cls = settings_mod.Settings
    expected: set[str] = set()
    for name, field in settings_cls.model_fields.items():
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            expected |= {f"MEMBUS_{name}__{sub}".upper() for sub in nested.model_fields}
        else:
            expected.add(f"MEMBUS_{name}".upper())
    listed = _env_example()
    assert set(listed) == expected
    for name, value in listed.items():
        monkeypatch.setenv(name, value)
    settings_cls()
