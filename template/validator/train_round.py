"""A Train round: ask a sample of miners for their work at epoch ``e`` and verify it.

    verdicts = await train_round(dendrite=dendrite, graph=graph, uids=sample, ctx=ctx,
                                 rng=rng, timeout=cfg.validator.query_timeout)

Queries go out concurrently (one Dendrite call per uid, each with its own nonce); each answer is
checked in three steps and every failure becomes a typed :class:`~template.protocol.Rejection`
in a zero-score :class:`~template.validator.verify.TrainVerdict` (nothing raises for bad input):

1. transport and schema (:func:`template.protocol.validate_train_response`: status, timeout,
   garbage, oversize, NaN, echoed epoch/nonce/sketch seed);
2. the claim against the uid's assignment (:func:`template.validator.verify.check_claim`);
3. recomputation of randomly chosen batches (:func:`template.validator.verify.verify_train`).

A claim the validator cannot check because its own shard is damaged (``ShardError``) gets a
``not_verifiable`` verdict, logged as one line naming the file and the rebuild command; the
validator records nothing for it (see ``Validator.verify``), so the miner is not blamed.

Verification runs in one worker thread (it is compute: forward/backward of the checked batches)
so the event loop that owns the Dendrite stays responsive.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import bittensor as bt
import torch

from template.chain.base import Metagraph
from template.data import ShardError, assign_pages, shard_problem
from template.protocol import (
    MAX_BATCHES,
    MAX_NONCE,
    Reason,
    Rejection,
    Train,
    TrainLimits,
    validate_train_response,
)
from template.validator.verify import (
    TrainClaim,
    TrainVerdict,
    VerifyThresholds,
    rejected_verdict,
    verify_train,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainContext:
    """Everything needed to verify claims about one epoch (built once per epoch)."""

    run_id: str
    epoch: int
    model: torch.nn.Module
    """The validator's copy of the model, holding theta_epoch."""
    reference_fingerprint: tuple[float, ...]
    """Fingerprint of theta_epoch (the canonical checkpoint's manifest, or built from seed)."""
    sketch_seed: int
    tokenizer: Any
    source: Any
    """A :class:`template.data.PageSource` (``num_pages``, ``pages(indices)``)."""
    pages_per_epoch: int
    seq_len: int
    batch_size: int
    thresholds: VerifyThresholds
    bindings: Mapping[int, str]
    """``{uid: PeerID}`` from the chain (``Chain.peer_bindings``)."""
    precision: str = "fp32"
    sketch_dims: int | None = None


def sample_uids(graph: Metagraph, *, count: int, rng: random.Random,
                exclude: Sequence[int] = ()) -> list[int]:
    """Up to ``count`` serving uids (Axon announced), chosen uniformly, sorted."""
    pool = [n.uid for n in graph.neurons if n.is_serving and n.uid not in set(exclude)]
    return sorted(rng.sample(pool, k=min(count, len(pool))))


async def query_train(dendrite: bt.Dendrite, targets: Mapping[int, bt.AxonInfo], *,
                      epoch: int, nonces: Mapping[int, int], timeout: float,
                      max_batches: int = MAX_BATCHES) -> dict[int, Train]:
    """One concurrent `Train` call per uid; failed calls come back with their status set."""
    uids = sorted(targets)
    calls = [dendrite.call(targets[uid], Train(epoch=epoch, nonce=nonces[uid],
                                               max_batches=max_batches),
                           timeout=timeout, deserialize=False) for uid in uids]
    replies = await asyncio.gather(*calls, return_exceptions=True)
    out: dict[int, Train] = {}
    for uid, reply in zip(uids, replies, strict=True):
        if isinstance(reply, BaseException):
            # dendrite.call maps network errors to status codes; anything else is logged and
            # turned into an unreachable reply (a missing answer, never a crash).
            logger.warning("Train to uid %d raised %s: %s", uid, type(reply).__name__, reply)
            failed = Train(epoch=epoch, nonce=nonces[uid])
            failed.dendrite.status_code, failed.dendrite.status_message = 503, repr(reply)[:200]
            out[uid] = failed
        else:
            out[uid] = reply  # type: ignore[assignment]
    return out


