"""Contribution commitments (template/contribution.py): honest gradients pass on any shard and
any compression; every kind of poison the red-team miner draws is caught where it lands."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from template.config import ModelConfig
from template.contribution import (
    COMMIT_BLOCKS,
    Commitment,
    CommitmentError,
    ShardAudit,
    block_ranges,
    block_tolerance,
    commit,
    judge_contribution,
)
from template.miner.adversary import Poisoner, _null_vector
from template.model import build_model
from template.projection import CHUNK, SpanProjection, project, span_results
from template.proof import SKETCH_DIMS, SketchRecorder, sketch_seed
from template.protocol import MAX_BATCHES
from template.training import accumulate, mean_gradient

SEED = sketch_seed("contrib", 3)
BATCH = 4


@pytest.fixture(scope="module")
def epoch_work():
    """The tiny model's mean gradient over 3 batches and their per-batch sketches."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny"), seed=0)
    recorder = SketchRecorder(seed=SEED)
    sketches = []
    for _ in range(3):
        accumulate(model, torch.randint(0, 50257, (BATCH, 32)))
        sketches.append(recorder.record(model))
    mean_gradient(model, 3)
    return [p.grad.detach().clone() for p in model.parameters()], sketches


def _commit(buffers, sketches, samples=3 * BATCH):
    return commit(buffers, seed=SEED, samples=samples, batch_sketches=sketches, dims=SKETCH_DIMS,
                  max_batches=MAX_BATCHES)


def _deliver(buffers, shard, *, seed=SEED, part=50_000, roundtrip=None):
    """What a reducer of ``shard`` observes when ``buffers`` are sent in parts of ``part``."""
    flat = torch.cat([b.reshape(-1) for b in buffers])
    audit = ShardAudit(shard=shard, total=flat.numel(), seeds={"peer": seed})
    for offset in range(shard[0], shard[1], part):
        values = flat[offset:min(shard[1], offset + part)]
        audit.observe("peer", roundtrip(values) if roundtrip else values, offset=offset)
    return audit.delivered()["peer"]


def _judge(commitment, delivered, sketches, *, weight=None, compression="none"):
    return judge_contribution(
        commitment, delivered, seed=SEED, batch_size=BATCH, proven_sketches=sketches,
        declared_weight=(commitment.samples if commitment else 0) if weight is None else weight,
        block_tol=block_tolerance(compression))


def _shards(total, count=4):
    step = total // count
    return [(i * step, (i + 1) * step if i < count - 1 else total) for i in range(count)]


# ------------------------------------------------------------------ projection pieces


def test_a_projection_assembled_from_misaligned_pieces_equals_the_whole():
    torch.manual_seed(1)
    x = torch.randn(5 * CHUNK + 777)
    cuts = sorted(random.Random(2).sample(range(1, x.numel()), 9))
    span = SpanProjection(seed=7, dims=64)
    for lo, hi in reversed(list(zip([0, *cuts], [*cuts, x.numel()], strict=True))):
        span.add(x[lo:hi], offset=lo)
    whole = project([x], seed=7, dims=64)
    assert torch.allclose(span.result(), whole, rtol=1e-5, atol=1e-4)
    assert span.squared_norm == pytest.approx(float(x.double().square().sum()), rel=1e-9)


def test_spans_of_different_seeds_are_not_mixed():
    with pytest.raises(ValueError, match="seeds"):
        span_results([SpanProjection(seed=1, dims=8), SpanProjection(seed=2, dims=8)])


def test_blocks_cover_the_vector_on_chunk_boundaries():
    for total in (1, CHUNK, 33 * CHUNK + 5, 6_960_768):
        ranges = block_ranges(total)
        assert ranges[0][0] == 0 and ranges[-1][1] == total
        assert len(ranges) <= COMMIT_BLOCKS
        pairs = zip(ranges, ranges[1:], strict=False)
        assert all(a[1] == b[0] and a[1] % CHUNK == 0 for a, b in pairs)


# ------------------------------------------------------------------ the commitment


