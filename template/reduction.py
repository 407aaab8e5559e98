"""Result integrity: what a reducer returns is the average of what it received.

In hivemind's butterfly all-reduce every member reduces one shard of the vector and returns the
same average to every member, and every member adds whatever comes back. A member that returns
a wrong average for its shard (scaled, noised, a vector hidden from the sketch) would move every
model in the swarm at once, and fingerprint agreement would pass: all members applied the same
wrong average. This module makes that average checkable, by every member, before it is applied:

1. **Report** (every reducer, :class:`ReducerReport`). A reducer already projects what each
   sender delivers on every commitment block wholly inside its shard
   (:class:`~template.contribution.ShardAudit`); after the round it serves those sketches,
   with the weight each sender declared and which blocks it clipped
   (:mod:`hivemind_utils.robust`), to any groupmate that asks (``SwarmAverager``'s
   ``rpc_reducer_report``).
2. **Check** (every member, :func:`check_report`, before its optimizer step). On each
   reducer's blocks, the member holds what came back against that reducer's report:

   - *my part*: the report's sketch of this member's part is the sketch of what it committed
     to and sent, at the weight it declared (a reducer cannot explain a wrong average by
     inventing what this member sent);
   - *the average*: the sketch of what came back is the weighted mean of the reported sketches
     (linearity of the projection), to the wire's rounding; on a block the reducer clipped the
     result is a centered clip, not a mean, and must lie within the senders' spread
     (:data:`HULL_SLACK`);
   - *nothing hidden*: the projection is public, so a vector ``v`` with ``P v = 0`` passes the
     test above; it still adds to the norm, which must match the sketch's
     (:data:`~template.contribution.NORM_RATIO_BOUNDS`).

   A member that finds a problem refuses the round: nothing is applied (the round fails, the
   member keeps its gradient, the round never becomes a checkpoint) and its ``AllReduce``
   answer names the reducer.
3. **Judge** (validator, :func:`judge_reports`). The validator's peer fetches every report too
   and holds the per-sender sketches against the senders' commitments. Parts are not signed, so
   when a report and a commitment disagree one of the two lied and the outside cannot tell
   which: a reducer that disagrees with two or more senders is the liar; a disagreement with one
   sender gates both for the epoch (BTARD's rule: an honest majority survives losing one honest
   peer per liar), unless the sender's own delivery already failed the validator's audit. A
   reducer accused by more than half of the other members is gated.

Bounds. Sketches are :data:`~template.proof.SKETCH_DIMS`-dimensional, so what is checked is a
projection: a change below the wire tolerance of the compression
(:func:`~template.contribution.block_tolerance`) passes, and under ``8bit`` only gross changes
are visible. Blocks that straddle two shards are checked by nobody (with groups of up to
``COMMIT_BLOCKS / 2`` members every reducer holds whole blocks). On clipped blocks a reducer can
move its result by up to the senders' spread (:data:`HULL_SLACK` times the root sum of squared
distances from their mean), which is what honest clipping may do.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import msgpack
import numpy as np

from template.contribution import NORM_RATIO_BOUNDS, Commitment, DeliveredBlocks
from template.proof import SKETCH_DIMS

REPORT_VERSION = 1
HULL_SLACK = 1.3
"""A clipped block's result may lie this many times the senders' spread from their mean (the
centered clip's result is a convex combination of the parts and their coordinate-wise median;
1.3 covers the sketch's norm error)."""
WEIGHT_CAP = 2.0
"""As :data:`hivemind_utils.robust.WEIGHT_CAP` (this module does not import hivemind_utils)."""


class ReportError(ValueError):
    """A reducer report that is not one (wrong type, version, shape, non-finite values)."""


@dataclass(frozen=True)
class ReducerReport:
    """What one reducer says it received on its shard's blocks in one round."""

    group_id: str
    """Hex id of the round's group."""
    reducer: str
    clip_factor: float
    blocks: tuple[int, ...]
    """Indices (into :func:`~template.contribution.block_ranges`) wholly inside its shard."""
    senders: tuple[str, ...]
    weights: tuple[float, ...]
    """Weight each sender declared on the wire (same order as ``senders``)."""
    sketches: np.ndarray
    """``(senders, blocks, dims)`` float32: sketch of each sender's delivery on each block."""
    squared_norms: tuple[float, ...]
    complete: tuple[bool, ...]
    clipped: tuple[int, ...] = ()
    """Blocks on which the centered clip changed the result of some part."""

    def to_bytes(self) -> bytes:
        return msgpack.packb({
            "v": REPORT_VERSION, "group": self.group_id, "reducer": self.reducer,
            "clip": float(self.clip_factor), "blocks": list(self.blocks),
            "senders": list(self.senders), "weights": [float(w) for w in self.weights],
            "dims": int(self.sketches.shape[2]) if self.sketches.ndim == 3 else 0,
            "sketches": self.sketches.astype("<f4").tobytes(),
            "norms": [float(n) for n in self.squared_norms],
            "complete": [bool(c) for c in self.complete], "clipped": list(self.clipped),
        }, use_bin_type=True)

    @classmethod
    def from_bytes(cls, raw: object, *, dims: int, num_blocks: int,
                   max_senders: int = 256) -> ReducerReport:
        """Parse a groupmate's report; raises :class:`ReportError`."""
        if not isinstance(raw, bytes) or not raw:
            raise ReportError("empty reducer report")
        try:
            data = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except (ValueError, TypeError, msgpack.UnpackException) as err:
            raise ReportError(f"reducer report is not msgpack: {err}") from None
        if not isinstance(data, dict) or data.get("v") != REPORT_VERSION:
            raise ReportError("reducer report has no known version")
        group, reducer, clip = data.get("group"), data.get("reducer"), data.get("clip")
        if not isinstance(group, str) or not isinstance(reducer, str):
            raise ReportError("reducer report names no group or reducer")
        if not isinstance(clip, float) or not math.isfinite(clip) or clip < 0:
            raise ReportError("reducer report clip factor is not a finite float >= 0")
        blocks = _ints(data.get("blocks"), "blocks", below=num_blocks)
        senders = data.get("senders")
        if (not isinstance(senders, list) or len(senders) > max_senders
                or not all(isinstance(s, str) for s in senders)
                or len(set(senders)) != len(senders)):
            raise ReportError("reducer report senders must be distinct strings")
        n = len(senders)
        weights = _finite(data.get("weights"), "weights", n)
        norms = _finite(data.get("norms"), "norms", n)
        complete = data.get("complete")
        if not isinstance(complete, list) or len(complete) != n or not all(
                isinstance(c, bool) for c in complete):
            raise ReportError("reducer report complete flags must be one bool per sender")
        if data.get("dims") != dims and (n and blocks):
            raise ReportError(f"reducer report has {data.get('dims')} dims, expected {dims}")
        raw_sketches = data.get("sketches")
        if not isinstance(raw_sketches, bytes) or len(raw_sketches) != 4 * n * len(blocks) * dims:
            raise ReportError("reducer report sketches are not one row per sender and block")
        sketches = np.frombuffer(raw_sketches, dtype="<f4").reshape(n, len(blocks), dims)
        if not np.isfinite(sketches).all():
            raise ReportError("reducer report sketches hold non-finite values")
        clipped = _ints(data.get("clipped"), "clipped", below=num_blocks)
        if not set(clipped) <= set(blocks):
            raise ReportError("reducer report clipped blocks it did not audit")
        return cls(group_id=group, reducer=reducer, clip_factor=clip, blocks=tuple(blocks),
                   senders=tuple(senders), weights=tuple(weights), sketches=sketches,
                   squared_norms=tuple(norms), complete=tuple(complete),
                   clipped=tuple(clipped))

    def mean_weights(self) -> np.ndarray:
        """Each sender's share of the reducer's result, as the reducer computes it: hivemind's
        plain weighted mean, or (clipping on) weights capped at ``WEIGHT_CAP x`` their median."""
        w = np.asarray(self.weights, dtype=np.float64)
        positive = w > 0
        if self.clip_factor > 0 and positive.any():
            kept = np.sort(w[positive])
            median = float(kept[(len(kept) - 1) // 2])  # the lower middle, as torch.median
            w = np.where(positive, np.minimum(w, WEIGHT_CAP * median), 0)
        total = float(w.sum())
        return w / total if total > 0 else w

    def expected(self) -> np.ndarray:
        """``(blocks, dims)``: the sketch of the weighted mean of what was reported received."""
        return np.einsum("s,sbd->bd", self.mean_weights(), self.sketches.astype(np.float64))


def _ints(raw: object, name: str, *, below: int) -> list[int]:
    if not isinstance(raw, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < below for i in raw):
        raise ReportError(f"reducer report {name} must be block indices below {below}")
    if len(set(raw)) != len(raw):
        raise ReportError(f"reducer report {name} repeat")
    return raw


def _finite(raw: object, name: str, n: int) -> list[float]:
    if not isinstance(raw, list) or len(raw) != n or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            and x >= 0 for x in raw):
        raise ReportError(f"reducer report {name} must be {n} finite numbers >= 0")
    return [float(x) for x in raw]


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b)) / max(float(np.linalg.norm(b)), 1e-30)


