"""membus's logging: structlog over the standard logging hierarchy, so a library stays quiet.

Every membus logger is a structlog logger wrapped around the stdlib logger of the same name
(``membus.bus``, ``membus.worker``, …). With no logging configured, INFO is silent and WARNING and
up reach stderr through logging's last resort; nothing ever goes to stdout. An application
decides levels, handlers and rendering with plain ``logging`` (``logging.getLogger("membus")``),
whatever it does with structlog's global configuration; the membus CLI installs its own handler
(``membus.cli.output.configure_logging``). A record's message reads ``event key=value …`` under
any formatter, and carries the structured event as ``record.membus`` for formatters that want it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any

import structlog

# exc_info / stack_info are the stdlib call's own arguments, not fields of the event
_STDLIB_KWARGS = ("exc_info", "stack_info")


def _to_record(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The last processor: the stdlib call's (args, kwargs) for one event."""
    kwargs: dict[str, Any] = {k: event_dict.pop(k) for k in _STDLIB_KWARGS if k in event_dict}
    event = str(event_dict.get("event", ""))
    fields = " ".join(f"{k}={v!r}" for k, v in event_dict.items() if k != "event")
    kwargs["extra"] = {"membus": dict(event_dict)}
    return (f"{event} {fields}" if fields else event,), kwargs


_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.filter_by_level,  # a disabled level costs one isEnabledFor, nothing more
    _to_record,
]


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """The logger for ``name``: bind context as with any structlog logger.

    >>> log = get_logger("membus.example").bind(tenant="acme")
    >>> log.info("thing.done", n=3)  # silent unless the application enables INFO for "membus"
    """
    logger: structlog.stdlib.BoundLogger = structlog.wrap_logger(
        logging.getLogger(name),
        processors=_PROCESSORS,
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    return logger


@contextlib.contextmanager
def warnings_to_stderr() -> Iterator[None]:
    """For one measured or machine-read run (the bench, the evaluation): warnings and up from
    membus on stderr, nothing on stdout, the previous logging setup restored after. Log
    rendering is not what they measure, and with ``--json`` stdout must carry the result alone.
    """
    root = logging.getLogger("membus")
    handler = logging.StreamHandler(sys.stderr)
    saved = root.level, root.propagate
    root.setLevel(logging.WARNING)
    root.propagate = False
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        root.propagate = saved[1]
