"""Gradient sketches: the proof of work, computed the same way by miner and validator.

A *sketch* of a gradient is :func:`template.projection.project` of the model's ``.grad``
tensors to :data:`SKETCH_DIMS` numbers with the epoch's public seed (:func:`sketch_seed`).
Because the projection is a Johnson-Lindenstrauss map, the cosine and norm ratio of two sketches
estimate those of the two full gradients (error about ``1/sqrt(SKETCH_DIMS)``), so a few hundred
floats in a synapse stand for millions of gradient values.

What is sketched, exactly (miner and validator must agree on every point):

* the gradient of the MEAN token loss of ONE batch, ``model(input_ids, labels=input_ids).loss``
  (as :func:`template.training.accumulate` computes it; one micro-batch is one batch), at the
  epoch's weights ``theta_e``, unscaled (no division by the number of batches);
* over every parameter of ``model.named_parameters()`` in that order (tied weights appear once,
  which is what ``named_parameters`` does); a parameter whose ``.grad`` is ``None`` counts as a
  zero tensor of its shape, so the chunk layout never depends on which grads exist;
* fp32 ``.grad`` buffers (parameters are fp32; bf16 autocast changes only the matmuls).

Per-batch sketches at no extra memory. The miner accumulates gradients over its batches; since
the projection is linear, ``sketch(batch k) = P(grad after k) - P(grad after k-1)``.
:class:`SketchRecorder` keeps the previous projection (``dims`` floats) and is called once per
batch, right after ``backward()``.

Why a public seed is fine. The seed is derived from the run id and the epoch, so a miner knows
it before any validator asks (it has to: it sketches while training). Knowing ``P`` does not
help to forge: the validator recomputes the gradient of the same batch at the same weights
itself and compares the claim with its own sketch. To pass, a claim must be close to ``P g_k``
for the true ``g_k``, and the cheapest way to know ``P g_k`` is to compute ``g_k``. The seed
changes every epoch only so that sketches of one epoch say nothing about the next.

Why two checks (:func:`verify_sketches`). Gradients of different batches at the same weights
are correlated (they share the mean gradient of the data), so a lazy miner could send the
gradient of one batch (or the mean of a few) for every batch it claims. The raw comparison of
one batch catches plain copies (cosine 0.2-0.7 measured, see docs/validator.md), and the
*difference* comparison removes the shared component exactly: the claimed ``s_k - s_l`` must
match the recomputed ``P(g_k - g_l)``, which only depends on what is specific to each batch.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from template.device import autocast
from template.projection import project
from template.training import accumulate

_SAME_BATCH = 1e-9  # relative size of r_k - r_l below which batches k and l are identical
SKETCH_DIMS = 256
"""Floats per sketch: cosine estimates carry about ``1/sqrt(256) ~ 0.06`` relative error, far
below the gap between honest (>0.999) and lazy (<0.85) agreement; 256 floats are ~3 KB of JSON
per batch in a synapse."""


def sketch_seed(run_id: str, epoch: int) -> int:
    """Public, per-epoch projection seed: sha256 of ``sketch|{run_id}|{epoch}``, 63 bits."""
    digest = hashlib.sha256(f"sketch|{run_id}|{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def _grad_tensors(model: torch.nn.Module) -> Iterator[torch.Tensor]:
    for _, param in model.named_parameters():
        yield param.grad if param.grad is not None else torch.zeros_like(param)


def sketch_gradients(model: torch.nn.Module, *, seed: int, dims: int = SKETCH_DIMS) -> torch.Tensor:
    """Projection of the model's current ``.grad`` buffers (float64, CPU, ``dims`` values)."""
    return project(_grad_tensors(model), seed=seed, dims=dims)


class SketchRecorder:
    """Per-batch sketches from the miner's accumulating ``.grad`` buffers, one call per batch.

        recorder = SketchRecorder(seed=sketch_seed(run_id, epoch))
        for batch in batches:
            accumulate(model, batch)               # adds this batch's gradient to .grad
            sketches.append(recorder.record(model))
        # after the optimizer step zeroed the grads:
        recorder.reset(seed=sketch_seed(run_id, epoch + 1))

    Call :meth:`reset` whenever the grads are zeroed (each epoch): the recorder cannot see it,
    and without a reset the next sketch would be ``P(g) - P(old sum)``.
    """

    def __init__(self, *, seed: int, dims: int = SKETCH_DIMS):
        self.dims = dims
        self.seed = seed
        self._previous = torch.zeros(dims, dtype=torch.float64)

    def reset(self, *, seed: int | None = None) -> None:
        """Start again from zero grads (optionally with the next epoch's seed)."""
        if seed is not None:
            self.seed = seed
        self._previous = torch.zeros(self.dims, dtype=torch.float64)

    def record(self, model: torch.nn.Module) -> list[float]:
        """Sketch of the gradient added since the previous call (or since the reset)."""
        current = sketch_gradients(model, seed=self.seed, dims=self.dims)
        sketch = current - self._previous
        self._previous = current
        return sketch.tolist()


