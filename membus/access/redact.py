"""PII redaction: a pluggable step that masks personal data before an event leaves private scope.

The default ``PiiRedactor`` masks e-mail addresses, phone numbers and payment card numbers. It
errs towards leaving ordinary text alone: dates, versions, IPs, ticket numbers and ids stay, card
numbers must pass the Luhn check and look like a card (issuer digit, usual grouping), and phone
numbers must have a phone's shape (``+`` international, NANP, or a trunk ``0`` prefix).

Detectors never see the raw text: they run on a normalised view of it, so the spellings people
(and evasive agents) use to slip an address or a number past a pattern are matched like the
plain ones. The view is NFKC (fullwidth at signs and digits, compatibility dots and spaces),
without invisible characters (Unicode format characters such as zero-width spaces and joiners,
soft hyphens and BOMs; combining marks; variation selectors and fillers), with every script's
digits as ASCII digits, dashes as ``-``, ideographic full stops and middle dots as ``.``, runs of
spaces as one, and the obfuscated ``(at)``/``[dot]`` spellings and a spaced ``a @ b.com`` as
``@`` and ``.``. Each view character remembers the original characters it came from, so the mask
covers the original span (invisible characters inside it included) and everything outside it is
left byte for byte. Addresses may be internationalised (``用户@例子.广告``, ``josé@café.fr``).
No off-the-shelf PII detector fit: the maintained ones need a language model (Presidio: spaCy)
or heavy dependencies (scrubadub: scikit-learn, textblob, faker).

Every pattern is linear-time (possessive quantifiers, starts anchored by look-behind) because the
text is untrusted and up to 16 KiB.
"""

from __future__ import annotations

import re
import unicodedata
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


# -- the normalised view -----------------------------------------------------------------------

# Invisible but not Cf: combining grapheme joiner, Hangul fillers, Khmer inherent vowels,
# Mongolian variation selectors, variation selectors (the Default_Ignorable_Code_Point extras).
_IGNORABLE: Final = frozenset(
    [
        *(0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x3164, 0xFFA0),
        *range(0x180B, 0x1810),
        *range(0xFE00, 0xFE10),
        *range(0xE0100, 0xE01F0),
    ]
)
_DROP: Final = frozenset({"Cf", "Mn", "Me", "Cs", "Co", "Cn"})
# ideographic full stops (IDNA label separators) and the middle dots written for "dot"
_STOPS: Final = frozenset("\u3002\uff61\ufe12\u00b7\u2027\u2219\u22c5\u30fb")
_DASHES: Final = frozenset("\u2212\u2796\ufe63\uff0d")  # minus signs that are not Pd

_OPEN, _CLOSE = r"[(\[{<]", r"[)\]}>]"
# obfuscated spellings, with the spaces around them: "a (at) b [dot] com", "a @ b.com"
_REWRITES: Final = [
    (re.compile(rf"(?<!\s)\s*+{_OPEN}\s*+(?:at|@)\s*+{_CLOSE}\s*+", re.IGNORECASE), "@"),
    (re.compile(rf"(?<!\s)\s*+{_OPEN}\s*+(?:dot|\.)\s*+{_CLOSE}\s*+", re.IGNORECASE), "."),
    # spaces on both sides only: "thanks @bob" stays
    (re.compile(r"(?<=\w) @ (?=\w)"), "@"),
    (re.compile(r"(?<=\w) \. (?=\w)"), "."),
    (re.compile(r"(?<=\d) - (?=\d)"), "-"),
    (re.compile(r"  ++"), " "),
]


def _fold_char(ch: str) -> str:
    """What one character is to the detectors: NFKC, invisible ones dropped, digits, dashes,
    stops and spaces in their ASCII spelling."""
    out = []
    for c in unicodedata.normalize("NFKC", ch):
        if ord(c) in _IGNORABLE or unicodedata.category(c) in _DROP:
            continue
        if c in _STOPS:
            c = "."
        elif c in _DASHES or unicodedata.category(c) == "Pd":
            c = "-"
        elif c.isspace():
            c = "\n" if c in "\n\r\u2028\u2029\x85\x0b\x0c" else " "
        elif (d := unicodedata.decimal(c, None)) is not None:
            c = chr(48 + d)  # Arabic-Indic, Devanagari, ... digits count as digits
        out.append(c)
    return "".join(out)


