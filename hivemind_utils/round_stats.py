"""Per-round statistics of one all-reduce, as seen by one peer.

The averager runs in its own process; :class:`RoundRecorder` lives there, counts protobuf bytes
as they pass through the averager's streams, and folds them with the finished runner's state
into an :class:`AveragingResult`, a frozen dataclass that crosses back to the caller by pickle.

Roles in a butterfly all-reduce of a group of N peers (hivemind's ``AllReduceRunner``): every
peer *reduces* one shard (sized by ``peer_fractions``) and every non-auxiliary peer *sends* its
part of every other shard to that shard's reducer, then receives the averaged delta back.

- ``senders``: what THIS peer saw as a reducer, per sender (bytes, time, declared weight).
  This is the only view of another peer's upload that does not rely on its own word.
- ``bytes_sent`` / ``bytes_received``: all four flows (parts out, deltas back in, parts in,
  deltas out), in serialized protobuf bytes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from hivemind.averaging.allreduce import AllReduceRunner, AveragingMode
from hivemind.averaging.group_info import GroupInfo
from hivemind.utils import MSGPackSerializer


@dataclass(frozen=True)
class SenderStats:
    """One sender's upload to this peer during a round (this peer reduced a shard of it)."""

    bytes: int
    """Tensor payload bytes that arrived (``tensor_part.buffer``, compressed as sent): what the
    sender delivered. Protobuf framing and any other field are not counted, so padding a message
    with junk earns nothing."""
    parts: int
    seconds: float
    """From the sender opening its stream to its last part arriving."""
    throughput: float
    """bytes / seconds (payload bytes per second); 0 when nothing arrived."""
    weight: float
    """Averaging weight the sender declared (self-reported: samples it claims)."""
    banned: bool
    """The runner dropped this sender (stalled past the sender timeout, or broke its stream)."""
    lag: float = 0.0
    """Mean seconds this sender's part k arrived after the first sender's part k. A reducer
    answers part k only once every sender delivered it, so in a butterfly all-reduce everyone
    streams at the pace of the slowest member: throughput alone cannot tell who held the group
    back, lag does (honest senders ~0, the straggler all the waiting)."""


@dataclass(frozen=True)
class AveragingResult:
    """Outcome of one :meth:`SwarmAverager.average` call, as seen by this peer."""

    ok: bool
    """The all-reduce finished; the buffers hold the group's weighted mean (see failed_fraction)."""
    error: str | None = None
    group_id: str | None = None
    """Hex id of the group (the same on every member)."""
    participants: tuple[str, ...] = ()
    """PeerIDs (base58) of the group, auxiliaries included, in hivemind's order."""
    auxiliaries: tuple[str, ...] = ()
    banned_senders: tuple[str, ...] = ()
    failed_reducers: tuple[str, ...] = ()
    """Reducers whose averaged shard never fully came back (their shard kept local values)."""
    failed_fraction: float = 0.0
    """Fraction of this peer's values not averaged (``tensor_part_container.failed_size``)."""
    peer_fractions: dict[str, float] = field(default_factory=dict)
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    """Wall time of the whole call: matchmaking + all-reduce."""
    allreduce_seconds: float = 0.0
    senders: dict[str, SenderStats] = field(default_factory=dict)
    gathered: dict[str, Any] = field(default_factory=dict)
    """Whatever each member passed as ``gather=``, by PeerID."""
    delivered: dict[str, Any] = field(default_factory=dict)
    """With ``audit=True``: per sender, the :class:`template.contribution.DeliveredBlocks` of
    what it delivered on this peer's shard."""
    reports: dict[str, Any] = field(default_factory=dict)
    """With ``integrity=``: every reducer's :class:`template.reduction.ReducerReport` of the
    round that could be fetched (this peer's own included), by PeerID."""
    accused: dict[str, str] = field(default_factory=dict)
    """Reducers whose result this peer refused -> why (the round is then not ok)."""

    @property
    def failed_peers(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.banned_senders) | set(self.failed_reducers)))

    @property
    def complete(self) -> bool:
        """Every part of every peer arrived: the result is the exact mean of the whole group."""
        return self.ok and self.failed_fraction == 0.0 and not self.failed_peers


