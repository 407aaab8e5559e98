"""An AllReduce round: trigger it, take part as an auxiliary peer, judge what came out.

    if ready_for_round(state, min_peers=.., idle_seconds=.., patience=..):
        outcome = await allreduce_round(dendrite=.., targets=.., bindings=.., averager=aux, ...)

Flow of one attempt:

1. The validator sends `AllReduce(epoch, round_id, group settings, learning_rate)` to every
   participating miner (uids whose chain-bound PeerID is live in the DHT at the global epoch)
   and, at the same time, runs its own auxiliary :meth:`SwarmAverager.average` (weight 0, no
   gradient of its own) so that it lands in the same group and reduces a shard: it then
   *observes* every sender's upload (bytes, seconds) instead of trusting self-reports.
2. Each miner answers when its round is over: success, its PeerID and its post-step parameter
   fingerprint. The validator waits (bounded) for the canonical checkpoint ``epoch-(e+1)``.
3. :func:`judge_contributions` (pure) holds what each miner delivered on the validator's shard
   against the commitment it gathered and its verified Train answer
   (:mod:`template.contribution`); :func:`judge_round` (pure) decides who completed, maps
   observed transfers PeerID -> uid through the chain binding only, picks the reference
   fingerprint (canonical, checked against the median of the reports), the drift of every
   completer and who tampered with its contribution.

4. :func:`judge_reductions` (pure) holds every reducer's report, fetched by the validator's
   peer, against the members' commitments, and counts the members' refusals: a member refuses
   a round whose result on some reducer's shard is not the average of what that reducer
   received, applies nothing and names it in ``AllReduce.accused`` (:mod:`template.reduction`).

A round in which no miner completed is retried (new round id) up to ``retries`` times; a round
in which some completed is never retried (those miners already stepped to ``e+1``; the others
resync from the canonical checkpoint), so no miner is asked to step twice. A round in which only
gated reducers completed counts as one nobody completed: the retry leaves the gated out (the
members turn them away too), their pushes of ``e+1`` are not trusted, and they score 0 for the
epoch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import statistics
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import bittensor as bt

from hivemind_utils.round_stats import AveragingResult
from hivemind_utils.swarm_state import SwarmState, epoch_work_done
from template.config import AveragingConfig
from template.contribution import (
    Commitment,
    CommitmentError,
    ContributionVerdict,
    block_ranges,
    gathered_digest,
    judge_contribution,
)
from template.model import fingerprint_distance
from template.proof import SKETCH_DIMS
from template.protocol import (
    MAX_BATCHES,
    AllReduce,
    AllReduceLimits,
    Reason,
    Rejection,
    validate_allreduce_response,
)
from template.reduction import judge_reports
from template.validator.scoring import PeerTransfer

logger = logging.getLogger(__name__)

MIN_MAJORITY = 3
"""Reports needed before the median of reported fingerprints may overrule the canonical one."""
DENDRITE_MARGIN = 15.0
"""Seconds added to ``matchmaking_time + allreduce_timeout`` for the AllReduce Dendrite call:
the miner first finishes its current batch, then matchmakes, averages, steps and answers."""


# ------------------------------------------------------------------ tolerance

# ------------------------------------------------------------------ trigger


def ready_for_round(state: SwarmState, *, min_peers: int, idle_seconds: float,
                    patience: float, straggler_wait: float = 30.0) -> bool:
    """Whether to start the round of ``state.global_epoch`` now.

    Needs at least ``min_peers`` live peers at the global epoch. Then ready when they
    accumulated the target batch size, or every live peer finished the epoch's work (a peer
    still at an earlier epoch is waited for up to ``straggler_wait`` seconds, see
    :func:`~hivemind_utils.swarm_state.epoch_work_done`), or some samples exist and the total
    has not grown for ``patience`` seconds (``idle_seconds``): a swarm too small for the target
    would otherwise wait forever.
    """
    here = [p for p in state.peers if p.epoch == state.global_epoch]
    if len(here) < min_peers:
        return False
    if state.samples_accumulated >= state.target_batch_size:
        return True
    if state.samples_accumulated > 0 and epoch_work_done(
            state, min_peers=min_peers, waited=idle_seconds, straggler_wait=straggler_wait):
        return True
    return state.samples_accumulated > 0 and idle_seconds >= patience


def live_participants(state: SwarmState, bindings: Mapping[int, str],
                      serving: Sequence[int]) -> list[int]:
    """Uids whose bound PeerID has a live DHT record at the global epoch and an Axon."""
    live = {p.peer_id for p in state.peers if p.epoch == state.global_epoch}
    return sorted(uid for uid, peer in bindings.items() if peer in live and uid in set(serving))


# ------------------------------------------------------------------ judging (pure)


@dataclass(frozen=True)
class AllReduceOutcome:
    epoch: int
    round_id: str
    participants: tuple[int, ...]
    completed: tuple[int, ...] = ()
    failures: dict[int, Rejection] = field(default_factory=dict)
    transfers: dict[int, PeerTransfer | None] = field(default_factory=dict)
    drift: dict[int, float | None] = field(default_factory=dict)
    observed: bool = False
    """The validator's auxiliary peer finished the round in the miners' group."""
    reference: str = "none"
    """``canonical``, ``median`` (canonical missing or out of line with the majority), ``none``."""
    reference_fingerprint: tuple[float, ...] = ()
    canonical_tag: str | None = None
    """The signed checkpoint of ``e+1`` that matched the reference (None: none did)."""
    attempts: int = 1
    aux_error: str | None = None
    contributions: dict[int, ContributionVerdict] = field(default_factory=dict)
    """Every member's contribution, as judged from the validator's shard."""
    reductions: dict[int, str] = field(default_factory=dict)
    """Members gated for the results they returned as reducers (:func:`judge_reductions`),
    over every attempt of the epoch's round."""

    @property
    def tampered(self) -> dict[int, str]:
        """Uids whose contribution or reduction failed its judgement -> the problem."""
        out = {u: v.problem for u, v in self.contributions.items() if v.problem is not None}
        for uid, why in self.reductions.items():
            out.setdefault(uid, f"reducer: {why}")
        return out

    @property
    def consensus_checked(self) -> bool:
        return bool(self.completed) and self.reference != "none"


