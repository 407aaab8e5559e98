"""What the inspector shows, as one typed value: a pure function of what it read.

    snapshot = build_snapshot(state, chain=chain_view, store=store_view, local=local_view,
                              run_id=run_id, now=time.time())
    print(json.dumps(snapshot.to_json()))        # the inspector's --json, the page's /api/snapshot

Sources (read by :mod:`template.swarm_sources`; each may be empty):

- ``state``: the DHT's progress records through the neurons' admission (counted peers, and
  the ``unbound`` / ``implausible`` records counted nowhere);
- ``chain``: the metagraph (uids, hotkeys, stake, validator permits), PeerID bindings and the
  validators' weights;
- ``store``: the checkpoint manifests (round members, the pusher's mean training loss) and
  the held-out evaluation beside each checkpoint, where the store has one;
- ``local``: files neurons leave in their ``--neuron.workdir`` (a devnet's WORKDIR holds them
  all): miners' ``epochs.jsonl`` (their training loss, all-reduce seconds and bytes per round)
  and validators' persisted state (scores, rounds, the current round's observed transfers).

Nothing in the DHT carries a training loss, a round's timing or a score: those come from the
store and the local files, and :attr:`Snapshot.notes` says which are missing.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hivemind_utils.swarm_state import PeerProgress, SwarmState

# ------------------------------------------------------------------ what was read


@dataclass(frozen=True)
class NeuronView:
    uid: int
    hotkey: str
    stake: float
    validator_permit: bool


@dataclass(frozen=True)
class ChainView:
    """The part of the chain the inspector shows (see :func:`template.swarm_sources.read_chain`)."""

    netuid: int = 0
    block: int | None = None
    neurons: tuple[NeuronView, ...] = ()
    bindings: Mapping[int, str] = field(default_factory=dict)
    """``{uid: PeerID}`` of standing bindings (``Chain.peer_bindings``)."""
    weights: Mapping[int, Mapping[int, float]] = field(default_factory=dict)
    """``{validator uid: {uid: weight}}`` as last set on chain."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One canonical checkpoint ``epoch-N``, from its manifest (and its held-out evaluation)."""

    epoch: int
    participants: tuple[str, ...] = ()
    """PeerIDs of the round that produced it (the pusher's account, in the manifest)."""
    train_loss: float | None = None
    """The pusher's mean training loss over its batches of epoch N-1."""
    pusher: str | None = None
    evaluation: Mapping[str, Any] | None = None
    """The store's ``read_eval(epoch)``: ``heldout_loss``, ``perplexity``, ``win_fraction``,
    ``flagged``; None when not evaluated (or the store cannot say)."""


@dataclass(frozen=True)
class StoreView:
    latest_epoch: int | None = None
    checkpoints: tuple[CheckpointInfo, ...] = ()
    evaluates: bool = False
    """The store offers ``read_eval`` (held-out losses can appear at all)."""


@dataclass(frozen=True)
class LocalView:
    """Files of local neurons (``--workdir``): trusted as the operator's own."""

    miner_rows: tuple[Mapping[str, Any], ...] = ()
    """Every line of every miner's ``epochs.jsonl`` (``epoch`` is the epoch it stepped to)."""
    validator_states: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """``{file stem: ValidatorState.to_json()}``."""
    searched: bool = False
    """``--workdir`` was given (empty views then mean "nothing there yet")."""


# ------------------------------------------------------------------ what is shown


@dataclass(frozen=True)
class PeerRow:
    peer_id: str
    hotkey: str
    uid: int | None
    """The uid whose hotkey bound the record's signing key (None for records counted nowhere)."""
    role: str
    """``miner``, ``validator`` (holds a permit), or ``unbound`` / ``implausible``."""
    epoch: int
    samples: int
    tokens_per_second: float
    age_seconds: float
    finished: bool
    train_loss: float | None = None
    """The miner's own mean training loss of its last epoch (its ``epochs.jsonl``; not in the
    DHT)."""


@dataclass(frozen=True)
class SenderRow:
    uid: int | None
    peer_id: str | None
    mb_per_second: float | None
    seconds: float | None
    lag: float | None = None
    failed: bool = False
    banned: bool = False


@dataclass(frozen=True)
class RoundRow:
    """One all-reduce round: the one that averaged ``epoch`` and produced ``epoch-(epoch+1)``."""

    epoch: int
    participants: tuple[int, ...]
    """Uids of the members (auxiliary peers excluded)."""
    unknown_participants: int = 0
    """Members whose PeerID no uid bound."""
    failed: tuple[int, ...] = ()
    seconds: float | None = None
    """All-reduce seconds (the slowest member's, from miners' logs; else the validator's
    slowest observed sender)."""
    senders: tuple[SenderRow, ...] = ()
    source: str = "checkpoint"
    """Where the per-sender numbers come from: ``validator`` (observed by its auxiliary peer:
    bytes of its shard over the sender's stream time), ``miners`` (each miner's bytes sent over
    its all-reduce seconds, self-measured) or ``checkpoint`` (members only)."""
    samples: int | None = None
    """Samples the members trained for the round (miners' logs): the swarm's round size."""


