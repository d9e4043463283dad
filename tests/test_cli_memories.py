"""``membus memories list|get|history|update|delete|export|import`` end to end, and what recall
says when no writer is running."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.test_cli import WHO, Invoke, _clean_env, cli, drain, json_lines

__all__ = ["_clean_env", "cli"]  # fixtures, used by name


@pytest.mark.slow
def test_list_get_history_update_delete_export_import(
    cli: Invoke, redis_url: str, tmp_path: Path
) -> None:
    for n in range(3):
        # no writer beside an external Redis until drain(): publish without waiting
        out = cli(
            "publish", f"note {n}", "--scope", "team/crm", *WHO, "--kind", "note", "--no-wait"
        )
        assert out.exit_code == 0, out.output
    fact = ["--subject", "acme-corp", "--key", "plan"]
    assert (
        cli("publish", "plan is basic", "--scope", "team/crm", *WHO, *fact, "--no-wait").exit_code
        == 0
    )
    drain(redis_url, tmp_path)

    out = cli("memories", "list", *WHO, "--limit", "2", "--json")
    assert out.exit_code == 0, out.output
    page = orjson.loads(out.stdout)
    assert len(page["memories"]) == 2 and page["cursor"]
    out = cli("memories", "list", *WHO, "--limit", "2", "--cursor", page["cursor"], "--json")
    rest = orjson.loads(out.stdout)
    ids = [m["id"] for m in page["memories"] + rest["memories"]]
    assert len(set(ids)) == 4
    out = cli("memories", "list", *WHO, "--cursor", rest["cursor"], "--json")
    assert orjson.loads(out.stdout) == {"memories": [], "cursor": None}
    out = cli("memories", "list", *WHO, "--kind", "note")  # the human table
    assert out.exit_code == 0 and "note 1" in out.stdout

    [plan] = [m for m in page["memories"] + rest["memories"] if m["key"] == "plan"]
    out = cli("memories", "get", plan["id"], *WHO, "--json")
    assert orjson.loads(out.stdout)["content"] == "plan is basic"
    out = cli("memories", "get", "00000000-0000-5000-8000-000000000000", *WHO)
    assert out.exit_code == 2 and "no memory" in out.output
    out = cli("memories", "update", plan["id"], "plan is pro", *WHO, "--meta", "by=sales")
    assert out.exit_code == 0, out.output
    drain(redis_url, tmp_path)
    out = cli("memories", "history", *WHO, "--subject", "acme-corp", "--key", "plan", "--json")
    versions = orjson.loads(out.stdout)
    assert [v["content"] for v in versions] == ["plan is pro", "plan is basic"]
    assert versions[0]["metadata"] == {"by": "sales"}
    out = cli("memories", "history", versions[0]["id"], *WHO, "--json")
    assert len(orjson.loads(out.stdout)) == 2

    dump = tmp_path / "export.jsonl"
    out = cli("memories", "export", *WHO, "--output", str(dump))
    assert out.exit_code == 0, out.output
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600  # every readable memory, in clear
    lines = json_lines(dump.read_text())
    assert len(lines) == 5  # three notes, and both versions of the plan
    out = cli("memories", "export", *WHO, "--scope", "team/crm")  # stdout
    assert len(json_lines(out.stdout)) == 5

    note = next(m for m in rest["memories"] + page["memories"] if m["kind"] == "note")
    out = cli("memories", "delete", note["id"], *WHO, "--json")
    assert orjson.loads(out.stdout)["memories"] == 1
    out = cli("memories", "get", note["id"], *WHO)
    assert out.exit_code == 2

    # into another tenant, from stdin; twice: the second changes nothing
    other = ["--agent", "alice", "--tenant", "globex"]
    out = cli("memories", "import", *other, "--json", input=dump.read_text())
    assert out.exit_code == 0, out.output
    assert orjson.loads(out.stdout)["published"] == 5
    out = cli("memories", "import", *other, str(dump), "--json")
    assert orjson.loads(out.stdout)["published"] == 0
    out = cli("memories", "import", *WHO, "-", input="not json\n")
    assert out.exit_code == 2 and "line 1" in out.output


@pytest.mark.slow
def test_recall_says_events_wait_with_no_writer_running(cli: Invoke) -> None:
    """External Redis, no writer: plain recall warns, `recall --wait` fails at once, saying why."""
    assert cli("publish", "printer jams", "--scope", "team/it", *WHO, "--no-wait").exit_code == 0
    out = cli("recall", "printer", *WHO)
    assert out.exit_code == 0
    assert "pending with no writer running" in out.stderr
    started = time.monotonic()
    out = cli("recall", "printer", *WHO, "--wait")
    assert out.exit_code == 4
    assert "none is running" in out.stderr and "membus worker" in out.stderr
    assert time.monotonic() - started < 10  # not the drain's 60 s timeout


def test_every_option_of_every_command_has_help() -> None:
    import typer.main

    from membus.cli.app import app

    missing: list[str] = []

    def walk(cmd: Any, path: str) -> None:
        for p in cmd.params:  # typer's own click types: checked by shape, not by class
            if not getattr(p, "help", None):
                missing.append(f"{path} {p.opts[0]}")
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(app), "membus")
    assert not missing, missing
    assert os.environ.get("MEMBUS_PATH") is None


def test_bench_without_flags_is_the_quick_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from membus.cli import showcase
    from membus.cli.app import app

    asked: list[tuple[str, int | None, bool]] = []

    def fake_workload(
        workload: str, memories: int | None, *, json_output: bool, quick: bool, **_: Any
    ) -> dict[str, Any]:
        asked.append((workload, memories, quick))
        return {}

    monkeypatch.setattr(showcase, "_load", lambda module, name: fake_workload)
    monkeypatch.setattr(showcase, "_finish", lambda result: None)
    for args, wanted in (
        ([], ("varied", None, True)),
        (["--quick"], ("varied", None, True)),
        (["--full"], ("varied", None, False)),
        (["--memories", "5000"], ("varied", 5_000, False)),
        (["--workload", "one-scope"], ("one-scope", None, True)),
    ):
        out = CliRunner().invoke(app, ["bench", *args])
        assert out.exit_code == 0, out.output
        assert asked.pop() == wanted