@dataclass(frozen=True)
class Canonical:
    """One checkpoint of epoch ``e+1`` whose push is signed by a chain-bound pusher
    (:func:`template.attestation.attest`); the forged ones among them are found by judging."""

    fingerprint: list[float]
    signer: str | None = None
    """The PeerID bound to the hotkey that signed the push: who is blamed if it disagrees."""
    tag: str = ""


def median_fingerprint(reports: Sequence[Sequence[float]]) -> list[float]:
    """Coordinate-wise median of fingerprints of equal length (robust to a minority of liars)."""
    return [statistics.median(column) for column in zip(*reports, strict=True)]


def choose_reference(candidates: Sequence[Sequence[float]],
                     reports: Mapping[int, Sequence[float]], *,
                     tolerance: float) -> tuple[list[float] | None, str, int | None]:
    """The fingerprint completers are measured against, where it came from, and which of the
    epoch's signed checkpoints (``candidates``, in store order) it is, if any.

    A checkpoint is pushed by ONE miner, so with at least :data:`MIN_MAJORITY` reports the
    reference is the first candidate that agrees with their median, else the median itself.
    Fewer reports: the first candidate; without one, no reference.
    """
    median = median_fingerprint(list(reports.values())) if reports else None
    if median is None or len(reports) < MIN_MAJORITY:
        return (list(candidates[0]), "canonical", 0) if candidates else (None, "none", None)
    for index, candidate in enumerate(candidates):
        if _distance(candidate, median) <= tolerance:
            return list(candidate), "canonical", index
    if candidates:
        logger.error("no signed checkpoint agrees with the median of %d reports (distances "
                     "%s > %g): using the median", len(reports),
                     [round(_distance(c, median), 6) for c in candidates], tolerance)
    return median, "median", None


def _distance(a: Sequence[float] | None, b: Sequence[float] | None) -> float:
    if a is None or b is None or len(a) != len(b):
        return float("inf")
    return fingerprint_distance(list(a), list(b))


@dataclass(frozen=True)
class ContributionRules:
    """What :func:`judge_contributions` needs besides the round."""

    seed: int
    """The epoch's sketch seed (:func:`template.proof.sketch_seed`)."""
    batch_size: int
    block_tolerance: float
    """:func:`template.contribution.block_tolerance` of ``--averaging.compression``."""
    num_values: int
    """Values in the averaged vector (the model's parameter count)."""
    proofs: Mapping[int, Sequence[Sequence[float]]]
    """Per uid, the per-batch sketches of its latest verified Train answer for the epoch."""


