"""Batch signatures' Merkle proofs (membus/access/merkle.py): every entry of a batch places
itself under the signed root, and nothing else does: not a changed event, not another entry's
proof, not an inner node passed off as a leaf, not a proof bent out of shape."""

from __future__ import annotations

import base64
import hashlib
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from membus.access import merkle


def raws(n: int) -> list[bytes]:
    return [f'{{"id":"ev-{i}","content":"note {i}"}}'.encode() for i in range(n)]


@pytest.mark.parametrize("n", range(2, merkle.BATCH_MAX + 1))
def test_every_entry_of_every_size_leads_to_the_signed_message(n: int) -> None:
    batch = merkle.batch(raws(n))
    assert batch.message.startswith(merkle.DOMAIN + b"\x00" + str(n).encode() + b"\x00")
    for raw, proof in zip(raws(n), batch.proofs, strict=True):
        assert merkle.signed_message(raw, proof) == batch.message
        # at most log2(BATCH_MAX) hashes: the entry stays small
        assert len(proof) <= 210


@settings(max_examples=60, deadline=None)
@given(
    events=st.lists(st.binary(max_size=64), min_size=2, max_size=merkle.BATCH_MAX, unique=True),
    data=st.data(),
)
def test_a_changed_event_or_a_borrowed_proof_leads_elsewhere(
    events: list[bytes], data: st.DataObject
) -> None:
    batch = merkle.batch(events)
    i = data.draw(st.integers(0, len(events) - 1))
    j = data.draw(st.integers(0, len(events) - 1).filter(lambda j: j != i))
    assert merkle.signed_message(events[i] + b" ", batch.proofs[i]) != batch.message
    assert merkle.signed_message(events[j], batch.proofs[i]) != batch.message
    # the same events batched again: fresh salts, another root, nothing shared
    again = merkle.batch(events)
    assert again.message != batch.message
    assert merkle.signed_message(events[i], again.proofs[i]) == again.message


def test_an_inner_node_cannot_pass_for_a_leaf() -> None:
    """The classic forgery on unsalted, undomained trees: present the two children of a node
    as one "event" and a shorter path. Leaves and nodes hash with different prefixes."""
    events = raws(4)
    batch = merkle.batch(events)
    _, _, salt, path = batch.proofs[0].split(".")
    siblings = merkle._unb64(path)
    left = merkle.leaf(merkle._unb64(salt), events[0])
    right = siblings[:32]  # leaf 1's hash
    forged = f"0.2.{salt}.{merkle._b64(siblings[32:])}"  # one level up, as if a tree of two
    assert merkle.signed_message(left + right, forged) != batch.message
    # and a leaf hashed as a node is not the node
    assert (
        hashlib.sha256(b"\x00" + left + right).digest()
        != hashlib.sha256(b"\x01" + left + right).digest()
    )


def _low_bits_set(last: str) -> str:
    """The character after ``last`` in the URL-safe alphabet: a 16-byte salt's last character
    carries two bits of data and four unused ones, so this decodes to the same bytes."""
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    return alphabet[alphabet.index(last) + 1]


def test_proofs_bent_out_of_shape_place_nothing() -> None:
    events = raws(5)
    batch = merkle.batch(events)
    _, _, salt, path = batch.proofs[4].split(".")
    hashes = merkle._unb64(path)
    loose = f"{salt[:-1]}{_low_bits_set(salt[-1])}"
    assert base64.urlsafe_b64decode(loose + "==") == base64.urlsafe_b64decode(salt + "==")
    bent = {
        "index past the end": f"5.5.{salt}.{path}",
        "negative index": f"-1.5.{salt}.{path}",
        "size of one": f"0.1.{salt}.",
        "size past the batch": f"4.{merkle.BATCH_MAX + 1}.{salt}.{path}",
        "a hash missing": f"4.5.{salt}.{merkle._b64(hashes[:-32])}",
        "a hash too many": f"4.5.{salt}.{merkle._b64(hashes + hashes[:32])}",
        "a torn hash": f"4.5.{salt}.{merkle._b64(hashes[:-1])}",
        "a short salt": f"4.5.{merkle._b64(b'x' * 8)}.{path}",
        "not base64": f"4.5.{salt}.{path[:-1]}+",
        "spaces": f" 4.5.{salt}.{path}",
        "too few parts": f"4.5.{path}",
        "too many parts": f"4.5.{salt}.{path}.x",
        "empty": "",
        "an index of thousands of digits": f"{'4' * 5000}.5.{salt}.{path}",
        # one proof, one spelling: int() reads these as 4 and 5 too
        "a leading zero": f"04.5.{salt}.{path}",
        "Arabic-Indic digits": f"\u0664.\u0665.{salt}.{path}",
        "fullwidth digits": f"\uff14.\uff15.{salt}.{path}",
        "the salt's unused low bits set": f"4.5.{loose}.{path}",
    }
    for why, proof in bent.items():
        assert merkle.signed_message(events[4], proof) is None, why
    with pytest.raises(ValueError):
        merkle.batch(raws(1))
