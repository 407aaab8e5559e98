"""Verification of one `Train` response: is the claimed work the work the miner was assigned?

Pure in everything but compute: plain inputs (the claim, the re-derived pages and their texts,
the model at ``theta_e``, a ``random.Random``) in, a :class:`TrainVerdict` out. Nothing here
talks to the network, the chain or the DHT, so every rule is tested with real tiny-model
gradients and literal claims.

The checks, cheapest first (the first failure ends the verification with a typed rejection):

1. **Claim shape** (:func:`check_claim`): the claimed pages are exactly the pages
   :func:`template.data.assign_pages` gives this uid for this epoch, in order; the reported
   batches are ``0..n-1`` (the first ``n`` of the epoch's batch stream) and exist in those pages;
   ``samples == n * batch_size``; the miner trained at ``theta_e`` (its model fingerprint is
   within the fingerprint tolerance of the reference one); the PeerID is the one the uid bound
   on chain.
2. **Recomputation** (:func:`verify_train`): ``check_batches`` of the reported batches are chosen
   with ``rng`` AFTER the response arrived (the miner cannot know which), rebuilt from the page
   texts with :func:`template.data.epoch_batches`, and their gradient sketches recomputed at
   ``theta_e`` (:func:`template.proof.batch_gradient_sketch`). Claimed and recomputed sketches
   are compared per batch and per pair of batches (:func:`template.proof.verify_sketches`).
3. **Loss sanity**: the claimed mean loss must be within a factor :data:`MAX_LOSS_RATIO` of the
   recomputed mean loss of the checked batches (a different subset of batches, so only a coarse
   band: it catches made-up losses, not noise).

Failed sketch comparisons are not a rejection: they lower the gradient score (the fraction of
comparisons that pass) and, through it, the verified samples (claimed samples times that
fraction, see :func:`template.validator.scoring.verified_samples`).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from template.data.batches import epoch_batches
from template.model import fingerprint_distance
from template.proof import SketchAgreement, batch_gradient_sketch, verify_sketches
from template.protocol import Reason, Rejection, Train
from template.validator.scoring import gradient_score, verified_samples

MAX_LOSS_RATIO = 2.0
"""Largest ratio (either way) between the claimed mean loss and the recomputed mean loss of the
checked batches. Per-batch losses of one epoch at the same weights differ by far less than 2x
on natural text; raise it only if honest miners are rejected with "loss ... implausible"."""


@dataclass(frozen=True)
class VerifyThresholds:
    """What counts as agreement; defaults are ``ValidatorConfig``'s (see docs/validator.md)."""

    min_cosine: float = 0.9
    min_norm_ratio: float = 0.8
    check_batches: int = 2
    fingerprint_tolerance: float = 1e-4
    max_loss_ratio: float = MAX_LOSS_RATIO


@dataclass(frozen=True)
class TrainClaim:
    """The fields of a `Train` response that verification reads (plain values)."""

    epoch: int
    pages: tuple[int, ...]
    batches: tuple[int, ...]
    samples: int
    sketches: tuple[tuple[float, ...], ...]
    loss: float | None
    sketch_seed: int
    peer_id: str
    model_fingerprint: tuple[float, ...]

    @classmethod
    def from_synapse(cls, syn: Train) -> TrainClaim:
        """Copy the response fields (call only after ``validate_train_response`` passed)."""
        return cls(
            epoch=int(syn.epoch), pages=tuple(syn.pages), batches=tuple(syn.batches),
            samples=int(syn.samples), sketches=tuple(tuple(s) for s in syn.sketches),
            loss=None if syn.loss is None else float(syn.loss), sketch_seed=int(syn.sketch_seed),
            peer_id=str(syn.peer_id), model_fingerprint=tuple(syn.model_fingerprint),
        )


