"""Swarm-wide training progress: publish one's own record, read everyone's.

    reporter = ProgressReporter(dht=dht, hotkey=wallet.hotkey.ss58_address, expiration=60)
    reporter.report(epoch=3, samples=128, tokens_per_second=2100.0)
    state = read_swarm_state(dht, run_id=cfg.neuron.run_id, target_batch_size=1024)
    if should_start_round(state): ...

A peer is *live* while its record has not expired: records carry a DHT expiration time, so a peer
that stops reporting vanishes ``expiration`` seconds after its last report. The global epoch is
the largest epoch among live peers; ``samples_accumulated`` sums only the peers at that epoch
(hivemind's ``ProgressTracker`` rule: stragglers will resync before they count again).

Anyone who reaches the DHT can sign records with a key of its own making, so readers that steer
the swarm pass an :class:`Admission`: only records whose signing key is bound on chain to the
hotkey they name count (the others are listed in ``SwarmState.unbound``, counted nowhere), an
epoch beyond the last canonical checkpoint + 1 is ignored, and samples are capped at what one
peer can contribute to a round. :class:`AdmissionCache` keeps a recent admission from the chain
and the checkpoint store without a round trip per read.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

import hivemind
from hivemind.p2p import PeerID
from hivemind.utils import ValueWithExpiration, get_dht_time

from hivemind_utils.dht import SwarmDHT
from hivemind_utils.records import (
    PeerProgressRecord,
    parse_progress,
    progress_key,
    record_key_id,
)

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
    unbound: list[PeerProgress] = field(default_factory=list)
    """Valid records whose signing key no registered hotkey bound (not counted anywhere)."""
    implausible: int = 0
    """Bound records claiming an epoch beyond ``Admission.max_epoch`` (ignored)."""
    implausible_peers: list[PeerProgress] = field(default_factory=list)
    """Those ``implausible`` records, for inspectors (counted nowhere)."""

    def without(self, peer_ids: Collection[str]) -> SwarmState:
        """This state as if the records of ``peer_ids`` (base58) were not there: a miner reads
        the swarm this way once it refused their results (their epoch is not the swarm's)."""
        peers = [p for p in self.peers if p.peer_id not in peer_ids]
        epoch = max((p.epoch for p in peers), default=0)
        return dataclasses.replace(self, global_epoch=epoch, peers=peers, samples_accumulated=sum(
            p.samples for p in peers if p.epoch == epoch))

    def to_json(self) -> dict[str, object]:
        """The inspector's ``--json`` object: the counted swarm, then what was not counted,
        ``unbound`` and ``implausible`` rows (``rejected`` left out: readers rarely see any)."""
        out = dataclasses.asdict(self)
        for key in ("rejected", "implausible", "implausible_peers"):
            out.pop(key)
        out["implausible"] = [dataclasses.asdict(p) for p in self.implausible_peers]
        return out


@dataclass(frozen=True)
class Admission:
    """Which progress records may steer the swarm (see the module docstring)."""

    keys: Mapping[str, str]
    """``{record key id: hotkey}`` bound on chain (``Chain.record_keys``)."""
    max_epoch: int | None = None
    """Highest believable epoch: the last canonical checkpoint's + 1 (None: no bound)."""
    max_samples: int | None = None
    """Cap on one peer's samples (None: no cap). Neurons pass the target batch size: the
    config bounds no tighter, since a page is a whole document of any length (docs/swarm.md,
    "Capped samples")."""

    def admits(self, subkey: bytes, record: PeerProgressRecord) -> bool:
        return self.keys.get(record_key_id(subkey)) == record.hotkey


class AdmissionCache:
    """A recent :class:`Admission` built by ``load`` (chain commitments, store's last epoch).

    :param refresh_interval: seconds an admission is reused; a newly bound miner is admitted at
      most this late. :meth:`get` with ``fresher_than`` reloads sooner (at most once per
      ``min_interval`` s), for a reader that saw a record just beyond the bound.
    """

    def __init__(self, load: Callable[[], Admission], *, refresh_interval: float = 10.0,
                 min_interval: float = 1.0):
        self._load, self.refresh_interval, self.min_interval = load, refresh_interval, min_interval
        self._lock = threading.Lock()
        self._value: Admission | None = None
        self._at = 0.0

    def get(self, *, fresher_than: float | None = None) -> Admission:
        max_age = self.refresh_interval if fresher_than is None else max(self.min_interval,
                                                                         fresher_than)
        with self._lock:
            if self._value is None or time.monotonic() - self._at > max_age:
                self._value, self._at = self._load(), time.monotonic()
            return self._value


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


def read_swarm_state(dht: hivemind.DHT, *, run_id: str, target_batch_size: int,
                     admission: Admission | AdmissionCache | None = None) -> SwarmState:
    """Every peer's latest valid, unexpired record for ``run_id``, as a :class:`SwarmState`.

    With ``admission``, only records it admits count (see :class:`Admission`); a cache is asked
    again, sooner than its interval, when a bound record claims an epoch beyond its bound (the
    swarm may just have pushed a checkpoint).
    """
    if isinstance(admission, AdmissionCache):
        state = read_swarm_state(dht, run_id=run_id, target_batch_size=target_batch_size,
                                 admission=admission.get())
        if state.implausible:
            state = read_swarm_state(dht, run_id=run_id, target_batch_size=target_batch_size,
                                     admission=admission.get(fresher_than=0.0))
        return state
    found = dht.get(progress_key(run_id), latest=True)
    now = get_dht_time()
    peers: list[PeerProgress] = []
    unbound: list[PeerProgress] = []
    implausible: list[PeerProgress] = []
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
            peer = _to_peer(record, now)
            if admission is None:
                peers.append(peer)
            elif not isinstance(subkey, bytes) or not admission.admits(subkey, record):
                unbound.append(peer)
            elif admission.max_epoch is not None and record.epoch > admission.max_epoch:
                implausible.append(peer)
                logger.debug("ignoring %s's claim of epoch %d (bound %d)", record.hotkey,
                             record.epoch, admission.max_epoch)
            else:
                cap = admission.max_samples
                peers.append(peer if cap is None or peer.samples <= cap
                             else dataclasses.replace(peer, samples=cap))
    peers.sort(key=lambda p: (-p.epoch, p.peer_id))
    unbound.sort(key=lambda p: (-p.epoch, p.peer_id))
    implausible.sort(key=lambda p: (-p.epoch, p.peer_id))
    global_epoch = max((p.epoch for p in peers), default=0)
    samples = sum(p.samples for p in peers if p.epoch == global_epoch)
    return SwarmState(global_epoch, target_batch_size, samples, peers, rejected, unbound,
                      len(implausible), implausible)


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
