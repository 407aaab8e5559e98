"""The validator's scoring rules: plain values in, numbers out (formulas in docs/validator.md).

Nothing here takes a neuron, a synapse or a model: the round code gathers what it observed
(sketch agreements, claimed sample counts, bytes and seconds per peer, fingerprint distances)
into dicts keyed by uid and calls these functions, so every rule can be tested with literal
dicts and replayed from logs.

One round, in order::

    g = {uid: gradient_score(agreements[uid], min_cosine=.., min_norm_ratio=..)}
    s = steps_scores({uid: verified_samples(claimed[uid], g[uid], max_samples=cap)})
    b = bandwidth_scores(observed_transfers, participants)
    r = round_scores(gradient=g, steps=s, bandwidth=b, drift=distances, tolerance=..)
    ema = ema_update(ema, r, alpha=cfg.validator.ema_alpha)
    weights = normalize_weights(ema)                      # what goes on chain
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from template.proof import SketchAgreement

BANDWIDTH_CAP = 2.0
STRAGGLER_FRACTION = 0.1
"""A participant whose observed throughput is below this fraction of the round's median is a
straggler: the butterfly all-reduce finishes only when its slowest member does, so a link ten
times slower than the swarm's typical one costs every peer the time; it earns 0 for the round."""
STRAGGLER_LAG_FACTOR = 5.0
STRAGGLER_LAG_FLOOR = 0.5
"""A participant whose parts arrived on average over 5x the round's median lag, and over half a
second, behind the first sender's same parts is the one the round waited for (see
:func:`stragglers`)."""
"""Throughput above this multiple of the round's median earns nothing more: a peer on a fat
link cannot take the whole bandwidth share, and one lucky timing cannot dominate."""
MIN_SECONDS = 1e-3
"""Transfers timed below this are treated as taking this long (timer resolution)."""


@dataclass(frozen=True)
class ScoreWeights:
    """How the three per-round scores combine (they sum to 1).

    Steps carry the most: verified work volume is what the swarm pays for, and it already
    includes the gradient pass fraction. The gradient score on its own rewards honesty per
    check (a small honest miner keeps it); bandwidth pays for moving the all-reduce.
    """

    gradient: float = 0.3
    steps: float = 0.4
    bandwidth: float = 0.3

    def __post_init__(self) -> None:
        parts = (self.gradient, self.steps, self.bandwidth)
        if any(not math.isfinite(p) or p < 0 for p in parts) or not math.isclose(sum(parts), 1.0):
            raise ValueError(f"score weights must be >= 0 and sum to 1, got {parts}")


@dataclass(frozen=True)
class PeerTransfer:
    """What the validator itself observed from one peer during one all-reduce round.

    Only these observations count: bandwidth or weights a peer declares about itself are never
    used. ``failed`` is true when the peer's part did not arrive (timeout, error), ``banned``
    when the averager banned the sender (stalled past ``sender_timeout``).
    """

    bytes_received: int
    seconds: float
    failed: bool = False
    banned: bool = False
    lag: float = 0.0
    """Mean seconds its parts arrived after the first sender's same part (who the group waited
    for: see ``hivemind_utils.round_stats.SenderStats.lag``)."""


def _finite_unit(value: float) -> float:
    """Clamp to [0, 1]; NaN and negative values count as 0."""
    if not math.isfinite(value) or value <= 0:
        return 1.0 if value == math.inf else 0.0
    return min(1.0, value)


# -------------------------------------------------------------------------- gradient


def gradient_score(
    agreements: Sequence[SketchAgreement], *, min_cosine: float, min_norm_ratio: float
) -> float:
    """1 when every check (per-batch and difference) passes both thresholds, else 0.

    All or nothing, on purpose: passing some checks and failing others is the signature of
    partial work (a lazy miner passes exactly the batches it trained and fails the rest), while
    an honest miner passes every check by a wide margin (cosine >= 0.9999 measured against a
    0.98 threshold, docs/validator.md), so partial credit would only ever pay cheaters. 0 when
    nothing was checked, and 0 when any check holds a non-finite number (a claim that could not
    be compared is already reported as cosine -1, ratio 0; this guards agreements built
    elsewhere).
    """
    if not agreements:
        return 0.0
    for a in agreements:
        if not (math.isfinite(a.cosine) and math.isfinite(a.norm_ratio)):
            return 0.0
    passed = all(
        a.passes(min_cosine=min_cosine, min_norm_ratio=min_norm_ratio) for a in agreements
    )
    return 1.0 if passed else 0.0