@dataclass(frozen=True)
class CheckpointRow:
    epoch: int
    tag: str
    participants: tuple[int, ...]
    train_loss: float | None
    heldout_loss: float | None = None
    perplexity: float | None = None
    win_fraction: float | None = None
    flagged: bool | None = None


@dataclass(frozen=True)
class ValidatorRow:
    """A validator as the chain shows it: a permit holder, or a uid whose weights are on chain."""

    uid: int
    hotkey: str
    stake: float
    permit: bool
    weights: Mapping[int, float]


@dataclass(frozen=True)
class ValidatorStateRow:
    """What one validator's persisted state says it last did (``--workdir``)."""

    name: str
    last_scored_epoch: int | None
    collecting_epoch: int | None
    rounds: Mapping[str, int]
    last_weights_block: int | None


@dataclass(frozen=True)
class ScoreRow:
    uid: int
    validator: str
    total: float
    """The moving average the validator sets weights from."""
    last: float | None
    components: Mapping[str, float]
    """Moving averages of ``gradient``, ``steps``, ``bandwidth``."""


@dataclass(frozen=True)
class Snapshot:
    run_id: str
    time: float
    global_epoch: int
    target_batch_size: int
    target_source: str
    """``flag`` (given to the inspector) or ``default`` (the run id's known target): no record
    publishes the swarm's own ``--averaging.target_batch_size``; the last round's ``samples``
    (miners' logs) is what the swarm really averaged."""
    samples_accumulated: int
    peers: tuple[PeerRow, ...]
    unbound: tuple[PeerRow, ...]
    implausible: tuple[PeerRow, ...]
    rounds: tuple[RoundRow, ...]
    checkpoints: tuple[CheckpointRow, ...]
    validators: tuple[ValidatorRow, ...]
    validator_states: tuple[ValidatorStateRow, ...]
    scores: tuple[ScoreRow, ...]
    weights: Mapping[int, float]
    """Stake-weighted mean of the validators' weights on chain."""
    miner_loss: Mapping[int, float] = field(default_factory=dict)
    """Per epoch N, the mean of the miners' own training losses of the epoch that led to
    ``epoch-N`` (their ``epochs.jsonl``; the manifest's is the pusher's alone)."""
    netuid: int = 0
    block: int | None = None
    latest_checkpoint: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def last_round(self) -> RoundRow | None:
        return self.rounds[-1] if self.rounds else None

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object (schema: docs/swarm.md, "Inspector"); int keys as strings."""
        return _jsonable(dataclasses.asdict(self))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ------------------------------------------------------------------ building


def build_snapshot(state: SwarmState, *, chain: ChainView, store: StoreView, local: LocalView,
                   run_id: str, now: float, target_source: str = "flag") -> Snapshot:
    """Everything the inspector shows, from what it read (pure: no I/O, no clock)."""
    neuron_of_uid = {n.uid: n for n in chain.neurons}
    by_hotkey = {n.hotkey: n for n in chain.neurons}
    uid_of_peer = {peer: uid for uid, peer in chain.bindings.items()}
    losses = _latest_losses(local.miner_rows)
    peers = tuple(_peer_row(p, by_hotkey.get(p.hotkey), losses) for p in state.peers)
    rounds = _rounds(local, store, uid_of_peer)
    validators = tuple(
        ValidatorRow(uid=n.uid, hotkey=n.hotkey, stake=n.stake, permit=n.validator_permit,
                     weights=dict(chain.weights.get(n.uid, {})))
        for n in chain.neurons if n.validator_permit or n.uid in chain.weights)
    return Snapshot(
        run_id=run_id, time=now, global_epoch=state.global_epoch,
        target_batch_size=state.target_batch_size,
        target_source=target_source, samples_accumulated=state.samples_accumulated,
        peers=peers,
        unbound=tuple(_peer_row(p, None, {}, role="unbound") for p in state.unbound),
        implausible=tuple(_peer_row(p, None, {}, role="implausible")
                          for p in state.implausible_peers),
        rounds=rounds, checkpoints=_checkpoints(store, uid_of_peer),
        validators=validators, validator_states=_validator_states(local),
        scores=_scores(local), weights=stake_weighted(chain.weights, neuron_of_uid),
        miner_loss=mean_train_loss(local.miner_rows),
        netuid=chain.netuid, block=chain.block, latest_checkpoint=store.latest_epoch,
        notes=_notes(state, store, local, run_id=run_id, rounds=rounds),
    )


def _peer_row(p: PeerProgress, neuron: NeuronView | None, losses: Mapping[str, float],
              role: str = "") -> PeerRow:
    if not role:
        role = "validator" if neuron is not None and neuron.validator_permit else "miner"
    return PeerRow(peer_id=p.peer_id, hotkey=p.hotkey, uid=None if neuron is None else neuron.uid,
                   role=role, epoch=p.epoch, samples=p.samples,
                   tokens_per_second=p.tokens_per_second, age_seconds=p.age_seconds,
                   finished=p.finished, train_loss=losses.get(p.peer_id))


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _latest_losses(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Each miner's loss of its latest logged epoch, by PeerID."""
    best: dict[str, tuple[int, float]] = {}
    for row in rows:
        peer, epoch, loss = row.get("peer_id"), row.get("epoch"), _number(row.get("loss"))
        if (isinstance(peer, str) and isinstance(epoch, int) and loss is not None
                and (peer not in best or epoch >= best[peer][0])):
            best[peer] = (epoch, loss)
    return {peer: loss for peer, (_, loss) in best.items()}


