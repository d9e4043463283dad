"""Stopping a long-running membus process gracefully: finish the batch in hand, then exit."""

from __future__ import annotations

import signal

import anyio
import anyio.abc


async def on_signals(
    stop: anyio.Event | None,
    scope: anyio.CancelScope,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """First SIGTERM/SIGINT sets ``stop`` (finish the batch in hand); the next one cancels."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for _ in signals:
            if stop is None or stop.is_set():
                scope.cancel()
                return
            stop.set()