def test_commitment_blocks_sum_to_the_sketch_of_what_is_sent(epoch_work):
    buffers, sketches = epoch_work
    c = _commit(buffers, sketches)
    whole = project(buffers, seed=SEED, dims=SKETCH_DIMS).numpy()
    assert np.linalg.norm(c.blocks.sum(0) - whole) / np.linalg.norm(whole) < 1e-5
    assert np.allclose(c.mean_sketch, np.mean(sketches, 0), rtol=1e-5, atol=1e-7)
    assert c.batches == 3 and c.samples == 3 * BATCH


def test_commitment_round_trips_through_the_wire(epoch_work):
    buffers, sketches = epoch_work
    c = _commit(buffers, sketches)
    back = Commitment.from_wire(c.to_wire(), dims=SKETCH_DIMS, num_blocks=len(c.blocks),
                                max_batches=MAX_BATCHES)
    assert (back.seed, back.samples, back.batches) == (c.seed, c.samples, c.batches)
    assert np.array_equal(back.blocks, c.blocks)
    assert np.array_equal(back.batch_sketches, c.batch_sketches)


def test_a_long_epoch_lists_only_the_first_sketches():
    vector = [torch.ones(CHUNK)]
    sketches = [[1.0] * 4] * 70
    c = commit(vector, seed=1, samples=70, batch_sketches=sketches, dims=4, max_batches=64)
    assert c.batches == 70 and c.batch_sketches.shape == (64, 4)


def _wire(epoch_work):
    buffers, sketches = epoch_work
    return _commit(buffers, sketches).to_wire()