def _rounds(local: LocalView, store: StoreView, uid_of_peer: Mapping[str, int],
            ) -> tuple[RoundRow, ...]:
    """One row per averaged epoch, from the richest source that saw it (validator > miners >
    checkpoint manifest)."""
    out: dict[int, RoundRow] = {}
    for info in store.checkpoints:
        if info.epoch >= 1 and info.participants:
            uids, unknown = _uids(info.participants, uid_of_peer)
            out[info.epoch - 1] = RoundRow(epoch=info.epoch - 1, participants=uids,
                                           unknown_participants=unknown)
    by_epoch: dict[int, list[Mapping[str, Any]]] = {}
    for row in local.miner_rows:
        if isinstance(row.get("epoch"), int) and row["epoch"] >= 1:
            by_epoch.setdefault(row["epoch"] - 1, []).append(row)
    for epoch, rows in by_epoch.items():
        out[epoch] = _round_from_miners(epoch, rows, uid_of_peer)
    for state in local.validator_states.values():
        current = state.get("current")
        if isinstance(current, dict) and current.get("allreduce_done"):
            epoch = int(current["epoch"])
            out[epoch] = _round_from_validator(current, out.get(epoch))
    return tuple(out[e] for e in sorted(out))


def _uids(peers: Sequence[str], uid_of_peer: Mapping[str, int]) -> tuple[tuple[int, ...], int]:
    uids = sorted({uid_of_peer[p] for p in peers if p in uid_of_peer})
    return tuple(uids), sum(1 for p in set(peers) if p not in uid_of_peer)


def _round_from_miners(epoch: int, rows: Sequence[Mapping[str, Any]],
                       uid_of_peer: Mapping[str, int]) -> RoundRow:
    members = {p for r in rows for p in r.get("participants", [])
               if p not in r.get("auxiliaries", [])}
    uids, unknown = _uids(sorted(members), uid_of_peer)
    senders = []
    for r in rows:
        seconds, sent = _number(r.get("allreduce_seconds")), _number(r.get("bytes_sent"))
        peer = r.get("peer_id") if isinstance(r.get("peer_id"), str) else None
        uid = uid_of_peer.get(peer) if peer else None
        logged = r.get("uid")
        if uid is None and isinstance(logged, int) and not isinstance(logged, bool):
            uid = logged  # the miner's own word (no binding names its PeerID)
        senders.append(SenderRow(uid=uid, peer_id=peer,
                                 mb_per_second=sent / seconds / 1e6 if seconds and sent else None,
                                 seconds=seconds))
    timed = [s.seconds for s in senders if s.seconds is not None]
    samples = [int(r["samples"]) for r in rows if isinstance(r.get("samples"), int)]
    return RoundRow(epoch=epoch, participants=uids, unknown_participants=unknown,
                    seconds=max(timed) if timed else None,
                    senders=tuple(sorted(senders, key=lambda s: (s.uid is None, s.uid or 0))),
                    source="miners", samples=sum(samples) if samples else None)


def _round_from_validator(current: Mapping[str, Any], known: RoundRow | None) -> RoundRow:
    senders = []
    for uid, t in sorted(current.get("transfers", {}).items(), key=lambda kv: int(kv[0])):
        if t is None:
            senders.append(SenderRow(uid=int(uid), peer_id=None, mb_per_second=None,
                                     seconds=None, failed=True))
            continue
        seconds = _number(t.get("seconds"))
        got = _number(t.get("bytes_received")) or 0.0
        senders.append(SenderRow(
            uid=int(uid), peer_id=None, seconds=seconds,
            mb_per_second=got / seconds / 1e6 if seconds else None, lag=_number(t.get("lag")),
            failed=bool(t.get("failed")), banned=bool(t.get("banned"))))
    failed = tuple(sorted(s.uid for s in senders if s.uid is not None and (s.failed or s.banned)))
    timed = [s.seconds for s in senders if s.seconds is not None]
    seconds = known.seconds if known is not None and known.seconds is not None else (
        max(timed) if timed else None)
    return RoundRow(epoch=int(current["epoch"]),
                    participants=tuple(int(u) for u in current.get("participants", [])),
                    unknown_participants=0, failed=failed, seconds=seconds,
                    senders=tuple(senders), source="validator",
                    samples=known.samples if known is not None else None)