def build_report(*, group_id: str, reducer: str, clip_factor: float, blocks: Sequence[int],
                 delivered: Mapping[str, DeliveredBlocks], weights: Mapping[str, float],
                 clipped: Sequence[int] = (), dims: int = SKETCH_DIMS) -> ReducerReport:
    """A reducer's report from its :class:`~template.contribution.ShardAudit` of the round."""
    senders = tuple(sorted(delivered))
    sketches = np.asarray([delivered[s].sketches for s in senders],
                          dtype=np.float32).reshape(len(senders), len(blocks), dims)
    return ReducerReport(
        group_id=group_id, reducer=reducer, clip_factor=float(clip_factor), blocks=tuple(blocks),
        senders=senders, weights=tuple(weights.get(s, 0.0) for s in senders), sketches=sketches,
        squared_norms=tuple(delivered[s].squared_norm for s in senders),
        complete=tuple(delivered[s].complete for s in senders),
        clipped=tuple(sorted(set(clipped) & set(blocks))))


# ------------------------------------------------------------------ checking (a member)


@dataclass(frozen=True)
class OwnPart:
    """What a member knows of its own part, to hold a report of it against."""

    peer: str
    blocks: np.ndarray
    """``(num_blocks, dims)``: its committed block sketches (of what it sent)."""
    weight: float


