"""Writer processes of an embedded bus (``MembusConfig.writer_processes``).

The bus's process keeps the Qdrant Edge shard (one process per shard) and serves it on a socket
(``membus.store.remote``); each child runs ordinary writers against the same Redis and that
socket, so the writers' Python runs on another core than the shard's point building. A child
gets its configuration as JSON on stdin, finishes its batch on SIGTERM, and dies with its
parent (the shard and Redis it needs are the parent's).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from membus.core.children import die_with_parent
from membus.core.config import MembusConfig, StoreConfig
from membus.core.logs import get_logger


class WriterProcesses:
    """``n`` writer processes for a bus whose Redis is ``redis_url`` and whose shard is served
    on ``store_socket``; one that dies is started again (its batch stays pending in Redis and
    is reclaimed). ``run`` supervises until ``aclose``."""

    def __init__(self, config: MembusConfig, redis_url: str, store_socket: Path, n: int) -> None:
        child = config.model_copy(
            update={
                "redis": config.redis.model_copy(update={"url": redis_url}),
                "store": StoreConfig(engine="remote", path=store_socket),
                "writers": max(1, config.writers),
                "writer_processes": 0,
            }
        )
        self._spec = child.model_dump_json().encode()
        self._n = n
        self.procs: list[subprocess.Popen[bytes]] = []
        self.restarts = 0
        self._closing = False
        self._log = get_logger("membus.writer_process")

    def _spawn(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "membus.runtime.writer_main"],
            stdin=subprocess.PIPE,
            stdout=2,  # its logs go to our stderr: our stdout may carry a result (bench --json)
            preexec_fn=die_with_parent,
        )
        assert proc.stdin is not None
        proc.stdin.write(self._spec)
        proc.stdin.close()
        return proc

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.procs = [self._spawn() for _ in range(self._n)]
        async with anyio.create_task_group() as tg:
            for i in range(self._n):
                tg.start_soon(self._watch, i)
            task_status.started()

    async def _watch(self, i: int) -> None:
        while True:
            code = await anyio.to_thread.run_sync(self.procs[i].wait, abandon_on_cancel=True)
            if self._closing:
                return
            self._log.warning("writer_process.exited", code=code, restart_in_s=1.0)
            await anyio.sleep(1.0)  # a child that cannot start must not spin
            if self._closing:
                return
            self.procs[i] = self._spawn()
            self.restarts += 1

    async def aclose(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (each finishes the batch in hand), then wait; kill what outlives
        ``timeout_s`` (what it held stays pending in Redis and is reclaimed)."""
        self._closing = True
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                await anyio.to_thread.run_sync(p.wait, timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                await anyio.to_thread.run_sync(p.wait)