def _check_no_dropout(model: torch.nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0:
            raise ValueError(
                f"{name} has dropout p={module.p}; gradients would not be reproducible "
                "(build the model with resid/embd/attn dropout 0)"
            )


def batch_gradient_sketch(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    *,
    seed: int,
    dims: int = SKETCH_DIMS,
    precision: str = "fp32",
    device: torch.device | None = None,
) -> tuple[float, list[float]]:
    """The validator's recomputation: (mean loss, sketch) of one batch's gradient at the weights.

    ``model`` must already sit on ``device`` (default: the device of its first parameter); the
    batch is moved there. Grads are zeroed before (whatever they held is discarded) and set to
    ``None`` after, so calls are independent. Runs in train mode (dropout must be 0, checked)
    and restores the previous mode.
    """
    _check_no_dropout(model)
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.train()
    model.zero_grad(set_to_none=True)
    try:
        loss = accumulate(model, input_ids.to(device), autocast=autocast(device, precision))
        sketch = sketch_gradients(model, seed=seed, dims=dims)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return loss, sketch.tolist()


# ------------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class SketchAgreement:
    """How well a claimed sketch matches the validator's recomputation.

    ``cosine`` in [-1, 1]; ``norm_ratio = min(|a|, |b|) / max(|a|, |b|)`` in [0, 1]. A claim that
    cannot be compared (wrong length, NaN/Inf, missing) is reported as ``cosine=-1,
    norm_ratio=0`` with a ``reason``: it fails any threshold and stays finite for scoring.
    ``kind`` is ``"batch"`` for one batch, ``"difference"`` for a pair of batches.
    """

    cosine: float
    norm_ratio: float
    reason: str = ""
    kind: str = "batch"

    def passes(self, *, min_cosine: float, min_norm_ratio: float) -> bool:
        finite = math.isfinite(self.cosine) and math.isfinite(self.norm_ratio)
        return finite and self.cosine >= min_cosine and self.norm_ratio >= min_norm_ratio


def rejected(reason: str, *, kind: str = "batch") -> SketchAgreement:
    """The agreement of a claim that could not be compared: fails every threshold."""
    return SketchAgreement(cosine=-1.0, norm_ratio=0.0, reason=reason, kind=kind)


def _as_vector(values: Sequence[float] | torch.Tensor) -> torch.Tensor | None:
    try:
        vec = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        return None
    return vec


def compare_sketches(
    claimed: Sequence[float] | torch.Tensor, recomputed: Sequence[float] | torch.Tensor
) -> SketchAgreement:
    """Cosine and norm ratio of a miner's claimed sketch against the validator's own.

    ``claimed`` comes from the network: anything malformed (not numbers, wrong length, NaN or
    Inf) gives :func:`rejected`, never an exception. ``recomputed`` is the validator's own
    work: a non-finite value there means the validator's model diverged, which is not the
    miner's fault, so it raises ``ValueError`` (the caller skips scoring that batch). A zero
    vector on either side has cosine 0 (no direction to agree with); two zero vectors have
    norm ratio 0 too, so a zero claim never passes.
    """
    mine = _as_vector(recomputed)
    if mine is None or not bool(torch.isfinite(mine).all()):
        raise ValueError("recomputed sketch is not a finite numeric vector (diverged model?)")
    theirs = _as_vector(claimed)
    if theirs is None:
        return rejected("claimed sketch is not a list of numbers")
    if theirs.numel() != mine.numel():
        return rejected(f"claimed sketch has {theirs.numel()} values, expected {mine.numel()}")
    if not bool(torch.isfinite(theirs).all()):
        return rejected("claimed sketch holds NaN or Inf")
    norm_a, norm_b = float(theirs.norm()), float(mine.norm())
    if not (math.isfinite(norm_a) and math.isfinite(norm_b)):
        return rejected("claimed sketch norm overflows")
    big, small = max(norm_a, norm_b), min(norm_a, norm_b)
    ratio = small / big if big > 0 else 0.0
    if small == 0:
        return SketchAgreement(cosine=0.0, norm_ratio=ratio, reason="zero sketch")
    cosine = float((theirs / norm_a) @ (mine / norm_b))
    return SketchAgreement(cosine=max(-1.0, min(1.0, cosine)), norm_ratio=ratio)


def verify_sketches(
    claimed: Mapping[int, Sequence[float]], recomputed: Mapping[int, Sequence[float]]
) -> list[SketchAgreement]:
    """All the comparisons for one miner's checked batches: what the gradient score consumes.

    ``recomputed`` maps each checked batch index to the validator's sketch; ``claimed`` maps
    batch indices to the miner's sketches (from its Train response). Returns one ``"batch"``
    agreement per checked batch (in sorted index order), then one ``"difference"`` agreement per
    consecutive pair of checked batches: claimed ``s_k - s_l`` against recomputed ``r_k - r_l``.
    The difference cancels the component that all batches' gradients share, which is what lets
    a lazy miner's copied gradient look similar to the real one (see the module docstring).
    A checked batch missing from ``claimed`` is a rejection. With one checked batch there is no
    pair, so checking at least two batches per miner is what makes the difference test bite.
    """
    indices = sorted(recomputed)
    batch_checks: list[SketchAgreement] = []
    vectors: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for index in indices:
        if index not in claimed:
            batch_checks.append(rejected(f"no sketch claimed for checked batch {index}"))
            continue
        agreement = compare_sketches(claimed[index], recomputed[index])
        batch_checks.append(agreement)
        if not agreement.reason:
            theirs, mine = _as_vector(claimed[index]), _as_vector(recomputed[index])
            assert theirs is not None and mine is not None  # compared fine just above
            vectors[index] = (theirs, mine)
    diff_checks: list[SketchAgreement] = []
    for first, second in zip(indices, indices[1:], strict=False):
        if first not in vectors or second not in vectors:
            diff_checks.append(rejected(f"batches {first},{second}: a sketch was rejected",
                                        kind="difference"))
            continue
        (claim_a, mine_a), (claim_b, mine_b) = vectors[first], vectors[second]
        if float((mine_a - mine_b).norm()) <= _SAME_BATCH * max(mine_a.norm(), mine_b.norm()):
            continue  # the two batches hold the same tokens: no difference to check
        agreement = compare_sketches(claim_a - claim_b, mine_a - mine_b)
        diff_checks.append(SketchAgreement(agreement.cosine, agreement.norm_ratio,
                                           agreement.reason, kind="difference"))
    return batch_checks + diff_checks