@dataclass(frozen=True)
class RoundIntegrity:
    """What a peer's averaging process needs to serve its report and check everyone's results
    in one round (``SwarmAverager.average(integrity=...)``)."""

    seed: int
    """The epoch's sketch seed (:func:`template.proof.sketch_seed`)."""
    tolerance: float
    """:func:`~template.contribution.block_tolerance` of the compression."""
    own: OwnPart | None = None
    """This peer's part; None for an auxiliary peer (it checks nothing, it only collects)."""
    dims: int = SKETCH_DIMS


def check_report(report: ReducerReport, *, group_id: str, reducer: str,
                 blocks: Sequence[int], clip_factor: float, result: np.ndarray,
                 result_squared_norm: float, tolerance: float, own: OwnPart | None = None,
                 members: Collection[str] | None = None,
                 norm_bounds: tuple[float, float] = NORM_RATIO_BOUNDS) -> str | None:
    """The problem with ``reducer``'s result as this member received it, None if there is none.

    ``blocks``: the commitment blocks wholly inside the reducer's shard, as this member's own
    view of the group's partition says; ``result``: ``(len(blocks), dims)`` sketches of what
    came back on them, ``result_squared_norm`` its sum of squares; ``tolerance``: the
    compression's :func:`~template.contribution.block_tolerance`; ``own``: this member's part
    (None for a peer that sent nothing); ``members``: the group's PeerIDs (a report naming a
    sender outside them explains its result with a part nobody sent).
    """
    if members is not None and (ghosts := sorted(set(report.senders) - set(members))):
        return f"its report names senders outside the group: {ghosts}"
    if report.group_id != group_id or report.reducer != reducer:
        return "its report is for another round or reducer"
    if tuple(report.blocks) != tuple(blocks):
        return f"its report covers blocks {list(report.blocks)}, its shard holds {list(blocks)}"
    if not math.isclose(report.clip_factor, clip_factor, rel_tol=1e-9, abs_tol=1e-12):
        return f"it reduced with clip factor {report.clip_factor:g}, the group uses {clip_factor:g}"
    if not blocks:
        return None
    if not all(report.complete):
        return "its report says some sender's parts did not all arrive"
    if own is not None:
        if own.peer not in report.senders:
            return "its report leaves out this member's part"
        i = report.senders.index(own.peer)
        if not math.isclose(report.weights[i], own.weight, rel_tol=1e-6):
            return f"it reports this member's weight as {report.weights[i]:g}, not {own.weight:g}"
        mine = own.blocks[list(blocks)].astype(np.float64)
        error = _relative(report.sketches[i].astype(np.float64), mine)
        if error > tolerance:
            return f"it misreports this member's part (relative sketch error {error:.3g})"
    expected = report.expected()
    got = np.asarray(result, dtype=np.float64)
    clipped = set(report.clipped)
    # the clip combines only senders of positive weight (an auxiliary peer's empty part is not
    # one of them, and would widen the spread by the whole mean's norm)
    weighted = report.sketches.astype(np.float64)[report.mean_weights() > 0]
    for row, block in enumerate(blocks):
        if block in clipped:
            spread = math.sqrt(sum(float(np.linalg.norm(s[row] - expected[row])) ** 2
                                   for s in weighted))
            distance = float(np.linalg.norm(got[row] - expected[row]))
            if distance > HULL_SLACK * spread + 1e-30:
                return (f"its clipped block {block} lies {distance:.3g} from the senders' mean, "
                        f"beyond their spread {spread:.3g}")
        else:
            error = _relative(got[row], expected[row])
            if error > tolerance:
                return (f"block {block} is not the weighted mean of what it received "
                        f"(relative sketch error {error:.3g} > {tolerance:g})")
    sketch_norm = float(np.linalg.norm(got))
    if sketch_norm > 0 or result_squared_norm > 0:
        ratio = math.sqrt(result_squared_norm) / sketch_norm if sketch_norm > 0 else math.inf
        if not norm_bounds[0] <= ratio <= norm_bounds[1]:
            return (f"its result's norm is {ratio:.3g}x its sketch's (a vector hidden from "
                    "the sketch)")
    return None


