"""Single-process training on local shards: the demo, and the plain loop the miner grows from.

One optimizer step here is what one swarm epoch is for a miner (``template.training``): the
gradient of the mean loss over ``grad_accum`` batches, one guarded AdamW step, the learning rate
of ``learning_rate(step)``. Nothing is averaged; the step number plays the epoch.

Data: the local source's pages in order ``0 .. N-1``, wrapping around, packed into batches by
:class:`~template.data.TokenBatcher`. The batcher state and the step go into every checkpoint's
metadata and the optimizer state into ``optimizer.pt``, so :meth:`LocalTrainer.resume` continues
exactly where the pushed run stood: same weights, same Adam moments, same next batch.

    trainer = LocalTrainer(cfg)
    trainer.resume()                      # from the store's latest epoch-N, if any
    run(trainer, steps=300, log_every=10, push_every=100, telemetry=Telemetry(cfg, ...))
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from template.checkpoints import build_store
from template.config import Config, DataConfig
from template.data import TokenBatcher, build_page_source, ensure_demo_shards, load_tokenizer
from template.device import autocast, resolve_device, resolve_precision
from template.model import build_model, load_state_into
from template.telemetry import Telemetry
from template.training import (
    accumulate,
    apply_gradients,
    build_optimizer,
    learning_rate,
    mean_gradient,
)

log = logging.getLogger(__name__)


class ResumeError(ValueError):
    """A checkpoint cannot be resumed from (its metadata lacks the step or the batcher state)."""


def prepare_local_shards(cfg: DataConfig) -> None:
    """Build the demo shards in ``--data.dir`` when it holds no parquet file yet.

    A folder that already holds shards (yours or an earlier demo build) is left alone, so demo
    pages never get mixed into your own set.
    """
    folder = Path(cfg.dir).expanduser()
    if cfg.source == "local" and not any(folder.glob("*.parquet")):
        ensure_demo_shards(folder)


class LoopingBatcher:
    """:class:`TokenBatcher` over ``texts`` that starts again at page 0 after the last full batch.

    The state is the batcher's (``page``, ``offset``, ``batches``: batches produced in all
    passes) plus ``passes`` (completed walks over the pages); the trailing partial batch of each
    pass is dropped, as :class:`TokenBatcher` does.
    """

    def __init__(self, texts: Sequence[str], tokenizer: Any, *, seq_len: int, batch_size: int):
        self._inner = TokenBatcher(texts, tokenizer, seq_len=seq_len, batch_size=batch_size)
        self.passes = 0

    def state_dict(self) -> dict[str, int]:
        return {**self._inner.state_dict(), "passes": self.passes}

    def load_state_dict(self, state: dict[str, int]) -> None:
        passes = int(state.get("passes", 0))
        if passes < 0:
            raise ValueError(f"batcher state {state}: passes < 0")
        self._inner.load_state_dict({k: int(state[k]) for k in ("page", "offset", "batches")})
        self.passes = passes

    def __next__(self) -> torch.Tensor:
        try:
            return next(self._inner)
        except StopIteration:
            pass  # end of the pages: wrap around below
        self._inner.load_state_dict({"page": 0, "offset": 0,
                                     "batches": self._inner.batches_done})
        self.passes += 1
        try:
            return next(self._inner)
        except StopIteration:
            raise ValueError("the pages hold fewer tokens than one batch; lower "
                             "--data.batch_size/--data.seq_len or add pages") from None


@dataclass(frozen=True)
class StepStats:
    """What one optimizer step did; ``step`` is the step count after it."""

    step: int
    loss: float
    lr: float
    grad_norm: float
    tokens: int
    seconds: float
    applied: bool


class LocalTrainer:
    """Model, optimizer, page walk and checkpoint store of one run; ``step`` counts steps."""

    def __init__(self, cfg: Config, *, grad_accum: int = 1, max_pages: int | None = None,
                 tokenizer: Any = None):
        if grad_accum < 1:
            raise ValueError(f"--grad_accum must be >= 1, got {grad_accum}")
        self.cfg = cfg
        self.grad_accum = grad_accum
        self.device = resolve_device(cfg.neuron.device)
        self.precision = resolve_precision(cfg.neuron.precision, self.device)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
        source = build_page_source(cfg.data)
        pages = source.num_pages if max_pages is None else min(max_pages, source.num_pages)
        self.batcher = LoopingBatcher(source.pages(list(range(pages))), self.tokenizer,
                                      seq_len=cfg.data.seq_len, batch_size=cfg.data.batch_size)
        self.model = build_model(cfg.model, seed=cfg.neuron.seed).to(self.device)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.store = build_store(cfg.store)
        self.step = 0
        self.last_loss = float("nan")

    def next_batch(self) -> torch.Tensor:
        return next(self.batcher)

    def train_step(self) -> StepStats:
        """One optimizer step over ``grad_accum`` batches at ``learning_rate(step)``."""
        start = time.perf_counter()
        losses = []
        for _ in range(self.grad_accum):
            batch = self.next_batch().to(self.device)
            losses.append(accumulate(self.model, batch,
                                     autocast=autocast(self.device, self.precision)))
        mean_gradient(self.model, self.grad_accum)
        outcome = apply_gradients(self.model, self.optimizer,
                                  lr=learning_rate(self.step, self.cfg.optim),
                                  max_grad_norm=self.cfg.optim.max_grad_norm)
        if not outcome.applied:
            log.warning("step %d not applied: %s", self.step, outcome.reason)
        self.step += 1
        self.last_loss = sum(losses) / len(losses)
        tokens = self.grad_accum * self.cfg.data.batch_size * self.cfg.data.seq_len
        return StepStats(step=self.step, loss=self.last_loss, lr=outcome.lr,
                         grad_norm=outcome.grad_norm, tokens=tokens,
                         seconds=time.perf_counter() - start, applied=outcome.applied)

    def push(self) -> str:
        """Push weights, optimizer state, step and batcher state as ``epoch-{step}``."""
        metadata = {"step": self.step, "batcher": self.batcher.state_dict(),
                    "loss": self.last_loss if math.isfinite(self.last_loss) else None,
                    "preset": self.cfg.model.preset}
        return self.store.push(self.step, self.model, self.tokenizer, metadata,
                               optimizer_state=self.optimizer.state_dict())

    def resume(self) -> int | None:
        """Load the store's latest checkpoint (weights, optimizer, batcher, step); its epoch.

        ``None`` when the store is empty (the run starts from the seeded weights at step 0).
        """
        epoch = self.store.latest_epoch()
        if epoch is None:
            return None
        ckpt = self.store.pull(epoch)
        meta = ckpt.metadata
        if meta.get("step") != epoch or not isinstance(meta.get("batcher"), dict):
            raise ResumeError(f"checkpoint epoch-{epoch} was not pushed by a local run "
                              f"(metadata {sorted(meta)}); use --no-resume or another store")
        if ckpt.optimizer_state is None:
            raise ResumeError(f"checkpoint epoch-{epoch} has no optimizer.pt")
        load_state_into(self.model, ckpt.state_dict)
        self.optimizer.load_state_dict(ckpt.optimizer_state)
        self.batcher.load_state_dict(meta["batcher"])
        self.step = epoch
        log.info("resumed from epoch-%d in %s", epoch, self.store)
        return epoch


def run(trainer: LocalTrainer, *, steps: int, log_every: int = 10, push_every: int = 0,
        telemetry: Telemetry | None = None, progress: bool = True) -> list[StepStats]:
    """Train until ``trainer.step == steps`` (a total, like nanoGPT's ``max_iters``).

    Pushes every ``push_every`` steps (0 = never in between) and once at the end; logs loss,
    learning rate, grad norm and tokens/s to ``telemetry`` every ``log_every`` steps.
    """
    history: list[StepStats] = []
    bar = tqdm(total=steps, initial=trainer.step, disable=not progress, unit="step",
               dynamic_ncols=True)
    try:
        while trainer.step < steps:
            stats = trainer.train_step()
            history.append(stats)
            tokens_per_s = stats.tokens / max(stats.seconds, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{stats.loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
            if telemetry is not None and (stats.step % max(log_every, 1) == 0
                                          or stats.step == steps):
                telemetry.log({"loss": stats.loss, "lr": stats.lr, "grad_norm": stats.grad_norm,
                               "tokens_per_s": tokens_per_s}, step=stats.step)
            if push_every > 0 and stats.step % push_every == 0:
                bar.write(f"pushed {trainer.push()}")
    finally:
        bar.close()
    if history and (push_every <= 0 or trainer.step % push_every != 0):
        log.info("pushed %s", trainer.push())
    return history
