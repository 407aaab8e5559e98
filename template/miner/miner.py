"""The miner: train the epoch's pages, average with the swarm, step, checkpoint, repeat.

`Miner.run` is the whole life of a miner and reads top to bottom like nanoGPT's loop; every
subsystem is one call. `build_miner` wires the parts from the config (see `neurons/miner.py`).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hivemind_utils.averaging import AveragingResult, SwarmAverager
from hivemind_utils.swarm_state import ProgressReporter, SwarmState, should_start_round
from template.attestation import Attested, NoCanonicalCheckpoint, hotkey_peers, resolve, sign_push
from template.attestation import within as fingerprint_within
from template.checkpoints import CheckpointConflictError, CheckpointError, CheckpointStore, tag_for
from template.config import Config
from template.consensus import consensus_tolerance, needs_resync, pusher_order
from template.contribution import Commitment, block_tolerance, commit, gather_digest
from template.data import assign_pages, epoch_batches, training_pages
from template.data.sources import PageSource
from template.device import autocast
from template.miner.adversary import Adversary
from template.miner.ledger import EpochWork, WorkLedger
from template.miner.rounds import RoundDesk, RoundReport, RoundRequest, wait_for_round
from template.miner.state import StateRejected, apply_training_state, training_state
from template.model import fingerprint, fingerprint_distance, load_state_into, parameter_hash
from template.proof import SKETCH_DIMS, SketchRecorder, sketch_seed
from template.protocol import MAX_BATCHES
from template.reduction import OwnPart, RoundIntegrity
from template.telemetry import Telemetry
from template.training import accumulate, apply_gradients, learning_rate, mean_gradient

logger = logging.getLogger(__name__)

REPORT_INTERVAL = 2.0  # seconds between progress records (training or waiting)
RECORD_EXPIRATION = 15.0  # a miner silent this long no longer counts as a live peer
SYNC_LOOKBACK = 3  # newest epochs tried when catching up from the store


@dataclass(frozen=True)
class FallbackPush:
    """A checkpoint this miner pushes itself if the round's chosen pusher has not by `due`."""

    epoch: int
    due: float  # time.monotonic() deadline
    metadata: dict[str, Any]


