"""Pure scoring rules, tested with literal values (no neuron, no network, no model)."""

from __future__ import annotations

import math

import pytest

from template.proof import SketchAgreement, rejected
from template.validator.scoring import (
    BANDWIDTH_CAP,
    PeerTransfer,
    ScoreWeights,
    bandwidth_scores,
    consensus_ok,
    decay_absent,
    ema_update,
    gradient_score,
    normalize_weights,
    round_scores,
    steps_scores,
    stragglers,
    throughput,
    verified_samples,
)

THRESHOLDS = {"min_cosine": 0.95, "min_norm_ratio": 0.9}
GOOD = SketchAgreement(cosine=0.9999, norm_ratio=0.999)
LAZY = SketchAgreement(cosine=0.93, norm_ratio=0.95)  # raw cosine of a lazy-mean claim
SCALED = SketchAgreement(cosine=1.0, norm_ratio=0.5)
DIFF_LAZY = SketchAgreement(cosine=-1.0, norm_ratio=0.14, kind="difference")


# ----------------------------------------------------------------------------- gradient


def test_gradient_score_fraction_passing():
    assert gradient_score([GOOD, GOOD, GOOD], **THRESHOLDS) == 1.0
    assert gradient_score([GOOD, LAZY, DIFF_LAZY], **THRESHOLDS) == 0.0  # partial work: nothing
    assert gradient_score([GOOD, GOOD, DIFF_LAZY], **THRESHOLDS) == 0.0
    assert gradient_score([SCALED, SCALED], **THRESHOLDS) == 0.0
    assert gradient_score([rejected("NaN")], **THRESHOLDS) == 0.0


def test_gradient_score_zero_cases():
    assert gradient_score([], **THRESHOLDS) == 0.0
    nan = SketchAgreement(cosine=math.nan, norm_ratio=1.0)
    inf = SketchAgreement(cosine=1.0, norm_ratio=math.inf)
    assert gradient_score([GOOD, GOOD, nan], **THRESHOLDS) == 0.0
    assert gradient_score([inf, GOOD], **THRESHOLDS) == 0.0


def test_gradient_score_is_all_or_nothing():
    checks = [LAZY] * 4
    for n in range(4):  # any failed check, however many passed, earns nothing
        assert gradient_score([GOOD] * n + checks[n:], **THRESHOLDS) == 0.0
    assert gradient_score([GOOD] * 4, **THRESHOLDS) == 1.0
    edge = SketchAgreement(cosine=THRESHOLDS["min_cosine"], norm_ratio=THRESHOLDS["min_norm_ratio"])
    assert gradient_score([edge], **THRESHOLDS) == 1.0


# ----------------------------------------------------------------------------- steps


def test_verified_samples():
    assert verified_samples(64, 1.0, max_samples=64) == 64
    assert verified_samples(64, 0.5, max_samples=64) == 32
    assert verified_samples(1000, 1.0, max_samples=64) == 64  # inflated claim capped
    assert verified_samples(64, 0.0, max_samples=64) == 0
    assert verified_samples(-5, 1.0, max_samples=64) == 0
    assert verified_samples(64, math.nan, max_samples=64) == 0
    assert verified_samples(64, 1.0, max_samples=0) == 0


def test_steps_scores_relative_to_best():
    scores = steps_scores({1: 64.0, 2: 32.0, 3: 0.0, 4: math.nan, 5: -3.0})
    assert scores == {1: 1.0, 2: 0.5, 3: 0.0, 4: 0.0, 5: 0.0}
    assert steps_scores({1: 0.0, 2: 0.0}) == {1: 0.0, 2: 0.0}
    assert steps_scores({}) == {}


def test_steps_monotone():
    base = {1: 10.0, 2: 20.0, 3: 40.0}
    more = {**base, 1: 30.0}
    assert steps_scores(more)[1] > steps_scores(base)[1]
    # and the others do not gain from a rival doing more work
    assert all(steps_scores(more)[u] <= steps_scores(base)[u] for u in (2, 3))


# ----------------------------------------------------------------------------- bandwidth


