"""The evaluator process: watch the checkpoint store, score each new ``epoch-N`` once.

Runs beside the swarm (``neurons/evaluator.py``; the devnet launcher starts one) and is not
part of it: it reads the store and the shards, and writes each checkpoint's ``eval.json``
(:meth:`~template.checkpoints.base.CheckpointStore.write_eval`). Nothing in a round waits for
it, and it uses ``--evaluator.threads`` CPU threads (default 1), so it cannot stall the swarm;
a slow evaluator only falls behind. It evaluates the canonical tag ``epoch-N`` whatever its
signature (a forged push that holds the tag is exactly what should show up as a regression);
the store's verification (manifest, hashes) still applies.

Every epoch with a checkpoint and no valid ``eval.json`` is evaluated, oldest first, so a
restarted evaluator resumes where it stopped and two evaluators only duplicate work. The
previous epoch is ``epoch-(N-1)`` from the store, or for ``N = 1`` without an ``epoch-0``
checkpoint the run's initial weights (``--model.preset`` at ``--neuron.seed``, what every miner
starts from).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import torch

from template.checkpoints import (
    CheckpointError,
    CheckpointStore,
    MissingCheckpointError,
    build_store,
    epoch_of,
)
from template.config import Config, ConfigError, ModelConfig, parse_config
from template.data import load_tokenizer
from template.data.sources import build_page_source
from template.evaluation import (
    HeldOutSlice,
    batch_losses,
    describe,
    eval_record,
    heldout_slice,
    sample_batches,
)
from template.model import build_model, load_state_into

logger = logging.getLogger(__name__)


class Evaluator:
    """Scores checkpoints of ``store`` on ``heldout`` and writes their ``eval.json``.

    ``batches``: held-out batches per checkpoint (``--evaluator.batches``); ``threshold``: nats
    of rise that flag an epoch (``--evaluator.threshold``); ``log_metrics``: called with each
    record's numbers and the epoch (wandb), or None.
    """

    def __init__(self, *, store: CheckpointStore, heldout: HeldOutSlice, model: ModelConfig,
                 run_id: str, seed: int, batches: int, threshold: float,
                 log_metrics: Any = None) -> None:
        self.store, self.heldout, self.run_id = store, heldout, run_id
        self.batches, self.threshold, self.log_metrics = batches, threshold, log_metrics
        self._model_cfg, self._seed = model, seed
        self.current = build_model(model, seed=seed)
        self.previous = build_model(model, seed=seed)
        self._previous_epoch: int | None = None  # which epoch ``self.previous`` holds

    def pending(self) -> list[int]:
        """Epochs with an ``epoch-N`` checkpoint and no valid evaluation, oldest first."""
        epochs = [e for e in (epoch_of(t) for t in self.store.tags()) if e is not None]
        return [e for e in epochs if self.store.read_eval(e) is None]

    def evaluate(self, epoch: int) -> dict[str, Any]:
        """Score ``epoch-N`` (and its predecessor on the same batches), write and return its
        ``eval.json``. Store and checkpoint errors propagate (:class:`CheckpointError`)."""
        started = time.perf_counter()
        load_state_into(self.current, self.store.pull(epoch).state_dict)
        previous = self._load_previous(epoch - 1) if epoch > 0 else None
        picked = sample_batches(len(self.heldout.batches), self.batches, run_id=self.run_id,
                                epoch=epoch)
        chosen = [self.heldout.batches[i] for i in picked]
        losses = batch_losses(self.current, chosen)
        previous_losses = batch_losses(self.previous, chosen) if previous is not None else None
        record = eval_record(epoch=epoch, tag=f"epoch-{epoch}", losses=losses,
                             previous_epoch=previous, previous_losses=previous_losses,
                             threshold=self.threshold, tokens=sum(b.numel() for b in chosen),
                             seconds=time.perf_counter() - started)
        self.store.write_eval(epoch, record)
        # The model just scored is the next epoch's predecessor: keep it, reuse the other.
        self.current, self.previous = self.previous, self.current
        self._previous_epoch = epoch
        return record

    def _load_previous(self, epoch: int) -> int | None:
        """Put ``epoch``'s weights into ``self.previous``; the epoch, or None if unavailable."""
        if self._previous_epoch == epoch:
            return epoch
        self._previous_epoch = None
        try:
            load_state_into(self.previous, self.store.pull(epoch).state_dict)
        except MissingCheckpointError:
            if epoch != 0:
                logger.info("no checkpoint of epoch %d to compare epoch %d with", epoch,
                            epoch + 1)
                return None
            load_state_into(self.previous, build_model(self._model_cfg,
                                                       seed=self._seed).state_dict())
        self._previous_epoch = epoch
        return epoch

    def poll(self) -> list[dict[str, Any]]:
        """Evaluate every pending epoch, oldest first; log one line each (a WARNING when
        flagged). A checkpoint that cannot be read is logged and tried again next poll."""
        done = []
        for epoch in self.pending():
            try:
                record = self.evaluate(epoch)
            except CheckpointError as err:
                logger.warning("cannot evaluate epoch %d yet: %s", epoch, err)
                self._previous_epoch = None  # the swap may not have happened
                continue
            log_record(record)
            if self.log_metrics is not None:
                self.log_metrics(metrics(record), step=epoch)
            done.append(record)
        return done

    def run(self, *, stop: threading.Event, poll_interval: float, last_epoch: int = 0) -> None:
        """Poll every ``poll_interval`` s until ``stop`` is set or, with ``last_epoch > 0``,
        ``epoch-{last_epoch}`` has been evaluated (the launcher's ``--neuron.epochs``)."""
        while not stop.is_set():
            try:
                self.poll()
            except CheckpointError as err:  # the store itself (listing) failed: try again
                logger.warning("checkpoint store unavailable: %s", err)
            if last_epoch and self.store.read_eval(last_epoch) is not None:
                logger.info("evaluated epoch %d, the last one: stopping", last_epoch)
                return
            stop.wait(poll_interval)


