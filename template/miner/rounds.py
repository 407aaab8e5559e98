"""When a miner averages: the round trigger, and the desk where AllReduce requests wait.

Two triggers start a round, chosen by `--averaging.trigger`:

* `validator` (production): a validator's `AllReduce` synapse arrives on the Axon; the handler
  leaves a :class:`RoundRequest` at the :class:`RoundDesk` and waits for the training loop to
  run the round and fill in the report.
* `swarm` (swarms without validators, and the swarm tests): the miner itself reads the DHT and
  starts once :func:`swarm_ready` says so.

Either way the training loop calls :func:`wait_for_round` once its epoch's work is finished, so
averaging always runs on the loop's thread, never on the Axon's.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from hivemind_utils.swarm_state import SwarmState, epoch_work_done, should_start_round


@dataclass(frozen=True)
class RoundReport:
    """What a miner tells the validator about one round (the AllReduce response)."""

    success: bool
    participants: tuple[str, ...] = ()
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    fingerprint: tuple[float, ...] = ()
    error: str = ""
    commitment: str = ""
    """The contribution commitment whose digest the miner gathered (base64, see
    :mod:`template.contribution`)."""
    accused: tuple[str, ...] = ()
    """Reducers whose result the miner refused (:mod:`template.reduction`); ``error`` says why."""


@dataclass
class RoundRequest:
    """One request to average at `epoch`; `done` resolves when the round is over."""

    epoch: int
    round_id: str
    learning_rate: float | None = None
    expected_peers: tuple[str, ...] = ()
    """The round's members as the validator named them (empty: hivemind's matchmaking rule)."""
    done: Future[RoundReport] = field(default_factory=Future)


class RoundDesk:
    """Thread-safe hand-over of round requests from the Axon to the training loop.

    A round belongs to the swarm, not to the validator that asked for it: when several
    validators ask for the same epoch, the miner averages once and every one of them gets the
    report of that round (see :meth:`finish`), including a validator whose request arrives after
    the round is over. Only successful rounds are shared; after a failure the next request for
    the epoch runs a new round (a validator's retry).
    """

    KEEP_REPORTS = 4  # successful rounds remembered for late requests (one per epoch)

    def __init__(self) -> None:
        self._queue: queue.Queue[RoundRequest] = queue.Queue()
        self._lock = threading.Lock()
        self._done: dict[int, RoundReport] = {}

    def submit(self, request: RoundRequest) -> Future[RoundReport]:
        with self._lock:
            report = self._done.get(request.epoch)
            if report is not None:
                request.done.set_result(report)
            else:
                self._queue.put(request)
        return request.done

    def finish(self, request: RoundRequest, report: RoundReport) -> None:
        """Answer `request`; a successful report also answers every other request for its epoch."""
        request.done.set_result(report)
        if not report.success:
            return
        with self._lock:
            self._done[request.epoch] = report
            for epoch in sorted(self._done)[:-self.KEEP_REPORTS]:
                del self._done[epoch]
            waiting = []
            while True:
                try:
                    waiting.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for other in waiting:
                if other.epoch == request.epoch:
                    other.done.set_result(report)
                else:
                    self._queue.put(other)

    def pending(self) -> bool:
        """A request is waiting (the training loop should wrap up its epoch)."""
        return not self._queue.empty()

    def take(self, *, timeout: float) -> RoundRequest | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None


def swarm_ready(state: SwarmState, *, epoch: int, min_peers: int, waited: float = 0.0,
                straggler_wait: float = 30.0) -> bool:
    """The self-trigger: the swarm reached the target batch, or every live peer is done with
    `epoch` (:func:`~hivemind_utils.swarm_state.epoch_work_done`; `waited` seconds so far).

    The second clause keeps a small swarm from waiting forever on a target batch it cannot reach
    (it needs at least `min_peers` finished peers, `--averaging.min_group_size`). This is the
    function a validator-driven swarm replaces with the validator's decision.
    """
    if state.global_epoch != epoch:
        return False
    return should_start_round(state) or epoch_work_done(
        state, min_peers=min_peers, waited=waited, straggler_wait=straggler_wait)


def wait_for_round(
    *,
    desk: RoundDesk,
    epoch: int,
    read_state: Callable[[], SwarmState],
    heartbeat: Callable[[], None],
    self_trigger: bool,
    min_peers: int,
    poll_interval: float,
    timeout: float,
    stop: threading.Event,
    straggler_wait: float = 30.0,
) -> RoundRequest | None:
    """Block until a round for `epoch` should start; ``None`` on timeout, on stop, or as soon
    as the swarm is past `epoch` (the caller then catches up).

    Requests at the desk (validator trigger) are always honoured; with `self_trigger` the
    miner also starts rounds itself when :func:`swarm_ready`. Requests for another epoch are
    answered at once with a failure naming both epochs. `heartbeat` is called every poll
    (it keeps this miner's progress record alive while it waits).
    """
    started = time.monotonic()
    deadline = started + timeout
    while not stop.is_set() and time.monotonic() < deadline:
        request = desk.take(timeout=poll_interval)
        if request is not None:
            if request.epoch == epoch:
                return request
            request.done.set_result(RoundReport(
                success=False, error=f"wrong epoch: miner is at {epoch}, asked {request.epoch}"))
            continue
        heartbeat()
        state = read_state()
        if state.global_epoch > epoch:
            return None
        if self_trigger and swarm_ready(state, epoch=epoch, min_peers=min_peers,
                                        waited=time.monotonic() - started,
                                        straggler_wait=straggler_wait):
            return RoundRequest(epoch=epoch, round_id=f"swarm-{epoch}")
    return None
