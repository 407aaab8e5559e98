"""Binding a miner's hivemind PeerID to its hotkey through an on-chain commitment.

A miner commits ``dt1:<peer_id>`` under its hotkey; the chain authenticates the commitment by
the hotkey's signature (the extrinsic signer on subtensor; a stored signature checked on read on
the local devnet). Validators map uids to DHT peers only through these bindings, never by IP.

Duplicate claims: when several uids claim one PeerID, the earliest commitment (lowest block,
then lowest uid) keeps it and the later claims are ignored, so a newcomer cannot steal the DHT
identity (and the averaging credit) of a peer that bound it first. A hotkey can still claim a
PeerID it does not control before its owner does; binding at start-up, before the PeerID is
announced anywhere, leaves no window for that.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from template.chain.base import Commitment

BINDING_PREFIX = "dt1:"
_PEER_ID_RE = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{20,128}$")  # base58, as template.protocol


def encode_binding(peer_id: str) -> str:
    if not _PEER_ID_RE.match(peer_id):
        raise ValueError(f"{peer_id!r} is not a base58 PeerID")
    return f"{BINDING_PREFIX}{peer_id}"


def decode_binding(data: str) -> str | None:
    """The PeerID in a binding commitment, or None when ``data`` is not a valid binding."""
    if not data.startswith(BINDING_PREFIX):
        return None
    peer_id = data[len(BINDING_PREFIX):]
    return peer_id if _PEER_ID_RE.match(peer_id) else None


def resolve_bindings(commitments: Iterable[Commitment]) -> dict[int, str]:
    """``{uid: peer_id}`` from commitments; a PeerID claimed twice goes to the earliest claim."""
    claims = sorted(
        ((c.block, c.uid, peer) for c in commitments if (peer := decode_binding(c.data))),
    )
    owner: dict[str, int] = {}
    for _block, uid, peer in claims:
        owner.setdefault(peer, uid)
    return {uid: peer for peer, uid in owner.items()}
