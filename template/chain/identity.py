"""Binding a miner's hivemind PeerID to its hotkey through an on-chain commitment.

A miner commits ``dt2:<peer_id>:<record key id>`` under its hotkey (``dt1:<peer_id>`` from
older miners is still read, without a record key); the chain authenticates the commitment by
the hotkey's signature (the extrinsic signer on subtensor; a stored signature checked on read on
the local devnet). Validators map uids to DHT peers only through these bindings, never by IP.

Duplicate claims: when several uids claim one PeerID, the earliest commitment (lowest block,
then lowest uid) keeps it and the later claims are ignored, so a newcomer cannot steal the DHT
identity (and the averaging credit) of a peer that bound it first. A hotkey can still claim a
PeerID it does not control before its owner does; binding at start-up, before the PeerID is
announced anywhere, leaves no window for that.

The record key id (:func:`hivemind_utils.records.record_key_id`, a hash of the RSA public key
that signs the miner's DHT progress records) lets readers count only records whose signer is
bound to a registered hotkey: anyone can sign records with a key of its own making, but only a
hotkey can commit a key id under itself. The same earliest-claim rule applies to key ids.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from template.chain.base import Commitment

BINDING_PREFIX = "dt1:"
BINDING_PREFIX_V2 = "dt2:"
_PEER_ID_RE = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{20,128}$")  # base58, as template.protocol
_KEY_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def encode_binding(peer_id: str, record_key: str | None = None) -> str:
    """The commitment binding ``peer_id`` (and the record key id, when given) to the signer."""
    if not _PEER_ID_RE.match(peer_id):
        raise ValueError(f"{peer_id!r} is not a base58 PeerID")
    if record_key is None:
        return f"{BINDING_PREFIX}{peer_id}"
    if not _KEY_ID_RE.match(record_key):
        raise ValueError(f"{record_key!r} is not a record key id (32 hex digits)")
    return f"{BINDING_PREFIX_V2}{peer_id}:{record_key}"


def _decode(data: str) -> tuple[str, str | None] | None:
    if data.startswith(BINDING_PREFIX):
        peer_id, key = data[len(BINDING_PREFIX):], None
    elif data.startswith(BINDING_PREFIX_V2):
        peer_id, _, key = data[len(BINDING_PREFIX_V2):].partition(":")
        if not _KEY_ID_RE.match(key):
            return None
    else:
        return None
    return (peer_id, key) if _PEER_ID_RE.match(peer_id) else None


def decode_binding(data: str) -> str | None:
    """The PeerID in a binding commitment, or None when ``data`` is not a valid binding."""
    decoded = _decode(data)
    return decoded[0] if decoded else None


def decode_record_key(data: str) -> str | None:
    """The record key id in a ``dt2`` binding, or None (``dt1`` bindings name no key)."""
    decoded = _decode(data)
    return decoded[1] if decoded else None


def resolve_bindings(commitments: Iterable[Commitment]) -> dict[int, str]:
    """``{uid: peer_id}`` from commitments; a PeerID claimed twice goes to the earliest claim."""
    claims = sorted(
        ((c.block, c.uid, peer) for c in commitments if (peer := decode_binding(c.data))),
    )
    owner: dict[str, int] = {}
    for _block, uid, peer in claims:
        owner.setdefault(peer, uid)
    return {uid: peer for peer, uid in owner.items()}


def resolve_record_keys(commitments: Iterable[Commitment]) -> dict[str, str]:
    """``{record key id: hotkey}`` from commitments; a key id claimed twice goes to the earliest."""
    claims = sorted(
        ((c.block, c.uid, key, c.hotkey) for c in commitments
         if (key := decode_record_key(c.data))),
    )
    owner: dict[str, str] = {}
    for _block, _uid, key, hotkey in claims:
        owner.setdefault(key, hotkey)
    return owner
