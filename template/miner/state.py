"""The miner's training state as peers exchange it: weights, AdamW moments, epoch.

A miner serves this state through its averager (hivemind's `rpc_download_state`), and a late
joiner or a restarted miner loads it from a peer before falling back to the checkpoint store.
What arrives is input from the network: :func:`apply_training_state` checks every field and
raises :class:`StateRejected` with the reason before touching the model.
"""

from __future__ import annotations

import math
from typing import Any

import torch

STATE_VERSION = 1


class StateRejected(ValueError):
    """A peer's state does not fit this run or this model (the reason says why)."""


def training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, epoch: int,
                   run_id: str) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """``(metadata, tensors)``: parameters, then each parameter's AdamW moments (if any)."""
    params = list(model.parameters())
    tensors = [p.detach().cpu().clone() for p in params]
    states = [optimizer.state.get(p, {}) for p in params]
    has_moments = all("exp_avg" in st and "exp_avg_sq" in st for st in states)
    step = 0
    if has_moments:
        for st in states:
            tensors += [st[key].detach().cpu().clone() for key in ("exp_avg", "exp_avg_sq")]
        step = int(float(states[0]["step"]))
    metadata = {"version": STATE_VERSION, "run_id": run_id, "epoch": int(epoch),
                "moments": has_moments, "step": step}
    return metadata, tensors


def apply_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                         metadata: Any, tensors: Any, *, run_id: str) -> int:
    """Load a peer's state into `model` and `optimizer`; returns its epoch."""
    epoch, moments, step = _check_metadata(metadata, run_id=run_id)
    params = list(model.parameters())
    expected = len(params) * (3 if moments else 1)
    if not isinstance(tensors, (list, tuple)) or len(tensors) != expected:
        raise StateRejected(f"expected {expected} tensors, got "
                            f"{len(tensors) if isinstance(tensors, (list, tuple)) else tensors!r}")
    shapes = [p.shape for p in params]
    if moments:
        shapes += [p.shape for p in params for _ in ("exp_avg", "exp_avg_sq")]
    for i, (tensor, shape) in enumerate(zip(tensors, shapes, strict=True)):
        if not isinstance(tensor, torch.Tensor) or tensor.shape != shape:
            raise StateRejected(f"tensor {i}: expected shape {tuple(shape)}")
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise StateRejected(f"tensor {i}: not a finite floating-point tensor")
    with torch.no_grad():
        for p, value in zip(params, tensors[: len(params)], strict=True):
            p.copy_(value.to(device=p.device, dtype=p.dtype))
    optimizer.state.clear()
    if moments:
        n = len(params)
        for i, p in enumerate(params):
            optimizer.state[p] = {
                "step": torch.tensor(float(step)),
                "exp_avg": tensors[n + 2 * i].to(device=p.device, dtype=p.dtype).clone(),
                "exp_avg_sq": tensors[n + 2 * i + 1].to(device=p.device, dtype=p.dtype).clone(),
            }
    model.zero_grad(set_to_none=True)
    return epoch


def _check_metadata(metadata: Any, *, run_id: str) -> tuple[int, bool, int]:
    if not isinstance(metadata, dict) or metadata.get("version") != STATE_VERSION:
        raise StateRejected(f"unknown state format {metadata!r:.80}")
    if metadata.get("run_id") != run_id:
        raise StateRejected(f"state of run {metadata.get('run_id')!r}, this is {run_id!r}")
    epoch, moments, step = metadata.get("epoch"), metadata.get("moments"), metadata.get("step")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise StateRejected(f"bad epoch {epoch!r}")
    if not isinstance(moments, bool):
        raise StateRejected(f"bad moments flag {moments!r}")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0 or not math.isfinite(step):
        raise StateRejected(f"bad step {step!r}")
    return epoch, moments, step
