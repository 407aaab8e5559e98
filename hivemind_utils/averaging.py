"""Gradient averaging: one butterfly all-reduce of accumulated gradients, weighted by samples.

    averager = SwarmAverager(dht=dht, run_id=cfg.neuron.run_id, params=model.parameters(),
                             cfg=cfg.averaging)
    averager.load_gradients(model.parameters())          # .grad (any device) -> CPU buffers
    result = averager.average(weight=samples, timeout=30)
    if result.ok:
        averager.write_gradients(model.parameters())     # averaged buffers -> .grad
    averager.shutdown()

The validator joins the same rounds with the same class and ``auxiliary=True``: it contributes
weight 0, still reduces a shard, and so records every sender's upload (``result.senders``).
With ``audit=True`` it also projects what each sender delivered on that shard, block by block
(``result.delivered``), for :func:`template.contribution.judge_contribution` to hold against the
commitment whose digest the sender gathered (``result.gathered``).

With ``--averaging.clip_factor > 0`` every reducer of a round takes a centered clip of its
senders' parts instead of their plain mean (:mod:`hivemind_utils.robust`): one sender's
influence is bounded whatever it sends.

This is hivemind's :class:`~hivemind.averaging.DecentralizedAverager` with three seams used:
``rpc_aggregate_part`` (count each sender's incoming stream), ``_aggregate_with_group`` (read
the finished runner: banned senders, peer fractions, failed size) and ``_get_handle_name`` (the
libp2p protocol name is fixed to ``SwarmAverager``, so test subclasses that inject faults still
group with real peers; hivemind otherwise names protocols after the class).

Copies: the averager owns CPU float32 buffers in shared memory (the averaging process is a
fork that reads them). ``load_gradients`` copies each ``.grad`` device->host once and
``write_gradients`` copies host->device once; the all-reduce itself never touches the GPU.
"""

import asyncio
import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, AsyncIterator  # noqa: UP035 - hivemind reads typing.AsyncIterator hints

import numpy as np
import torch
from hivemind.averaging import DecentralizedAverager
from hivemind.averaging.group_info import GroupInfo
from hivemind.averaging.partition import DEFAULT_PART_SIZE_BYTES
from hivemind.compression import CompressionBase, Float16Compression, NoCompression
from hivemind.dht import DHT
from hivemind.p2p import P2PContext, PeerID
from hivemind.proto import averaging_pb2
from hivemind.utils import MSGPackSerializer
from hivemind.utils.asyncio import enter_asynchronously

from hivemind_utils import compat, robust
from hivemind_utils.lifetime import DiesWithParent
from hivemind_utils.round_stats import AveragingResult, RoundRecorder
from hivemind_utils.shard_audit import RoundAudit, blocks_within, check_results, fetch_reports
from template.config import AveragingConfig
from template.proof import SKETCH_DIMS
from template.reduction import RoundIntegrity

logger = logging.getLogger(__name__)
compat.install()  # before any averager forks: every peer process decodes 8-bit parts correctly
robust.install()  # reducers of SwarmAverager rounds clip (hivemind_utils/robust.py)

COMPRESSIONS: dict[str, type[CompressionBase]] = {
    "none": NoCompression,
    "fp16": Float16Compression,
    "8bit": compat.SafeUniform8BitQuantization,
}


def make_compression(name: str) -> CompressionBase:
    """``--averaging.compression`` -> a hivemind compression object."""
    if name not in COMPRESSIONS:
        raise ValueError(f"unknown compression {name!r}; use one of {', '.join(COMPRESSIONS)}")
    return COMPRESSIONS[name]()


def averager_prefix(run_id: str) -> str:
    """DHT prefix of the run's gradient averaging groups (hivemind forbids '.' in it)."""
    if not run_id or "." in run_id:
        raise ValueError(f"run id {run_id!r} must be non-empty and contain no '.'")
    return f"{run_id}_grad_averager"


EPOCH_BITS = 32


def epoch_group_bits(epoch: int) -> str:
    """The group-key bits of ``epoch``'s round: peers only match with peers of the same epoch.

    hivemind's matchmaking key is ``{prefix}.0b{group_bits}``. Without the epoch in it, a miner
    still finishing epoch ``e`` and one already at ``e+1`` can land in one group and average
    gradients taken at different weights (the behind one then steps to weights nobody else has).
    """
    if not 0 <= epoch < 2**EPOCH_BITS:
        raise ValueError(f"epoch {epoch} out of range for the group key")
    return format(epoch, f"0{EPOCH_BITS}b")


