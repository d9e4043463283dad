"""What the CLI writes: results on stdout (JSON lines or rich tables), notes and errors on stderr.

Errors become an exit code here too: 2 for bad input or a conflict, 3 for a denied permission,
4 for an unavailable service, so scripts can tell "fix the call" from "try again later".
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import orjson
import structlog
import typer
from rich.console import Console
from rich.table import Table

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


def configure_logging(settings: Settings, as_json: bool) -> None:
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    tail: list[Any] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if as_json or settings.log_json
        else [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            *tail,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # sys.stderr looked up per logger, not bound once: a swapped stream may be closed later
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )


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
    table = Table("id", "reason", "tries", "parked", "error", "content")
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
