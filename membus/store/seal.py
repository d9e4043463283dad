"""Crypto-shredding primitives: what a store persists of a memory's personal data is sealed.

Deleting a point does not take its bytes off the disk: Qdrant Edge keeps them in its WAL and in
segment payload pages (and a backup keeps them anyway). So the text that can carry personal data
(content, subject, key, slot, metadata) is encrypted with a data key of its memory (AES-256-GCM,
the tenant and memory id as associated data, so a sealed document cannot be moved to another
point) before it reaches the engine, and ``forget`` destroys the key: every remaining copy becomes
unreadable at once. What must stay filterable (subject, key, slot, the numbers of the text) is
stored as a blind index: an HMAC under a per-tenant index key, equal for equal values, and
meaningless without the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from membus.errors import InvalidInput

SEALED = "sealed"  # the field of a payload's ``doc`` that holds the sealed document
KEY_BYTES = 32
_NONCE = 12
_BLIND_PREFIX = "h:"


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def encode_key(key: bytes) -> str:
    return key.hex()


def decode_key(text: str) -> bytes:
    key = bytes.fromhex(text)
    if len(key) != KEY_BYTES:
        raise InvalidInput(f"a data key must be {KEY_BYTES} bytes, got {len(key)}")
    return key


@dataclass(frozen=True, slots=True)
class Blind:
    """A tenant's blind index: the same value always gives the same token."""

    key: bytes

    def __call__(self, value: str) -> str:
        mac = hmac.new(self.key, value.encode(), hashlib.sha256).digest()[:16]
        return _BLIND_PREFIX + mac.hex()


@dataclass(frozen=True, slots=True)
class Seal:
    """One memory's data key and its tenant's blind index, as ``Memory.to_payload`` needs them."""

    key: bytes
    blind: Blind

    def seal(self, plain: bytes, aad: bytes) -> str:
        nonce = os.urandom(_NONCE)
        return base64.b64encode(nonce + AESGCM(self.key).encrypt(nonce, plain, aad)).decode()


def unseal(key: bytes, sealed: str, aad: bytes) -> bytes | None:
    """The plaintext, or None when ``sealed`` is not what ``key`` sealed for ``aad``."""
    try:
        raw = base64.b64decode(sealed, validate=True)
        return AESGCM(key).decrypt(raw[:_NONCE], raw[_NONCE:], aad)
    except (InvalidTag, ValueError):
        return None


def aad_of(tenant: str, memory_id: str) -> bytes:
    return f"{tenant}/{memory_id}".encode()
