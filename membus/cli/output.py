"""What the CLI writes: results on stdout (JSON lines or rich tables), notes and errors on stderr.

Errors become an exit code here too: 2 for bad input or a conflict, 3 for a denied permission,
4 for an unavailable service, so scripts can tell "fix the call" from "try again later".
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import orjson
import structlog
import typer
from rich.console import Console
from rich.table import Column, Table

from membus.cli.settings import Settings
from membus.errors import MembusError, PermissionDenied, Unavailable

if TYPE_CHECKING:
    from membus.store.port import Hit
    from membus.stream.dlq import DeadLetter
    from membus.stream.feed import Change


def exit_code(exc: MembusError) -> int:
    if isinstance(exc, PermissionDenied):
        return 3
    if isinstance(exc, Unavailable):
        return 4
    return 2


def fail(exc: MembusError, as_json: bool) -> NoReturn:
    if as_json:
        typer.echo(orjson.dumps({"error": exc.to_dict()}).decode(), err=True)
    else:
        typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(exit_code(exc))


def _line(text: str) -> None:
    # flushed per line: `tail` and `publish` feed pipes that read as they go
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _escaped(obj: Any) -> Any:
    """Redis hands non-UTF-8 bytes over as surrogate escapes (see ``streams.redis_client``);
    shown as ``\\xff`` they print and serialise instead of crashing the encoder."""
    if isinstance(obj, str):
        try:
            raw = obj.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = obj.encode("utf-8", "backslashreplace")
        return raw.decode("utf-8", "backslashreplace")
    if isinstance(obj, dict):
        return {_escaped(k): _escaped(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_escaped(v) for v in obj]
    return obj


def emit_json(obj: Any) -> None:
    try:
        text = orjson.dumps(obj, default=str)
    except orjson.JSONEncodeError:  # only a surrogate-escaped string gets here
        text = orjson.dumps(_escaped(obj), default=str)
    _line(text.decode())


def say(as_json: bool, message: str) -> None:
    """Human progress notes go to stderr, so stdout stays the command's result."""
    if not as_json:
        typer.echo(message, err=True)


def warn(as_json: bool, message: str) -> None:
    """Something the user should know about the result, on stderr in either output mode."""
    if as_json:
        typer.echo(orjson.dumps({"warning": message}).decode(), err=True)
    else:
        typer.echo(f"warning: {message}", err=True)


class _EventFormatter(logging.Formatter):
    """Renders membus's structured records (``record.membus``, see ``membus.core.logs``) with a
    structlog renderer: human lines on a terminal, JSON lines with ``--json``."""

    def __init__(self, renderer: Any) -> None:
        super().__init__()
        self._renderer = renderer
        self._stamp = structlog.processors.TimeStamper(fmt="iso")

    def format(self, record: logging.LogRecord) -> str:
        event: MutableMapping[str, Any] = dict(
            getattr(record, "membus", None) or {"event": record.getMessage()}
        )
        event["level"] = record.levelname.lower()
        event = self._stamp(None, "", event)
        if record.exc_info:
            event["exc_info"] = record.exc_info
            event = structlog.processors.format_exc_info(None, "", event)
        return str(self._renderer(None, "", event))


_HANDLER = "membus-cli"


def configure_logging(settings: Settings, as_json: bool) -> None:
    """The CLI's own log output: membus records at ``MEMBUS_LOG_LEVEL`` and up, on stderr (stdout
    carries the command's result). Configures stdlib logging, where the library logs."""
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json or settings.log_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    unconfigure_logging()  # a second command in one process (tests) replaces the first's
    logger = logging.getLogger("membus")
    handler = _StderrHandler()
    handler.set_name(_HANDLER)
    handler.setFormatter(_EventFormatter(renderer))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def unconfigure_logging() -> None:
    """Undo ``configure_logging``: membus records go back to the application's logging."""
    logger = logging.getLogger("membus")
    for old in [h for h in logger.handlers if h.get_name() == _HANDLER]:
        logger.removeHandler(old)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the current ``sys.stderr``, looked up per record: a swapped stream (a test
    runner's capture) may be closed later."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # not setStream: that flushes the old stream, maybe closed
        super().emit(record)


def print_change(c: Change) -> None:
    _line(f"{c.position} {c.op} {c.scope} [{c.kind}] {','.join(c.agents)}: {c.content or ''}")


def print_hits(hits: Sequence[Hit]) -> None:
    table = Table("score", "scope", "kind", "agents", "content", "created")
    for h in hits:
        m = h.memory
        table.add_row(
            f"{h.score:.3f}",
            m.scope,
            m.kind,
            ",".join(m.agents),
            m.content if len(m.content) <= 80 else m.content[:79] + "…",
            m.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    Console().print(table)


def print_stats(out: dict[str, Any]) -> None:
    memories = "unknown (store in use)" if out["memories"] is None else out["memories"]
    table = Table(
        "tenant",
        "events",
        "changes",
        "dlq",
        "group",
        "pending",
        "lag",
        "consumers",
        caption=f"memories: {memories}",
    )
    for tenant, t in out["tenants"].items():
        rows = t["groups"] or [{"group": "-", "pending": "", "lag": "", "consumers": ""}]
        for g in rows:
            table.add_row(
                tenant,
                str(t["events"]),
                str(t["changes"]),
                str(t["dlq"]),
                g["group"],
                str(g["pending"]),
                str(g["lag"]),
                str(g["consumers"]),
            )
    Console().print(table)


def print_dead_letters(letters: Sequence[DeadLetter]) -> None:
    # the id whole, never folded or cut: it is what `dlq replay|drop --id` takes
    width = max((len(d.id) for d in letters), default=2)
    table = Table(Column("id", no_wrap=True, min_width=width), "reason", "tries", "parked")
    table.add_column("error")
    table.add_column("content")
    for d in letters:
        content = str((d.event or {}).get("content", d.fields.get("e", "")))
        table.add_row(
            d.id,
            _escaped(d.reason),
            str(d.deliveries),
            d.parked_at.strftime("%Y-%m-%d %H:%M:%S"),
            _escaped(d.error[:60]),
            _escaped(content[:40]),
        )
    Console().print(table)