def log_record(record: Mapping[str, Any]) -> None:
    """Log a record: INFO, or WARNING naming the rise when it is flagged."""
    line = describe(dict(record))
    if record["flagged"]:
        logger.warning("FLAGGED: held-out loss rose %.4f nats over epoch %d (threshold %.4f): "
                       "%s", record["delta"], record["previous_epoch"], record["threshold"],
                       line)
    else:
        logger.info("%s", line)


def metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a record that go to wandb (prefixed ``heldout/``)."""
    keys = ("heldout_loss", "perplexity", "win_fraction", "delta")
    out = {f"heldout/{k}": float(record[k]) for k in keys if record[k] is not None}
    out["heldout/flagged"] = float(record["flagged"])
    return out


def limit_threads(threads: int) -> None:
    """Keep torch to ``threads`` CPU threads (the evaluator shares the machine with miners)."""
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # raised once parallel work started: keep it then
        torch.set_num_interop_threads(threads)


def build_evaluator(cfg: Config, *, log_metrics: Any = None) -> Evaluator:
    """The evaluator ``cfg`` describes: its store, shards (held-out slice read and tokenized
    once) and model preset. Set-up mistakes raise ``ValueError`` naming the flag."""
    source = build_page_source(cfg.data)
    heldout = heldout_slice(source, load_tokenizer(), seq_len=cfg.data.seq_len,
                            batch_size=cfg.data.batch_size)
    logger.info("held-out slice: pages %d-%d of %d, %d batches of %d x %d (%d tokens); "
                "%d scored per checkpoint", heldout.pages.start, heldout.pages.stop - 1,
                source.num_pages, len(heldout.batches), cfg.data.batch_size, cfg.data.seq_len,
                heldout.tokens, min(cfg.evaluator.batches, len(heldout.batches)))
    return Evaluator(store=build_store(cfg.store), heldout=heldout, model=cfg.model,
                     run_id=cfg.neuron.run_id, seed=cfg.neuron.seed,
                     batches=cfg.evaluator.batches, threshold=cfg.evaluator.threshold,
                     log_metrics=log_metrics)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, build, evaluate checkpoints until stopped (or ``--neuron.epochs``), close.
    Exit status 2 with one line naming the fix for a set-up mistake."""
    from hivemind_utils.lifetime import stoppable
    from template.telemetry import Telemetry, setup_logging

    cfg = parse_config(argv, description="Held-out evaluator of a run's checkpoints")
    log = setup_logging(cfg.logging, name="evaluator")
    limit_threads(cfg.evaluator.threads)
    with stoppable(stop_timeout=cfg.neuron.stop_timeout, log=log) as stopper:
        telemetry = Telemetry(cfg, role="evaluator", name="evaluator")
        try:
            evaluator = build_evaluator(cfg, log_metrics=telemetry.log)
        except (ConfigError, ValueError) as err:  # ShardError, ModelError, an empty slice
            print(" ".join(str(err).split()), file=sys.stderr, flush=True)
            telemetry.close()
            return 2
        stop = threading.Event()
        stopper.on_stop = stop.set
        try:
            evaluator.run(stop=stop, poll_interval=cfg.evaluator.poll_interval,
                          last_epoch=cfg.neuron.epochs)
        finally:
            stopper.closing()
            telemetry.close()
    return 0
