"""Turning command-line text into typed values: drafts files, ``--meta``, times, dlq selections."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from membus.bus.draft import Draft
from membus.core.envelope import invalid_from
from membus.errors import InvalidInput

_AGE = re.compile(r"(\d+)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _read(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read {file}: {exc.strerror}") from None


def read_drafts(file: Path) -> list[tuple[int, Draft]]:
    """One Draft JSON object per line of ``file`` (``-``: stdin), each with its line number."""
    text = sys.stdin.read() if str(file) == "-" else _read(file)
    out: list[tuple[int, Draft]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((n, Draft.model_validate_json(line)))
            except ValidationError as exc:
                raise invalid_from(exc, f"line {n}") from None
    if not out:
        raise InvalidInput("the file holds no drafts")
    return out


def parse_meta(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--meta {pair!r}: expected key=value")
        out[key] = value
    return out


def parse_when(value: str | None, field: str) -> datetime | None:
    """An ISO time (naive means UTC) or an age such as ``30m``, ``2h``, ``7d``."""
    if value is None:
        return None
    age = _AGE.fullmatch(value.strip())
    if age:
        return datetime.now(UTC) - timedelta(seconds=int(age[1]) * _UNIT_S[age[2]])
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"--{field}: expected an ISO time or an age like 30m, 2h, 7d; got {value!r}"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def which(ids: Sequence[str] | None, everything: bool) -> list[str] | None:
    """Dead letters named by ``--id`` or ``--all`` (``None``), exactly one of the two."""
    if bool(ids) == everything:
        raise InvalidInput("give --id (repeatable) or --all")
    return None if everything else list(ids or [])