def judge_contributions(aux: AveragingResult | None, bindings: Mapping[int, str],
                        participants: Sequence[int], replies: Mapping[int, AllReduce],
                        rules: ContributionRules) -> dict[int, ContributionVerdict]:
    """Each participant in the validator's group, judged on its commitment and delivery.

    Only members of the group the validator's peer completed are judged (a uid that was not in
    it delivered nothing and is scored as missing elsewhere); PeerIDs map to uids through the
    chain binding only. The commitment comes from the uid's AllReduce answer and must hash to
    the digest the member gathered before the round.
    """
    if aux is None or not aux.ok:
        return {}
    out: dict[int, ContributionVerdict] = {}
    for uid, commitment in member_commitments(aux, bindings, participants, replies,
                                              num_values=rules.num_values).items():
        if isinstance(commitment, CommitmentError):
            out[uid] = ContributionVerdict(f"commitment rejected: {commitment}")
            continue
        peer = bindings[uid]
        stats = aux.senders.get(peer)
        out[uid] = judge_contribution(
            commitment, aux.delivered.get(peer), seed=rules.seed,
            declared_weight=stats.weight if stats is not None and stats.parts else
            float(commitment.samples),
            batch_size=rules.batch_size, proven_sketches=rules.proofs.get(uid),
            block_tol=rules.block_tolerance)
    return out


def member_commitments(aux: AveragingResult, bindings: Mapping[int, str],
                       participants: Sequence[int], replies: Mapping[int, AllReduce], *,
                       num_values: int) -> dict[int, Commitment | CommitmentError]:
    """Each member of the validator's group (bound uid) -> the commitment of its AllReduce
    answer, checked against the digest it gathered before the round, or why it is not one."""
    members = set(aux.participants) - set(aux.auxiliaries)
    num_blocks = len(block_ranges(num_values))
    out: dict[int, Commitment | CommitmentError] = {}
    for uid in participants:
        peer = bindings.get(uid)
        if peer is None or peer not in members:
            continue
        try:
            out[uid] = Commitment.from_text(
                getattr(replies.get(uid), "commitment", None),
                digest=gathered_digest(aux.gathered.get(peer)), dims=SKETCH_DIMS,
                num_blocks=num_blocks, max_batches=MAX_BATCHES)
        except CommitmentError as err:
            out[uid] = err
    return out


def judge_reductions(aux: AveragingResult | None, bindings: Mapping[int, str],
                     participants: Sequence[int], replies: Mapping[int, AllReduce],
                     rules: ContributionRules,
                     contributions: Mapping[int, ContributionVerdict]) -> dict[int, str]:
    """Members gated for the results they returned as reducers (:mod:`template.reduction`).

    Holds the reducer reports the validator's peer fetched against the members' commitments
    and counts the members' refusals (``AllReduce.accused``): see
    :func:`template.reduction.judge_reports`. Only answers from a uid's bound PeerID count, and
    a member whose own delivery failed the validator's audit explains one disputed report.
    """
    uid_of = {bindings[u]: u for u in participants if u in bindings}
    accusations = {bindings[u]: list(r.accused) for u, r in replies.items()
                   if u in bindings and u in uid_of.values() and r.peer_id == bindings[u]}
    commitments, members, reports = {}, list(accusations), {}
    if aux is not None and aux.ok:
        members, reports = list(aux.participants), aux.reports
        for uid, commitment in member_commitments(aux, bindings, participants, replies,
                                                  num_values=rules.num_values).items():
            if isinstance(commitment, Commitment):
                commitments[bindings[uid]] = commitment
    tampered = [bindings[u] for u, v in contributions.items() if not v.ok]
    gated = judge_reports(reports, commitments, accusations,
                          members=members, tolerance=rules.block_tolerance, tampered=tampered)
    return {uid_of[p]: why for p, why in gated.items() if p in uid_of}