# -------------------------------------------------------------------------- steps


def verified_samples(samples_claimed: int, pass_fraction: float, *, max_samples: int) -> float:
    """Claimed samples counted in proportion to the checks that passed.

    ``max_samples`` caps the claim at what the miner's assigned pages can hold for the epoch
    (the validator re-derives the assignment), so inflating the count earns nothing.
    """
    if samples_claimed <= 0 or max_samples <= 0:
        return 0.0
    return min(samples_claimed, max_samples) * _finite_unit(pass_fraction)


def steps_scores(verified: Mapping[int, float]) -> dict[int, float]:
    """Verified samples relative to the round's best miner: in [0, 1], best = 1, all-zero -> 0."""
    clean = {uid: max(0.0, v) if math.isfinite(v) else 0.0 for uid, v in verified.items()}
    best = max(clean.values(), default=0.0)
    if best <= 0:
        return dict.fromkeys(clean, 0.0)
    return {uid: v / best for uid, v in clean.items()}


# -------------------------------------------------------------------------- bandwidth


def throughput(transfer: PeerTransfer | None) -> float:
    """Bytes per second the validator received from a peer; 0 for absent/failed/banned."""
    if transfer is None or transfer.failed or transfer.banned or transfer.bytes_received <= 0:
        return 0.0
    if not math.isfinite(transfer.seconds) or transfer.seconds < 0:
        return 0.0
    return transfer.bytes_received / max(transfer.seconds, MIN_SECONDS)


def bandwidth_scores(
    observed: Mapping[int, PeerTransfer | None],
    participants: Iterable[int],
    *,
    cap: float = BANDWIDTH_CAP,
) -> dict[int, float]:
    """``min(throughput / median, cap) / cap`` per participant of an all-reduce round.

    The median is over participants with a positive observed throughput, so a few absent peers
    do not drag it down and a few fast ones cannot push everyone else's score to zero. A peer at
    the median scores ``1/cap`` (0.5); absent, failed, banned or silent peers score 0. Uids
    observed but not listed as participants are ignored (the round decides who took part).
    """
    rates = {uid: throughput(observed.get(uid)) for uid in participants}
    positive = [r for r in rates.values() if r > 0]
    if not positive:
        return dict.fromkeys(rates, 0.0)
    median = statistics.median(positive)
    return {uid: min(r / median, cap) / cap for uid, r in rates.items()}


def stragglers(
    observed: Mapping[int, PeerTransfer | None],
    participants: Iterable[int],
    *,
    fraction: float = STRAGGLER_FRACTION,
    lag_factor: float = STRAGGLER_LAG_FACTOR,
    lag_floor: float = STRAGGLER_LAG_FLOOR,
) -> set[int]:
    """Participants that held the round back.

    Two signs, either suffices: an observed throughput under ``fraction`` of the median, or a
    mean lag (seconds its parts arrived after the first sender's same part) over
    ``lag_factor`` times the median lag and over ``lag_floor`` seconds. The lag is what shows a
    slow link: a reducer answers part k only when every sender delivered it, so all senders
    stream at the slowest one's pace and throughputs look alike. Peers the validator did not
    hear from are not judged (their parts may have gone to other reducers).
    """
    heard = {uid: observed.get(uid) for uid in participants}
    heard = {uid: t for uid, t in heard.items() if t is not None and throughput(t) > 0}
    if not heard:
        return set()
    cutoff = fraction * statistics.median(throughput(t) for t in heard.values())
    median_lag = statistics.median(t.lag for t in heard.values())
    lag_cutoff = max(lag_floor, lag_factor * median_lag)
    return {uid for uid, t in heard.items() if throughput(t) < cutoff or t.lag > lag_cutoff}


