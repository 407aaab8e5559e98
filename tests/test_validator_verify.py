"""Verification of Train claims with real tiny-model gradients (GPT-2 tokenizer, tiny preset).

An honest claim is produced the way the miner produces it (accumulate + SketchRecorder over the
first batches of the assigned pages at theta_e); every adversarial claim is derived from it.
Batches are 2 x 32 tokens so each recomputation is one small forward/backward.
"""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

from template.config import ModelConfig
from template.data.batches import epoch_batches
from template.data.shards import demo_records
from template.data.tokenizer import load_tokenizer
from template.model import FINGERPRINT_TOLERANCE, build_model, fingerprint
from template.proof import SketchRecorder, sketch_seed
from template.protocol import Reason
from template.training import accumulate
from template.validator.verify import (
    TrainClaim,
    VerifyThresholds,
    check_claim,
    choose_batches,
    verify_train,
)

RUN, EPOCH, UID = "verify-run", 3, 4
SEQ, BATCH, TRAINED = 32, 2, 3
PAGES = (11, 42)
PEER = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
THRESHOLDS = VerifyThresholds(check_batches=2, fingerprint_tolerance=FINGERPRINT_TOLERANCE)


@pytest.fixture(scope="module")
def world():
    torch.set_num_threads(2)
    tokenizer = load_tokenizer(offline=True)
    texts = [r["text"] for r in demo_records(max_pages=len(PAGES))]
    model = build_model(ModelConfig(preset="tiny"), seed=0)
    seed = sketch_seed(RUN, EPOCH)
    batches = epoch_batches(texts, tokenizer, seq_len=SEQ, batch_size=BATCH)
    assert len(batches) > TRAINED
    recorder, sketches, losses = SketchRecorder(seed=seed), [], []
    model.zero_grad(set_to_none=True)
    for batch in batches[:TRAINED]:  # the miner's loop: accumulate, then sketch the increment
        losses.append(accumulate(model, batch))
        sketches.append(tuple(recorder.record(model)))
    model.zero_grad(set_to_none=True)
    honest = TrainClaim(
        epoch=EPOCH, pages=PAGES, batches=tuple(range(TRAINED)), samples=TRAINED * BATCH,
        sketches=tuple(sketches), loss=sum(losses) / len(losses), sketch_seed=seed,
        peer_id=PEER, model_fingerprint=tuple(fingerprint(model)),
    )
    return dict(tokenizer=tokenizer, texts=texts, model=model, seed=seed, honest=honest,
                available=len(batches))


def run(world, claim, *, rng_seed=0, thresholds=THRESHOLDS):
    return verify_train(
        claim, uid=UID, epoch=EPOCH, expected_pages=PAGES, texts=world["texts"],
        tokenizer=world["tokenizer"], model=world["model"], seed=world["seed"], seq_len=SEQ,
        batch_size=BATCH, rng=random.Random(rng_seed), thresholds=thresholds,
        reference_fingerprint=world["honest"].model_fingerprint, expected_peer_id=PEER)


def test_honest_claim_passes_every_check(world):
    verdict = run(world, world["honest"])
    assert verdict.ok, verdict.rejection
    assert len(verdict.checked) == 2 and set(verdict.checked) <= set(range(TRAINED))
    assert verdict.gradient == 1.0
    assert verdict.verified_samples == TRAINED * BATCH
    assert all(a.cosine > 0.999 and a.norm_ratio > 0.999 for a in verdict.agreements)
    assert {a.kind for a in verdict.agreements} == {"batch", "difference"}
    assert math.isclose(verdict.recomputed_loss, world["honest"].loss, rel_tol=0.2)
    assert verdict.seconds > 0


def _with_sketches(world, sketches):
    return dataclasses.replace(world["honest"], sketches=tuple(tuple(s) for s in sketches))


