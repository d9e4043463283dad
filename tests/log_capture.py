"""Capture membus's log events in a test: the structured event of every record at any level."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        event = dict(getattr(record, "membus", None) or {"event": record.getMessage()})
        event["log_level"] = record.levelname.lower()
        self.events.append(event)


@contextlib.contextmanager
def capture_logs(name: str = "membus") -> Iterator[list[dict[str, Any]]]:
    """Like ``structlog.testing.capture_logs``, for membus's stdlib-backed loggers."""
    logger = logging.getLogger(name)
    handler, level = _Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.events
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