@dataclass
class Miner:
    """A built miner: every part it uses, and the state of its current epoch.

    Build it with :func:`template.miner.build.build_miner`; `close()` stops what it started.
    """

    cfg: Config
    uid: int
    peer_id: str
    wallet: Any
    chain: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    tokenizer: Any
    source: PageSource
    store: CheckpointStore
    averager: SwarmAverager
    reporter: ProgressReporter
    read_state: Any  # () -> SwarmState
    device: torch.device
    precision: str
    telemetry: Telemetry
    adversary: Adversary = field(default_factory=Adversary)
    desk: RoundDesk = field(default_factory=RoundDesk)
    ledger: WorkLedger = field(default_factory=WorkLedger)
    stop: threading.Event = field(default_factory=threading.Event)
    state_lock: threading.Lock = field(default_factory=threading.Lock)
    epoch: int = 0
    closers: list[Any] = field(default_factory=list)
    fallback_push: FallbackPush | None = None
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds of the current epoch spent training and waiting for its round (epochs.jsonl)."""
    refused: dict[int, set[str]] = field(default_factory=dict)
    """Per epoch, the reducers whose result this miner refused: it joins no group with them."""
    distrusted: set[str] = field(default_factory=set)
    """Every reducer this miner ever refused: their progress records do not move its view of
    the swarm's epoch (a refused reducer steps with its own wrong average and runs ahead)."""
    _last_report: tuple[float, float] = (0.0, 0.0)

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        """Train until `--neuron.epochs` epochs are done or `stop` is set."""
        self.sync_state()
        target = self.adversary.epochs(self.cfg.neuron.epochs)
        while not self.stop.is_set() and not (target and self.epoch >= target):
            epoch = self.epoch
            started = time.perf_counter()
            if self.ledger.get(epoch) is None or not self.ledger.get(epoch).finished:
                self.train_epoch(epoch)
            trained = time.perf_counter()
            request = self.wait_for_round(epoch)
            self.phases = {"train_seconds": trained - started,
                           "wait_seconds": time.perf_counter() - trained}
            if request is None:
                self.catch_up()
                continue
            if not self.adversary.joins_rounds:
                self.desk.finish(request, RoundReport(success=False, error="not joining"))
                self.catch_up()
                continue
            report = self.average_and_step(epoch, request)
            self.desk.finish(request, report)
            if report.success:
                self.after_step(epoch + 1)
        self.linger()

    def linger(self) -> None:
        """After the last epoch, answer late validators for `--neuron.linger` seconds: a request
        for the final round gets its report (the desk keeps it), any other a clear refusal."""
        deadline = time.monotonic() + self.cfg.neuron.linger
        while not self.stop.is_set() and time.monotonic() < deadline:
            request = self.desk.take(timeout=0.5)
            if request is not None:
                self.desk.finish(request, RoundReport(
                    success=False, error=f"training finished at epoch {self.epoch}"))

    def train_epoch(self, epoch: int) -> None:
        """Accumulate the mean gradient of this epoch's pages at the current weights."""
        data = self.cfg.data
        pages = assign_pages(run_id=self.cfg.neuron.run_id, epoch=epoch, miner=self.uid,
                             pages_per_miner=data.pages_per_epoch,
                             dataset_size=self.source.num_pages)
        batches = epoch_batches(training_pages(self.source, pages, epoch=epoch), self.tokenizer,
                                seq_len=data.seq_len, batch_size=data.batch_size)
        self.ledger.begin(epoch, pages=pages, fingerprint=fingerprint(self.model))
        self.model.zero_grad(set_to_none=True)
        started = time.perf_counter()
        trained = self.adversary.fake_epoch(self, epoch, batches)
        if trained is None:
            trained = self.train_batches(epoch, batches)
        mean_gradient(self.model, trained)
        self.ledger.finish(epoch)
        work = self.ledger.get(epoch)
        self._report(epoch, work.tokens / max(time.perf_counter() - started, 1e-9), finished=True)
        logger.info("epoch %d: %d/%d batches, loss %.4f, %d samples", epoch, trained,
                    len(batches), work.mean_loss, work.samples)
        self.telemetry.log({"loss": work.mean_loss, "samples": work.samples}, step=epoch)

    def train_batches(self, epoch: int, batches: list[torch.Tensor]) -> int:
        """Forward/backward each batch, one sketch each; stops early when a round is due."""
        recorder = SketchRecorder(seed=sketch_seed(self.cfg.neuron.run_id, epoch))
        started, last_report, tokens, done = time.perf_counter(), 0.0, 0, 0
        for batch in batches:
            if self.stop.is_set() or self.desk.pending():
                break  # a round is waiting: join it with the batches done so far
            loss = accumulate(self.model, batch.to(self.device),
                              autocast=autocast(self.device, self.precision))
            tokens, done = tokens + batch.numel(), done + 1
            self.ledger.add_batch(epoch, loss=loss, sketch=recorder.record(self.model),
                                  samples=batch.shape[0], tokens=batch.numel())
            if time.perf_counter() - last_report > REPORT_INTERVAL:
                self._report(epoch, tokens / (time.perf_counter() - started), finished=False)
                self.push_if_missing()
                last_report = time.perf_counter()
                if self._swarm_target_reached(epoch):
                    break
        return done

    def wait_for_round(self, epoch: int) -> RoundRequest | None:
        avg = self.cfg.averaging
        return wait_for_round(
            desk=self.desk, epoch=epoch, min_peers=avg.min_group_size, poll_interval=0.5,
            read_state=self.swarm_state, self_trigger=avg.trigger == "swarm",
            heartbeat=lambda: self._heartbeat(epoch),
            timeout=avg.round_wait, stop=self.stop, straggler_wait=avg.straggler_wait,
        )

    def average_and_step(self, epoch: int, request: RoundRequest) -> RoundReport:
        """One all-reduce of the accumulated gradient, then the guarded optimizer step.

        Only a complete round is applied: after a failed or partial one the local gradient is
        kept (the averager's buffers are reloaded from `.grad` on the next try), so a miner is
        never left half-stepped.
        """
        work = self.ledger.get(epoch)
        if work is None or work.samples == 0:
            return RoundReport(success=False, error=f"no samples trained in epoch {epoch}")
        self.adversary.before_round(self, epoch)
        params = list(self.model.parameters())
        self.averager.load_gradients(params)
        commitment = self._commit(epoch, work)
        avg = self.cfg.averaging
        refused = self.refused.setdefault(epoch, set())
        result = self.averager.average(weight=commitment.samples, epoch=epoch,
                                       timeout=avg.matchmaking_time + avg.request_timeout,
                                       gather=gather_digest(commitment),
                                       expected=request.expected_peers, avoid=sorted(refused),
                                       integrity=self._integrity(epoch, commitment))
        if result.accused:  # a reducer's result failed the check: nothing of it is applied
            refused.update(result.accused)
            self.distrusted.update(result.accused)
            return _report(result, success=False, fingerprint=(), error=result.error or "",
                           commitment=commitment.to_text(), accused=tuple(result.accused))
        if not result.complete:
            logger.warning("epoch %d round %s failed: %s", epoch, request.round_id,
                           result.error or f"failed peers {result.failed_peers}")
            if result.ok and self.adopt_group_step(epoch + 1):
                fp = fingerprint(self.model)
                self._record_epoch(epoch, result, fp, learning_rate(epoch, self.cfg.optim), None)
                self._maybe_push(result)
                return _report(result, success=True, fingerprint=tuple(fp),
                               commitment=commitment.to_text())
            return _report(result, success=False, fingerprint=(),
                           error=result.error or f"incomplete round, failed {result.failed_peers}")
        self.averager.write_gradients(params)
        lr = learning_rate(epoch, self.cfg.optim)
        if request.learning_rate is not None and abs(request.learning_rate - lr) > 1e-12:
            logger.warning("validator asked lr %g for epoch %d; the schedule says %g (used)",
                           request.learning_rate, epoch, lr)
        with self.state_lock:  # peers downloading our state never see a half-applied step
            outcome = apply_gradients(self.model, self.optimizer, lr=lr,
                                      max_grad_norm=self.cfg.optim.max_grad_norm)
            self.epoch = epoch + 1
        if not outcome.applied:
            logger.error("epoch %d: averaged gradient not applied: %s", epoch, outcome.reason)
        self._report(self.epoch, self._last_report[1], finished=False)  # peers see the step now
        fp = fingerprint(self.model)
        self._record_epoch(epoch, result, fp, outcome.lr, outcome.grad_norm)
        self._maybe_push(result)
        return _report(result, success=True, fingerprint=tuple(fp),
                       commitment=commitment.to_text())

    def _integrity(self, epoch: int, commitment: Commitment) -> RoundIntegrity:
        """What the averaging process needs to check every reducer's result before this miner
        steps (template/reduction.py): the epoch's seed and this miner's own part."""
        return RoundIntegrity(
            seed=sketch_seed(self.cfg.neuron.run_id, epoch),
            tolerance=block_tolerance(self.cfg.averaging.compression),
            own=OwnPart(peer=self.peer_id, blocks=commitment.blocks,
                        weight=float(commitment.samples)))

    def _commit(self, epoch: int, work: EpochWork) -> Commitment:
        """The commitment to what this miner sends (template/contribution.py), gathered to the
        group before any part is sent; the red-team hook may change the buffers first."""
        with self.averager.get_tensors() as buffers:
            honest = commit(buffers, seed=sketch_seed(self.cfg.neuron.run_id, epoch),
                            samples=work.samples, batch_sketches=work.sketches,
                            dims=SKETCH_DIMS, max_batches=MAX_BATCHES)
            return self.adversary.contribute(epoch, list(buffers), honest)

    # ------------------------------------------------------------------ state and agreement

    def sync_state(self) -> None:
        """Catch up with the swarm (late join, restart, missed round): download the state of a
        peer that is ahead, or, when no peer answers, load the store's latest checkpoint that
        a chain-bound pusher signed (an older epoch when the newest has none)."""
        if self.swarm_state().global_epoch > self.epoch and self.load_state_from_peers():
            return
        latest = self._latest_epoch()
        for epoch in range(latest or 0, self.epoch, -1)[:SYNC_LOOKBACK]:
            try:
                self.load_checkpoint(epoch)
                return
            except CheckpointError as err:
                logger.warning("cannot load epoch-%d: %s", epoch, err)

    def adopt_group_step(self, epoch: int) -> bool:
        """After a round the group completed but this miner did not (some of a reducer's results
        never arrived; its own parts did reach the others), take the group's step from a peer
        that applied it: the weights every other member holds, with matching AdamW state.

        Waits at most ``2 x --averaging.matchmaking_time`` for a live peer to report ``epoch``;
        when none does (the whole round failed, e.g. a member died), the round counts as failed.
        """
        deadline = time.monotonic() + 2 * self.cfg.averaging.matchmaking_time
        while not self.stop.is_set() and time.monotonic() < deadline:
            ahead = any(p.epoch >= epoch for p in self.swarm_state().peers)
            if ahead and self.load_state_from_peers() and self.epoch >= epoch:
                logger.info("took the group's step to epoch %d from a peer", self.epoch)
                return self.epoch == epoch
            self.stop.wait(0.5)
        return False

    def load_state_from_peers(self) -> bool:
        """Weights, AdamW moments and epoch from a peer; False if none answered or fit."""
        avg = self.cfg.averaging
        found = self.averager.load_state_from_peers(timeout=avg.allreduce_timeout)
        if found is None:
            logger.info("no peer shared its state")
            return False
        try:
            with self.state_lock:
                epoch = apply_training_state(self.model, self.optimizer, *found,
                                             run_id=self.cfg.neuron.run_id)
                if epoch < self.epoch:
                    raise StateRejected(f"peer is at epoch {epoch}, behind our {self.epoch}")
                self.epoch = epoch
        except StateRejected as err:
            logger.warning("rejected a peer's state: %s", err)
            return False
        logger.info("loaded state from a peer at epoch %d", self.epoch)
        self._record_load("peer")
        return True

    def shared_state(self) -> tuple[dict[str, Any], list[torch.Tensor]]:
        """What this miner serves to joiners (called on the averager's background thread)."""
        with self.state_lock:
            return training_state(self.model, self.optimizer, epoch=self.epoch,
                                  run_id=self.cfg.neuron.run_id)

    def catch_up(self) -> None:
        """No round came: if the swarm moved on, reload its latest checkpoint."""
        state = self.swarm_state()
        if state.global_epoch > self.epoch:
            logger.warning("swarm is at epoch %d, this miner at %d: reloading", state.global_epoch,
                           self.epoch)
            self.sync_state()
            if self.epoch < state.global_epoch:
                self.stop.wait(1.0)  # the checkpoint is still being pushed; look again soon

    def after_step(self, epoch: int) -> None:
        """Every `--neuron.resync_every` epochs, reload the canonical weights if we drifted."""
        every = self.cfg.neuron.resync_every
        if not every or epoch % every:
            return
        try:  # a checkpoint in line with our weights (a forged epoch-N is passed over)
            found = self.canonical(epoch, agrees=self._agrees_with_own(0.5))
        except NoCanonicalCheckpoint:
            found = None
        except CheckpointError as err:
            logger.info("epoch %d: no canonical checkpoint to compare with yet (%s)", epoch, err)
            return
        if found is not None:
            logger.info("epoch %d: in line with the canonical checkpoint %s", epoch, found.tag)
            return
        try:
            found = self.canonical(epoch)
        except CheckpointError as err:
            logger.info("epoch %d: no signed checkpoint to resync from (%s)", epoch, err)
            return
        drift = fingerprint_distance(fingerprint(self.model), found.fingerprint)
        logger.info("epoch %d: drift from the canonical checkpoint %.3g", epoch, drift)
        tolerance = consensus_tolerance(self.cfg.averaging.compression,
                                        self.cfg.validator.fingerprint_tolerance)
        if needs_resync(epoch=epoch, drift=drift, drift_threshold=tolerance / 2,
                        resync_every=0):
            self.load_checkpoint(epoch)

    def load_checkpoint(self, epoch: int) -> None:
        """Load the epoch's first checkpoint signed by a chain-bound pusher."""
        ckpt = self.canonical(epoch).checkpoint
        with self.state_lock:
            load_state_into(self.model, ckpt.state_dict)
            if ckpt.optimizer_state is not None:
                self.optimizer.load_state_dict(ckpt.optimizer_state)
            self.model.zero_grad(set_to_none=True)
            self.epoch = epoch
        logger.info("loaded checkpoint epoch-%d (hash %s)", epoch,
                    str(ckpt.manifest.get("parameter_hash", ""))[:12])
        self._record_load("checkpoint")

    def _record_load(self, source: str) -> None:
        """Append `{"epoch", "source", "time"}` to `<workdir>/loads.jsonl`: the launcher counts
        an epoch reached by loading state (restart, late join) as done (`epochs_done`)."""
        path = Path(self.cfg.neuron.workdir).expanduser() / "loads.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        line = {"epoch": self.epoch, "source": source, "time": time.time()}
        with path.open("a") as f:
            f.write(json.dumps(line) + "\n")

    def swarm_state(self) -> SwarmState:
        state = self.read_state()
        return state.without(self.distrusted) if self.distrusted else state

    def _swarm_target_reached(self, epoch: int) -> bool:
        """Self-triggered swarms stop local work once the swarm has the target batch."""
        if self.cfg.averaging.trigger != "swarm":
            return False
        state = self.swarm_state()
        return state.global_epoch == epoch and should_start_round(state)

    # ------------------------------------------------------------------ helpers

    def _latest_epoch(self) -> int | None:
        try:
            return self.store.latest_epoch()
        except CheckpointError as err:
            logger.warning("checkpoint store unavailable: %s", err)
            return None

    def _report(self, epoch: int, tokens_per_second: float, *, finished: bool) -> None:
        work = self.ledger.get(epoch)
        self.reporter.report(epoch=epoch, samples=work.samples if work else 0,
                             tokens_per_second=tokens_per_second, finished=finished)
        self._last_report = (time.monotonic(), tokens_per_second)

    def _heartbeat(self, epoch: int) -> None:
        """Refresh the progress record while waiting, so it does not expire."""
        stamp, tokens_per_second = self._last_report
        if time.monotonic() - stamp > REPORT_INTERVAL:
            work = self.ledger.get(epoch)
            self._report(epoch, tokens_per_second, finished=bool(work and work.finished))
        self.push_if_missing()

    def _maybe_push(self, result: AveragingResult) -> None:
        """The round's first-ranked member pushes the new weights; the others stand by."""
        members = [p for p in result.participants if p not in result.auxiliaries]
        order = pusher_order(self.cfg.neuron.run_id, self.epoch, members)
        if self.peer_id not in order:
            return
        rank = order.index(self.peer_id)
        metadata = {"participants": members, "run_id": self.cfg.neuron.run_id,
                    "round_group": result.group_id, "pusher": self.peer_id, "pusher_rank": rank}
        work = self.ledger.get(self.epoch - 1)  # the epoch this round just averaged
        if work is not None and math.isfinite(work.mean_loss):
            metadata["train_loss"] = work.mean_loss  # shown in the checkpoint's model card
        if rank == 0:
            self._push(self.epoch, metadata)
        else:
            due = time.monotonic() + rank * self.cfg.store.push_grace
            self.fallback_push = FallbackPush(epoch=self.epoch, due=due, metadata=metadata)

    def push_if_missing(self) -> None:
        """Push the current epoch's checkpoint if its chosen pusher has not (it died, or failed
        its side of the round) within this member's grace. Weights do not change between
        rounds, so any member can push them until its next step."""
        pending = self.fallback_push
        if pending is None or time.monotonic() < pending.due:
            return
        self.fallback_push = None
        if pending.epoch != self.epoch:
            return  # reloaded or stepped since: those weights are gone
        try:
            if tag_for(pending.epoch) in self.store.tags():
                self._check_canonical(pending.epoch, pending.metadata)
                return
        except CheckpointError as err:
            logger.warning("checkpoint store unavailable: %s", err)
            return
        logger.warning("checkpoint %s still missing: pushing it (pusher rank %d)",
                       tag_for(pending.epoch), pending.metadata["pusher_rank"])
        self._push(pending.epoch, pending.metadata)

    def _push(self, epoch: int, metadata: dict[str, Any], *, candidate: bool = False) -> None:
        """Push this member's weights, signed (template/attestation.py). When ``epoch-N`` is
        already taken by other weights, check them (:meth:`_check_canonical`)."""
        try:
            with self.state_lock:
                signed = {**metadata, **sign_push(
                    self.wallet.hotkey, run_id=self.cfg.neuron.run_id, epoch=epoch,
                    parameter_hash=parameter_hash(self.model), pusher=self.peer_id)}
                tag = self.store.push(epoch, self.model, self.tokenizer, signed,
                                      optimizer_state=self.optimizer.state_dict(),
                                      candidate=candidate)
            logger.info("pushed checkpoint %s", tag)
        except CheckpointConflictError as err:
            logger.info("another push holds epoch %d: %s", epoch, err)
            if not candidate:
                self._check_canonical(epoch, metadata)
        except CheckpointError as err:
            logger.error("checkpoint push for epoch %d failed: %s", epoch, err)

    def _check_canonical(self, epoch: int, metadata: dict[str, Any]) -> None:
        """Some checkpoint of ``epoch`` must be signed by a bound pusher and agree with this
        member's post-step weights; if none does (a forged or conflicting push won the race for
        ``epoch-N``), push ours as a candidate so readers can still find the round's result."""
        if epoch != self.epoch:
            return  # stepped or reloaded since: these weights are not the epoch's any more
        try:
            found = self.canonical(epoch, agrees=self._agrees_with_own())
        except NoCanonicalCheckpoint as err:
            logger.error("no checkpoint of epoch %d agrees with this round's weights (%s): "
                         "pushing ours as a candidate", epoch, err)
            self._push(epoch, metadata, candidate=True)
            return
        except CheckpointError as err:
            logger.warning("cannot check the checkpoint of epoch %d: %s", epoch, err)
            return
        logger.info("checkpoint %s (pushed by %s) agrees with our weights", found.tag,
                    found.pusher)

    def canonical(self, epoch: int, *, agrees: Any = None) -> Attested:
        """The epoch's checkpoint this miner accepts (:func:`template.attestation.resolve`):
        signed by a chain-bound pusher and, with ``agrees``, in line with those weights."""
        return resolve(self.store, epoch, run_id=self.cfg.neuron.run_id,
                       peers=hotkey_peers(self.chain), agrees=agrees)

    def _agrees_with_own(self, fraction: float = 1.0) -> Any:
        tolerance = consensus_tolerance(self.cfg.averaging.compression,
                                        self.cfg.validator.fingerprint_tolerance)
        return fingerprint_within(fingerprint(self.model), tolerance * fraction)

    def _record_epoch(self, epoch: int, result: AveragingResult, fp: list[float], lr: float,
                      grad_norm: float | None) -> None:
        """Log the epoch's round in one line; append it to `<workdir>/epochs.jsonl` (read by the
        local launcher)."""
        work = self.ledger.get(epoch)
        logger.info("epoch %d: averaged with %d peers in %.2f s (sent %.1f MB, received %.1f MB)"
                    ", stepped at lr %.3g to epoch %d; %.0f s training, %.0f s waiting for the "
                    "round", epoch, len(result.participants), result.allreduce_seconds,
                    result.bytes_sent / 1e6, result.bytes_received / 1e6, lr, epoch + 1,
                    self.phases.get("train_seconds", 0.0), self.phases.get("wait_seconds", 0.0))
        line = {
            "epoch": epoch + 1, "uid": self.uid, "peer_id": self.peer_id,
            "loss": work.mean_loss if work else None, "samples": work.samples if work else 0,
            "fingerprint": fp, "lr": lr, "grad_norm": grad_norm,
            "participants": list(result.participants), "auxiliaries": list(result.auxiliaries),
            "allreduce_seconds": result.allreduce_seconds, "bytes_sent": result.bytes_sent,
            "bytes_received": result.bytes_received, "time": time.time(),
            "round_seconds": result.seconds, **self.phases,
        }
        path = Path(self.cfg.neuron.workdir).expanduser() / "epochs.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        self.telemetry.log({"allreduce_seconds": result.allreduce_seconds, "lr": lr,
                            **({"grad_norm": grad_norm} if grad_norm is not None else {})},
                           step=epoch)

    def close(self) -> None:
        self.stop.set()
        for close in reversed(self.closers):
            close()
        self.closers.clear()


def _report(result: AveragingResult, *, success: bool, fingerprint: tuple[float, ...],
            error: str = "", commitment: str = "", accused: tuple[str, ...] = ()) -> RoundReport:
    return RoundReport(success=success, participants=tuple(result.participants),
                       bytes_sent=result.bytes_sent, bytes_received=result.bytes_received,
                       seconds=result.seconds, fingerprint=fingerprint, error=error,
                       commitment=commitment, accused=accused)
