"""Rules every peer computes the same way: who pushes an epoch's checkpoint, when to resync.

Pure functions of values every member of a round knows (run id, epoch, the round's
participants), so no extra message is needed to agree on them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from template.model import FINGERPRINT_TOLERANCE


def checkpoint_pusher(run_id: str, epoch: int, participants: Iterable[str]) -> str | None:
    """The participant that pushes the checkpoint of `epoch` (the weights after its step).

    Each participant's ticket is ``sha256(f"{run_id}/{epoch}/{peer_id}")``; the smallest ticket
    pushes. Every member of the round knows the same participant list, so exactly one of them
    pushes, and the duty rotates pseudo-randomly between epochs instead of always landing on the
    same peer. ``None`` when the round had no participants.
    """
    order = pusher_order(run_id, epoch, participants)
    return order[0] if order else None


def pusher_order(run_id: str, epoch: int, participants: Iterable[str]) -> list[str]:
    """The participants by ticket: the first pushes; if its checkpoint does not appear, the
    r-th pushes after ``r * --store.push_grace`` seconds (a pusher that died or failed its
    round must not leave the epoch without a canonical checkpoint)."""
    return sorted(set(participants),
                  key=lambda peer: hashlib.sha256(f"{run_id}/{epoch}/{peer}".encode()).digest())


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


HONEST_SPREAD = {"none": 2.7e-7, "fp16": 1.83e-3, "8bit": 7.8e-2}
"""Largest post-step fingerprint distance measured between honest miners of one swarm: 3 miners
of the tiny preset over 5 epochs on the local devnet (``scripts/measure_drift.py``; see
docs/benchmarks.md). Without compression it is ulp noise and does not grow; with fp16 it is
about 1.8e-3 from the first step on and does not grow; with 8-bit it starts at 4e-2 and GROWS
(7.8e-2 after 5 epochs) until a miner reloads the canonical checkpoint. Cause: AdamW's early
updates are about ``lr * sign(g)``, so compression noise that flips the sign of tiny averaged
gradient entries moves those weights by ``2 lr``."""
CONSENSUS_TOLERANCE = {"none": FINGERPRINT_TOLERANCE, "fp16": 6e-3, "8bit": 0.25}
"""Default ``--validator.fingerprint_tolerance`` per ``--averaging.compression``: over 3x the
measured honest spread (370x without compression). A step at twice the learning rate measured
1.2e-2 and one extra AdamW step 1e-3..1e-2: caught with `none`, caught with `fp16` when the
deviation exceeds 6e-3, NOT distinguishable with `8bit` (the gate then catches only gross
deviations: a model that is not the swarm's). Use `none` or `fp16` where consensus matters."""


def consensus_tolerance(compression: str, configured: float = 0.0) -> float:
    """``configured`` when set (> 0), else the default for the averaging compression."""
    if configured > 0:
        return configured
    if compression not in CONSENSUS_TOLERANCE:
        raise ValueError(f"--averaging.compression {compression!r} has no measured tolerance; "
                         "set --validator.fingerprint_tolerance")
    return CONSENSUS_TOLERANCE[compression]
