"""CLI output helpers, and dead letters whose bytes are not UTF-8 seen through the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import orjson
import pytest
import structlog
from typer.testing import CliRunner

from membus.cli.app import app
from membus.cli.output import emit_json, unconfigure_logging
from membus.core.keys import TenantKeys, tenants_key
from membus.core.redis import redis_client
from membus.stream.dlq import park


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """The CLI configures structlog; other test files must not inherit that."""
    yield
    structlog.reset_defaults()
    unconfigure_logging()


def test_emit_json_writes_exactly_what_orjson_writes(capsys: pytest.CaptureFixture[str]) -> None:
    """The fallback for odd strings must not change ordinary output by a byte."""
    obj = {"a": [1, 2.5, None], "b": "é ☃", "c": Path("/x")}
    emit_json(obj)
    assert capsys.readouterr().out == orjson.dumps(obj, default=str).decode() + "\n"


def test_emit_json_shows_non_utf8_bytes_escaped_instead_of_crashing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Redis decodes b"\\xff" as a surrogate escape; orjson refuses those, the CLI must not."""
    emit_json({"fields": {"e": b"\xff ok".decode("utf-8", "surrogateescape")}, "n": [1]})
    assert orjson.loads(capsys.readouterr().out) == {"fields": {"e": "\\xff ok"}, "n": [1]}


def test_dlq_commands_handle_a_non_utf8_dead_letter(redis_url: str, tmp_path: Path) -> None:
    """A producer outside membus may XADD any bytes: list shows them, replay puts them back."""

    async def park_raw() -> None:
        client = redis_client(redis_url)
        keys = TenantKeys("acme")
        await client.sadd(tenants_key(), "acme")
        body = b"\xff\xfe raw".decode("utf-8", "surrogateescape")
        await park(
            client, keys, keys.events, "writers", [("1-1", {"e": body}, "bad")], reason="invalid"
        )
        await client.aclose()

    anyio.run(park_raw)
    runner = CliRunner()
    base = ["--path", str(tmp_path), "--redis-url", redis_url, "dlq"]

    listed = runner.invoke(app, [*base, "list", "--tenant", "acme", "--json"])
    assert listed.exit_code == 0, listed.output
    [letter] = orjson.loads(listed.stdout)
    assert letter["fields"] == {"e": "\\xff\\xfe raw"}

    table = runner.invoke(app, [*base, "list", "--tenant", "acme"])
    assert table.exit_code == 0 and "\\xff\\xfe raw" in table.stdout

    replayed = runner.invoke(app, [*base, "replay", "--tenant", "acme", "--all"])
    assert replayed.exit_code == 0 and "replayed 1" in replayed.stdout