def test_lazy_claims_fail(world):
    honest = world["honest"].sketches
    repeated = _with_sketches(world, [honest[0]] * TRAINED)          # one gradient for all
    shifted = _with_sketches(world, honest[1:] + honest[:1])         # other batches' gradients
    for claim in (repeated, shifted):
        verdict = run(world, claim, rng_seed=1)
        assert verdict.ok  # well-formed, so not rejected: the checks fail instead
        assert verdict.gradient < 0.5, [(a.kind, a.cosine, a.norm_ratio)
                                        for a in verdict.agreements]
        assert verdict.verified_samples < 0.5 * claim.samples


def test_random_and_scaled_gradients_fail(world):
    gen = torch.Generator().manual_seed(7)
    honest = [torch.tensor(s, dtype=torch.float64) for s in world["honest"].sketches]
    noise = [(torch.randn(len(s), generator=gen, dtype=torch.float64) * s.norm()
              / len(s) ** 0.5).tolist() for s in honest]
    for claim in (_with_sketches(world, noise),
                  _with_sketches(world, [(2 * s).tolist() for s in honest])):
        verdict = run(world, claim, rng_seed=2)
        assert verdict.ok and verdict.gradient == 0.0
        assert verdict.verified_samples == 0.0


def test_nan_sketch_scores_zero_without_raising(world):
    bad = list(world["honest"].sketches)
    bad = [tuple(float("nan") for _ in s) for s in bad]
    verdict = run(world, _with_sketches(world, bad), rng_seed=3)
    assert verdict.gradient == 0.0 and verdict.verified_samples == 0.0


def _cheap_check(world, claim):
    return check_claim(claim, epoch=EPOCH, expected_pages=PAGES,
                       available_batches=world["available"], batch_size=BATCH,
                       reference_fingerprint=world["honest"].model_fingerprint,
                       fingerprint_tolerance=FINGERPRINT_TOLERANCE, expected_peer_id=PEER)


@pytest.mark.parametrize(("change", "reason", "words"), [
    ({"pages": (11, 43)}, Reason.INCONSISTENT, "assignment"),
    ({"pages": (42, 11)}, Reason.INCONSISTENT, "assignment"),
    ({"epoch": EPOCH - 1}, Reason.WRONG_EPOCH, "epoch"),
    ({"samples": 10 * TRAINED * BATCH}, Reason.INCONSISTENT, "samples"),
    ({"batches": (0, 1, 5)}, Reason.INCONSISTENT, "0..n-1"),
    ({"loss": float("nan")}, Reason.MALFORMED, "loss"),
    ({"peer_id": "QmZZZSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"}, Reason.UNVERIFIED, "bound"),
    ({"model_fingerprint": (1.0,) * 32}, Reason.WRONG_EPOCH, "theta_e"),
])
def test_inconsistent_claims_are_rejected_before_any_gradient(world, change, reason, words):
    claim = dataclasses.replace(world["honest"], **change)
    rejection = _cheap_check(world, claim)
    assert rejection is not None and rejection.reason is reason and words in rejection.detail
    verdict = run(world, claim)
    assert not verdict.ok and verdict.verified_samples == 0 and verdict.gradient == 0
    assert not verdict.checked  # rejected before recomputing anything


def test_too_many_batches_for_the_pages_are_rejected(world):
    n = world["available"] + 1
    claim = dataclasses.replace(world["honest"], batches=tuple(range(n)), samples=n * BATCH,
                                sketches=world["honest"].sketches[:1] * n)
    rejection = _cheap_check(world, claim)
    assert rejection is not None and "pages make" in rejection.detail


def test_made_up_loss_is_rejected(world):
    claim = dataclasses.replace(world["honest"], loss=world["honest"].loss / 5)
    verdict = run(world, claim, rng_seed=4)
    assert not verdict.ok and "loss" in verdict.rejection.detail


def test_batches_are_chosen_by_the_validators_rng():
    picks = {tuple(choose_batches(range(10), 2, random.Random(s))) for s in range(20)}
    assert len(picks) > 5  # not a fixed, guessable subset
    assert choose_batches([0, 1], 5, random.Random(0)) == [0, 1]
