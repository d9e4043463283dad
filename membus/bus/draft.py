"""What a publish takes and returns: a ``Draft`` of one observation, and its ``Receipt``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from membus.core.envelope import Label


class Draft(BaseModel):
    """One observation to publish; the bus fills in identity, id and time."""

    model_config = ConfigDict(extra="forbid")
    content: str
    scope: str | None = None  # None: the author's private scope, agent/<name>
    kind: str = "observation"
    subject: str | None = None
    key: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    label: Label = "public"
    created_at: datetime | None = None  # when it was observed (default: now)
    causation_id: str | None = None
    correlation_id: str | None = None


class Receipt(BaseModel):
    """What a publish returns: the event id (stable across redelivery) and its stream position."""

    model_config = ConfigDict(frozen=True)
    event_id: str
    position: str
    tenant: str
    scope: str