def judge_train_response(uid: int, reply: Train, *, ctx: TrainContext, nonce: int,
                         rng: random.Random) -> TrainVerdict:
    """Verdict for one reply (see the module docstring); never raises for bad input."""
    limits = TrainLimits(sketch_dims=ctx.sketch_dims,
                         fingerprint_dims=len(ctx.reference_fingerprint),
                         max_pages=ctx.pages_per_epoch)
    rejection = validate_train_response(reply, epoch=ctx.epoch, nonce=nonce, limits=limits,
                                        sketch_seed=ctx.sketch_seed)
    if rejection is not None:
        return rejected_verdict(uid, rejection)
    if uid not in ctx.bindings:  # work that cannot be tied to an all-reduce peer is not paid
        return rejected_verdict(uid, Rejection(Reason.UNVERIFIED, "no PeerID bound on chain"))
    try:
        pages = assign_pages(run_id=ctx.run_id, epoch=ctx.epoch, miner=uid,
                             pages_per_miner=ctx.pages_per_epoch,
                             dataset_size=ctx.source.num_pages)
    except ValueError as err:  # the dataset has no pages for this uid: nobody can train them
        return rejected_verdict(uid, Rejection(Reason.INCONSISTENT, str(err)[:200]))
    claim = TrainClaim.from_synapse(reply)
    if list(claim.pages) != pages:  # checked again in verify; skip reading texts for it
        return rejected_verdict(uid, Rejection(Reason.INCONSISTENT,
                                               "pages differ from the uid's assignment"))
    try:
        texts = ctx.source.pages(pages)
    except ShardError as err:  # the validator's shard is damaged: the miner is not to blame
        logger.error("cannot verify uid %d: %s", uid, shard_problem(err))
        return rejected_verdict(uid, Rejection(Reason.NOT_VERIFIABLE, str(err)[:200]))
    return verify_train(
        claim, uid=uid, epoch=ctx.epoch, expected_pages=pages, texts=texts,
        tokenizer=ctx.tokenizer, model=ctx.model, seed=ctx.sketch_seed, seq_len=ctx.seq_len,
        batch_size=ctx.batch_size, rng=rng, thresholds=ctx.thresholds,
        reference_fingerprint=ctx.reference_fingerprint,
        expected_peer_id=ctx.bindings.get(uid), precision=ctx.precision)


def _judge_all(replies: Mapping[int, Train], nonces: Mapping[int, int], ctx: TrainContext,
               rng: random.Random) -> dict[int, TrainVerdict]:
    return {uid: judge_train_response(uid, replies[uid], ctx=ctx, nonce=nonces[uid], rng=rng)
            for uid in sorted(replies)}


async def train_round(*, dendrite: bt.Dendrite, graph: Metagraph, uids: Sequence[int],
                      ctx: TrainContext, rng: random.Random, timeout: float,
                      ) -> dict[int, TrainVerdict]:
    """Query ``uids`` with `Train` for ``ctx.epoch`` and verify every reply.

    ``rng`` draws the nonces and, after the replies arrived, the batches to recompute.
    ``timeout``: seconds per query (``--validator.query_timeout``); a miner slower than that
    scores zero for the round ("timeout" in the log).
    """
    targets = {}
    verdicts: dict[int, TrainVerdict] = {}
    for uid in uids:
        neuron = graph.neuron(uid)
        if neuron is None or not neuron.is_serving:
            verdicts[uid] = rejected_verdict(uid, Rejection(Reason.UNREACHABLE, "no axon"))
        else:
            targets[uid] = graph.axon(uid)
    nonces = {uid: rng.randrange(MAX_NONCE) for uid in targets}
    replies = await query_train(dendrite, targets, epoch=ctx.epoch, nonces=nonces,
                                timeout=timeout)
    loop = asyncio.get_running_loop()
    verdicts.update(await loop.run_in_executor(None, _judge_all, replies, nonces, ctx, rng))
    for uid, verdict in sorted(verdicts.items()):
        if verdict.ok:
            logger.info("Train uid %d: gradient %.2f, verified %.0f/%d samples (%.2f s)", uid,
                        verdict.gradient, verdict.verified_samples, verdict.claimed_samples,
                        verdict.seconds)
        elif verdict.verifiable:  # a not-verifiable one was logged where it was found
            logger.info("Train uid %d rejected: %s", uid, verdict.rejection)
    return verdicts