@dataclass(frozen=True)
class TrainVerdict:
    """The outcome of verifying one miner's `Train` response in one round."""

    uid: int
    rejection: Rejection | None = None
    """Why the response earned nothing (transport, malformed, wrong pages/epoch...); None if
    it was verified (which says nothing yet about how many checks passed)."""
    checked: tuple[int, ...] = ()
    """Batch indices recomputed (chosen after the response arrived)."""
    agreements: tuple[SketchAgreement, ...] = ()
    gradient: float = 0.0
    """Fraction of sketch comparisons that passed (``scoring.gradient_score``)."""
    claimed_samples: int = 0
    verified_samples: float = 0.0
    """Claimed samples counted in proportion to ``gradient`` (capped by the pages' capacity)."""
    loss: float | None = None
    """The miner's claimed mean loss (only for a verified response)."""
    recomputed_loss: float | None = None
    seconds: float = 0.0
    """Validator compute time spent on this response (recomputation included)."""
    sketches: tuple[tuple[float, ...], ...] = ()
    """The claim's per-batch sketches, batch 0 first (only for a verified response): what the
    miner's round commitment must repeat (:mod:`template.contribution`)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.rejection is None

    @property
    def verifiable(self) -> bool:
        """False when the validator could not check the claim with its own data (a damaged
        shard): such a verdict says nothing about the miner and is not recorded."""
        return self.rejection is None or self.rejection.reason is not Reason.NOT_VERIFIABLE

    def summary(self) -> dict[str, Any]:
        """JSON-able digest (persisted with the validator state, logged)."""
        return {
            "uid": self.uid, "ok": self.ok,
            "reason": None if self.rejection is None else self.rejection.reason.value,
            "detail": None if self.rejection is None else self.rejection.detail[:200],
            "checked": list(self.checked), "gradient": self.gradient,
            "claimed_samples": self.claimed_samples, "verified_samples": self.verified_samples,
            "loss": self.loss, "seconds": round(self.seconds, 4),
        }


def rejected_verdict(uid: int, rejection: Rejection, *, seconds: float = 0.0) -> TrainVerdict:
    """A verdict that scores zero (gradient 0, no verified samples) for ``rejection``."""
    return TrainVerdict(uid=uid, rejection=rejection, seconds=seconds)


def check_claim(
    claim: TrainClaim,
    *,
    epoch: int,
    expected_pages: Sequence[int],
    available_batches: int,
    batch_size: int,
    reference_fingerprint: Sequence[float] | None,
    fingerprint_tolerance: float,
    expected_peer_id: str | None = None,
) -> Rejection | None:
    """The cheap checks of a claim (no gradient computed); None when it is consistent.

    ``available_batches`` is how many full batches the expected pages make;
    ``reference_fingerprint`` is the fingerprint of ``theta_e`` (None skips that check).
    """
    if claim.epoch != epoch:
        return Rejection(Reason.WRONG_EPOCH, f"claim is for epoch {claim.epoch}, asked {epoch}")
    if list(claim.pages) != list(expected_pages):
        return Rejection(Reason.INCONSISTENT, "pages differ from the uid's assignment "
                         f"({len(claim.pages)} claimed, {len(expected_pages)} assigned)")
    if expected_peer_id is not None and claim.peer_id != expected_peer_id:
        return Rejection(Reason.UNVERIFIED, "peer_id is not the PeerID this uid bound on chain")
    n = len(claim.batches)
    if n == 0:
        return Rejection(Reason.INCONSISTENT, "no batches reported")
    if list(claim.batches) != list(range(n)):
        return Rejection(Reason.INCONSISTENT, "batches must be the first n of the epoch (0..n-1)")
    if n > available_batches:
        return Rejection(Reason.INCONSISTENT,
                         f"{n} batches claimed, the assigned pages make {available_batches}")
    if claim.samples != n * batch_size:
        return Rejection(Reason.INCONSISTENT,
                         f"{claim.samples} samples for {n} batches of {batch_size}")
    if len(claim.sketches) != n:
        return Rejection(Reason.INCONSISTENT, f"{len(claim.sketches)} sketches for {n} batches")
    if claim.loss is None or not math.isfinite(claim.loss) or claim.loss < 0:
        return Rejection(Reason.MALFORMED, f"loss {claim.loss!r} is not a finite number >= 0")
    if reference_fingerprint is not None:
        problem = _fingerprint_problem(claim.model_fingerprint, reference_fingerprint,
                                       fingerprint_tolerance)
        if problem:
            return Rejection(Reason.WRONG_EPOCH, problem)
    return None


def _fingerprint_problem(claimed: Sequence[float], reference: Sequence[float],
                         tolerance: float) -> str:
    if len(claimed) != len(reference):
        return f"model fingerprint has {len(claimed)} values, expected {len(reference)}"
    distance = fingerprint_distance(list(claimed), list(reference))
    if not math.isfinite(distance) or distance > tolerance:
        return (f"trained at other weights than theta_e (fingerprint distance {distance:.3g} > "
                f"{tolerance:g})")
    return ""


def choose_batches(batches: Sequence[int], count: int, rng: random.Random) -> list[int]:
    """``count`` distinct reported batches (all if fewer), sorted; drawn from ``rng``."""
    pool = list(batches)
    return sorted(rng.sample(pool, k=min(count, len(pool))))


def verify_train(
    claim: TrainClaim,
    *,
    uid: int,
    epoch: int,
    expected_pages: Sequence[int],
    texts: Sequence[str],
    tokenizer: Any,
    model: torch.nn.Module,
    seed: int,
    seq_len: int,
    batch_size: int,
    rng: random.Random,
    thresholds: VerifyThresholds = VerifyThresholds(),  # noqa: B008 - frozen, immutable
    reference_fingerprint: Sequence[float] | None = None,
    expected_peer_id: str | None = None,
    precision: str = "fp32",
) -> TrainVerdict:
    """Verify one claim against the validator's own recomputation (see the module docstring).

    ``texts`` are the texts of ``expected_pages`` in order; ``model`` holds ``theta_e`` (it is
    used in train mode and its grads are cleared after); ``seed`` is ``sketch_seed(run, epoch)``.
    """
    started = time.perf_counter()
    stream = epoch_batches(texts, tokenizer, seq_len=seq_len, batch_size=batch_size)
    rejection = check_claim(
        claim, epoch=epoch, expected_pages=expected_pages, available_batches=len(stream),
        batch_size=batch_size, reference_fingerprint=reference_fingerprint,
        fingerprint_tolerance=thresholds.fingerprint_tolerance,
        expected_peer_id=expected_peer_id)
    if rejection is not None:
        return rejected_verdict(uid, rejection, seconds=time.perf_counter() - started)
    checked = choose_batches(claim.batches, thresholds.check_batches, rng)
    recomputed: dict[int, list[float]] = {}
    losses: list[float] = []
    for index in checked:
        loss, sketch = batch_gradient_sketch(model, stream[index], seed=seed,
                                             precision=precision)
        recomputed[index] = sketch
        losses.append(loss)
    claimed = {index: list(claim.sketches[index]) for index in checked}
    agreements = tuple(verify_sketches(claimed, recomputed))
    own_loss = sum(losses) / len(losses)
    assert claim.loss is not None  # check_claim rejected a missing loss
    if not _loss_plausible(claim.loss, own_loss, thresholds.max_loss_ratio):
        return rejected_verdict(uid, Rejection(
            Reason.INCONSISTENT, f"claimed loss {claim.loss:.4g} implausible, recomputed "
            f"{own_loss:.4g} on the checked batches"), seconds=time.perf_counter() - started)
    score = gradient_score(agreements, min_cosine=thresholds.min_cosine,
                           min_norm_ratio=thresholds.min_norm_ratio)
    verified = verified_samples(claim.samples, score, max_samples=len(stream) * batch_size)
    return TrainVerdict(
        uid=uid, checked=tuple(checked), agreements=agreements, gradient=score,
        claimed_samples=claim.samples, verified_samples=verified, loss=claim.loss,
        recomputed_loss=own_loss, seconds=time.perf_counter() - started,
        sketches=claim.sketches,
    )


def _loss_plausible(claimed: float, recomputed: float, ratio: float) -> bool:
    if not math.isfinite(recomputed) or recomputed <= 0:
        return True  # the validator's own number is unusable: not the miner's fault
    if claimed <= 0:
        return False
    return 1 / ratio <= claimed / recomputed <= ratio
