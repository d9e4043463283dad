"""Shared fixtures: real redis-server processes and temp data directories."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from membus.cli.output import unconfigure_logging
from tests.redis_proc import RedisProcess


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """One real redis-server for the session; tests isolate themselves by tenant or FLUSHALL."""
    proc = RedisProcess(tmp_path_factory.mktemp("redis"), appendfsync="everysec").start()
    yield proc
    proc.stop()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> Iterator[str]:
    client = redis_server.client()
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def fresh_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A private redis-server for tests that kill or restart it."""
    proc = RedisProcess(tmp_path / "redis").start()
    yield proc
    proc.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _membus_logging_untouched() -> Iterator[None]:
    """A CLI command run in process installs its log handler: it must not outlive the test."""
    yield
    unconfigure_logging()