@pytest.mark.parametrize("edit, message", [
    (lambda w: [w], "must be a map"),
    (lambda w: {**w, "v": 99}, "version"),
    (lambda w: {**w, "seed": True}, "seed"),
    (lambda w: {**w, "samples": -1}, "samples"),
    (lambda w: {**w, "count": "3"}, "count"),
    (lambda w: {**w, "dims": 8}, "dims"),
    (lambda w: {**w, "blocks": w["blocks"][:-4]}, "blocks"),
    (lambda w: {**w, "blocks": w["blocks"][: 4 * SKETCH_DIMS]}, "block sketches"),
    (lambda w: {**w, "blocks": np.full(len(w["blocks"]) // 4, np.nan, "<f4").tobytes()},
     "non-finite"),
    (lambda w: {**w, "mean": w["mean"] * 2}, "one sketch"),
    (lambda w: {**w, "count": 5}, "batch sketches"),
    (lambda w: {**w, "count": 0}, "batch sketches"),
    (lambda w: {**w, "batches": "x"}, "bytes"),
])
def test_malformed_commitments_are_rejected_with_a_reason(epoch_work, edit, message):
    wire = _wire(epoch_work)
    with pytest.raises(CommitmentError, match=message):
        Commitment.from_wire(edit(wire), dims=SKETCH_DIMS, num_blocks=COMMIT_BLOCKS,
                             max_batches=MAX_BATCHES)


# ------------------------------------------------------------------ honest senders pass


def _codec(name):
    from hivemind.compression import CompressionInfo, deserialize_torch_tensor

    from hivemind_utils.averaging import make_compression

    codec = make_compression(name)

    def roundtrip(values):  # as a reducer decodes a part: by the wire type it names
        return deserialize_torch_tensor(codec.compress(values, CompressionInfo.from_tensor(values)))

    return roundtrip


@pytest.mark.parametrize("compression", ["none", "fp16", "8bit"])
def test_an_honest_gradient_passes_on_every_shard(epoch_work, compression):
    buffers, sketches = epoch_work
    c = _commit(buffers, sketches)
    total = sum(b.numel() for b in buffers)
    for shard in _shards(total):
        delivered = _deliver(buffers, shard, roundtrip=_codec(compression))
        verdict = _judge(c, delivered, sketches, compression=compression)
        assert verdict.ok, verdict
        assert verdict.blocks_audited >= 6
        assert 0.8 < verdict.norm_ratio < 1.2


def test_a_train_answer_covering_the_first_batches_is_enough(epoch_work):
    buffers, sketches = epoch_work
    c = _commit(buffers, sketches)
    assert _judge(c, None, sketches[:2]).ok  # trained one more batch after its Train answer


# ------------------------------------------------------------------ what fails


def test_commitment_level_lies_are_named(epoch_work):
    buffers, sketches = epoch_work
    c = _commit(buffers, sketches)
    assert "no readable" in _judge(None, None, sketches).problem
    assert "seed" in judge_contribution(c, None, seed=SEED + 1, declared_weight=c.samples,
                                        batch_size=BATCH, proven_sketches=sketches,
                                        block_tol=1e-3).problem
    assert "declared weight" in _judge(c, None, sketches, weight=c.samples * 3).problem
    assert "batches of at most" in _judge(_commit(buffers, sketches, samples=99), None,
                                          sketches, weight=99).problem
    assert "no verified Train" in _judge(c, None, None).problem
    assert "only 1 of 3" in _judge(c, None, sketches[:1]).problem
    forged = [list(np.asarray(s) * 1.01) for s in sketches]
    assert "differ from its Train answer" in _judge(c, None, forged).problem
    assert "not its mean" in _judge(
        Commitment(c.seed, c.samples, c.batches, c.mean_sketch * 2, c.blocks,
                   c.batch_sketches), None, sketches).problem


def test_a_sender_that_stops_halfway_through_the_shard_fails(epoch_work):
    buffers, sketches = epoch_work
    c = _commit(buffers, sketches)
    total = sum(b.numel() for b in buffers)
    lo, hi = _shards(total)[1]
    delivered = _deliver(buffers, (lo, hi), part=50_000)
    short = _deliver(buffers, (lo, (lo + hi) // 2))
    assert delivered.complete and not _judge(c, delivered, sketches).problem
    full_audit = ShardAudit(shard=(lo, hi), total=total, seeds={"peer": SEED})
    flat = torch.cat([b.reshape(-1) for b in buffers])
    full_audit.observe("peer", flat[lo:(lo + hi) // 2], offset=lo)
    partial = full_audit.delivered()["peer"]
    assert not partial.complete and "did not all arrive" in _judge(c, partial, sketches).problem
    assert short.indices != delivered.indices


@pytest.mark.parametrize("variant", ["flip", "flip-recommit", "noise", "partial", "null-space",
                                     "weight"])
@pytest.mark.parametrize("trial", range(3))
def test_every_poison_is_caught_on_a_shard_it_touches(epoch_work, variant, trial):
    """Strengths (and for `partial`, the blocks) are drawn at random per trial: the checks hold
    for the class of attack, not one setting of it."""
    honest_buffers, sketches = epoch_work
    buffers = [b.clone() for b in honest_buffers]
    poisoner = Poisoner(variant)
    poisoner.rng.seed(100 * trial + 7)
    sent = poisoner.contribute(3, buffers, _commit(honest_buffers, sketches))
    total = sum(b.numel() for b in buffers)
    flat_sent = torch.cat([b.reshape(-1) for b in buffers])
    flat_true = torch.cat([b.reshape(-1) for b in honest_buffers])
    changed = [(lo, hi) for lo, hi in block_ranges(total)
               if not torch.equal(flat_sent[lo:hi], flat_true[lo:hi])]
    weight = sent.samples
    caught = []
    for shard in _shards(total):
        delivered = _deliver(buffers, shard)
        verdict = _judge(sent, delivered, sketches, weight=weight)
        audited = [(lo, hi) for lo, hi in changed if shard[0] <= lo and hi <= shard[1]]
        caught.append(not verdict.ok)
        if variant == "null-space":  # bounded, not exact: the hidden part must be large here
            hidden = sum(float((flat_sent[lo:hi] - flat_true[lo:hi]).square().sum())
                         for lo, hi in audited) ** 0.5
            true = sum(float(flat_true[lo:hi].square().sum()) for lo, hi in audited) ** 0.5
            if hidden > 0.9 * true:
                assert not verdict.ok, (variant, shard, hidden / true, verdict)
        elif audited or variant in ("flip-recommit", "weight"):
            assert not verdict.ok, (variant, shard, verdict)
    assert any(caught)


def test_null_space_padding_leaves_the_public_sketch_unchanged(epoch_work):
    """Why the norm check exists: the sketch alone cannot see this vector."""
    buffers, _ = epoch_work
    flat = torch.cat([b.reshape(-1) for b in buffers])
    v = _null_vector(flat, seed=SEED, strength=1.0, rng=random.Random(0))
    assert float(v.norm()) == pytest.approx(float(flat.norm()), rel=1e-4)
    for lo, hi in block_ranges(flat.numel())[:4]:
        span = SpanProjection(seed=SEED, dims=SKETCH_DIMS)
        span.add(v[lo:hi], offset=lo)
        base = SpanProjection(seed=SEED, dims=SKETCH_DIMS)
        base.add(flat[lo:hi], offset=lo)
        assert float(span.result().norm()) < 1e-4 * float(base.result().norm())


def test_the_answered_commitment_must_hash_to_the_gathered_digest(epoch_work):
    buffers, sketches = epoch_work
    c = _commit(buffers, sketches)
    args = {"dims": SKETCH_DIMS, "num_blocks": len(c.blocks), "max_batches": MAX_BATCHES}
    back = Commitment.from_text(c.to_text(), digest=c.digest(), **args)
    assert np.array_equal(back.blocks, c.blocks)
    other = _commit([b * 2 for b in buffers], sketches)
    for text, digest, message in [
        (other.to_text(), c.digest(), "does not hash"),  # swapped after the round
        (c.to_text(), None, "does not hash"),              # gathered nothing
        ("", c.digest(), "no commitment"),
        ("%%%", c.digest(), "base64"),
    ]:
        with pytest.raises(CommitmentError, match=message):
            Commitment.from_text(text, digest=digest, **args)
    import base64
    import hashlib
    junk = b"\xc1not msgpack"
    with pytest.raises(CommitmentError, match="msgpack"):
        Commitment.from_text(base64.b64encode(junk).decode(),
                             digest=hashlib.sha256(junk).digest(), **args)


def test_judging_maps_members_through_the_chain_binding_only(epoch_work):
    from hivemind_utils.round_stats import AveragingResult, SenderStats
    from template.contribution import gather_digest
    from template.protocol import AllReduce
    from template.validator.allreduce_round import ContributionRules, judge_contributions

    buffers, sketches = epoch_work
    c = _commit(buffers, sketches)
    total = sum(b.numel() for b in buffers)
    peers = {1: "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
             2: "12D3KooWBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
             3: "12D3KooWCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC"}
    aux = AveragingResult(
        ok=True, participants=(peers[1], peers[2], "12D3KooWvalidator"),
        auxiliaries=("12D3KooWvalidator",),
        gathered={peers[1]: gather_digest(c), peers[2]: gather_digest(c)},
        senders={peers[1]: SenderStats(1, 1, 1.0, 1.0, float(c.samples), False),
                 peers[2]: SenderStats(1, 1, 1.0, 1.0, float(c.samples), False)},
        delivered={peers[1]: _deliver(buffers, _shards(total)[0])})
    rules = ContributionRules(seed=SEED, batch_size=BATCH, block_tolerance=1e-3,
                              num_values=total, proofs={1: sketches, 2: sketches})
    replies = {1: AllReduce(commitment=c.to_text()), 2: AllReduce()}
    verdicts = judge_contributions(aux, peers, [1, 2, 3], replies, rules)
    assert set(verdicts) == {1, 2}  # uid 3 was not in the validator's group
    assert verdicts[1].ok and verdicts[1].blocks_audited > 0
    assert "no commitment" in verdicts[2].problem
    assert judge_contributions(AveragingResult(ok=False), peers, [1, 2], replies, rules) == {}