@dataclass
class _Flow:
    bytes: int = 0  # serialized protobuf bytes (what crossed the wire)
    payload: int = 0  # tensor payload bytes (what was delivered)
    parts: int = 0
    opened: float = field(default_factory=time.perf_counter)
    last: float = 0.0
    weight: float = 0.0
    arrivals: list[float] = field(default_factory=list)  # time of each part, in order


@dataclass
class _GroupFlows:
    started: float = field(default_factory=time.perf_counter)
    incoming: dict[str, _Flow] = field(default_factory=dict)   # parts from senders (we reduce)
    replies: dict[str, _Flow] = field(default_factory=dict)    # deltas we return to senders
    outgoing: dict[str, _Flow] = field(default_factory=dict)   # our parts to reducers
    results: dict[str, _Flow] = field(default_factory=dict)    # deltas reducers return to us


def payload_bytes(message: Any) -> int:
    """Bytes of the tensor a message carries (0 for a message without one)."""
    if not message.HasField("tensor_part"):
        return 0
    return len(message.tensor_part.buffer)


async def _count(stream: AsyncIterator[Any], flow: _Flow) -> AsyncIterator[Any]:
    async for message in stream:
        flow.bytes += message.ByteSize()
        flow.payload += payload_bytes(message)
        flow.parts += 1
        flow.last = time.perf_counter()
        flow.arrivals.append(flow.last)
        if getattr(message, "weight", 0.0):
            flow.weight = float(message.weight)
        yield message


def _lags(incoming: dict[str, _Flow]) -> dict[str, float]:
    """Per sender, the mean delay of its part k behind the earliest sender's part k."""
    depth = max((len(f.arrivals) for f in incoming.values()), default=0)
    firsts = [min(f.arrivals[k] for f in incoming.values() if len(f.arrivals) > k)
              for k in range(depth)]
    return {peer: sum(t - firsts[k] for k, t in enumerate(f.arrivals)) / len(f.arrivals)
            for peer, f in incoming.items() if f.arrivals}


class _TappedStub:
    """Stands in for a reducer's stub inside the runner and counts both directions."""

    def __init__(self, stub: Any, flows: _GroupFlows, peer: str):
        self._stub, self._flows, self._peer = stub, flows, peer

    async def rpc_aggregate_part(self, inputs: AsyncIterator[Any], timeout: float | None = None):
        out = self._flows.outgoing.setdefault(self._peer, _Flow())
        stream = await self._stub.rpc_aggregate_part(_count(inputs, out), timeout=timeout)
        return _count(stream, self._flows.results.setdefault(self._peer, _Flow()))


MAX_TRACKED_GROUPS = 16
"""Groups tracked at once; older ones are dropped (a peer may send parts for made-up groups)."""


def _group(groups: dict[bytes, _GroupFlows], group_id: bytes) -> _GroupFlows:
    if group_id not in groups:
        while len(groups) >= MAX_TRACKED_GROUPS:
            groups.pop(next(iter(groups)))
        groups[group_id] = _GroupFlows()
    return groups[group_id]


