"""Inside the averaging process: audit this peer's shard, serve its report, check the others'.

``SwarmAverager`` attaches a :class:`RoundAudit` to hivemind's ``AllReduceRunner`` before it
sends anything; after the all-reduce it publishes the audit's
:class:`~template.reduction.ReducerReport`, fetches every other reducer's with
:func:`fetch_reports`, and (a contributing member) holds what came back against them with
:func:`check_results` before the round counts. The rules are pure and live in
:mod:`template.reduction`; this module only reads hivemind 1.1.12's runner (pinned, tested).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import torch

from template.contribution import ShardAudit, block_ranges, sketch_blocks
from template.reduction import (
    ReducerReport,
    ReportError,
    RoundIntegrity,
    build_report,
    check_report,
)

REPORT_WAIT = 10.0
"""Seconds a member waits for a groupmate's report of the round (a reducer publishes it when
its own all-reduce is over, at about the same time as everyone's)."""


def shard_spans(runner: Any) -> dict[str, tuple[int, int]]:
    """``[start, end)`` of every member's shard in the flattened vector, by base58 PeerID
    (members fill the vector in hivemind's peer order; a client's shard is empty)."""
    container = runner.tensor_part_container
    spans, start = {}, 0
    for index, peer in enumerate(runner.ordered_peer_ids):
        size = sum(part.numel() for part, _ in container._input_parts_by_peer[index])
        spans[peer.to_base58()] = (start, start + size)
        start += size
    return spans


def blocks_within(span: tuple[int, int], total: int) -> list[int]:
    """Commitment blocks wholly inside ``span``."""
    start, end = span
    return [i for i, (lo, hi) in enumerate(block_ranges(total)) if start <= lo and hi <= end]


class RoundAudit:
    """Projects what every sender delivers on this peer's shard, as its reducer accumulates it.

    :param runner: hivemind's runner of the round, before it sends anything.
    :param seeds: sender (base58) -> sketch seed; senders not listed are not audited.
    """

    def __init__(self, runner: Any, *, seeds: dict[str, int], dims: int):
        # This runs in the averaging process (a fork), on its event-loop thread. A BLAS/OpenMP
        # thread pool the parent already used does not survive the fork: a multi-threaded
        # matmul there hangs forever. OpenMP's thread count is per thread, so set it on this one.
        torch.set_num_threads(1)
        self.total = runner.tensor_part_container.total_size
        self.spans = shard_spans(runner)
        self.me = runner.peer_id.to_base58()
        start, end = self.spans[self.me]
        self.parts: list[tuple[int, int]] = []
        for part in runner.parts_for_local_averaging:
            self.parts.append((start, start + part.numel()))
            start += part.numel()
        senders = [peer.to_base58() for peer in runner.sender_peer_ids]
        self.audit = ShardAudit(shard=self.spans[self.me], total=self.total,
                                seeds={p: seed for p, seed in seeds.items() if p in senders},
                                dims=dims)
        self.dims = dims
        self.reducer = runner.tensor_part_reducer
        accumulate = self.reducer.accumulate_part
        offsets = [lo for lo, _ in self.parts]

        async def observed(sender_index: int, part_index: int, tensor_part: torch.Tensor,
                           weight: float = 1.0) -> torch.Tensor:
            self.audit.observe(senders[sender_index], tensor_part, offset=offsets[part_index],
                               weight=weight)
            return await accumulate(sender_index, part_index, tensor_part, weight=weight)

        self.reducer.accumulate_part = observed

    def clipped_blocks(self) -> list[int]:
        """Audited blocks that overlap a part whose centered clip changed the result."""
        clipped = [self.parts[i] for i in sorted(getattr(self.reducer, "clipped_parts", ()))]
        ranges = block_ranges(self.total)
        return [i for i, _, _ in self.audit.blocks
                if any(lo < ranges[i][1] and ranges[i][0] < hi for lo, hi in clipped)]

    def report(self, *, group_id: str, clip_factor: float) -> ReducerReport:
        return build_report(group_id=group_id, reducer=self.me, clip_factor=clip_factor,
                            blocks=[i for i, _, _ in self.audit.blocks],
                            delivered=self.audit.delivered(), weights=self.audit.weights,
                            clipped=self.clipped_blocks(), dims=self.dims)


async def fetch_reports(call: Callable[[str], Awaitable[bytes]], reducers: Sequence[str], *,
                        group_id: str, dims: int, total: int, wait: float = REPORT_WAIT,
                        ) -> dict[str, ReducerReport | str]:
    """Each reducer's report of this round, or why there is none (``call(peer)`` asks one
    peer for its latest report; a stale one, from an earlier round, is asked again)."""
    num_blocks = len(block_ranges(total))
    deadline = time.monotonic() + wait

    async def one(peer: str) -> ReducerReport | str:
        problem = "served no report"
        while time.monotonic() < deadline:
            try:
                raw = await asyncio.wait_for(call(peer), max(0.1, deadline - time.monotonic()))
            except (asyncio.TimeoutError, OSError, RuntimeError, ValueError) as err:
                return f"served no report ({type(err).__name__}: {err})"
            if not raw:
                problem = "served no report"
            else:
                try:
                    report = ReducerReport.from_bytes(raw, dims=dims, num_blocks=num_blocks)
                except ReportError as err:
                    return f"served a malformed report: {err}"
                if report.group_id == group_id:
                    return report
                problem = "served only a report of another round"
            await asyncio.sleep(0.1)
        return problem

    found = await asyncio.gather(*(one(peer) for peer in reducers))
    return dict(zip(reducers, found, strict=True))


def check_results(tensors: Sequence[torch.Tensor], reports: dict[str, ReducerReport | str], *,
                  spans: dict[str, tuple[int, int]], total: int, integrity: RoundIntegrity,
                  clip_factor: float, group_id: str) -> dict[str, str]:
    """Reducers whose result, as it came back into ``tensors``, fails
    :func:`~template.reduction.check_report` -> the problem (runs off the event loop)."""
    torch.set_num_threads(1)  # see RoundAudit: this is a thread of the forked process
    problems: dict[str, str] = {}
    for reducer, report in reports.items():
        blocks = blocks_within(spans[reducer], total)
        if isinstance(report, str):
            if blocks:
                problems[reducer] = report
            continue
        sketches, squared = sketch_blocks(tensors, blocks, seed=integrity.seed,
                                          dims=integrity.dims)
        problem = check_report(report, group_id=group_id, reducer=reducer, blocks=blocks,
                               clip_factor=clip_factor, result=sketches,
                               result_squared_norm=squared, tolerance=integrity.tolerance,
                               own=integrity.own, members=spans)
        if problem is not None:
            problems[reducer] = problem
    return problems
