"""Robust reduction: one sender cannot move a reducer's average by more than a bounded amount.

hivemind's reducer (``TensorPartReducer``) returns the plain weighted mean of every sender's
part, so one miner sending ``-100 x`` its gradient, or declaring ``10^9`` samples, steers the
whole swarm. :class:`ClippedPartReducer` returns a *centered clip* of the parts instead (the rule
of Karimireddy et al. 2021, as BTARD's ButterflyClip applies it per shard):

1. declared weights are capped at :data:`WEIGHT_CAP` x their median (weights are self-reported
   sample counts; honest miners of one epoch declare about the same);
2. the centre starts at the coordinate-wise median of the parts;
3. ``tau = clip_factor x`` the median norm of the parts (stable even for parts of a few
   values, where distances from a 3-sender median are not);
4. one step (:data:`CLIP_ITERATIONS`): ``v += sum_i w_i * clip_tau(x_i - v)``, with normalised
   weights, where ``clip_tau`` shrinks a vector longer than ``tau`` to length ``tau``.

The bound: a sender of (capped, normalised) weight share ``s`` moves the result by at most
``s * tau`` from where the others put it, whatever it sends. When every part lies within
``tau`` of the centre (an honest swarm: parts of one epoch's gradients spread alike), nothing is
clipped and
the result is exactly the weighted mean, so honest rounds are unchanged (tests compare with a
plain torch mean).

Installed through the module global hivemind's ``AllReduceRunner`` constructs its reducer from
(``hivemind.averaging.allreduce.TensorPartReducer``, pinned 1.1.12): a factory that builds a
:class:`ClippedPartReducer` inside a :func:`clipping` context (set by ``SwarmAverager`` around
its own rounds, in its averaging process) and hivemind's reducer everywhere else. With clipping
off it returns hivemind's plain weighted mean, but still records which parts it clipped (none)
for the round's reducer report (:mod:`template.reduction`), and a red-team ``corrupt`` hook may
replace a result (:class:`template.miner.adversary.CorruptReducer`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch
from hivemind.averaging import allreduce
from hivemind.averaging.partition import TensorPartReducer


class Corrupt(Protocol):
    """A red-team reducer's hook: what it returns instead of part ``index``'s true result."""

    def __call__(self, part_index: int, result: torch.Tensor) -> torch.Tensor: ...


WEIGHT_CAP = 2.0
"""A declared weight above this multiple of the group's median weight counts as the cap."""
CLIP_ITERATIONS = 1

_clip_factor: contextvars.ContextVar[float | None] = contextvars.ContextVar("clip_factor",
                                                                            default=None)
_corrupt: contextvars.ContextVar[Corrupt | None] = contextvars.ContextVar("corrupt", default=None)


def centered_clip(parts: Sequence[torch.Tensor], weights: Sequence[float], *,
                  clip_factor: float, iterations: int = CLIP_ITERATIONS) -> torch.Tensor:
    """The robust weighted average of ``parts`` (see the module docstring); pure.

    Senders of weight 0 (auxiliary peers) are left out. ``clip_factor`` 0 gives the plain
    weighted mean with capped weights.
    """
    return clip_with_flag(parts, weights, clip_factor=clip_factor, iterations=iterations)[0]


