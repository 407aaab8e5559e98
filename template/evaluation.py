"""Held-out evaluation of a checkpoint: its loss on pages no miner trains on, and whether it
beats the previous epoch on the same batches.

Training loss says how well miners fit the pages they were given; it cannot show a round that
made the model worse. The held-out slice (:func:`template.data.assignment.heldout_pages`, the
last ~3% of the pages, never assigned) can: every canonical checkpoint ``epoch-N`` is scored
on a seeded sample of its batches, and so is ``epoch-(N-1)``, on the *same* batches. From the
two per-batch loss lists come (:func:`eval_record`):

- ``heldout_loss``: mean next-token cross-entropy (nats per token) of ``epoch-N``;
  ``perplexity = exp(heldout_loss)``;
- ``win_fraction``: the share of batches on which ``epoch-N`` has the lower loss (a tie counts
  half), the paired win counting SN9 uses to compare models: robust to a few odd batches;
- ``delta = heldout_loss - previous_loss``, and ``flagged`` when ``delta`` exceeds
  ``--evaluator.threshold`` nats: the epoch made the model worse on unseen text (a poisoned or
  broken round shows here first).

The batch sample is a pure function of ``(run_id, epoch)`` (:func:`sample_batches`), so anyone
holding the same shards re-derives it and can check an ``eval.json``. Everything here is
plain values in, numbers out, except :func:`batch_losses`, which runs the model.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from template.checkpoints.evals import EVAL_VERSION
from template.data.assignment import heldout_pages
from template.data.batches import epoch_batches
from template.data.sources import PageSource

MAX_LOSS = 1e4
"""Nats a batch counts for when its loss is not finite: a broken model is scored (and flagged)
rather than crashing the evaluator or writing NaN."""
MAX_LOG_PERPLEXITY = 700.0
"""``perplexity`` is ``exp(min(heldout_loss, 700))``: finite (JSON) for any loss."""


@dataclass(frozen=True)
class HeldOutSlice:
    """The held-out pages, tokenized once into full ``[batch_size, seq_len]`` batches."""

    pages: range
    batches: tuple[torch.Tensor, ...]

    @property
    def tokens(self) -> int:
        """Tokens in the slice's full batches."""
        return sum(b.numel() for b in self.batches)


def heldout_slice(source: PageSource, tokenizer: Any, *, seq_len: int,
                  batch_size: int) -> HeldOutSlice:
    """Read and tokenize the held-out pages of ``source`` (training packing: EOS after every
    page, trailing partial batch dropped). ``ValueError`` naming the flags when they make no
    full batch."""
    pages = heldout_pages(source.num_pages)
    batches = epoch_batches(source.pages(list(pages)), tokenizer, seq_len=seq_len,
                            batch_size=batch_size)
    if not batches:
        raise ValueError(
            f"the held-out slice (pages {pages.start}-{pages.stop - 1} of {source.num_pages}) "
            f"makes no full {batch_size} x {seq_len} batch; lower --data.batch_size or "
            "--data.seq_len, or use more pages (--data.dir)")
    return HeldOutSlice(pages=pages, batches=tuple(batches))


def sample_batches(available: int, count: int, *, run_id: str, epoch: int) -> list[int]:
    """``min(count, available)`` distinct batch indices in ``[0, available)``, sorted: the
    ones ``epoch`` is scored on. Seeded by ``SHA256(f"heldout-batches:{run_id}:{epoch}")`` (first
    8 bytes, big-endian, into ``random.Random(seed).sample``): a fresh draw per epoch, the same on
    every machine."""
    if available < 1 or count < 1:
        raise ValueError(f"need at least one batch to sample (available={available}, "
                         f"count={count})")
    digest = hashlib.sha256(f"heldout-batches:{run_id}:{epoch}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    return sorted(rng.sample(range(available), min(count, available)))


@torch.no_grad()
def batch_losses(model: torch.nn.Module, batches: Sequence[torch.Tensor], *,
                 device: str | torch.device = "cpu") -> list[float]:
    """Mean next-token loss (nats) of ``model`` on each batch, in eval mode, fp32; a loss that
    is not finite counts as :data:`MAX_LOSS`. The model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        out = []
        for batch in batches:
            ids = batch.to(device)
            loss = float(model(input_ids=ids, labels=ids).loss)
            out.append(loss if math.isfinite(loss) else MAX_LOSS)
        return out
    finally:
        model.train(was_training)


def win_fraction(new: Sequence[float], old: Sequence[float]) -> float:
    """Share of paired batches on which ``new`` has the lower loss; a tie counts half."""
    if len(new) != len(old) or not new:
        raise ValueError(f"need the same, non-zero number of losses ({len(new)} vs {len(old)})")
    wins = sum(1.0 if n < o else 0.5 if n == o else 0.0 for n, o in zip(new, old, strict=True))
    return wins / len(new)


def is_flagged(delta: float | None, threshold: float) -> bool:
    """Did held-out loss rise over the previous epoch by more than ``threshold`` nats?"""
    return delta is not None and delta > threshold


def perplexity(loss: float) -> float:
    """``exp(loss)``, capped at ``exp(MAX_LOG_PERPLEXITY)`` so it stays finite."""
    return math.exp(min(loss, MAX_LOG_PERPLEXITY))


def eval_record(*, epoch: int, tag: str, losses: Sequence[float],
                previous_epoch: int | None, previous_losses: Sequence[float] | None,
                threshold: float, tokens: int, seconds: float) -> dict[str, Any]:
    """The ``eval.json`` object (schema: :func:`template.checkpoints.evals.parse_eval`) from
    the per-batch losses of ``epoch`` and, on the same batches, of ``previous_epoch`` (both
    None when there is nothing to compare with)."""
    if not losses:
        raise ValueError("no held-out losses to record")
    if (previous_epoch is None) != (previous_losses is None):
        raise ValueError("previous_epoch and previous_losses go together")
    loss = sum(losses) / len(losses)
    previous_loss = delta = wins = None
    if previous_losses is not None:
        previous_loss = sum(previous_losses) / len(previous_losses)
        delta = loss - previous_loss
        wins = win_fraction(losses, previous_losses)
    return {
        "version": EVAL_VERSION, "epoch": epoch, "tag": tag,
        "heldout_loss": loss, "perplexity": perplexity(loss),
        "tokens": tokens, "batches": len(losses),
        "previous_epoch": previous_epoch, "previous_loss": previous_loss,
        "win_fraction": wins, "delta": delta,
        "flagged": is_flagged(delta, threshold), "threshold": threshold,
        "seconds": max(0.0, seconds),
    }


def describe(record: dict[str, Any]) -> str:
    """The evaluator's one log line for a record."""
    line = (f"epoch {record['epoch']} ({record['tag']}): held-out loss "
            f"{record['heldout_loss']:.4f} (perplexity {record['perplexity']:.1f}) on "
            f"{record['batches']} batches, {record['tokens']} tokens")
    if record["previous_epoch"] is not None:
        line += (f"; epoch {record['previous_epoch']} {record['previous_loss']:.4f} on the "
                 f"same batches, delta {record['delta']:+.4f}, wins "
                 f"{record['win_fraction']:.2f}")
    return line + f"; {record['seconds']:.1f} s"
