"""Gradient sketches: miner and validator agree on honest work, and only on honest work.

A small GPT-2 (2 layers, 64 wide, 2048-token vocab) on Zipf-distributed token batches keeps
each forward/backward in milliseconds. Zipf tokens share a strong unigram gradient across
batches, which makes a lazy miner's copied gradient look MORE like the real one than on natural
text: the hard case for the verifier. Thresholds are ValidatorConfig's defaults.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from template.config import ValidatorConfig
from template.proof import (
    SKETCH_DIMS,
    SketchRecorder,
    batch_gradient_sketch,
    compare_sketches,
    sketch_gradients,
    sketch_seed,
    verify_sketches,
)
from template.training import accumulate

VOCAB = 2048
THRESHOLDS = {
    "min_cosine": ValidatorConfig().min_cosine,
    "min_norm_ratio": ValidatorConfig().min_norm_ratio,
}
SEED = sketch_seed("test-run", 3)


def small_model(*, dropout: float = 0.0) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64,
                        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    return GPT2LMHeadModel(config).train()


def zipf_batches(count: int, *, batch_size: int = 4, seq_len: int = 32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    weights = 1.0 / torch.arange(1, VOCAB + 1, dtype=torch.float64)
    ids = torch.multinomial(weights, count * batch_size * seq_len, replacement=True,
                            generator=gen)
    return list(ids.view(count, batch_size, seq_len))


@pytest.fixture(scope="module")
def model() -> GPT2LMHeadModel:
    return small_model()


@pytest.fixture(scope="module")
def batches() -> list[torch.Tensor]:
    return zipf_batches(5)


@pytest.fixture(scope="module")
def validator_sketches(model, batches) -> dict[int, list[float]]:
    """The validator's recomputation of batches 0..3 (fp32, 1 thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {k: batch_gradient_sketch(model, b, seed=SEED)[1] for k, b in
                enumerate(batches[:4])}
    finally:
        torch.set_num_threads(threads)


def miner_sketches(model, batches, *, precision: str = "fp32") -> dict[int, list[float]]:
    """The miner's path: accumulate grads over the batches, one recorder call per batch."""
    recorder = SketchRecorder(seed=SEED)
    model.zero_grad(set_to_none=True)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else None
    out = {}
    for k, batch in enumerate(batches):
        accumulate(model, batch, autocast=ctx() if ctx else None)
        out[k] = recorder.record(model)
    model.zero_grad(set_to_none=True)
    return out


def passes(agreements) -> bool:
    return all(a.passes(**THRESHOLDS) for a in agreements)


# ------------------------------------------------------------------------- the seed


def test_sketch_seed_is_public_and_per_epoch():
    assert sketch_seed("run", 1) == sketch_seed("run", 1)
    seeds = {sketch_seed("run", e) for e in range(50)} | {sketch_seed("other", 1)}
    assert len(seeds) == 51
    assert all(0 <= s < 2**63 for s in seeds)


# ------------------------------------------------------------------------- sketching


def test_recorder_equals_per_batch_recomputation(model, batches, validator_sketches):
    """Linearity: differences of accumulated projections are the per-batch sketches."""
    claimed = miner_sketches(model, batches[:4])
    for k, mine in validator_sketches.items():
        assert len(claimed[k]) == SKETCH_DIMS
        agreement = compare_sketches(claimed[k], mine)
        assert agreement.cosine > 1 - 1e-9
        assert agreement.norm_ratio > 1 - 1e-5


def test_recorder_reset_starts_from_zero_grads(model, batches, validator_sketches):
    recorder = SketchRecorder(seed=sketch_seed("test-run", 2))
    model.zero_grad(set_to_none=True)
    accumulate(model, batches[0])
    recorder.record(model)
    model.zero_grad(set_to_none=True)  # the optimizer step of the epoch
    recorder.reset(seed=SEED)
    accumulate(model, batches[1])
    sketch = recorder.record(model)
    model.zero_grad(set_to_none=True)
    assert compare_sketches(sketch, validator_sketches[1]).cosine > 1 - 1e-9


def test_none_grads_count_as_zeros():
    """A parameter without a grad must not shift the chunk layout of the ones after it."""
    model = small_model()
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    frozen = params[1]  # wpe: early in the walk, so a shift would change everything after
    frozen.grad = torch.zeros_like(frozen)
    with_zeros = sketch_gradients(model, seed=SEED)
    frozen.grad = None
    assert torch.equal(sketch_gradients(model, seed=SEED), with_zeros)


def test_batch_gradient_sketch_leaves_model_clean(batches):
    model = small_model().eval()
    loss, sketch = batch_gradient_sketch(model, batches[0], seed=SEED, dims=64)
    assert math.isfinite(loss) and loss > 0 and len(sketch) == 64
    assert all(p.grad is None for p in model.parameters())
    assert not model.training  # mode restored
    loss2, sketch2 = batch_gradient_sketch(model, batches[0], seed=SEED, dims=64)
    assert loss2 == loss and sketch2 == sketch  # same thread count: bitwise repeatable


def test_dropout_is_refused(batches):
    with pytest.raises(ValueError, match="dropout"):
        batch_gradient_sketch(small_model(dropout=0.1), batches[0], seed=SEED)


# ------------------------------------------------------------------------- comparing


