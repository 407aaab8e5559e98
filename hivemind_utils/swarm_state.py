"""Swarm-wide training progress: publish one's own record, read everyone's.

    reporter = ProgressReporter(dht=dht, hotkey=wallet.hotkey.ss58_address, expiration=60)
    reporter.report(epoch=3, samples=128, tokens_per_second=2100.0)
    state = read_swarm_state(dht, run_id=cfg.neuron.run_id, target_batch_size=1024)
    if should_start_round(state): ...

A peer is *live* while its record has not expired: records carry a DHT expiration time, so a peer
that stops reporting vanishes ``expiration`` seconds after its last report. The global epoch is
the largest epoch among live peers; ``samples_accumulated`` sums only the peers at that epoch
(hivemind's ``ProgressTracker`` rule: stragglers will resync before they count again).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import hivemind
from hivemind.p2p import PeerID
from hivemind.utils import ValueWithExpiration, get_dht_time

from hivemind_utils.dht import SwarmDHT
from hivemind_utils.records import PeerProgressRecord, parse_progress, progress_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeerProgress:
    """One live peer as read from the DHT (self-reported numbers: verify before paying for them)."""

    peer_id: str
    """libp2p PeerID (base58)."""
    hotkey: str
    """ss58 hotkey the peer claims."""
    epoch: int
    samples: int
    """Samples accumulated in ``epoch`` so far."""
    tokens_per_second: float
    age_seconds: float
    """Seconds since the peer's last update."""
    finished: bool = False
    """Done with the epoch's local work, waiting for the round."""


@dataclass(frozen=True)
class SwarmState:
    global_epoch: int
    target_batch_size: int
    samples_accumulated: int
    """Sum of ``samples`` over live peers at ``global_epoch``."""
    peers: list[PeerProgress] = field(default_factory=list)
    rejected: int = 0
    """Records present but refused by the reader (bad schema, no owner key); 0 normally."""

    def to_json(self) -> dict[str, object]:
        """The inspector's ``--json`` object (``rejected`` left out: readers rarely see any)."""
        out = dataclasses.asdict(self)
        out.pop("rejected")
        return out


def should_start_round(state: SwarmState) -> bool:
    """The simple round trigger (until the validator drives rounds): target batch size reached."""
    return state.samples_accumulated >= state.target_batch_size


def epoch_work_done(state: SwarmState, *, min_peers: int, waited: float,
                    straggler_wait: float) -> bool:
    """Every live peer finished the global epoch's local work: the round need not wait longer.

    At least ``min_peers`` peers must be at the global epoch, all finished. A live peer still at
    an earlier epoch (stepping, pushing the checkpoint, loading state) is about to arrive and
    would miss a round started now, so it is waited for, but for ``straggler_wait`` seconds at
    most (``waited``: how long the caller has been ready), so a stuck peer cannot stall the swarm.
    """
    here = [p for p in state.peers if p.epoch == state.global_epoch]
    if len(here) < min_peers or not all(p.finished for p in here):
        return False
    return len(here) == len(state.peers) or waited >= straggler_wait


def read_swarm_state(dht: hivemind.DHT, *, run_id: str, target_batch_size: int) -> SwarmState:
    """Every peer's latest valid, unexpired record for ``run_id``, as a :class:`SwarmState`."""
    found = dht.get(progress_key(run_id), latest=True)
    now = get_dht_time()
    peers: list[PeerProgress] = []
    rejected = 0
    entries = found.value if isinstance(found, ValueWithExpiration) else None
    if isinstance(entries, dict):
        for subkey, item in entries.items():
            value = item.value if isinstance(item, ValueWithExpiration) else item
            if value is None:
                continue  # the peer cleared its record on shutdown
            record = parse_progress(subkey, value, now=now)
            if isinstance(record, str):
                rejected += 1
                logger.debug("ignoring progress record: %s", record)
                continue
            peers.append(_to_peer(record, now))
    peers.sort(key=lambda p: (-p.epoch, p.peer_id))
    global_epoch = max((p.epoch for p in peers), default=0)
    samples = sum(p.samples for p in peers if p.epoch == global_epoch)
    return SwarmState(global_epoch, target_batch_size, samples, peers, rejected)


def _to_peer(record: PeerProgressRecord, now: float) -> PeerProgress:
    peer_id = PeerID(record.peer_id).to_base58()
    return PeerProgress(peer_id, record.hotkey, record.epoch, record.samples,
                        record.tokens_per_second, max(0.0, now - record.time), record.finished)


class ProgressReporter:
    """Publishes this peer's :class:`PeerProgressRecord` under its signed subkey.

    :param expiration: seconds a record stays valid; the peer counts as gone this long after its
      last report. Too short: peers flicker out of the inspector between reports (report at
      least every ``expiration / 2`` s). Too long: a crashed miner's samples still count toward
      the target batch, so a round starts without it.
    """

    def __init__(self, *, dht: SwarmDHT, hotkey: str, expiration: float = 60.0):
        if expiration <= 0:
            raise ValueError("expiration must be > 0 seconds")
        self.dht, self.hotkey, self.expiration = dht, hotkey, expiration
        self.run_id = dht.run_id
        self._peer_id = dht.peer_id.to_bytes()

    def report(self, *, epoch: int, samples: int, tokens_per_second: float,
               finished: bool = False) -> bool:
        """Store the record (blocking, one DHT round trip); True if at least one node kept it."""
        record = PeerProgressRecord(
            peer_id=self._peer_id, hotkey=self.hotkey, epoch=int(epoch), samples=int(samples),
            tokens_per_second=float(tokens_per_second), time=get_dht_time(),
            finished=bool(finished),
        )
        return bool(self.dht.store(
            progress_key(self.run_id), subkey=self.dht.record_subkey, value=record.dict(),
            expiration_time=get_dht_time() + self.expiration,
        ))

    def clear(self) -> bool:
        """Withdraw the record (on shutdown) so readers stop counting this peer at once."""
        return bool(self.dht.store(
            progress_key(self.run_id), subkey=self.dht.record_subkey, value=None,
            expiration_time=get_dht_time() + self.expiration,
        ))


def report_progress(dht: SwarmDHT, *, hotkey: str, epoch: int, samples: int,
                    tokens_per_second: float, expiration: float = 60.0) -> bool:
    """One-shot form of :meth:`ProgressReporter.report`."""
    return ProgressReporter(dht=dht, hotkey=hotkey, expiration=expiration).report(
        epoch=epoch, samples=samples, tokens_per_second=tokens_per_second)
