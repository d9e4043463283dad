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
from agents.support_team import TEAM, TEAM_SCOPE, private_scope, team_step_count

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def summary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One demo run shared by the in-process assertions (each run starts a redis-server)."""
    return await run_demo(tmp_path_factory.mktemp("demo"), json_output=True)


@pytest.mark.anyio
async def test_every_agent_publishes_to_team_and_own_notebook(summary: dict[str, Any]) -> None:
    for role in TEAM:
        counts = summary["published"][role.name]
        assert counts["team"] > 0, role.name
        assert counts["private"] > 0, role.name


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
    """intake asks what caused the timeout and gets the researcher's root cause, with provenance."""
    recall = summary["recalls"]["intake"]
    assert recall["found_expected"]
    root_cause = next(e for e in summary["events"] if e["ref"] == "root-cause")
    hit = next(h for h in recall["hits"] if root_cause["event_id"] in h["event_ids"])
    assert hit["scope"] == TEAM_SCOPE
    assert hit["agents"] == ["researcher"]
    assert 0 < hit["score"] <= 1.0001
    assert all(r["found_expected"] for r in summary["recalls"].values())


@pytest.mark.anyio
async def test_feed_carries_every_team_event(summary: dict[str, Any]) -> None:
    team_events = {e["event_id"] for e in summary["events"] if e["scope"] == TEAM_SCOPE}
    assert len(team_events) == team_step_count()
    seen = summary["changes_seen"]
    assert len(seen) >= len(team_events)
    assert team_events <= {e for c in seen for e in c["event_ids"]}
    # the subscription was for the team scope only: no private note leaks into it
    assert all(c["scope"] == TEAM_SCOPE for c in seen)


@pytest.mark.anyio
async def test_private_notes_live_in_their_owners_scope(summary: dict[str, Any]) -> None:
    notes = summary["private_notes"]["researcher"]
    published = {
        e["event_id"]
        for e in summary["events"]
        if e["agent"] == "researcher" and e["scope"] == private_scope("researcher")
    }
    assert published
    assert {m["event_id"] for m in notes["memories"]} == published
    assert all(m["scope"] == "agent/researcher" for m in notes["memories"])
    assert all(m["agents"] == ["researcher"] for m in notes["memories"])


@pytest.mark.anyio
async def test_permissions_are_reported_as_not_enforced_yet(summary: dict[str, Any]) -> None:
    """Until the casbin gate lands the demo must say so rather than fake a denial."""
    assert summary["permissions"]["enforced"] is False


def test_module_entry_point_prints_json_without_a_terminal() -> None:
    """``python -m agents.demo --json`` in CI: no stdin, no tty, exit 0, JSON only on stdout."""
    env = {**os.environ, "CI": "true"}
    proc = subprocess.run(
        [sys.executable, "-m", "agents.demo", "--json"],
        cwd=ROOT,
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
    assert data["recalls"]["intake"]["found_expected"]


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
    settings_mod = pytest.importorskip("membus.settings")
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
