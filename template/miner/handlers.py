"""The miner's Axon handlers: answer `Train` from the work ledger, hand `AllReduce` to the loop.

Handlers never touch the model: `Train` reads a consistent copy of the ledger, and `AllReduce`
leaves a request at the round desk and waits for the training loop to run it. Both are plain
functions of their inputs, so they are tested without an Axon.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable

from template.miner.ledger import EpochWork, WorkLedger
from template.miner.rounds import RoundDesk, RoundReport, RoundRequest
from template.protocol import MAX_ERROR_LEN, AllReduce, IsAlive, Train

logger = logging.getLogger(__name__)


def answer_train(synapse: Train, work: EpochWork | None, *, peer_id: str,
                 sketch_seed: int) -> Train:
    """Fill a `Train` response with the work of `synapse.epoch` (at most `max_batches`)."""
    if work is None or not work.sketches:
        synapse.error = f"no batch trained yet in epoch {synapse.epoch}"
        synapse.peer_id = peer_id
        return synapse
    count = min(len(work.sketches), synapse.max_batches)
    per_batch = work.samples // len(work.sketches) if work.sketches else 0
    losses = work.losses[:count]
    synapse.loss = sum(losses) / count if count else None
    synapse.pages = list(work.pages)
    synapse.batches = list(range(count))
    synapse.samples = per_batch * count
    synapse.sketches = [list(s) for s in work.sketches[:count]]
    synapse.sketch_seed = sketch_seed
    synapse.peer_id = peer_id
    synapse.model_fingerprint = list(work.fingerprint)
    return synapse


def answer_allreduce(synapse: AllReduce, report: RoundReport, *, peer_id: str) -> AllReduce:
    synapse.success = report.success
    synapse.peer_id = peer_id
    synapse.participants = list(report.participants)
    synapse.bytes_sent = report.bytes_sent
    synapse.bytes_received = report.bytes_received
    synapse.seconds = report.seconds
    synapse.fingerprint = list(report.fingerprint)
    synapse.error = report.error[:MAX_ERROR_LEN]
    synapse.commitment = report.commitment
    synapse.accused = list(report.accused)
    return synapse


class MinerHandlers:
    """Handlers bound to one miner's ledger, round desk and identity.

    :param round_timeout: seconds an AllReduce request waits for the training loop to finish the
      round; the validator's Dendrite timeout must be longer. Raise it with
      `--averaging.matchmaking_time` and `--averaging.allreduce_timeout`.
    :param override_train: answers `Train` instead of the ledger when it returns a synapse
      (the red-team `copycat` mode; None for honest miners).
    """

    def __init__(self, *, ledger: WorkLedger, desk: RoundDesk, peer_id: str,
                 sketch_seed: Callable[[int], int], current_epoch: Callable[[], int],
                 round_timeout: float,
                 override_train: Callable[[Train], Train | None] | None = None):
        self.override_train = override_train
        self.ledger, self.desk, self.peer_id = ledger, desk, peer_id
        self.sketch_seed, self.current_epoch = sketch_seed, current_epoch
        self.round_timeout = round_timeout

    def train(self, synapse: Train) -> Train:
        if self.override_train is not None:
            answer = self.override_train(synapse)
            if answer is not None:
                return answer
        return answer_train(synapse, self.ledger.get(synapse.epoch), peer_id=self.peer_id,
                            sketch_seed=self.sketch_seed(synapse.epoch))

    def allreduce(self, synapse: AllReduce) -> AllReduce:
        """Blocking (the transport runs sync handlers in an executor thread)."""
        done = self.desk.submit(RoundRequest(epoch=synapse.epoch, round_id=synapse.round_id,
                                             learning_rate=synapse.learning_rate,
                                             expected_peers=tuple(synapse.expected_peers)))
        try:
            report = done.result(timeout=self.round_timeout)
        except concurrent.futures.TimeoutError:
            report = RoundReport(success=False,
                                 error=f"round not run within {self.round_timeout:g} s")
        return answer_allreduce(synapse, report, peer_id=self.peer_id)

    def is_alive(self, synapse: IsAlive) -> IsAlive:
        synapse.alive = True
        synapse.epoch = self.current_epoch()
        synapse.peer_id = self.peer_id
        return synapse