# -------------------------------------------------------------------------- combine


def consensus_ok(distance: float | None, *, tolerance: float) -> bool:
    """Whether a post-step fingerprint distance is inside the tolerance (NaN/Inf are not)."""
    return distance is not None and math.isfinite(distance) and 0 <= distance <= tolerance


def round_scores(
    *,
    gradient: Mapping[int, float],
    steps: Mapping[int, float],
    bandwidth: Mapping[int, float],
    drift: Mapping[int, float | None],
    tolerance: float,
    weights: ScoreWeights = ScoreWeights(),  # noqa: B008 - frozen dataclass, immutable default
    slow: Iterable[int] = (),
) -> dict[int, float]:
    """One score in [0, 1] per uid seen in any component: the weighted sum, consensus-gated.

    ``drift`` maps the uids that reported a post-step fingerprint in this round's all-reduce to
    their :func:`template.model.fingerprint_distance` from the canonical one (``None`` when the
    report was missing or unreadable). A uid listed there and not within ``tolerance`` scores 0
    for the round whatever else it did; uids absent from ``drift`` took no step this round and
    are not gated. Work gate: a uid whose Train evidence was checked and failed every check
    (``gradient`` 0) also scores 0, whatever bandwidth it showed: moving garbage fast is not a
    service. Straggler gate: uids in ``slow`` (see :func:`stragglers`) score 0. A component
    missing for a uid counts as 0.
    """
    uids = set(gradient) | set(steps) | set(bandwidth) | set(drift)
    slow = set(slow)
    out: dict[int, float] = {}
    for uid in sorted(uids):
        if uid in slow:
            out[uid] = 0.0
            continue
        if uid in drift and not consensus_ok(drift[uid], tolerance=tolerance):
            out[uid] = 0.0
            continue
        if uid in gradient and not _finite_unit(gradient[uid]) > 0:
            out[uid] = 0.0
            continue
        out[uid] = (
            weights.gradient * _finite_unit(gradient.get(uid, 0.0))
            + weights.steps * _finite_unit(steps.get(uid, 0.0))
            + weights.bandwidth * _finite_unit(bandwidth.get(uid, 0.0))
        )
    return out


def ema_update(
    previous: Mapping[int, float], current: Mapping[int, float], *, alpha: float
) -> dict[int, float]:
    """``new = alpha * current + (1 - alpha) * previous`` for the uids scored this round.

    Uids the round did not score keep their previous value (a miner not sampled this round is
    not punished); a uid seen for the first time starts from 0, so one lucky round gives at
    most ``alpha`` of a full score. Non-finite current scores count as 0.
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha} (--validator.ema_alpha)")
    out = dict(previous)
    for uid, score in current.items():
        value = score if math.isfinite(score) else 0.0
        out[uid] = alpha * value + (1 - alpha) * previous.get(uid, 0.0)
    return out


def decay_absent(ema: Mapping[int, float], present: Iterable[int], *,
                 alpha: float) -> dict[int, float]:
    """Moving averages of uids absent from an epoch's scores shrink by ``1 - alpha``.

    A miner that worked and then vanished (stopped serving, left the swarm) would otherwise keep
    its average, and its weight, forever. Every live participant is scored each epoch (the
    validator Train-verifies the round's participants before the round), so being absent means
    the uid did no work the validator could see. Values under 1e-6 are dropped to 0.
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha} (--validator.ema_alpha)")
    seen = set(present)
    out: dict[int, float] = {}
    for uid, value in ema.items():
        value = value if uid in seen else value * (1 - alpha)
        out[uid] = value if value >= 1e-6 else 0.0
    return out


def normalize_weights(scores: Mapping[int, float]) -> dict[int, float]:
    """Weights for the chain: each score over the sum; negatives/NaN count as 0; all-zero -> 0."""
    clean = {uid: s if math.isfinite(s) and s > 0 else 0.0 for uid, s in scores.items()}
    total = sum(clean.values())
    if total <= 0:
        return dict.fromkeys(clean, 0.0)
    return {uid: s / total for uid, s in clean.items()}
