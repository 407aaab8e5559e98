"""What the validator learned about one epoch, and the epoch's scores (pure).

An epoch is the validator's scoring unit. During epoch ``e`` Train rounds add each verified
miner's gradient score and verified samples (:meth:`EpochRecord.add_train`); the epoch's
AllReduce round adds who took part, what the validator observed of each peer's upload and each
completer's fingerprint distance from the reference (:meth:`EpochRecord.add_allreduce`). When
the epoch is over, :func:`epoch_scores` turns the record into one score per uid with the pure
functions of :mod:`template.validator.scoring`, and the validator folds them into its moving
average. The record is plain JSON-able data, persisted with the validator state, so a restart
in the middle of an epoch loses nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from template.validator.scoring import (
    PeerTransfer,
    ScoreWeights,
    bandwidth_scores,
    consensus_ok,
    round_scores,
    steps_scores,
    stragglers,
)


@dataclass
class TrainResult:
    """Best verified Train result of one uid in the epoch (plain numbers)."""

    gradient: float
    verified_samples: float


@dataclass
class EpochRecord:
    epoch: int
    train: dict[int, TrainResult] = field(default_factory=dict)
    participants: list[int] = field(default_factory=list)
    """Uids the validator sent AllReduce to (they are scored on bandwidth and consensus)."""
    transfers: dict[int, PeerTransfer | None] = field(default_factory=dict)
    """What the validator observed of each participant's upload (None: nothing arrived)."""
    drift: dict[int, float | None] = field(default_factory=dict)
    """Fingerprint distance from the reference of each uid that reported a post-step model."""
    bandwidth_observed: bool = False
    """The validator's auxiliary peer was in the group and a reference fingerprint existed;
    otherwise bandwidth is not scored for the epoch (no punishment for the validator's miss)."""
    consensus_checked: bool = False
    """Some participant completed and a reference fingerprint existed: participants are gated
    on ``drift`` (one that did not complete counts as missing, i.e. scores 0 for the epoch)."""
    allreduce_done: bool = False
    tampered: dict[int, str] = field(default_factory=dict)
    """Participants whose all-reduce contribution failed :func:`template.contribution.
    judge_contribution` (uid -> the problem): they score 0 for the epoch, whatever else they
    did, since what they put into the model is not what they proved."""

    def add_train(self, uid: int, *, gradient: float, verified_samples: float) -> None:
        """Keep the better of the uid's Train results in this epoch (re-checks never lower a
        miner that was verified earlier in the epoch: later responses may cover fewer batches
        only because the validator asked fewer)."""
        old = self.train.get(uid)
        if old is None or verified_samples > old.verified_samples or (
                verified_samples == old.verified_samples and gradient > old.gradient):
            self.train[uid] = TrainResult(gradient=gradient, verified_samples=verified_samples)

    def add_allreduce(self, *, participants: list[int],
                      transfers: Mapping[int, PeerTransfer | None],
                      drift: Mapping[int, float | None], observed: bool,
                      consensus_checked: bool,
                      tampered: Mapping[int, str] | None = None) -> None:
        self.participants = sorted(set(participants))
        self.tampered = dict(tampered or {})
        self.transfers = dict(transfers)
        self.drift = dict(drift)
        self.bandwidth_observed = observed and consensus_checked
        self.consensus_checked = consensus_checked
        self.allreduce_done = True

    # ------------------------------------------------------------ JSON

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "train": {str(u): asdict(r) for u, r in self.train.items()},
            "participants": self.participants,
            "transfers": {str(u): None if t is None else asdict(t)
                          for u, t in self.transfers.items()},
            "drift": {str(u): d for u, d in self.drift.items()},
            "bandwidth_observed": self.bandwidth_observed,
            "consensus_checked": self.consensus_checked,
            "allreduce_done": self.allreduce_done,
            "tampered": {str(u): p for u, p in self.tampered.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EpochRecord:
        return cls(
            epoch=int(data["epoch"]),
            train={int(u): TrainResult(**r) for u, r in data.get("train", {}).items()},
            participants=[int(u) for u in data.get("participants", [])],
            transfers={int(u): None if t is None else PeerTransfer(**t)
                       for u, t in data.get("transfers", {}).items()},
            drift={int(u): None if d is None else float(d)
                   for u, d in data.get("drift", {}).items()},
            bandwidth_observed=bool(data.get("bandwidth_observed", False)),
            consensus_checked=bool(data.get("consensus_checked", False)),
            allreduce_done=bool(data.get("allreduce_done", False)),
            tampered={int(u): str(p) for u, p in data.get("tampered", {}).items()},
        )


@dataclass(frozen=True)
class EpochComponents:
    """The per-uid inputs of :func:`epoch_scores`."""

    gradient: dict[int, float]
    """The uid's best gradient score (fraction of sketch checks passed); 0 for a tampered
    contribution."""
    steps: dict[int, float]
    """Verified samples relative to the epoch's best miner."""
    bandwidth: dict[int, float]
    """Observed throughput relative to the round's median (only when the validator observed
    the round)."""
    drift: dict[int, float | None]
    """Post-step fingerprint distance of each uid that reported one; when the round was checked
    (``consensus_checked``), a participant that did not complete, or a Train-verified uid that
    took no part in the round, gets ``None``: its gradient never reached the model."""
    slow: set[int]
    """Stragglers: observed at under ``STRAGGLER_FRACTION`` of the median throughput."""


def epoch_components(record: EpochRecord) -> EpochComponents:
    gradient = {uid: r.gradient for uid, r in record.train.items()}
    steps = steps_scores({uid: r.verified_samples for uid, r in record.train.items()})
    bandwidth: dict[int, float] = {}
    slow: set[int] = set()
    if record.bandwidth_observed:
        bandwidth = bandwidth_scores(record.transfers, record.participants)
        slow = stragglers(record.transfers, record.participants)
    drift: dict[int, float | None] = {}
    if record.consensus_checked:
        drift = dict(record.drift)
        # a participant that did not complete, and a Train-verified uid that was not in the
        # round at all (no chain binding, never averaged), delivered nothing to the model
        for uid in (*record.participants, *record.train):
            drift.setdefault(uid, None)
    for uid in set(gradient) | set(steps):
        gradient.setdefault(uid, 0.0)
        steps.setdefault(uid, 0.0)
    for uid in record.tampered:  # the work gate of round_scores then zeroes the epoch
        gradient[uid], steps[uid] = 0.0, 0.0
        bandwidth.pop(uid, None)
    return EpochComponents(gradient, steps, bandwidth, drift, slow)


def epoch_scores(record: EpochRecord, *, tolerance: float,
                 weights: ScoreWeights = ScoreWeights(),  # noqa: B008 - frozen, immutable
                 ) -> dict[int, float]:
    """One score in [0, 1] per uid the epoch saw (Train-verified or AllReduce participant):
    the components of :func:`epoch_components` combined by ``round_scores``, with the
    consensus gate (see docs/validator.md)."""
    c = epoch_components(record)
    return round_scores(gradient=c.gradient, steps=c.steps, bandwidth=c.bandwidth,
                        drift=c.drift, tolerance=tolerance, weights=weights, slow=c.slow)


def explain_scores(record: EpochRecord, *, tolerance: float) -> dict[int, str]:
    """One line per uid the epoch saw: its components and, when a gate zeroed it, which gate
    and why, in the order :func:`~template.validator.scoring.round_scores` applies them. For
    the validator's log; pure."""
    c = epoch_components(record)
    scores = epoch_scores(record, tolerance=tolerance)
    out = {}
    for uid in sorted(scores):
        parts = (f"gradient {c.gradient.get(uid, 0.0):.2f} steps {c.steps.get(uid, 0.0):.2f} "
                 f"bandwidth {c.bandwidth.get(uid, 0.0):.2f}")
        out[uid] = f"{parts} -> {scores[uid]:.3f}" + (
            f" (zeroed: {_zeroed_by(uid, record, c, tolerance)})" if scores[uid] == 0 else "")
    return out


def _zeroed_by(uid: int, record: EpochRecord, c: EpochComponents, tolerance: float) -> str:
    if uid in record.tampered:
        return f"contribution tampered: {record.tampered[uid]}"
    if uid in c.slow:
        return "straggler: observed under the straggler fraction of the median throughput"
    if uid in c.drift:
        distance = c.drift[uid]
        if distance is None:
            return "took no part in the round it was paid for (no post-step fingerprint)"
        if not consensus_ok(distance, tolerance=tolerance):
            return f"consensus: fingerprint {distance:.3g} from the reference > {tolerance:g}"
    if uid in c.gradient and not c.gradient[uid] > 0:
        return "work: failed every Train check (or none verified)"
    return "no component above 0"
