"""Contribution commitments: what a miner puts into the all-reduce is what its Train answer proves.

The Train checks prove a miner's per-batch gradient sketches (the validator recomputes some of
them). Nothing there says what the miner *sends* into the butterfly all-reduce, and every
reducer averages whatever arrives. This module ties the two together:

1. **Commit** (miner, :func:`commit`). Before its round the miner sends every groupmate, with
   hivemind's ``gather=`` (exchanged during matchmaking, before any part is sent), the sha256
   digest of a :class:`Commitment` (:func:`gather_digest`; hivemind's matchmaking is not made
   for tens of kilobytes of metadata), and hands the commitment itself to the validator in its
   ``AllReduce`` answer. The commitment is the sketch of the vector it sends, cut into
   :data:`COMMIT_BLOCKS`
   fixed ranges of the flattened gradient (:func:`block_ranges`), plus the mean of the per-batch
   sketches that vector is the mean of, the first :data:`~template.protocol.MAX_BATCHES` of
   those sketches (what a Train answer carries), its samples and its batch count.
2. **Observe** (any reducer; the validator's auxiliary peer, :class:`ShardAudit`). A reducer
   receives every sender's values on its shard, so it projects, per sender, what was delivered
   on every block that lies wholly inside that shard, and its squared norm.
3. **Judge** (pure, :func:`judge_contribution`), per sender:

   - *delivered = committed*: on every audited block the sketch of what arrived is the
     committed block sketch (relative error within :func:`block_tolerance` of the compression);
   - *no null-space padding*: the projection's seed is public, so a sender can add a vector
     ``v`` with ``P v = 0`` and pass the sketch test; ``v`` still adds to the delivered norm,
     which must match the committed sketch's norm (JL: ``|P x| ~ |x|``) within
     :data:`NORM_RATIO_BOUNDS`;
   - *committed = proven*: the blocks sum to the committed mean batch sketch, which is the mean
     of the listed per-batch sketches (all of them, up to ``MAX_BATCHES``), and those are the
     sketches the miner's Train answer reported (the validator recomputed some, chosen after
     the answer arrived), batch for batch;
   - *weight = samples*: the averaging weight the sender declared on the wire is its committed
     sample count, at most ``batches x batch_size``.

Bounds (what this does not catch). A sender that lies only on blocks outside every auditing
reducer's shard is caught only in rounds where its lie lands in one; a null-space vector below
the norm bound (``|v| < 0.83 |g|`` with :data:`NORM_RATIO_BOUNDS`) passes; batches trained
after the validator's last Train answer are committed but in no Train answer (at most
:data:`MAX_UNPROVEN_FRACTION` of the batches a Train answer can carry), and beyond
``MAX_BATCHES`` batches the tail's sketches are not listed (Train cannot carry them either: its
trust model). Robust aggregation (``--averaging.clip_factor``) bounds what a sender that passes
can move.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgpack
import numpy as np
import torch

from template.projection import CHUNK, SpanProjection, span_results
from template.proof import SKETCH_DIMS

COMMIT_BLOCKS = 32
"""Fixed ranges per commitment. More blocks audit a smaller shard (a reducer checks only blocks
wholly inside its shard, so groups of up to ~COMMIT_BLOCKS/2 members leave every reducer one);
each block costs ``dims`` floats in the gathered metadata."""
COMMITMENT_VERSION = 1
NORM_RATIO_BOUNDS = (0.75, 1.3)
"""Allowed ``|delivered| / |committed sketch|`` over the audited blocks. Honest gradients of the
tiny preset measured 0.95-1.03 over a shard (single blocks 0.92-1.13; 8-bit parts 0.86-0.93,
the codec shrinks small values); a vector hidden from the sketch must stay under ``0.83 |g|``
to pass (``sqrt(1 + a^2) <= 1.3``)."""
MAX_UNPROVEN_FRACTION = 0.5
"""Most of a commitment's batches that may lie beyond the validator's last Train answer."""
SUM_TOLERANCE = 1e-4
"""Relative error allowed between the blocks' sum and the mean of the batch sketches, and between
committed and Train-reported batch sketches (float32 rounding only)."""
_BLOCK_TOLERANCE = {"none": 1e-3, "fp16": 1e-2, "8bit": 0.8}


def block_tolerance(compression: str) -> float:
    """Relative sketch error allowed on an audited block: the wire's rounding, not a lie.

    Honest parts measured (tiny preset): float32 ~4e-6, fp16 2-3e-4, 8-bit 0.52-0.59 (uniform
    8-bit loses about half of a gradient's small values), so under ``8bit`` only gross lies
    (a sign flip, a scale of 2x or more, noise as large as the gradient) are visible here.
    """
    return _BLOCK_TOLERANCE.get(compression, max(_BLOCK_TOLERANCE.values()))


def block_ranges(total: int, blocks: int = COMMIT_BLOCKS) -> list[tuple[int, int]]:
    """``blocks`` (or fewer) contiguous ``[start, end)`` ranges covering ``range(total)``, with
    boundaries on projection chunks (so each block's sketch is a sum of whole chunks)."""
    if total <= 0:
        return []
    chunks = -(-total // CHUNK)
    per = -(-chunks // blocks) * CHUNK
    return [(start, min(start + per, total)) for start in range(0, total, per)]


class CommitmentError(ValueError):
    """A gathered commitment that is not one (wrong type, shape, version, non-finite values)."""


@dataclass(frozen=True)
class Commitment:
    """What a miner promises to send in one round (see the module docstring)."""

    seed: int
    samples: int
    batches: int
    """Batches the sent vector is the mean gradient of."""
    mean_sketch: np.ndarray
    """``(dims,)`` float32: mean of the per-batch sketches of all ``batches``."""
    blocks: np.ndarray
    """``(len(block_ranges(total)), dims)`` float32: sketch of each block of the sent vector."""
    batch_sketches: np.ndarray
    """``(min(batches, max_batches), dims)`` float32: the first per-batch sketches."""

    def to_wire(self) -> dict[str, object]:
        """Plain msgpack-able value for ``SwarmAverager.average(gather=...)``."""
        return {"v": COMMITMENT_VERSION, "seed": int(self.seed), "samples": int(self.samples),
                "count": int(self.batches), "dims": int(self.blocks.shape[1]),
                "mean": self.mean_sketch.astype("<f4").tobytes(),
                "blocks": self.blocks.astype("<f4").tobytes(),
                "batches": self.batch_sketches.astype("<f4").tobytes()}

    def to_bytes(self) -> bytes:
        return msgpack.packb(self.to_wire(), use_bin_type=True)

    def digest(self) -> bytes:
        """What the miner gathers to its group before the round (32 bytes)."""
        return hashlib.sha256(self.to_bytes()).digest()

    def to_text(self) -> str:
        """For the ``AllReduce.commitment`` field (base64)."""
        return base64.b64encode(self.to_bytes()).decode()

    @classmethod
    def from_text(cls, text: object, *, digest: object, dims: int, num_blocks: int,
                  max_batches: int) -> Commitment:
        """Parse an ``AllReduce.commitment`` that must hash to the gathered ``digest``."""
        if not isinstance(text, str) or not text:
            raise CommitmentError("no commitment in the AllReduce answer")
        try:
            raw = base64.b64decode(text, validate=True)
        except ValueError as err:
            raise CommitmentError(f"commitment is not base64: {err}") from None
        if not isinstance(digest, bytes) or hashlib.sha256(raw).digest() != digest:
            raise CommitmentError("commitment does not hash to what it gathered before the round")
        try:
            data = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except (ValueError, TypeError, msgpack.UnpackException) as err:
            raise CommitmentError(f"commitment is not msgpack: {err}") from None
        return cls.from_wire(data, dims=dims, num_blocks=num_blocks, max_batches=max_batches)

    @classmethod
    def from_wire(cls, data: object, *, dims: int, num_blocks: int,
                  max_batches: int) -> Commitment:
        """Parse a groupmate's gathered value; raises :class:`CommitmentError`."""
        if not isinstance(data, Mapping):
            raise CommitmentError(f"commitment must be a map, got {type(data).__name__}")
        if data.get("v") != COMMITMENT_VERSION:
            raise CommitmentError(f"commitment version {data.get('v')!r} != {COMMITMENT_VERSION}")
        seed, samples, got_dims = data.get("seed"), data.get("samples"), data.get("dims")
        count = data.get("count")
        for name, value in (("seed", seed), ("samples", samples), ("dims", got_dims),
                            ("count", count)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise CommitmentError(f"commitment {name} must be a non-negative int")
        if got_dims != dims:
            raise CommitmentError(f"commitment has {got_dims} dims, expected {dims}")
        mean = _floats(data.get("mean"), "mean", dims)
        blocks = _floats(data.get("blocks"), "blocks", dims)
        batches = _floats(data.get("batches"), "batches", dims)
        if mean.shape[0] != 1:
            raise CommitmentError("commitment mean must be one sketch")
        if blocks.shape[0] != num_blocks:
            raise CommitmentError(f"{blocks.shape[0]} block sketches, expected {num_blocks}")
        if not count >= 1 or batches.shape[0] != min(count, max_batches):
            raise CommitmentError(f"{batches.shape[0]} batch sketches for {count} batches "
                                  f"(expected min(count, {max_batches}), count >= 1)")
        return cls(seed=seed, samples=samples, batches=count, mean_sketch=mean[0],
                   blocks=blocks, batch_sketches=batches)


def gather_digest(commitment: Commitment) -> dict[str, object]:
    """A miner's ``gather=`` value: the digest of its commitment."""
    return {"v": COMMITMENT_VERSION, "digest": commitment.digest()}


def gathered_digest(value: object) -> bytes | None:
    """The digest in a member's gathered value (None when it is not one)."""
    digest = value.get("digest") if isinstance(value, Mapping) else None
    return digest if isinstance(digest, bytes) and len(digest) == 32 else None


def audit_gather(seed: int) -> dict[str, object]:
    """An auditing peer's ``gather=`` value: tells its own averaging process the epoch's seed."""
    return {"v": COMMITMENT_VERSION, "audit_seed": int(seed)}


def _floats(raw: object, name: str, dims: int) -> np.ndarray:
    if not isinstance(raw, bytes) or len(raw) % (4 * dims):
        raise CommitmentError(f"commitment {name} must be bytes of float32 rows of {dims}")
    values = np.frombuffer(raw, dtype="<f4").reshape(-1, dims)
    if not np.isfinite(values).all():
        raise CommitmentError(f"commitment {name} holds non-finite values")
    return values


def _pieces(tensors: Sequence[torch.Tensor], start: int, end: int):
    """``(offset, values)`` of the flattened concatenation of ``tensors`` within [start, end)."""
    offset = 0
    for tensor in tensors:
        n = tensor.numel()
        lo, hi = max(start, offset), min(end, offset + n)
        if lo < hi:
            yield lo, tensor.detach().reshape(-1)[lo - offset : hi - offset]
        offset += n


def commit(tensors: Sequence[torch.Tensor], *, seed: int, samples: int,
           batch_sketches: Sequence[Sequence[float]], dims: int,
           max_batches: int) -> Commitment:
    """The commitment to sending ``tensors`` (the averager's buffers, in order) in a round.

    ``batch_sketches`` are all of the epoch's per-batch sketches (the ledger's, as Train
    reports them), of which the first ``max_batches`` are listed
    (:data:`template.protocol.MAX_BATCHES`, what a Train answer carries); ``seed`` is the
    epoch's :func:`template.proof.sketch_seed`. One pass over the values. (This module does
    not import the protocol: hivemind_utils imports it, and bittensor's import takes over
    logging.)
    """
    sketches = np.asarray(batch_sketches, dtype=np.float64).reshape(-1, dims)
    if not len(sketches):
        raise ValueError("a commitment needs at least one trained batch")
    total = sum(t.numel() for t in tensors)
    blocks, _ = sketch_blocks(tensors, range(len(block_ranges(total))), seed=seed, dims=dims)
    return Commitment(seed=seed, samples=int(samples), batches=len(sketches),
                      mean_sketch=sketches.mean(axis=0).astype(np.float32),
                      blocks=blocks.astype(np.float32).reshape(-1, dims),
                      batch_sketches=sketches[:max_batches].astype(np.float32))


def sketch_blocks(tensors: Sequence[torch.Tensor], indices: Iterable[int], *, seed: int,
                  dims: int) -> tuple[np.ndarray, float]:
    """``(len(indices), dims)`` sketches of the blocks ``indices`` of the flattened
    concatenation of ``tensors``, and their total sum of squares (float64)."""
    ranges = block_ranges(sum(t.numel() for t in tensors))
    spans = []
    for index in indices:
        start, end = ranges[index]
        span = SpanProjection(seed=seed, dims=dims)
        span.add(torch.cat([v.float().cpu() for _, v in _pieces(tensors, start, end)]),
                 offset=start)  # one contiguous block: whole chunks, no padded pieces
        spans.append(span)
    if not spans:
        return np.zeros((0, dims)), 0.0
    return span_results(spans).numpy(), sum(s.squared_norm for s in spans)


# ------------------------------------------------------------------ observing (a reducer)


@dataclass(frozen=True)
class DeliveredBlocks:
    """What one sender delivered on the blocks wholly inside one reducer's shard."""

    indices: tuple[int, ...]
    """Block indices (into :func:`block_ranges`) that were audited."""
    sketches: tuple[tuple[float, ...], ...]
    """Sketch of the delivered values of each audited block (same order)."""
    squared_norm: float
    """Sum of squares of the delivered values on those blocks."""
    complete: bool
    """Every value of those blocks arrived (a banned or failed sender delivers less)."""


class ShardAudit:
    """Projects what each sender delivers on one reducer's shard, block by block (streaming:
    ``BASES x CHUNK`` float64 per sender and audited block, whatever the shard's size).

    :param shard: ``[start, end)`` of this reducer's shard in the flattened vector.
    :param total: length of the flattened vector.
    :param seeds: each sender's commitment seed (senders without a readable commitment are
      left out: they fail the judgement anyway).
    """

    def __init__(self, *, shard: tuple[int, int], total: int, seeds: Mapping[str, int],
                 dims: int = SKETCH_DIMS):
        start, end = shard
        self.blocks = [(i, lo, hi) for i, (lo, hi) in enumerate(block_ranges(total))
                       if start <= lo and hi <= end]
        self._spans = {sender: [SpanProjection(seed=seed, dims=dims) for _ in self.blocks]
                       for sender, seed in seeds.items()}
        self._values = dict.fromkeys(seeds, 0)
        self.weights: dict[str, float] = {}
        """The weight each sender declared with its parts (the latest part's)."""

    def observe(self, sender: str, values: torch.Tensor, *, offset: int,
                weight: float | None = None) -> None:
        """Values ``sender`` delivered at ``[offset, offset + len)`` of the flattened vector."""
        spans = self._spans.get(sender)
        if spans is None:
            return
        if weight is not None:
            self.weights[sender] = float(weight)
        flat = values.reshape(-1)
        end = offset + flat.numel()
        for span, (_, lo, hi) in zip(spans, self.blocks, strict=True):
            a, b = max(lo, offset), min(hi, end)
            if a < b:
                span.add(flat[a - offset : b - offset], offset=a)
                self._values[sender] += b - a

    def delivered(self) -> dict[str, DeliveredBlocks]:
        expected = sum(hi - lo for _, lo, hi in self.blocks)
        return {
            sender: DeliveredBlocks(
                indices=tuple(i for i, _, _ in self.blocks),
                sketches=tuple(map(tuple, span_results(spans).tolist())) if spans else (),
                squared_norm=sum(s.squared_norm for s in spans),
                complete=self._values[sender] == expected)
            for sender, spans in self._spans.items()}


# ------------------------------------------------------------------ judging (pure)


@dataclass(frozen=True)
class ContributionVerdict:
    """One sender's contribution, judged; ``problem`` None means it passed every check."""

    problem: str | None
    blocks_audited: int = 0
    block_error: float = 0.0
    """Largest relative sketch error over the audited blocks."""
    norm_ratio: float | None = None
    """``|delivered| / |committed sketch|`` over the audited blocks."""

    @property
    def ok(self) -> bool:
        return self.problem is None


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    scale = max(float(np.linalg.norm(b)), 1e-30)
    return float(np.linalg.norm(a - b)) / scale


def judge_contribution(
    commitment: Commitment | None,
    delivered: DeliveredBlocks | None,
    *,
    seed: int,
    declared_weight: float,
    batch_size: int,
    proven_sketches: Sequence[Sequence[float]] | None,
    block_tol: float,
    norm_bounds: tuple[float, float] = NORM_RATIO_BOUNDS,
) -> ContributionVerdict:
    """Every check of the module docstring on one sender; the first failure is the problem.

    ``proven_sketches``: the per-batch sketches of the sender's latest verified Train answer
    for this epoch (None: it was not verified this epoch, which fails). ``delivered`` None: the
    reducer saw nothing of it (only the commitment's own consistency is judged then).
    """
    if commitment is None:
        return ContributionVerdict("no readable contribution commitment in the round")
    if commitment.seed != seed:
        return ContributionVerdict(f"commitment seed {commitment.seed} is not the epoch's")
    if not math.isclose(declared_weight, commitment.samples, rel_tol=1e-6):
        return ContributionVerdict(f"declared weight {declared_weight:g} != committed samples "
                                   f"{commitment.samples}")
    if commitment.samples > commitment.batches * batch_size:
        return ContributionVerdict(f"{commitment.samples} samples in {commitment.batches} "
                                   f"batches of at most {batch_size}")
    mean = commitment.mean_sketch.astype(np.float64)
    if _relative(commitment.blocks.astype(np.float64).sum(axis=0), mean) > SUM_TOLERANCE:
        return ContributionVerdict("committed blocks are not its mean batch sketch")
    listed = commitment.batch_sketches.astype(np.float64)
    if len(listed) == commitment.batches and _relative(listed.mean(axis=0), mean) > SUM_TOLERANCE:
        return ContributionVerdict("committed mean is not the mean of its batch sketches")
    if proven_sketches is None or not len(proven_sketches):
        return ContributionVerdict("no verified Train answer for this epoch")
    proven = np.asarray(proven_sketches, dtype=np.float64)
    if len(proven) > len(listed) or proven.shape[1] != listed.shape[1]:
        return ContributionVerdict(f"committed {commitment.batches} batches, Train proved "
                                   f"{len(proven)}")
    if 1 - len(proven) / len(listed) > MAX_UNPROVEN_FRACTION:
        return ContributionVerdict(f"only {len(proven)} of {len(listed)} committed batches "
                                   "were in a verified Train answer")
    committed = listed[: len(proven)]
    errors = np.linalg.norm(committed - proven, axis=1) / np.maximum(
        np.linalg.norm(proven, axis=1), 1e-30)
    if float(errors.max()) > SUM_TOLERANCE:
        return ContributionVerdict("committed batch sketches differ from its Train answer")
    if delivered is None or not delivered.indices:
        return ContributionVerdict(None)
    if not delivered.complete:
        return ContributionVerdict("its parts on the audited blocks did not all arrive",
                                   blocks_audited=len(delivered.indices))
    observed = np.asarray(delivered.sketches, dtype=np.float64)
    expected = commitment.blocks[list(delivered.indices)].astype(np.float64)
    worst = max(_relative(o, e) for o, e in zip(observed, expected, strict=True))
    sketch_norm = float(np.linalg.norm(expected))
    ratio = math.sqrt(delivered.squared_norm) / sketch_norm if sketch_norm > 0 else math.inf
    if sketch_norm == 0 and delivered.squared_norm == 0:
        ratio = 1.0
    verdict = {"blocks_audited": len(delivered.indices), "block_error": worst,
               "norm_ratio": ratio}
    if worst > block_tol:
        return ContributionVerdict(f"delivered values differ from its commitment (relative "
                                   f"sketch error {worst:.3g} > {block_tol:g})", **verdict)
    if not norm_bounds[0] <= ratio <= norm_bounds[1]:
        return ContributionVerdict(f"delivered norm is {ratio:.3g}x its committed sketch's "
                                   "(a vector hidden from the sketch)", **verdict)
    return ContributionVerdict(None, **verdict)