def test_throughput_only_counts_what_arrived():
    assert throughput(PeerTransfer(bytes_received=1000, seconds=2.0)) == 500.0
    assert throughput(None) == 0.0
    assert throughput(PeerTransfer(bytes_received=1000, seconds=2.0, failed=True)) == 0.0
    assert throughput(PeerTransfer(bytes_received=1000, seconds=2.0, banned=True)) == 0.0
    assert throughput(PeerTransfer(bytes_received=0, seconds=2.0)) == 0.0
    assert throughput(PeerTransfer(bytes_received=1000, seconds=math.nan)) == 0.0
    # a zero duration is timer resolution, not infinite speed
    assert throughput(PeerTransfer(bytes_received=1000, seconds=0.0)) == pytest.approx(1e6)


def test_bandwidth_scores_relative_to_median_and_capped():
    observed = {
        1: PeerTransfer(bytes_received=100, seconds=1.0),
        2: PeerTransfer(bytes_received=200, seconds=1.0),
        3: PeerTransfer(bytes_received=400, seconds=1.0),
        4: PeerTransfer(bytes_received=10_000, seconds=1.0),  # 50x the median: capped
        5: PeerTransfer(bytes_received=300, seconds=1.0, failed=True),
        6: PeerTransfer(bytes_received=300, seconds=1.0, banned=True),
        99: PeerTransfer(bytes_received=300, seconds=1.0),  # not a participant: ignored
    }
    scores = bandwidth_scores(observed, participants=[1, 2, 3, 4, 5, 6, 7])
    median = 300.0  # of 100, 200, 400, 10000
    assert scores[1] == pytest.approx(100 / median / BANDWIDTH_CAP)
    assert scores[2] == pytest.approx(200 / median / BANDWIDTH_CAP)
    assert scores[3] == pytest.approx(400 / median / BANDWIDTH_CAP)
    assert scores[4] == 1.0
    assert scores[5] == scores[6] == scores[7] == 0.0  # failed, banned, absent
    assert 99 not in scores
    assert scores[1] < scores[2] < scores[3] <= scores[4]


def test_bandwidth_all_silent():
    assert bandwidth_scores({}, participants=[1, 2]) == {1: 0.0, 2: 0.0}
    assert bandwidth_scores({}, participants=[]) == {}


# ----------------------------------------------------------------------------- combine


def test_consensus_ok():
    assert consensus_ok(0.0, tolerance=1e-4)
    assert consensus_ok(1e-4, tolerance=1e-4)
    assert not consensus_ok(2e-4, tolerance=1e-4)
    assert not consensus_ok(None, tolerance=1e-4)
    assert not consensus_ok(math.nan, tolerance=1e-4)
    assert not consensus_ok(-1.0, tolerance=1e-4)


def test_round_scores_weighted_sum_and_gate():
    w = ScoreWeights()
    scores = round_scores(
        gradient={1: 1.0, 2: 1.0, 3: 0.5},
        steps={1: 1.0, 2: 1.0, 3: 0.25},
        bandwidth={1: 0.5, 2: 1.0},
        drift={1: 1e-7, 2: 5e-3, 4: None},
        tolerance=1e-4,
    )
    assert scores[1] == pytest.approx(w.gradient + w.steps + 0.5 * w.bandwidth)
    assert scores[2] == 0.0  # stepped off the canonical weights: nothing for the round
    assert scores[3] == pytest.approx(0.5 * w.gradient + 0.25 * w.steps)  # not in all-reduce
    assert scores[4] == 0.0  # reported no readable fingerprint
    assert set(scores) == {1, 2, 3, 4}


def test_round_scores_clamps_components():
    scores = round_scores(gradient={1: 0.5}, steps={1: 7.0}, bandwidth={1: -1.0},
                          drift={}, tolerance=1e-4)
    assert scores[1] == pytest.approx(0.5 * ScoreWeights().gradient + ScoreWeights().steps)


def test_failed_proof_of_work_earns_nothing_for_bandwidth():
    """Work gate: all checks failed (or a non-finite gradient score) -> 0, even if fast."""
    scores = round_scores(gradient={1: 0.0, 2: math.nan, 3: 1.0}, steps={},
                          bandwidth={1: 1.0, 2: 1.0, 3: 0.5}, drift={}, tolerance=1e-4)
    assert scores[1] == 0.0 and scores[2] == 0.0
    assert scores[3] == pytest.approx(ScoreWeights().gradient + 0.5 * ScoreWeights().bandwidth)


