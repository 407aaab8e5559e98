"""Rules every peer computes the same way: who pushes an epoch's checkpoint, when to resync.

Pure functions of values every member of a round knows (run id, epoch, the round's
participants), so no extra message is needed to agree on them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def checkpoint_pusher(run_id: str, epoch: int, participants: Iterable[str]) -> str | None:
    """The participant that pushes the checkpoint of `epoch` (the weights after its step).

    Each participant's ticket is ``sha256(f"{run_id}/{epoch}/{peer_id}")``; the smallest ticket
    pushes. Every member of the round knows the same participant list, so exactly one of them
    pushes, and the duty rotates pseudo-randomly between epochs instead of always landing on the
    same peer. ``None`` when the round had no participants.
    """
    peers = sorted(set(participants))
    if not peers:
        return None
    return min(peers, key=lambda peer: hashlib.sha256(f"{run_id}/{epoch}/{peer}".encode()).digest())


def needs_resync(
    *, epoch: int, drift: float | None, drift_threshold: float, resync_every: int
) -> bool:
    """Whether a miner should reload the epoch's canonical checkpoint.

    `drift` is the fingerprint distance between the miner's weights and the canonical
    checkpoint of the same epoch (``None`` when there is none yet). Floating-point noise from
    the all-reduce accumulates slowly, so a miner reloads when the drift passes
    `drift_threshold`, and in any case every `resync_every` epochs (0 = never on a schedule).
    """
    if drift is not None and drift > drift_threshold:
        return True
    return resync_every > 0 and epoch > 0 and epoch % resync_every == 0