class RoundFailed(Exception):
    """The all-reduce of a formed group failed; carries what was recorded before it did."""

    def __init__(self, message: str, result: AveragingResult | None = None):
        super().__init__(message, result)
        self.message, self.result = message, result


def _buffers_like(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """One zeroed CPU float32 buffer per parameter (works for meta-device params too)."""
    return [torch.zeros(tuple(p.shape), dtype=torch.float32) for p in params]


EXPECTED_GRACE = 1.0
"""Seconds a leader still waits for unnamed peers once every expected member joined."""


class SwarmAverager(DiesWithParent, DecentralizedAverager):
    """The one averager class of the subnet (miners and the validator's auxiliary peer).

    Its process dies with the process that started it and ignores that process's group signals
    (:mod:`hivemind_utils.lifetime`).

    :param dht: a running DHT of the swarm (:func:`hivemind_utils.dht.start_dht`).
    :param run_id: groups form only among peers of the same run (and same tensor shapes).
    :param params: parameters whose gradients are averaged; CPU buffers of the same shapes are
      allocated. Or pass ``tensors``: CPU tensors to average in place (used as given).
    :param cfg: group and timeout settings (``--averaging.*``); see ``docs/swarm.md`` for tuning.
    :param auxiliary: join rounds with weight 0 and reduce a shard without contributing tensors
      (the validator). Needs the same shapes as the miners (meta-device params are enough).
    :param compression: overrides ``cfg.compression`` (a hivemind ``CompressionBase``; the
      red-team slow-link mode passes a throttled one).
    :param state_provider: lets peers download this peer's training state (a late joiner's
      :meth:`load_state_from_peers`): returns ``(metadata, tensors)``, called on a background
      thread of this process whenever a peer asks. None: this peer shares no state.
    :param bandwidth: declared download bandwidth; a larger value asks for a larger shard. None
      lets hivemind split evenly. Self-reported by every peer: not evidence of anything.
    :param part_size_bytes: size of one streamed part; smaller parts react faster to failures,
      larger ones cost less per-message overhead.
    :param audit: project what every sender delivers on this peer's shard (``result.delivered``;
      the validator's peer); pass ``gather=template.contribution.audit_gather(seed)`` or
      ``integrity=`` to :meth:`average` so the averaging process knows the epoch's seed.
    :param corrupt: red-team only: replaces this peer's reduced results
      (:class:`template.miner.adversary.CorruptReducer`).
    """

    # hivemind caches RPC handlers/stubs per class; own them so a plain DecentralizedAverager in
    # the same process cannot leak its protocol names into ours.
    _rpc_handlers = None
    _stub_type = None
    PROTOCOL_NAME = "SwarmAverager"
    _parent_pid = -1  # hivemind's __del__ reads it: a constructor that raised leaves no process

    def __init__(
        self,
        *,
        dht: DHT,
        run_id: str,
        cfg: AveragingConfig,
        params: Iterable[torch.Tensor] | None = None,
        tensors: Sequence[torch.Tensor] | None = None,
        auxiliary: bool = False,
        compression: CompressionBase | None = None,
        state_provider: Callable[[], tuple[dict[str, Any], list[torch.Tensor]]] | None = None,
        bandwidth: float | None = None,
        part_size_bytes: int = DEFAULT_PART_SIZE_BYTES,
        shutdown_timeout: float = 5.0,
        audit: bool = False,
        corrupt: robust.Corrupt | None = None,
        start: bool = True,
    ):
        if (params is None) == (tensors is None):
            raise ValueError("pass exactly one of params= (buffers are allocated) or tensors=")
        if cfg.request_timeout >= cfg.matchmaking_time:
            raise ValueError("--averaging.request_timeout must be < --averaging.matchmaking_time "
                             "(hivemind deadlocks otherwise)")
        buffers = _buffers_like(params) if params is not None else list(tensors)  # type: ignore[arg-type]
        if any(t.device.type != "cpu" for t in buffers):
            raise ValueError("tensors= must be CPU tensors; pass params= for GPU models")
        self.cfg, self.run_id, self.audit, self._corrupt = cfg, run_id, audit, corrupt
        self._state_provider = state_provider
        self._recorder = RoundRecorder()
        super().__init__(
            buffers, dht, start=False, prefix=averager_prefix(run_id),
            target_group_size=cfg.target_group_size, min_group_size=cfg.min_group_size,
            min_matchmaking_time=cfg.matchmaking_time, request_timeout=cfg.request_timeout,
            allreduce_timeout=cfg.allreduce_timeout, next_chunk_timeout=cfg.next_chunk_timeout,
            compression=compression or make_compression(cfg.compression),
            part_size_bytes=part_size_bytes,
            bandwidth=bandwidth, auxiliary=auxiliary, shutdown_timeout=shutdown_timeout,
            allow_state_sharing=state_provider is not None,
        )
        if start:
            self.run_in_background(await_ready=True)

    def run_in_background(self, await_ready: bool = True, timeout: float | None = None) -> None:
        """Start the averaging process; keeps the caller's Ctrl+C handler (hivemind ignores it)."""
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGINT) if in_main else None
        super().run_in_background(await_ready=await_ready, timeout=timeout)
        if in_main and previous is not None:
            signal.signal(signal.SIGINT, previous)

    @classmethod
    def _get_handle_name(cls, namespace: str | None, method_name: str) -> str:
        name = f"{cls.PROTOCOL_NAME}.{method_name}"
        return f"{namespace}::{name}" if namespace is not None else name

    # ------------------------------------------------------------------ gradients in and out

    @property
    def is_auxiliary(self) -> bool:
        return self.mode.name == "AUX"

    @torch.no_grad()
    def load_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """Copy each parameter's ``.grad`` (any device/dtype) into the buffers; None -> zeros."""
        with self.get_tensors() as buffers:
            params = list(params)
            if len(params) != len(buffers):
                raise ValueError(f"{len(params)} params for {len(buffers)} averaged buffers")
            for buf, param in zip(buffers, params, strict=True):
                if param.grad is None:
                    buf.zero_()
                else:
                    buf.copy_(param.grad.detach().reshape(buf.shape))

    @torch.no_grad()
    def write_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """Copy the (averaged) buffers into each parameter's ``.grad`` on its device and dtype."""
        with self.get_tensors() as buffers:
            params = list(params)
            if len(params) != len(buffers):
                raise ValueError(f"{len(params)} params for {len(buffers)} averaged buffers")
            for buf, param in zip(buffers, params, strict=True):
                grad = buf.to(device=param.device, dtype=param.dtype).reshape(param.shape)
                if param.grad is None:
                    param.grad = grad
                else:
                    param.grad.copy_(grad)

    # ------------------------------------------------------------------ state for joiners

    def get_current_state(self) -> tuple[Any, Sequence[torch.Tensor], Any]:
        """hivemind's hook behind ``rpc_download_state``: what a joiner downloads from us."""
        if self._state_provider is None:  # sharing is off, so hivemind never asks; be safe
            raise RuntimeError("this averager shares no state")
        metadata, tensors = self._state_provider()
        return metadata, tensors, None

    # ------------------------------------------------------------------ one round

    def average(self, *, weight: float = 1.0, timeout: float | None = None,
                gather: Any = None, epoch: int | None = None,
                expected: Sequence[str] = (), avoid: Sequence[str] = (),
                integrity: RoundIntegrity | None = None) -> AveragingResult:
        """Find a group and run one all-reduce of the buffers, in place; never raises on failure.

        :param weight: this peer's share of the mean (samples accumulated); ignored (0) when
          auxiliary. Must be > 0 otherwise: a miner with nothing to add should not join.
        :param timeout: give up *looking for a group* after this many seconds; the all-reduce
          itself is then bounded by ``--averaging.allreduce_timeout``.
        :param gather: small picklable value sent to every groupmate (``result.gathered``).
        :param epoch: match only with peers averaging the same epoch (:func:`epoch_group_bits`);
          None keeps the current key (benchmarks, single-epoch tests).
        :param expected: base58 PeerIDs of the round's members (this peer included or not): a
          leader assembles the group :data:`EXPECTED_GRACE` s after every one of them has
          joined, instead of waiting ``--averaging.matchmaking_time`` for ``target_group_size``
          peers that never come. Peers that join meanwhile stay in; empty keeps hivemind's rule
          alone.
        :param avoid: base58 PeerIDs this peer will not average with (reducers whose result it
          refused this epoch): as a leader it turns them away, and a group holding one fails
          at once.
        :param integrity: audit this peer's shard and serve its reducer report, fetch every
          other reducer's (``result.reports``) and, with ``integrity.own`` (a contributing
          member), refuse the round when a reducer's result fails
          :func:`template.reduction.check_report`: the result is then not ok, its ``accused``
          names the reducers, and the buffers must not be used (:mod:`template.reduction`).
        """
        if not self.is_auxiliary and not weight > 0:
            raise ValueError(f"weight must be > 0 for a contributing peer, got {weight}")
        started = time.perf_counter()
        if epoch is not None:
            self.set_group_bits(epoch_group_bits(epoch))
        try:
            self._prepare(expected, avoid, integrity)
            out = self._wait(self.step(weight=None if self.is_auxiliary else float(weight),
                                       timeout=timeout, gather=gather, wait=False), timeout)
        except RoundFailed as err:
            base = err.result or AveragingResult(ok=False)
            result = dataclasses.replace(base, ok=False, error=err.message)
        except Exception as err:  # noqa: BLE001 - failures cross a process boundary in many types
            # (matchmaking, timeouts, p2p errors); all end this round and are returned, not raised.
            logger.warning("averaging round failed: %r", err)
            result = AveragingResult(ok=False, error=f"{type(err).__name__}: {err}")
        else:
            result = out if isinstance(out, AveragingResult) else AveragingResult(
                ok=False, error=f"unexpected step result {type(out).__name__}")
        return dataclasses.replace(result, seconds=time.perf_counter() - started)

    def _wait(self, control: Any, timeout: float | None) -> Any:
        """The step's result, bounded: matchmaking + all-reduce + grace; a dead averaging
        process (OOM killer, crash) ends the wait instead of hanging the caller forever."""
        limit = (timeout if timeout is not None else self.cfg.matchmaking_time * 4)
        deadline = time.monotonic() + limit + self.cfg.allreduce_timeout + 10.0
        while True:
            try:
                return control.result(timeout=1.0)
            except TimeoutError:
                if not self.is_alive():
                    raise RuntimeError("the averaging process died during the round") from None
                if time.monotonic() > deadline:
                    control.cancel()
                    raise TimeoutError("averaging round exceeded its time budget") from None

    def _prepare(self, peers: Sequence[str], avoid: Sequence[str],
                 integrity: RoundIntegrity | None) -> None:
        """Hand the round's settings to the averaging process. Its pipe messages become tasks
        in order and this one sets them without awaiting, so they are in place before the
        step's message is handled (no reply is awaited: an MPFuture answer from the child was
        seen to be lost now and then, stalling the round for its timeout)."""
        for peer in (*peers, *avoid):
            PeerID.from_base58(peer)  # raises ValueError here, not in the child
        own = None if integrity is None else integrity.own
        # The child reads its pipe from a uvloop reader, which makes the pipe non-blocking: a
        # message larger than one write (~16 kB) can be read half-written, which desyncs the
        # pipe and kills the averaging loop. The block sketches (num_blocks x dims floats) go
        # through shared memory instead, as hivemind sends its tensors.
        shipped = (None if own is None else
                   torch.from_numpy(np.ascontiguousarray(own.blocks)).share_memory_())
        self._outer_pipe.send(("_set_round", [], dict(
            peers=list(peers), avoid=list(avoid), blocks=shipped,
            integrity=integrity if own is None else dataclasses.replace(
                integrity, own=dataclasses.replace(own, blocks=np.empty((0, 0)))))))

    # ------------------------------------------------------------------ hivemind seams (child)

    async def _set_round(self, peers: list[str], avoid: list[str],
                         integrity: RoundIntegrity | None, blocks: torch.Tensor | None) -> None:
        self._grace_tasks: set[asyncio.Task] = getattr(self, "_grace_tasks", set())
        if integrity is not None and integrity.own is not None and blocks is not None:
            own = dataclasses.replace(integrity.own, blocks=blocks.numpy().copy())
            integrity = dataclasses.replace(integrity, own=own)
        self._integrity = integrity
        self._expected_peers = frozenset(PeerID.from_base58(p) for p in peers)
        self._avoid = frozenset(PeerID.from_base58(p) for p in avoid)

    async def rpc_join_group(self, request: averaging_pb2.JoinRequest, context: P2PContext,
                             ) -> AsyncIterator[averaging_pb2.MessageFromLeader]:
        """hivemind's leader side of matchmaking, plus: once every expected member has joined
        (see :meth:`average`), assemble after a short grace instead of at the
        ``matchmaking_time`` deadline."""
        matchmaking = self._matchmaking
        if context.remote_id in getattr(self, "_avoid", frozenset()):
            yield averaging_pb2.MessageFromLeader(code=averaging_pb2.NOT_LOOKING_FOR_GROUP)
            return
        async for message in matchmaking.rpc_join_group(request, context):
            yield message
            expected = getattr(self, "_expected_peers", frozenset())
            if (message.code == averaging_pb2.ACCEPTED and expected
                    and not matchmaking.assembled_group.done()
                    and expected <= {matchmaking.peer_id, *matchmaking.current_followers}):
                task = asyncio.create_task(self._assemble_after_grace(matchmaking.assembled_group))
                self._grace_tasks.add(task)  # a reference, so the task is not collected early
                task.add_done_callback(self._grace_tasks.discard)

    async def _assemble_after_grace(self, group: asyncio.Future) -> None:
        """Every expected member is in: wait :data:`EXPECTED_GRACE` s for peers nobody named (a
        second validator's auxiliary peer asks at about the same time), then assemble, unless
        this search already ended (``group`` is the search's own future)."""
        await asyncio.sleep(EXPECTED_GRACE)
        matchmaking = self._matchmaking
        async with matchmaking.lock_request_join_group:
            if (matchmaking.assembled_group is group and not group.done()
                    and matchmaking.is_looking_for_group and matchmaking.current_leader is None
                    and matchmaking.current_followers):
                await matchmaking.leader_assemble_group()

    async def _aggregate_with_group(self, group_info: GroupInfo, min_vector_size: int,
                                    **kwargs: Any) -> AveragingResult:
        """Run hivemind's aggregation, then read the runner's state into an AveragingResult and
        (with ``integrity``) serve this peer's reducer report and check everyone's."""
        avoided = set(group_info.peer_ids) & getattr(self, "_avoid", frozenset())
        if avoided:
            raise RoundFailed(f"the group holds {sorted(p.to_base58() for p in avoided)}, whose "
                              "result this peer refused this epoch")
        self._recorder.begin(group_info.group_id)
        self._report_ready().clear()
        integrity: RoundIntegrity | None = getattr(self, "_integrity", None)
        future = self._running_groups.get(group_info.group_id)
        audits: list[RoundAudit] = []
        if future is not None:
            future.add_done_callback(lambda f: None if f.cancelled() or f.exception()
                                     else self._recorder.tap_runner(f.result()))
            seeds = ({p.to_base58(): integrity.seed for p in group_info.peer_ids}
                     if integrity is not None else
                     _gathered_seeds(group_info, self.peer_id.to_base58()) if self.audit else {})
            if seeds:
                dims = integrity.dims if integrity is not None else SKETCH_DIMS
                future.add_done_callback(lambda f: None if f.cancelled() or f.exception()
                                         else audits.append(RoundAudit(f.result(), seeds=seeds,
                                                                       dims=dims)))
        try:
            with robust.clipping(self.cfg.clip_factor, corrupt=self._corrupt):
                gathered = await super()._aggregate_with_group(group_info, min_vector_size,
                                                               **kwargs)
        except BaseException as err:
            result = self._recorder.finish(group_info, _runner_of(future), error=repr(err))
            if isinstance(err, Exception):
                raise RoundFailed(f"all-reduce failed: {err}", result) from err
            raise
        result = self._recorder.finish(group_info, _runner_of(future), error=None,
                                       gathered=gathered)
        if not audits:
            return result
        audit = audits[0]
        me = self.peer_id.to_base58()
        delivered = {p: d for p, d in audit.audit.delivered().items() if p != me}
        result = dataclasses.replace(result, delivered=delivered)
        report = audit.report(group_id=result.group_id or "", clip_factor=self.cfg.clip_factor)
        if self._corrupt is not None and hasattr(self._corrupt, "report"):
            report = self._corrupt.report(report)  # red-team: a report that covers its tracks
        self._report_bytes = report.to_bytes()
        self._report_ready().set()
        if integrity is None:
            return result
        return await self._check_round(result, audit, integrity, own_report=report)

    async def _check_round(self, result: AveragingResult, audit: RoundAudit,
                           integrity: RoundIntegrity, *, own_report: Any) -> AveragingResult:
        """Fetch every other reducer's report; a contributing member checks its result against
        them and refuses the round (raises :class:`RoundFailed`) if one fails."""
        me = audit.me
        reducers = [p for p, (lo, hi) in audit.spans.items() if p != me and hi > lo]
        reports = await fetch_reports(self._ask_report, reducers, group_id=result.group_id or "",
                                      dims=integrity.dims, total=audit.total)
        parsed = {p: r for p, r in reports.items() if not isinstance(r, str)}
        parsed[me] = own_report
        result = dataclasses.replace(result, reports=parsed)
        if integrity.own is None or not result.complete:
            return result  # an auxiliary peer only collects; an incomplete round is not applied
        loop = asyncio.get_running_loop()
        async with enter_asynchronously(self.get_tensors()) as tensors:
            problems = await loop.run_in_executor(None, lambda: check_results(
                tensors, reports, spans=audit.spans, total=audit.total, integrity=integrity,
                clip_factor=self.cfg.clip_factor, group_id=result.group_id or ""))
        checked = {p: len(blocks_within(audit.spans[p], audit.total)) for p in reports}
        logger.info("round %s: checked the results of %d reducers on %s blocks (reports: %s)",
                    result.group_id, len(reports), checked,
                    {p[-6:]: r if isinstance(r, str) else len(r.blocks)
                     for p, r in reports.items()})
        if not problems:
            return result
        text = "; ".join(f"reducer {p}: {why}" for p, why in sorted(problems.items()))
        logger.error("refusing the round's result: %s", text)
        raise RoundFailed(f"refused the round: {text}",
                          dataclasses.replace(result, ok=False, accused=problems))

    def _report_ready(self) -> asyncio.Event:
        if getattr(self, "_report_event", None) is None:
            self._report_event = asyncio.Event()
            self._report_bytes = b""
        return self._report_event

    async def _ask_report(self, peer: str) -> bytes:
        stub = self.get_stub(self._p2p, PeerID.from_base58(peer), namespace=self.prefix)
        reply = await stub.rpc_reducer_report(averaging_pb2.DownloadRequest())
        return bytes(reply.metadata)

    async def rpc_reducer_report(self, request: averaging_pb2.DownloadRequest,
                                 context: P2PContext) -> averaging_pb2.DownloadData:
        """This peer's reducer report of its latest round (:mod:`template.reduction`), once
        its all-reduce is over (waits up to ``request_timeout`` for it); empty if it has none."""
        ready = self._report_ready()
        try:
            await asyncio.wait_for(ready.wait(), timeout=self.cfg.request_timeout)
        except asyncio.TimeoutError:
            return averaging_pb2.DownloadData()
        return averaging_pb2.DownloadData(metadata=self._report_bytes)

    async def rpc_aggregate_part(
        self, stream: AsyncIterator[averaging_pb2.AveragingData], context: P2PContext
    ) -> AsyncIterator[averaging_pb2.AveragingData]:
        """A groupmate streams us its part of our shard: count it, then let hivemind reduce it."""
        tap = self._recorder.tap_stream(context.remote_id.to_base58())
        async for message in super().rpc_aggregate_part(tap.incoming(stream), context):
            yield tap.reply(message)


def _gathered_seeds(group: GroupInfo, me: str) -> dict[str, int]:
    """The epoch's sketch seed for every other member, from this peer's own gathered value
    (:func:`template.contribution.audit_gather`); empty when it gathered none."""
    users = {}
    for peer, item in zip(group.peer_ids, group.gathered, strict=False):
        try:
            users[peer.to_base58()] = MSGPackSerializer.loads(MSGPackSerializer.loads(item)[2])
        except (ValueError, TypeError, IndexError, KeyError):
            continue
    own = users.get(me)
    seed = own.get("audit_seed") if isinstance(own, dict) else None
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        return {}
    return {peer.to_base58(): seed for peer in group.peer_ids if peer.to_base58() != me}


def _runner_of(future: "asyncio.Future[Any] | None") -> Any:
    if future is None or not future.done() or future.cancelled() or future.exception():
        return None
    return future.result()


__all__ = ["SwarmAverager", "AveragingResult", "RoundFailed", "make_compression",
           "averager_prefix", "epoch_group_bits"]