# ------------------------------------------------------------------ judging (the validator)


def judge_reports(reports: Mapping[str, ReducerReport], commitments: Mapping[str, Commitment],
                  accusations: Mapping[str, Sequence[str]], *, members: Sequence[str],
                  tolerance: float, tampered: Sequence[str] = ()) -> dict[str, str]:
    """Members (PeerIDs) gated for the round's results -> why (see the module docstring).

    ``reports``: every reducer report the validator's peer fetched; ``commitments``: the
    parsed commitments of the members (from their AllReduce answers); ``accusations``: per
    member, the reducers it refused the round over; ``tampered``: members whose delivery
    already failed the validator's own audit (a disagreement with one of them is explained).
    """
    gated: dict[str, str] = {}
    for reducer, report in reports.items():
        if ghosts := sorted(set(report.senders) - set(members)):
            gated[reducer] = f"its reducer report names senders outside the group: {ghosts}"
            continue
        disputes = []
        for i, sender in enumerate(report.senders):
            commitment = commitments.get(sender)
            if sender == reducer or commitment is None or not report.blocks:
                continue
            committed = commitment.blocks[list(report.blocks)].astype(np.float64)
            error = _relative(report.sketches[i].astype(np.float64), committed)
            if error > tolerance or not math.isclose(report.weights[i], commitment.samples,
                                                     rel_tol=1e-6):
                disputes.append(sender)
        if len(disputes) >= 2:
            gated[reducer] = f"its reducer report misstates {len(disputes)} senders' parts"
        elif disputes and disputes[0] not in tampered:
            gated[reducer] = f"its reducer report disagrees with {disputes[0]}'s commitment"
            gated.setdefault(disputes[0], f"its commitment disagrees with {reducer}'s report")
    others = [m for m in members if m in accusations]
    for reducer in {r for accused in accusations.values() for r in accused}:
        voters = [m for m in others if m != reducer]
        against = sum(reducer in accusations[m] for m in voters)
        if voters and against * 2 > len(voters):
            gated.setdefault(reducer, f"{against} of {len(voters)} members refused its result")
    return gated