def _checkpoints(store: StoreView, uid_of_peer: Mapping[str, int]) -> tuple[CheckpointRow, ...]:
    rows = []
    for info in sorted(store.checkpoints, key=lambda c: c.epoch):
        ev = info.evaluation or {}
        flagged = ev.get("flagged")
        rows.append(CheckpointRow(
            epoch=info.epoch, tag=f"epoch-{info.epoch}",
            participants=_uids(info.participants, uid_of_peer)[0], train_loss=info.train_loss,
            heldout_loss=_number(ev.get("heldout_loss")), perplexity=_number(ev.get("perplexity")),
            win_fraction=_number(ev.get("win_fraction")),
            flagged=flagged if isinstance(flagged, bool) else None))
    return tuple(rows)


def _validator_states(local: LocalView) -> tuple[ValidatorStateRow, ...]:
    rows = []
    for name, state in sorted(local.validator_states.items()):
        current = state.get("current")
        last, block = state.get("last_epoch"), state.get("last_weights_block")
        rows.append(ValidatorStateRow(
            name=name, last_scored_epoch=last if isinstance(last, int) and last >= 0 else None,
            collecting_epoch=current.get("epoch") if isinstance(current, dict) else None,
            rounds=dict(state.get("rounds", {})),
            last_weights_block=block if isinstance(block, int) and block >= 0 else None))
    return tuple(rows)


def _scores(local: LocalView) -> tuple[ScoreRow, ...]:
    rows = []
    for name, state in sorted(local.validator_states.items()):
        last, components = state.get("last_scores", {}), state.get("components", {})
        for uid, total in sorted(state.get("ema", {}).items(), key=lambda kv: int(kv[0])):
            rows.append(ScoreRow(uid=int(uid), validator=name, total=float(total),
                                 last=_number(last.get(uid)),
                                 components=dict(components.get(uid, {}))))
    return tuple(rows)


def stake_weighted(weights: Mapping[int, Mapping[int, float]],
                   neurons: Mapping[int, NeuronView]) -> dict[int, float]:
    """Stake-weighted mean of every validator's weights (one validator: its weights)."""
    total: dict[int, float] = {}
    stake_sum = 0.0
    for validator, row in weights.items():
        stake = neurons[validator].stake if validator in neurons else 0.0
        stake_sum += stake
        for uid, w in row.items():
            total[uid] = total.get(uid, 0.0) + stake * w
    return {uid: w / stake_sum for uid, w in sorted(total.items())} if stake_sum else {}


def _notes(state: SwarmState, store: StoreView, local: LocalView, *, run_id: str,
           rounds: Sequence[RoundRow]) -> tuple[str, ...]:
    notes = []
    if not (state.peers or state.unbound or state.implausible_peers):
        notes.append(f"no progress records for run id {run_id}: is the swarm up and the run "
                     "id right? (pass --run_id; a local devnet's is in WORKDIR/run_id.txt)")
    elif not state.peers:
        notes.append("no records signed by a key bound on chain to a registered hotkey: are "
                     "--netuid, --subtensor.network / --localchain.path right?")
    if not local.searched:
        notes.append("progress records carry no training loss, round timing or scores: pass "
                     "--workdir (neuron workdirs, or a devnet WORKDIR) to read miners' "
                     "epochs.jsonl and validators' state")
    if not store.evaluates:
        notes.append("the checkpoint store offers no held-out evaluation (read_eval): held-out "
                     "loss is empty")
    if rounds and rounds[-1].source == "checkpoint":
        notes.append("the last round's timing is unknown: the DHT carries no round statistics "
                     "and no miner log or validator state covers it")
    return tuple(notes)


def mean_train_loss(rows: Sequence[Mapping[str, Any]]) -> dict[int, float]:
    """Mean of the miners' logged training losses per epoch stepped to (``epochs.jsonl``)."""
    per: dict[int, list[float]] = {}
    for row in rows:
        loss = _number(row.get("loss"))
        if isinstance(row.get("epoch"), int) and loss is not None:
            per.setdefault(row["epoch"], []).append(loss)
    return {e: statistics.fmean(v) for e, v in sorted(per.items())}
