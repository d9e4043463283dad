"""A buffer that a background task writes a short delay after something arrives.

The audit log and the access statistics both take writes on request paths that must not wait
for Redis: the request buffers, a flusher task writes the buffer a few milliseconds later, so a
burst shares one round trip. Without a running flusher (a bus used outside ``runtime.open``)
subclasses write through.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import anyio
from anyio.abc import TaskStatus


class Flusher(ABC):
    def __init__(self, flush_every_s: float) -> None:
        self.flush_every_s = flush_every_s
        # created by run(): anyio events need a running event loop
        self._wake: anyio.Event | None = None
        self._stopped: anyio.Event | None = None
        self._closed: anyio.Event | None = None
        self._running = False
        self._closing = False
        # one flush at a time: a flush that found the buffer taken by another must still return
        # only once those records are written (a reader flushes to see its own writes)
        self._flush_lock = anyio.Lock()

    @abstractmethod
    async def _flush_in_background(self) -> None:
        """Write the buffer; the flusher's own call, which must not raise for a write failure
        (handle it: log, keep the buffer, ``_poke`` to retry)."""

    @property
    def flushing(self) -> bool:
        """A flusher runs: buffer and ``_poke``, do not write through."""
        return self._running and not self._closing

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Flush a few ms after writes arrive, until ``_stop()``. Start with ``tg.start``."""
        self._wake = wake = anyio.Event()
        self._stopped = stopped = anyio.Event()
        self._closed = closed = anyio.Event()
        self._running = True
        task_status.started()
        try:
            while not self._closing:
                await wake.wait()
                self._wake = wake = anyio.Event()
                with anyio.move_on_after(self.flush_every_s):
                    await closed.wait()  # gather what arrives meanwhile; closing cuts it short
                await self._flush_in_background()
        finally:
            self._running = False
            stopped.set()

    async def _stop(self) -> None:
        """End the flusher after its current round; later writes write through."""
        self._closing = True
        if self._running and self._wake and self._closed and self._stopped:
            self._closed.set()
            self._wake.set()
            await self._stopped.wait()