def test_score_weights_validated():
    assert ScoreWeights(gradient=0.4, steps=0.3, bandwidth=0.3).gradient == 0.4
    with pytest.raises(ValueError):
        ScoreWeights(gradient=0.5, steps=0.5, bandwidth=0.5)
    with pytest.raises(ValueError):
        ScoreWeights(gradient=-0.1, steps=0.6, bandwidth=0.5)


def test_ema_math():
    prev = {1: 0.5, 2: 1.0, 3: 0.2}
    new = ema_update(prev, {1: 1.0, 2: 0.0, 4: 1.0, 5: math.nan}, alpha=0.3)
    assert new[1] == pytest.approx(0.3 * 1.0 + 0.7 * 0.5)
    assert new[2] == pytest.approx(0.7)
    assert new[3] == 0.2  # not scored this round: unchanged
    assert new[4] == pytest.approx(0.3)  # newcomer starts from 0
    assert new[5] == 0.0
    assert prev == {1: 0.5, 2: 1.0, 3: 0.2}  # inputs untouched
    # repeated rounds converge to the steady score
    ema: dict[int, float] = {}
    for _ in range(60):
        ema = ema_update(ema, {1: 0.8}, alpha=0.3)
    assert ema[1] == pytest.approx(0.8, rel=1e-6)
    assert ema_update({1: 0.4}, {1: 0.9}, alpha=1.0) == {1: 0.9}
    with pytest.raises(ValueError):
        ema_update({}, {}, alpha=0.0)


def test_normalize_weights():
    weights = normalize_weights({1: 0.6, 2: 0.2, 3: 0.0, 4: -1.0, 5: math.nan, 6: 0.2})
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights == pytest.approx({1: 0.6, 2: 0.2, 3: 0.0, 4: 0.0, 5: 0.0, 6: 0.2})
    assert normalize_weights({1: 0.0, 2: 0.0}) == {1: 0.0, 2: 0.0}
    assert normalize_weights({}) == {}


def test_pipeline_pays_honest_work_only():
    """A whole round with literal observations: honest > slow honest > lazy = 0 for proofs."""
    lazy_checks = [LAZY, LAZY, DIFF_LAZY]
    g = {
        1: gradient_score([GOOD, GOOD, GOOD], **THRESHOLDS),
        2: gradient_score([GOOD, GOOD, GOOD], **THRESHOLDS),
        3: gradient_score(lazy_checks, **THRESHOLDS),
    }
    claimed = {1: 64, 2: 32, 3: 64}
    s = steps_scores({u: verified_samples(claimed[u], g[u], max_samples=64) for u in g})
    b = bandwidth_scores(
        {1: PeerTransfer(bytes_received=4_000_000, seconds=1.0),
         2: PeerTransfer(bytes_received=4_000_000, seconds=2.0),
         3: PeerTransfer(bytes_received=4_000_000, seconds=1.0)},
        participants=[1, 2, 3],
    )
    r = round_scores(gradient=g, steps=s, bandwidth=b, drift={1: 0.0, 2: 0.0, 3: 0.0},
                     tolerance=1e-4)
    assert g[3] == 0.0 and s[3] == 0.0
    assert r[1] > r[2] > r[3]
    weights = normalize_weights(ema_update({}, r, alpha=0.3))
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights[1] > weights[2] > weights[3]


def test_stragglers_are_slow_observed_peers_only():
    fast = PeerTransfer(bytes_received=10_000_000, seconds=1.0)
    slow = PeerTransfer(bytes_received=10_000_000, seconds=20.0)
    observed = {1: fast, 2: fast, 3: fast, 4: slow, 5: None}
    assert stragglers(observed, [1, 2, 3, 4, 5]) == {4}  # 5: not heard from, not judged
    assert stragglers({}, [1, 2]) == set()
    scores = round_scores(gradient={1: 1.0, 4: 1.0}, steps={1: 1.0, 4: 1.0},
                          bandwidth={1: 0.5, 4: 0.03}, drift={}, tolerance=1e-4, slow={4})
    assert scores[4] == 0.0 and scores[1] > 0


def test_stragglers_by_lag_when_the_group_streams_at_one_pace():
    """Every sender is paced by the slowest (similar throughput); lag names the slow one."""
    paced = {u: PeerTransfer(bytes_received=4_000_000, seconds=10.0, lag=0.01) for u in (1, 2, 3)}
    paced[4] = PeerTransfer(bytes_received=4_000_000, seconds=11.0, lag=4.0)
    assert stragglers(paced, [1, 2, 3, 4]) == {4}
    calm = {u: PeerTransfer(bytes_received=4_000_000, seconds=1.0, lag=0.2) for u in (1, 2, 3)}
    assert stragglers(calm, [1, 2, 3]) == set()  # under the 0.5 s floor: nobody waited long


