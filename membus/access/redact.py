"""PII redaction: a pluggable step that masks personal data before an event leaves private scope.

The default ``PiiRedactor`` masks e-mail addresses, phone numbers and payment card numbers. It
errs towards leaving ordinary text alone: dates, versions, IPs, ticket numbers and ids stay, card
numbers must pass the Luhn check and look like a card (issuer digit, usual grouping), and phone
numbers must have a phone's shape (``+`` international, NANP, or a trunk ``0`` prefix).

Every pattern is linear-time (possessive quantifiers, starts anchored by look-behind) because the
text is untrusted and up to 16 KiB.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, Protocol, runtime_checkable

from membus.core.envelope import Event

MASKS: Final[dict[str, str]] = {"card": "[card]", "email": "[email]", "phone": "[phone]"}


@dataclass(frozen=True, slots=True)
class Finding:
    """One masked span, as offsets into the text *before* masking."""

    kind: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Redaction:
    text: str
    findings: list[Finding]


@runtime_checkable
class Redactor(Protocol):
    def redact(self, text: str) -> Redaction: ...


# -- detectors ---------------------------------------------------------------------------------

# RFC 5322 atext (plus '.'): a start is only tried where such a run begins, so a long run not
# followed by '@' costs one pass, not one per position.
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~.-"
_EMAIL = re.compile(
    rf"(?<![{_ATEXT}])[{_ATEXT}]++@(?:[A-Za-z0-9-]++\.)+[A-Za-z][A-Za-z0-9-]*(?<!-)"
)

# Maximal runs of digit groups joined by one space or dash; card windows are chosen inside.
_DIGIT_RUN = re.compile(r"\d++(?:[ -]\d++)*+")
_GROUP = re.compile(r"\d++")

_PHONES = [
    # international: +CC, optional (area), groups; digit count checked below
    re.compile(r"\+\d{1,3}+(?:[ .-]?\(\d{1,4}+\))?+(?:[ .-]?\d++)++"),
    # North American: (555) 123-4567, 555-123-4567, 1-800-555-1234
    re.compile(r"(?:1[ .-])?+(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}"),
    # trunk-prefixed national, one separator throughout: 020 7946 0958, 01 23 45 67 89
    re.compile(r"0\d{1,4}+(?P<sep>[ .-])\d{2,8}+(?:(?P=sep)\d{2,8}+){0,4}+"),
    re.compile(r"\(0\d{1,4}+\) ?\d{2,8}+(?:[ .-]\d{2,8}+){0,4}+"),
    re.compile(r"0\d{9,10}+"),
]

_CARD_MIN, _CARD_MAX = 13, 19
_ISSUERS: Final = "23456"  # Mastercard 2/5, Amex/Diners/JCB 3, Visa 4, Discover/UnionPay 6


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _isolated(text: str, start: int, end: int) -> bool:
    """Not glued to a word, nor continuing a numeric structure (``2026-0612…``, ``1.2.0612…``)."""
    if start > 0:
        before = text[start - 1]
        if _word(before) or (before in ".-/" and start > 1 and text[start - 2].isdigit()):
            return False
    if end < len(text):
        after = text[end]
        if _word(after) or (after in ".-/" and end + 1 < len(text) and text[end + 1].isdigit()):
            return False
    return True


def _card_shape(groups: list[str]) -> bool:
    """Unbroken, or grouped as cards are printed: 4-4-4-4(-3), 4-4-4-1.., Amex 4-6-5, 4-6-4."""
    if len(groups) == 1:
        return True
    if len(groups[0]) != 4:
        return False
    if [len(g) for g in groups] in ([4, 6, 5], [4, 6, 4]):
        return True
    return all(len(g) == 4 for g in groups[1:-1]) and 1 <= len(groups[-1]) <= 4


def _cards(text: str) -> Iterator[tuple[int, int]]:
    for run in _DIGIT_RUN.finditer(text):
        spans = [(m.start() + run.start(), m.end() + run.start()) for m in _GROUP.finditer(run[0])]
        i = 0
        while i < len(spans):
            best = None
            digits = ""
            for j in range(i, len(spans)):
                digits += text[spans[j][0] : spans[j][1]]
                if len(digits) > _CARD_MAX:
                    break
                start, end = spans[i][0], spans[j][1]
                if (
                    len(digits) >= _CARD_MIN
                    and digits[0] in _ISSUERS
                    and _card_shape([text[a:b] for a, b in spans[i : j + 1]])
                    and _isolated(text, start, end)
                    and text[start - 1 : start] != "+"  # +491511… is a phone, whatever Luhn says
                    and luhn_ok(digits)
                ):
                    best = (j, start, end)  # keep the longest window from this group
            if best is None:
                i += 1
                continue
            yield best[1], best[2]
            i = best[0] + 1


def _emails(text: str) -> Iterator[tuple[int, int]]:
    for m in _EMAIL.finditer(text):
        yield m.start(), m.end()


def _phone_ok(text: str, start: int, end: int) -> tuple[int, int] | None:
    """Trim an international match to at most 15 digits, then check digit count and edges."""
    span = text[start:end]
    if span.startswith("+"):
        groups = list(re.finditer(r"\(?\d+\)?", span))
        count, stop = 0, 0
        for g in groups:
            n = sum(c.isdigit() for c in g[0])
            if count + n > 15:
                break
            count, stop = count + n, g.end()
        if count < 8:
            return None
        end = start + stop
    else:
        count = sum(c.isdigit() for c in span)
        if not 9 <= count <= 11:
            return None
    return (start, end) if _isolated(text, start, end) else None


def _phones(text: str) -> Iterator[tuple[int, int]]:
    for pattern in _PHONES:
        pos = 0
        while (m := pattern.search(text, pos)) is not None:
            ok = _phone_ok(text, m.start(), m.end())
            if ok is None:
                pos = m.start() + 1  # a rejected match may hide a phone starting inside it
                continue
            yield ok
            pos = ok[1]


Detector = Callable[[str], Iterator[tuple[int, int]]]
_DETECTORS: Final[dict[str, Detector]] = {"email": _emails, "card": _cards, "phone": _phones}


class PiiRedactor:
    """Masks e-mail addresses, phone numbers and Luhn-valid card numbers.

    Kinds are resolved in priority order (e-mails, then cards, then phones); a later kind's span
    overlapping an earlier one is dropped, so digits inside an address go with the address and
    a card is never half-masked as a phone.
    """

    def __init__(self, *, emails: bool = True, cards: bool = True, phones: bool = True) -> None:
        enabled = {"email": emails, "card": cards, "phone": phones}
        self.kinds = [k for k in _DETECTORS if enabled[k]]

    def findings(self, text: str) -> list[Finding]:
        if "@" not in text and not any(c.isdigit() for c in text):
            return []  # the common case: nothing any detector could match
        taken: list[Finding] = []
        for kind in self.kinds:
            for start, end in _DETECTORS[kind](text):
                if all(end <= f.start or start >= f.end for f in taken):
                    taken.append(Finding(kind, start, end))
        return sorted(taken, key=lambda f: f.start)

    def redact(self, text: str) -> Redaction:
        found = self.findings(text)
        if not found:
            return Redaction(text, [])
        out, pos = [], 0
        for f in found:
            out += [text[pos : f.start], MASKS[f.kind]]
            pos = f.end
        out.append(text[pos:])
        return Redaction("".join(out), found)


# -- events ------------------------------------------------------------------------------------


class RedactedEvent(NamedTuple):
    event: Event
    findings: int


def needs_redaction(author: str, scope: str) -> bool:
    """True when ``scope`` is wider than the author's private ``agent/<author>`` subtree."""
    private = f"agent/{author}"
    return not (scope == private or scope.startswith(private + "/"))


def redact_event(event: Event, redactor: Redactor) -> RedactedEvent:
    """A copy of ``event`` with content, subject and metadata strings (values and keys) masked.

    ``key`` is left alone: it is the memory's identity, and masking would merge distinct
    memories. The copy is re-validated, so the envelope's limits still hold. With nothing found
    the same event object comes back.
    """
    count = 0

    def mask(text: str) -> str:
        nonlocal count
        r = redactor.redact(text)
        count += len(r.findings)
        return r.text

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return mask(value)
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for k, v in value.items():
                name = mask(k)
                while name in out:  # two keys masked alike must not overwrite each other
                    name += "'"
                out[name] = walk(v)
            return out
        return value

    content = mask(event.content)
    subject = mask(event.subject) if event.subject is not None else None
    metadata = walk(event.metadata)
    if not count:
        return RedactedEvent(event, 0)
    data = event.model_dump()
    data.update(content=content, subject=subject, metadata=metadata)
    return RedactedEvent(Event.validate_dict(data), count)
