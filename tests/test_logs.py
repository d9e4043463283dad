"""A library is quiet: membus logs through stdlib logging, never on stdout; the CLI decides its own
output and MEMBUS_LOG_LEVEL works."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from membus.core.logs import get_logger, warnings_to_stderr
from tests.log_capture import capture_logs

LIBRARY_USE = textwrap.dedent(
    """
    import sys, anyio, membus

    async def main() -> None:
        async with membus.open(sys.argv[1]) as bus:
            agent = bus.agent("alice", tenant="acme")
            await agent.publish("a quiet note", scope="agent/alice")
            await bus.drain(timeout_s=20)
            assert await agent.recall("quiet note")

    anyio.run(main)
    """
)


@pytest.mark.slow
def test_library_use_writes_nothing_to_stdout_and_no_info_to_stderr(tmp_path: Path) -> None:
    """bus.open, writer.start, keys.created and bus.closed used to reach stdout at INFO."""
    out = subprocess.run(
        [sys.executable, "-c", LIBRARY_USE, str(tmp_path / "bus")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    assert "bus.open" not in out.stderr and "[info" not in out.stderr


def test_an_application_that_enables_info_gets_structured_records() -> None:
    with capture_logs() as events:
        get_logger("membus.example").bind(tenant="acme").info("thing.done", n=3)
    assert events == [{"event": "thing.done", "tenant": "acme", "n": 3, "log_level": "info"}]


def test_a_plain_formatter_reads_the_event_and_its_fields(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="membus"):
        get_logger("membus.example").warning("disk.low", free_mb=12)
        get_logger("membus.example").info("not.shown")
    assert [r.getMessage() for r in caplog.records] == ["disk.low free_mb=12"]


def test_disabled_levels_do_no_work() -> None:
    logging.getLogger("membus.example").setLevel(logging.WARNING)
    try:
        with capture_logs("membus.other") as events:
            get_logger("membus.example").info("dropped")
        assert events == []
    finally:
        logging.getLogger("membus.example").setLevel(logging.NOTSET)


def test_warnings_to_stderr_restores_the_previous_setup(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger("membus")
    before = (root.level, root.propagate, list(root.handlers))
    with warnings_to_stderr():
        get_logger("membus.example").info("hidden")
        get_logger("membus.example").warning("shown")
    assert (root.level, root.propagate, list(root.handlers)) == before
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "shown" in captured.err and "hidden" not in captured.err


@pytest.mark.slow
@pytest.mark.parametrize(("level", "shown"), [("info", True), ("warning", False)])
def test_membus_log_level_decides_what_the_cli_prints(
    tmp_path: Path, level: str, shown: bool
) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "membus.cli", "--path", str(tmp_path / "bus"), "stats", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "MEMBUS_LOG_LEVEL": level},
    )
    assert out.returncode == 0, out.stderr
    assert ("bus.open" in out.stderr) is shown
    assert "bus.open" not in out.stdout