def judge_round(*, epoch: int, round_id: str, participants: Sequence[int],
                replies: Mapping[int, AllReduce], aux: AveragingResult | None,
                bindings: Mapping[int, str], canonicals: Sequence[Canonical] = (),
                tolerance: float, fingerprint_dims: int | None = None,
                contributions: Mapping[int, ContributionVerdict] | None = None,
                ) -> AllReduceOutcome:
    """Everything the round says about each participant (see the module docstring)."""
    failures: dict[int, Rejection] = {}
    reports: dict[int, list[float]] = {}
    limits = AllReduceLimits(fingerprint_dims=fingerprint_dims)
    in_group = set(aux.participants) if aux is not None and aux.ok else None
    for uid in participants:
        reply = replies.get(uid)
        rejection = (Rejection(Reason.UNREACHABLE, "no reply") if reply is None else
                     validate_allreduce_response(reply, epoch=epoch, round_id=round_id,
                                                 limits=limits))
        if rejection is None and reply.peer_id != bindings.get(uid):
            rejection = Rejection(Reason.UNVERIFIED, "peer_id is not this uid's bound PeerID")
        if rejection is None and in_group is not None and reply.peer_id not in in_group:
            rejection = Rejection(Reason.INCONSISTENT, "not in the group the validator joined")
        if rejection is None:
            reports[uid] = list(reply.fingerprint)
        else:
            failures[uid] = rejection
    reference, kind, index = choose_reference([c.fingerprint for c in canonicals], reports,
                                              tolerance=tolerance)
    drift: dict[int, float | None] = {}
    if reference is not None:
        drift = {uid: _distance(fp, reference) for uid, fp in reports.items()}
        _blame_signers(drift, canonicals, reference=reference, tolerance=tolerance,
                       bindings=bindings)
    return AllReduceOutcome(
        epoch=epoch, round_id=round_id, participants=tuple(sorted(participants)),
        completed=tuple(sorted(reports)), failures=failures,
        transfers=observed_transfers(aux, bindings, participants),
        drift=drift, observed=in_group is not None, reference=kind,
        reference_fingerprint=tuple(reference or ()),
        canonical_tag=None if index is None else canonicals[index].tag,
        aux_error=None if aux is None else aux.error, contributions=dict(contributions or {}))


def _blame_signers(drift: dict[int, float | None], canonicals: Sequence[Canonical], *,
                   reference: Sequence[float], tolerance: float,
                   bindings: Mapping[int, str]) -> None:
    """Whoever signed a push of weights out of line with the round is gated like a member that
    stepped wrongly: its drift becomes the push's distance. Unsigned pushes never get here
    (they cannot be attributed, and no reader takes them)."""
    uid_of = {peer: uid for uid, peer in bindings.items()}
    for canonical in canonicals:
        distance = _distance(canonical.fingerprint, reference)
        uid = uid_of.get(canonical.signer) if canonical.signer is not None else None
        if distance > tolerance and uid is not None:
            logger.error("uid %d signed %s, out of line with the round (distance %.3g)", uid,
                         canonical.tag or "a checkpoint", distance)
            drift[uid] = max(drift.get(uid) or 0.0, distance)


def observed_transfers(aux: AveragingResult | None, bindings: Mapping[int, str],
                       participants: Sequence[int]) -> dict[int, PeerTransfer | None]:
    """What the validator's own averager saw of each participant's upload, by uid.

    PeerIDs map to uids only through the chain binding: a sender that is not bound to a
    participant earns nothing, whatever it claims.
    """
    if aux is None:
        return dict.fromkeys(participants)
    failed = set(aux.failed_peers)
    out: dict[int, PeerTransfer | None] = {}
    for uid in participants:
        peer = bindings.get(uid)
        stats = aux.senders.get(peer) if peer is not None else None
        if stats is None:
            out[uid] = None
            continue
        out[uid] = PeerTransfer(bytes_received=int(stats.bytes), seconds=float(stats.seconds),
                                failed=peer in failed, banned=bool(stats.banned),
                                lag=float(stats.lag))
    return out


# ------------------------------------------------------------------ the round


async def send_allreduce(dendrite: bt.Dendrite, targets: Mapping[int, bt.AxonInfo], *,
                         request: AllReduce, timeout: float) -> dict[int, AllReduce]:
    """One concurrent `AllReduce` call per uid (a copy of ``request`` each)."""
    uids = sorted(targets)
    calls = [dendrite.call(targets[uid], request.model_copy(deep=True), timeout=timeout,
                           deserialize=False) for uid in uids]
    replies = await asyncio.gather(*calls, return_exceptions=True)
    out: dict[int, AllReduce] = {}
    for uid, reply in zip(uids, replies, strict=True):
        if isinstance(reply, BaseException):
            logger.warning("AllReduce to uid %d raised %s: %s", uid, type(reply).__name__, reply)
            continue  # judged as "no reply"
        out[uid] = reply  # type: ignore[assignment]
    return out


def allreduce_request(*, epoch: int, round_id: str, cfg: AveragingConfig,
                      learning_rate: float, expected_peers: Sequence[str] = ()) -> AllReduce:
    return AllReduce(epoch=epoch, round_id=round_id, target_group_size=cfg.target_group_size,
                     min_group_size=cfg.min_group_size, matchmaking_time=cfg.matchmaking_time,
                     allreduce_timeout=cfg.allreduce_timeout, learning_rate=learning_rate,
                     expected_peers=list(expected_peers))