def test_vanished_miner_decays_to_nothing():
    """A uid absent from the epoch's scores loses (1 - alpha) of its average per epoch."""
    ema = {1: 0.9, 2: 0.9}
    for _ in range(3):
        ema = decay_absent(ema_update(ema, {1: 0.9}, alpha=0.3), {1: 0.9}, alpha=0.3)
    assert ema[1] == pytest.approx(0.9)
    assert ema[2] == pytest.approx(0.9 * 0.7**3)
    for _ in range(60):
        ema = decay_absent(ema, {1}, alpha=0.3)
    assert ema[2] == 0.0 and normalize_weights(ema) == {1: 1.0, 2: 0.0}
    with pytest.raises(ValueError, match="ema_alpha"):
        decay_absent(ema, {1}, alpha=0.0)


def test_train_only_uid_is_not_paid_when_the_round_was_checked():
    """Work that never reached the all-reduce (no binding, never averaged) earns nothing."""
    from template.validator.epoch import EpochRecord, TrainResult, epoch_scores

    record = EpochRecord(epoch=0, train={1: TrainResult(1.0, 32.0), 2: TrainResult(1.0, 32.0),
                                         3: TrainResult(1.0, 32.0)})
    record.add_allreduce(participants=[1, 2],
                         transfers={1: PeerTransfer(10_000, 1.0), 2: PeerTransfer(10_000, 1.0)},
                         drift={1: 0.0, 2: 0.0}, observed=True, consensus_checked=True)
    scores = epoch_scores(record, tolerance=1e-3)
    assert scores[1] > 0.5 and scores[2] > 0.5 and scores[3] == 0.0
    unchecked = EpochRecord(epoch=0, train={3: TrainResult(1.0, 32.0)})  # no round observed
    assert epoch_scores(unchecked, tolerance=1e-3)[3] > 0


def test_a_tampered_contribution_scores_zero_for_the_epoch_and_survives_a_restart():
    from template.validator.epoch import EpochRecord, TrainResult, epoch_scores
    from template.validator.scoring import PeerTransfer

    record = EpochRecord(epoch=4, train={1: TrainResult(1.0, 32.0), 2: TrainResult(1.0, 32.0)})
    fast = PeerTransfer(bytes_received=10**6, seconds=1.0, failed=False, banned=False)
    record.add_allreduce(participants=[1, 2], transfers={1: fast, 2: fast},
                         drift={1: 0.0, 2: 0.0}, observed=True, consensus_checked=True,
                         tampered={2: "delivered values differ from its commitment"})
    scores = epoch_scores(record, tolerance=1e-3)
    assert scores[1] > 0.8 and scores[2] == 0.0
    again = EpochRecord.from_json(record.to_json())
    assert again.tampered == record.tampered
    assert epoch_scores(again, tolerance=1e-3) == scores


def test_the_validator_log_names_the_gate_that_zeroed_each_uid():
    from template.validator.epoch import EpochRecord, TrainResult, explain_scores

    fast = PeerTransfer(bytes_received=10**6, seconds=1.0, failed=False, banned=False)
    record = EpochRecord(epoch=2, train={u: TrainResult(1.0, 32.0) for u in (1, 2, 3, 4)}
                         | {5: TrainResult(0.0, 0.0)})
    record.add_allreduce(participants=[1, 2, 3, 5], transfers={u: fast for u in (1, 2, 3, 5)},
                         drift={1: 0.0, 2: 0.0, 3: 0.5, 5: 0.0}, observed=True,
                         consensus_checked=True, tampered={2: "declared 5x its samples"})
    lines = explain_scores(record, tolerance=1e-3)
    assert "zeroed" not in lines[1] and lines[1].startswith("gradient 1.00 steps 1.00")
    assert lines[2].endswith("(zeroed: contribution tampered: declared 5x its samples)")
    assert "(zeroed: consensus: fingerprint 0.5 from the reference > 0.001)" in lines[3]
    assert "took no part in the round" in lines[4]  # Train-verified, never averaged
    assert "work: failed every Train check" in lines[5]
