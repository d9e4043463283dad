"""What a search may see, as one engine-neutral spec that every store engine only translates.

The tenant condition is always there. The caller's requested scopes narrow. The read grant from
the permission gate (include/exact roots, exclude/exclude_exact holes, clearance) is applied on
top, so whatever filter a caller passes can only narrow what the policy allows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from membus.access.gate import ReadGrant

MAX_SENSITIVITY = 3
_EPSILON_S = 1e-3  # finer than any two versions' ordering needs, coarser than float rounding


class RecallFilter(BaseModel):
    """A search's scope: the tenant, the grant, and narrowing options."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    scopes: list[str] | None = None  # requested subtree roots; None: whatever the grant allows
    include_subscopes: bool = True
    grant: ReadGrant = Field(default_factory=lambda: ReadGrant(all_scopes=True))
    kinds: list[str] | None = None
    subjects: list[str] | None = None
    agents: list[str] | None = None
    since: datetime | None = None
    until: datetime | None = None
    # None: what holds now (current versions, not expired); a time: what held then, superseded
    # versions of keyed facts included
    as_of: datetime | None = None
    # only memories whose text has exactly these numbers (``store.numbers_key``): the
    # near-duplicate search's narrowing
    numbers: str | None = None
    # keyed facts' keys, and consolidation slots (every version of one fact): history's narrowing
    keys: list[str] | None = None
    slots: list[str] | None = None
    # slots left out: the near-duplicate search's own slot, which would otherwise be every
    # search's first hit, fetched and opened only to be dropped
    exclude_slots: list[str] | None = None
    # every version regardless of validity (current, superseded, expired): history and export;
    # ``as_of`` is ignored then
    versions: bool = False
    # only versions that began to hold (``valid_from``, else ``created_at``) at or before this:
    # where the previous page of a browse ended
    began_by: datetime | None = None


@dataclass(frozen=True, slots=True)
class Cond:
    """One payload condition: equal to ``value``, any of ``any``, or within [gte, lte]."""

    field: str
    value: str | None = None
    any: tuple[str, ...] | None = None
    gte: float | None = None
    lte: float | None = None


@dataclass(frozen=True, slots=True)
class FilterSpec:
    must: list[Cond] = field(default_factory=list)
    should: list[Cond] = field(default_factory=list)  # at least one, when not empty
    must_not: list[Cond] = field(default_factory=list)
    # more "at least one of" groups, each on top of ``should``
    either: list[tuple[Cond, ...]] = field(default_factory=list)
    nothing: bool = False  # the grant allows nothing: engines return no hits without asking


def spec(flt: RecallFilter) -> FilterSpec:
    if flt.grant.empty or flt.scopes == []:
        return FilterSpec(nothing=True)
    granted = corpus_spec(flt)
    must = list(granted.must)
    if flt.scopes is not None:
        field_ = "scope_path" if flt.include_subscopes else "scope"
        must.append(Cond(field_, any=tuple(flt.scopes)))
    for name, values in (
        ("kind", flt.kinds),
        ("subject", flt.subjects),
        ("agents", flt.agents),
        ("key", flt.keys),
        ("slot", flt.slots),
    ):
        if values is not None:
            must.append(Cond(name, any=tuple(values)))
    if flt.numbers is not None:
        must.append(Cond("numbers", value=flt.numbers))
    if flt.since is not None or flt.until is not None:
        must.append(
            Cond(
                "created_ts",
                gte=flt.since.timestamp() if flt.since else None,
                lte=flt.until.timestamp() if flt.until else None,
            )
        )
    if flt.began_by is not None:
        must.append(Cond("valid_from_ts", lte=flt.began_by.timestamp()))
    must_not = list(granted.must_not)
    if flt.exclude_slots:
        must_not.append(Cond("slot", any=tuple(flt.exclude_slots)))
    if flt.versions:
        return FilterSpec(must, granted.should, must_not)
    # valid_to is exclusive: a version superseded at t no longer holds at t
    at = flt.as_of.timestamp() if flt.as_of is not None else time.time()
    either: list[tuple[Cond, ...]] = []
    if flt.grant.clearance < MAX_SENSITIVITY:
        # the caller's own view of each key's history: a version ends for it only when one it
        # may read replaces it. A point written before that field existed has only valid_to_ts;
        # a point with both has valid_to_<c>_ts >= valid_to_ts, so "either" is exactly the
        # per-clearance field there, and the old validity on an old point (no point drops out)
        either.append(
            (
                Cond(f"valid_to_{flt.grant.clearance}_ts", gte=at + _EPSILON_S),
                Cond("valid_to_ts", gte=at + _EPSILON_S),
            )
        )
    else:
        must.append(Cond("valid_to_ts", gte=at + _EPSILON_S))
    if flt.as_of is not None:
        must.append(Cond("valid_from_ts", lte=at))
    return FilterSpec(must, granted.should, must_not, either)


def corpus_spec(flt: RecallFilter) -> FilterSpec:
    """Everything the grant lets this caller read in its tenant, history included, ignoring the
    caller's own narrowing: the corpus whose statistics (BM25's IDF) a search may use. It does
    not change with the clock or the request, so statistics over it can be cached."""
    g = flt.grant
    if g.empty:
        return FilterSpec(nothing=True)
    must = [Cond("tenant", value=flt.tenant)]
    should: list[Cond] = []
    if not g.all_scopes:
        if g.include:
            should.append(Cond("scope_path", any=tuple(g.include)))
        if g.exact:
            should.append(Cond("scope", any=tuple(g.exact)))
    must_not: list[Cond] = []
    if g.exclude:
        must_not.append(Cond("scope_path", any=tuple(g.exclude)))
    if g.exclude_exact:
        must_not.append(Cond("scope", any=tuple(g.exclude_exact)))
    if g.clearance < MAX_SENSITIVITY:
        must.append(Cond("sensitivity", lte=float(g.clearance)))
    return FilterSpec(must, should, must_not)


def tenant_spec(tenant: str) -> FilterSpec:
    return FilterSpec(must=[Cond("tenant", value=tenant)])
