"""The optimizer side of one epoch: accumulate gradients, then one guarded AdamW step.

An *epoch* of the swarm is one optimizer step: every miner accumulates the gradient of the mean
loss over its batches at the same weights, the swarm averages those gradients (weighted by
samples), and every peer applies the same averaged gradient with :func:`apply_gradients`. The
learning-rate schedule is therefore counted in epochs.

Miner, validator (which may replay the step on its own copy of the model) and the
single-process trainer all use these functions, so the step is computed the same way everywhere.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from template.config import OptimConfig


def learning_rate(epoch: int, cfg: OptimConfig) -> float:
    """Linear warmup for `warmup_epochs`, cosine decay to `min_lr` at `total_epochs`, then flat.

    Pure: every peer derives the rate of an epoch from the epoch number alone, so a peer that
    joins late applies exactly the rate the others apply.
    """
    if epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / (cfg.warmup_epochs + 1)
    if epoch >= cfg.total_epochs:
        return cfg.min_lr
    span = max(1, cfg.total_epochs - cfg.warmup_epochs)
    progress = (epoch - cfg.warmup_epochs) / span
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (nanoGPT's grouping: no decay on biases, norms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def accumulate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    *,
    autocast: AbstractContextManager | None = None,
) -> float:
    """Forward and backward of one batch; adds d(mean loss)/d(theta) to the `.grad` buffers.

    Returns the batch's mean loss. Call :func:`mean_gradient` after the last batch so the
    accumulated sum becomes a mean over batches before it is averaged or applied.
    """
    with autocast or nullcontext():
        loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    return float(loss.detach())


@torch.no_grad()
def mean_gradient(model: torch.nn.Module, num_batches: int) -> None:
    """Turn the sum of `num_batches` per-batch gradients into their mean, in place."""
    if num_batches > 1:
        for p in model.parameters():
            if p.grad is not None:
                p.grad.div_(num_batches)


@dataclass(frozen=True)
class StepOutcome:
    """What one guarded optimizer step did."""

    applied: bool
    lr: float
    grad_norm: float
    reason: str = ""


def apply_gradients(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    lr: float,
    max_grad_norm: float,
) -> StepOutcome:
    """Clip and apply the gradient in `.grad`, unless it holds NaN or Inf.

    A non-finite gradient is never applied: the parameters and the optimizer state stay exactly
    as they were, the gradient is cleared, and the outcome says why. Gradients are zeroed after
    a step either way, ready for the next epoch's accumulation.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return StepOutcome(applied=False, lr=lr, grad_norm=0.0, reason="no gradient")
    norm = torch.nn.utils.clip_grad_norm_(
        params, max_norm=max_grad_norm if max_grad_norm > 0 else float("inf")
    )
    grad_norm = float(norm)
    if not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return StepOutcome(
            applied=False, lr=lr, grad_norm=grad_norm,
            reason=f"non-finite gradient (norm {grad_norm}); step skipped, state kept",
        )
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepOutcome(applied=True, lr=lr, grad_norm=grad_norm)