class _View:
    """The text detectors see; ``span`` maps a view span back to the original text."""

    __slots__ = ("ends", "starts", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        # None: the view is the text itself (the common, ASCII case costs no index lists)
        self.starts: list[int] | None = None
        self.ends: list[int] | None = None
        if not text.isascii():
            self._fold(text)
        for pattern, repl in _REWRITES:
            if pattern.search(self.text) is not None:
                self._rewrite(pattern, repl)

    def span(self, start: int, end: int) -> tuple[int, int]:
        if self.starts is None or self.ends is None:
            return start, end
        return self.starts[start], self.ends[end - 1]

    def _fold(self, text: str) -> None:
        # per distinct character, not per position: a long text has few distinct ones
        table = {ch: f for ch in set(text) if not ch.isascii() and (f := _fold_char(ch)) != ch}
        if not table:
            return  # already what detectors should see (most accented and CJK text)
        if all(len(f) == 1 for f in table.values()):
            # same positions: no index lists
            self.text = text.translate({ord(ch): f for ch, f in table.items()})
            return
        out: list[str] = []
        starts: list[int] = []
        ends: list[int] = []
        for i, ch in enumerate(text):
            for c in table.get(ch, ch):
                out.append(c)
                starts.append(i)
                ends.append(i + 1)
        self.text, self.starts, self.ends = "".join(out), starts, ends

    def _rewrite(self, pattern: re.Pattern[str], repl: str) -> None:
        n = len(self.text)
        starts = self.starts if self.starts is not None else list(range(n))
        ends = self.ends if self.ends is not None else list(range(1, n + 1))
        out: list[str] = []
        new_starts: list[int] = []
        new_ends: list[int] = []
        pos = 0
        for m in pattern.finditer(self.text):
            out.append(self.text[pos : m.start()])
            new_starts += starts[pos : m.start()]
            new_ends += ends[pos : m.start()]
            out.append(repl)  # one character standing for the whole spelling
            new_starts.append(starts[m.start()])
            new_ends.append(ends[m.end() - 1])
            pos = m.end()
        out.append(self.text[pos:])
        new_starts += starts[pos:]
        new_ends += ends[pos:]
        self.text, self.starts, self.ends = "".join(out), new_starts, new_ends


# -- detectors ---------------------------------------------------------------------------------

# RFC 5322 atext (plus '.') and, for internationalised addresses (RFC 6531), any letter or digit:
# a start is only tried where such a run begins, so a long run not followed by '@' costs one
# pass, not one per position. Domain labels are letters, digits and '-' in any script (IDN).
_ATEXT = r"\w!#$%&'*+/=?^`{|}~.-"
_LABEL = r"(?>[^\W_][\w-]*+)(?<![-_])"  # atomic: a label matches one way or not at all
# a quoted local part ("john doe"@example.com) too; top-level domains have two characters or more
_EMAIL = re.compile(
    rf'(?:"[^"\n]{{1,64}}+"|(?<![{_ATEXT}])[{_ATEXT}]++)@(?:{_LABEL}\.)+[^\W\d_][\w-]++(?<![-_])'
)

# Maximal runs of digit groups joined by one space, dash or dot; card windows are chosen inside.
_DIGIT_RUN = re.compile(r"\d++(?:[ .-]\d++)*+")
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
        """Spans of ``text`` (the original, not the normalised view) to mask, in order."""
        view = _View(text)
        seen = view.text
        if "@" not in seen and not any(c.isdigit() for c in seen):
            return []  # the common case: nothing any detector could match
        taken: list[tuple[str, int, int]] = []
        for kind in self.kinds:
            for start, end in _DETECTORS[kind](seen):
                if all(end <= s or start >= e for _, s, e in taken):
                    taken.append((kind, start, end))
        out: list[Finding] = []
        for kind, start, end in sorted(taken, key=lambda t: t[1]):
            a, b = view.span(start, end)
            if out and a < out[-1].end:  # one original character expanded into both spans
                a = out[-1].end
            if a < b:
                out.append(Finding(kind, a, b))
        return out

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
