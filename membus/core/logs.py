"""Logging for one measured or machine-read run: warnings and up, to stderr, restored after.

The benchmark and the evaluation both need it: log rendering is not what they measure, and with
``--json`` stdout must carry the result alone.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

import structlog


@contextlib.contextmanager
def warnings_to_stderr() -> Iterator[None]:
    saved, was_configured = structlog.get_config(), structlog.is_configured()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        if was_configured:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()
