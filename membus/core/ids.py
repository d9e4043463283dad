"""User ids (e-mail addresses, UUIDs, mixed case, any text) as membus names, injectively.

A name is what scopes, Redis keys and policy lines hold: 1-64 chars of ``[a-z0-9_-]``. An id
that already is such a name maps to itself, unless it starts with a reserved prefix (``x--``,
``h--``): existing names, policies and data stay as they are. Any other id is escaped into
``x--<body>``: ``a``-``z``, ``0``-``9`` and ``-`` are kept, every other character becomes
``_<hex code point>_`` (``Alice`` -> ``x--_41_lice``, ``alice@example.com`` ->
``x--alice_40_example_2e_com``). An escaped name longer than 64 chars becomes
``h--<start of the escape>-<26 base32 chars of SHA-256 of the id>``.

Why this is safe: plain names, ``x--`` names and ``h--`` names are disjoint sets; ``x--`` names
decode back to exactly their id (so two ids never share one), and ``h--`` names differ unless
SHA-256 collides. Nothing is normalised (``Alice``/``alice``, ``a.b``/``a_b``, a Cyrillic
and a Latin ``a`` stay apart), and ``/``, ``*`` and ``.`` are escaped, so a name is always one
scope segment: ``agent/<name>`` is one agent's private scope and nobody else's.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Final

from membus.errors import InvalidInput

MAX_ID_CHARS: Final = 512
MAX_NAME: Final = 64
ESCAPED: Final = "x--"
HASHED: Final = "h--"

_PLAIN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_KEPT = re.compile(r"[a-z0-9-]")
_DIGEST_CHARS: Final = 26  # 130 bits of SHA-256
# refused outright: control characters and lone surrogates have no business in an id
_REFUSED = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _problem(field: str, reason: str) -> InvalidInput:
    return InvalidInput(f"{field}: {reason}", [{"field": field, "reason": reason}])


def _escape(value: str) -> str:
    return "".join(c if _KEPT.fullmatch(c) else f"_{ord(c):x}_" for c in value)


def encode_id(value: str, field: str = "id") -> str:
    """The membus name of a user id (see the module doc); ``InvalidInput`` for an id that is
    empty, longer than ``MAX_ID_CHARS``, padded with whitespace or holding control characters."""
    if not isinstance(value, str) or not value:
        raise _problem(field, "must be a non-empty string")
    if len(value) > MAX_ID_CHARS:
        raise _problem(field, f"is longer than {MAX_ID_CHARS} characters")
    if _REFUSED.search(value):
        raise _problem(field, "contains control characters or lone surrogates")
    if value != value.strip():
        raise _problem(field, "has leading or trailing whitespace")
    if _PLAIN.fullmatch(value) and not value.startswith((ESCAPED, HASHED)):
        return value
    body = _escape(value)
    if len(ESCAPED) + len(body) <= MAX_NAME:
        return ESCAPED + body
    digest = hashlib.sha256(value.encode("utf-8")).digest()
    tail = base64.b32encode(digest).decode("ascii").lower()[:_DIGEST_CHARS]
    room = MAX_NAME - len(HASHED) - 1 - _DIGEST_CHARS
    head = body[:room]
    if head.count("_") % 2:  # cut inside an escape: end the prefix before it
        head = head[: head.rindex("_")]
    return f"{HASHED}{head}-{tail}"


def decode_id(name: str) -> str | None:
    """The id ``name`` encodes; None for a hashed name (one way) or a string no id encodes to."""
    if not name.startswith(ESCAPED):
        if name.startswith(HASHED) or not _PLAIN.fullmatch(name):
            return None
        return name
    out: list[str] = []
    rest = name[len(ESCAPED) :]
    i = 0
    try:
        while i < len(rest):
            if rest[i] == "_":
                end = rest.index("_", i + 1)
                out.append(chr(int(rest[i + 1 : end], 16)))
                i = end + 1
            else:
                out.append(rest[i])
                i += 1
        value = "".join(out)
        # only the canonical spelling decodes: ``x--_061_`` or ``x--abc`` name nobody
        return value if encode_id(value) == name else None
    except (ValueError, OverflowError, InvalidInput):
        return None


def display_id(name: str) -> str:
    """What to show for a name: the id it encodes, else the name itself."""
    return decode_id(name) or name