def clip_with_flag(parts: Sequence[torch.Tensor], weights: Sequence[float], *,
                   clip_factor: float, iterations: int = CLIP_ITERATIONS,
                   ) -> tuple[torch.Tensor, bool]:
    """:func:`centered_clip`, and whether clipping changed anything (some part shrunk)."""
    kept = [(p.float(), float(w)) for p, w in zip(parts, weights, strict=True) if w > 0]
    if not kept:
        raise ValueError("no sender with a positive weight")
    x = torch.stack([p for p, _ in kept])
    w = torch.tensor([wt for _, wt in kept], dtype=torch.float32)
    w = torch.clamp(w, max=WEIGHT_CAP * float(w.median()))
    w = w / w.sum()
    flat = x.reshape(len(kept), -1)
    if clip_factor <= 0 or len(kept) < 3:  # two senders: no majority to clip towards
        return (w[:, None] * flat).sum(0).reshape(x.shape[1:]), False
    centre = flat.median(dim=0).values
    tau = clip_factor * float(flat.norm(dim=1).median())
    centre = (w[:, None] * flat).sum(0) if tau == 0 else centre
    clipped = False
    for _ in range(iterations if tau > 0 else 0):
        diff = flat - centre
        norms = diff.norm(dim=1)
        clipped = clipped or bool((norms > tau).any())
        scale = torch.where(norms > tau, tau / norms.clamp_min(1e-30), torch.ones_like(norms))
        centre = centre + (w[:, None] * scale[:, None] * diff).sum(0)
    return centre.reshape(x.shape[1:]), clipped


class ClippedPartReducer(TensorPartReducer):
    """hivemind's reducer, but each part's result is :func:`centered_clip` of what arrived.

    hivemind still keeps its running weighted sum (the result when ``clip_factor`` is 0); with
    clipping on this class also keeps every sender's part of the current part index and
    replaces the result when the part is complete. Banned senders are left out exactly as
    hivemind leaves them out. ``clipped_parts``: indices of the parts whose clip changed the
    result (what the reducer report declares).
    """

    def __init__(self, part_shapes: Sequence[torch.Size], num_senders: int, *,
                 clip_factor: float, corrupt: Corrupt | None = None):
        self.clip_factor, self.corrupt = clip_factor, corrupt
        self.clipped_parts: set[int] = set()
        self._received: dict[int, list[tuple[int, torch.Tensor, float]]] = {}
        super().__init__(part_shapes, num_senders)

    async def accumulate_part(self, sender_index: int, part_index: int,
                              tensor_part: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        if self.clip_factor > 0:
            self._received.setdefault(part_index, []).append((sender_index, tensor_part, weight))
        return await super().accumulate_part(sender_index, part_index, tensor_part, weight)

    def check_current_part_finished(self) -> None:
        assert self.current_part_accumulated_from <= self.num_current_senders
        if self.current_part_accumulated_from != self.num_current_senders:
            return
        index = self.current_part_index
        entries = [(t, w) for s, t, w in self._received.pop(index, [])
                   if index < self.sender_failed_after[s]]
        if self.clip_factor > 0 and any(w > 0 for _, w in entries):
            result, clipped = clip_with_flag([t for t, _ in entries], [w for _, w in entries],
                                             clip_factor=self.clip_factor)
            if clipped:
                self.clipped_parts.add(index)
        else:  # hivemind's weighted mean (also its degenerate result for weight-0 senders)
            result = self.accumulator.div_(self.denominator)
        if self.corrupt is not None:
            result = self.corrupt(index, result)
        self.current_part_future.set_result(result)
        self.reset_accumulators()


def _reducer(part_shapes: Sequence[torch.Size], num_senders: int, **kwargs: Any) -> Any:
    factor = _clip_factor.get()
    if factor is not None:
        return ClippedPartReducer(part_shapes, num_senders, clip_factor=factor,
                                  corrupt=_corrupt.get())
    return TensorPartReducer(part_shapes, num_senders, **kwargs)


@contextlib.contextmanager
def clipping(clip_factor: float, *, corrupt: Corrupt | None = None) -> Iterator[None]:
    """Reducers built inside this context (this task and what it awaits) are
    :class:`ClippedPartReducer`; ``clip_factor`` 0 keeps hivemind's plain mean."""
    tokens = _clip_factor.set(clip_factor), _corrupt.set(corrupt)
    try:
        yield
    finally:
        _clip_factor.reset(tokens[0])
        _corrupt.reset(tokens[1])


def install() -> None:
    """Route hivemind's reducer construction through :func:`_reducer` (idempotent)."""
    allreduce.TensorPartReducer = _reducer  # type: ignore[assignment, misc]