class _StreamTap:
    """One incoming ``rpc_aggregate_part`` stream; joins its group on the first message."""

    def __init__(self, groups: dict[bytes, _GroupFlows], sender: str):
        self._groups, self._sender = groups, sender
        self._in, self._out = _Flow(), _Flow()

    async def incoming(self, stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        registered = False
        async for message in _count(stream, self._in):
            if not registered:
                flows = _group(self._groups, message.group_id)
                flows.incoming[self._sender], flows.replies[self._sender] = self._in, self._out
                registered = True
            yield message

    def reply(self, message: Any) -> Any:
        self._out.bytes += message.ByteSize()
        self._out.parts += 1
        self._out.last = time.perf_counter()
        return message


class RoundRecorder:
    """Collects flows per group inside the averager process (one instance per averager)."""

    def __init__(self) -> None:
        self._groups: dict[bytes, _GroupFlows] = {}

    def begin(self, group_id: bytes) -> None:
        _group(self._groups, group_id)

    def tap_stream(self, sender: str) -> _StreamTap:
        """Counters for one sender's ``rpc_aggregate_part`` call (parts in, deltas back out)."""
        return _StreamTap(self._groups, sender)

    def tap_runner(self, runner: AllReduceRunner) -> None:
        """Route the runner's calls to reducers through counting stubs (before it sends)."""
        flows = _group(self._groups, runner.group_id)
        original = runner._get_peer_stub  # internal of hivemind 1.1.12 (pinned, tested)

        def tapped(peer):  # noqa: ANN001, ANN202 - mirrors AllReduceRunner._get_peer_stub
            return _TappedStub(original(peer), flows, peer.to_base58())

        runner._get_peer_stub = tapped  # type: ignore[method-assign]

    def finish(self, group: GroupInfo, runner: AllReduceRunner | None, *, error: str | None,
               gathered: dict[Any, Any] | None = None) -> AveragingResult:
        flows = self._groups.pop(group.group_id, _GroupFlows())
        peers = [p.to_base58() for p in group.peer_ids]
        result = AveragingResult(
            ok=error is None, error=error, group_id=group.group_id.hex(),
            participants=tuple(peers), auxiliaries=_auxiliaries(group, peers),
            allreduce_seconds=time.perf_counter() - flows.started,
            gathered={str(k.to_base58() if hasattr(k, "to_base58") else k): v
                      for k, v in (gathered or {}).items()},
            **_flow_totals(flows),
        )
        if runner is None:
            return result
        return _with_runner_state(result, runner, flows, peers)


def _auxiliaries(group: GroupInfo, peers: list[str]) -> tuple[str, ...]:
    """Members that declared auxiliary mode when the group formed (hivemind 1.1.12 does not pass
    modes to its runner, so an aux peer runs as a weight-0 sender there)."""
    modes = []
    for item in group.gathered:
        try:
            modes.append(MSGPackSerializer.loads(item)[1])
        except (ValueError, TypeError, IndexError):  # malformed metadata from a peer
            modes.append(None)
    return tuple(p for p, m in zip(peers, modes, strict=False) if m == AveragingMode.AUX.value)


def _flow_totals(flows: _GroupFlows) -> dict[str, int]:
    sent = (sum(f.bytes for f in flows.outgoing.values())
            + sum(f.bytes for f in flows.replies.values()))
    received = (sum(f.bytes for f in flows.results.values())
                + sum(f.bytes for f in flows.incoming.values()))
    return {"bytes_sent": sent, "bytes_received": received}


def _with_runner_state(result: AveragingResult, runner: AllReduceRunner, flows: _GroupFlows,
                       peers: list[str]) -> AveragingResult:
    import dataclasses

    banned = {p.to_base58() for p in runner.banned_senders}
    total = float(sum(runner.peer_fractions)) or 1.0
    container = runner.tensor_part_container
    me = runner.peer_id.to_base58()
    failed_reducers = tuple(
        peer for peer, expected in zip(peers, container.num_parts_by_peer, strict=True)
        if peer != me and expected and flows.results.get(peer, _Flow()).parts < expected
        and me not in result.auxiliaries
    )
    senders = {}
    lags = _lags(flows.incoming)
    for peer, flow in flows.incoming.items():
        seconds = max(0.0, flow.last - flow.opened) if flow.parts else 0.0
        senders[peer] = SenderStats(
            bytes=flow.payload, parts=flow.parts, seconds=seconds,
            throughput=flow.payload / seconds if seconds > 0 else 0.0,
            weight=flow.weight, banned=peer in banned, lag=lags.get(peer, 0.0),
        )
    for peer in banned - set(senders):
        senders[peer] = SenderStats(0, 0, 0.0, 0.0, 0.0, True)
    return dataclasses.replace(
        result,
        banned_senders=tuple(sorted(banned)),
        failed_reducers=failed_reducers,
        failed_fraction=container.failed_size / max(1, container.total_size),
        peer_fractions={
            p: float(f) / total for p, f in zip(peers, runner.peer_fractions, strict=True)
        },
        senders=senders,
    )