def test_compare_sketches_values():
    a = [1.0, 2.0, 3.0, 4.0]
    same = compare_sketches(a, a)
    assert same.cosine == pytest.approx(1.0) and same.norm_ratio == pytest.approx(1.0)
    double = compare_sketches([2 * x for x in a], a)
    assert double.cosine == pytest.approx(1.0) and double.norm_ratio == pytest.approx(0.5)
    opposite = compare_sketches([-x for x in a], a)
    assert opposite.cosine == pytest.approx(-1.0)
    zero = compare_sketches([0.0] * 4, a)
    assert zero.cosine == 0.0 and zero.norm_ratio == 0.0 and not zero.passes(**THRESHOLDS)
    both_zero = compare_sketches([0.0] * 4, [0.0] * 4)
    assert both_zero.cosine == 0.0 and not both_zero.passes(**THRESHOLDS)
    huge = compare_sketches([1e300, 1e300, 0.0, 0.0], a)
    assert math.isfinite(huge.cosine) and math.isfinite(huge.norm_ratio)


@pytest.mark.parametrize(
    "claim, reason",
    [
        ([1.0, math.nan, 0.0, 0.0], "NaN"),
        ([1.0, math.inf, 0.0, 0.0], "NaN or Inf"),
        ([1.0, 2.0], "has 2 values"),
        (["a", "b", "c", "d"], "not a list of numbers"),
        ([1e308, 1e308, 1e308, 1e308], "overflows"),
    ],
)
def test_bad_claims_are_rejected_not_raised(claim, reason):
    agreement = compare_sketches(claim, [1.0, 2.0, 3.0, 4.0])
    assert (agreement.cosine, agreement.norm_ratio) == (-1.0, 0.0)
    assert reason in agreement.reason
    assert not agreement.passes(**THRESHOLDS)


def test_non_finite_recomputation_raises():
    with pytest.raises(ValueError, match="recomputed"):
        compare_sketches([1.0, 2.0], [math.nan, 1.0])


def test_verify_sketches_layout():
    mine = {3: [1.0, 0.0, 0.0], 5: [0.0, 1.0, 0.0], 7: [0.0, 0.0, 1.0]}
    result = verify_sketches(dict(mine), mine)
    assert [a.kind for a in result] == ["batch"] * 3 + ["difference"] * 2
    assert passes(result)
    missing = verify_sketches({3: mine[3], 7: mine[7]}, mine)
    assert "no sketch claimed for checked batch 5" in missing[1].reason
    assert [a.passes(**THRESHOLDS) for a in missing] == [True, False, True, False, False]
    # two checked batches with identical tokens: nothing to difference, no false rejection
    twins = {1: [1.0, 2.0, 3.0], 2: [1.0, 2.0, 3.0]}
    assert [a.kind for a in verify_sketches(twins, twins)] == ["batch", "batch"]


# ------------------------------------------------------------------------- separation


def test_honest_miner_passes_fp32_other_threads(model, batches, validator_sketches):
    claimed = miner_sketches(model, batches[:4])  # default threads vs the validator's 1
    assert passes(verify_sketches(claimed, validator_sketches))


def test_honest_miner_passes_bf16_against_fp32_validator(model, batches, validator_sketches):
    claimed = miner_sketches(model, batches[:4], precision="bf16")
    result = verify_sketches(claimed, validator_sketches)
    assert passes(result), result
    # and with margin: the thresholds are far from what honest bf16 reaches
    assert min(a.cosine for a in result) > 1 - (1 - THRESHOLDS["min_cosine"]) / 10


def test_lazy_copy_fails(model, batches, validator_sketches):
    """Every claim is the gradient of one other batch at the same weights."""
    other = batch_gradient_sketch(model, batches[4], seed=SEED)[1]
    result = verify_sketches(dict.fromkeys(validator_sketches, other), validator_sketches)
    assert not any(a.passes(**THRESHOLDS) for a in result if a.kind == "difference")
    assert not passes(result)


def test_lazy_mean_fails(model, validator_sketches):
    """Claim for batch k = mean of the other batches' gradients: close to g_k, wrong in detail."""
    vec = {k: torch.tensor(v) for k, v in validator_sketches.items()}
    claims = {k: torch.stack([v for j, v in vec.items() if j != k]).mean(0).tolist()
              for k in vec}
    result = verify_sketches(claims, validator_sketches)
    diffs = [a for a in result if a.kind == "difference"]
    assert all(a.cosine < 0 for a in diffs)  # the difference points the other way
    assert not passes(result)


def test_random_and_scaled_claims_fail(model, batches, validator_sketches):
    gen = torch.Generator().manual_seed(5)
    honest = miner_sketches(model, batches[:4])
    random_claims = {}
    for k, v in validator_sketches.items():
        norm = torch.tensor(v).norm()
        random_claims[k] = (torch.randn(len(v), generator=gen, dtype=torch.float64)
                            * norm / len(v) ** 0.5).tolist()
    for claims in (
        random_claims,
        {k: [2 * x for x in s] for k, s in honest.items()},
        {k: [0.5 * x for x in s] for k, s in honest.items()},
    ):
        result = verify_sketches(claims, validator_sketches)
        assert not any(a.passes(**THRESHOLDS) for a in result)