async def allreduce_round(
    *,
    dendrite: bt.Dendrite,
    targets: Mapping[int, bt.AxonInfo],
    bindings: Mapping[int, str],
    average: Callable[[Sequence[str]], AveragingResult],
    canonical: Callable[[], Awaitable[Sequence[Canonical]]],
    epoch: int,
    round_id: str,
    cfg: AveragingConfig,
    learning_rate: float,
    tolerance: float,
    retries: int = 2,
    retry_delay: float = 2.0,
    fingerprint_dims: int | None = None,
    rules: Callable[[], Awaitable[ContributionRules]] | None = None,
    aux_peer: str | None = None,
) -> AllReduceOutcome:
    """Run the round of ``epoch`` among ``targets`` (see the module docstring).

    ``average(expected)`` runs the validator's auxiliary averaging (blocking; called in a
    thread) expecting the members' PeerIDs, e.g. ``lambda expected: aux.average(weight=0,
    expected=expected, ...)``. ``aux_peer``: the validator's own averaging PeerID; the request
    names it and every target's bound PeerID as the round's members, so the group forms as soon
    as they all joined (hivemind alone waits ``matchmaking_time`` for ``target_group_size``).
    ``canonical`` waits (bounded) for the signed checkpoints of ``e+1`` (``epoch-(e+1)`` and
    its candidates), empty if none.
    ``retries``: extra attempts when nobody completed ("could not find a group", every miner
    timed out); raise ``--averaging.matchmaking_time`` if rounds keep failing that way.
    ``rules``: awaited once the round is over, then every member's contribution is judged by
    them (:func:`judge_contributions`); the Train checks that fill their proofs can run
    concurrently with the round. None skips the judgement.
    """
    timeout = cfg.matchmaking_time + cfg.allreduce_timeout + DENDRITE_MARGIN
    loop = asyncio.get_running_loop()
    live = dict(targets)
    gated: dict[int, str] = {}  # refused reducers: out of the epoch's later attempts
    outcome: AllReduceOutcome | None = None
    for attempt in range(retries + 1):
        rid = round_id if attempt == 0 else f"{round_id}-r{attempt}"
        members = [*(bindings[u] for u in sorted(live) if u in bindings),
                   *([aux_peer] if aux_peer else [])]
        request = allreduce_request(epoch=epoch, round_id=rid, cfg=cfg,
                                    learning_rate=learning_rate, expected_peers=members)
        aux_future = loop.run_in_executor(None, average, members)
        replies = await send_allreduce(dendrite, live, request=request, timeout=timeout)
        aux = await aux_future
        if not aux.ok:
            logger.warning("validator's auxiliary averaging failed in %s: %s", rid, aux.error)
        contributions: dict[int, ContributionVerdict] = {}
        if rules is not None:
            judged = await rules()
            contributions = judge_contributions(aux, bindings, sorted(live), replies, judged)
            for uid, why in judge_reductions(aux, bindings, sorted(live), replies, judged,
                                             contributions).items():
                logger.error("AllReduce %s: uid %d's reduction is refused: %s", rid, uid, why)
                gated.setdefault(uid, why)
        completed = any(r.success and r.epoch == epoch and r.round_id == rid and u not in gated
                        for u, r in replies.items())
        found = await canonical() if completed else ()
        untrusted = {bindings[u] for u in gated if u in bindings}
        found = [c for c in found if c.signer not in untrusted]  # a refused reducer's push
        outcome = judge_round(epoch=epoch, round_id=rid,
                              participants=sorted(live), replies=replies, aux=aux,
                              bindings=bindings, tolerance=tolerance, canonicals=found,
                              fingerprint_dims=fingerprint_dims, contributions=contributions)
        outcome = dataclasses.replace(outcome, attempts=attempt + 1, reductions=dict(gated))
        honest = [u for u in outcome.completed if u not in gated]
        if honest:
            break
        if gated:  # the members refused a reducer's result: the others average without it
            live = {u: axon for u, axon in live.items() if u not in gated}
        logger.warning("AllReduce %s: no miner completed (%s); %s", rid,
                       {u: str(r) for u, r in outcome.failures.items()},
                       "retrying" if attempt < retries else "giving up")
        if attempt >= retries or not live:
            break
        await asyncio.sleep(retry_delay)
    assert outcome is not None
    excluded = {u: Rejection(Reason.INCONSISTENT, f"its reduction was refused: {gated[u]}")
                for u in targets if u not in live}
    return dataclasses.replace(outcome, participants=tuple(sorted(targets)),
                               failures={**outcome.failures, **excluded})
