"""Device and precision selection for `--neuron.device` and `--neuron.precision`.

Miner and validator both go through these three functions, so a validator recomputing a batch
runs the same kind of forward/backward as the miner that trained it:

    device = resolve_device(cfg.neuron.device)            # torch.device("cuda:0") or cpu
    precision = resolve_precision(cfg.neuron.precision, device)   # "bf16" or "fp32"
    with autocast(device, precision):
        loss = model(input_ids, labels=input_ids).loss
    loss.backward()                                       # grads are fp32 (params are fp32)

Why autocast rather than a bf16 model: parameters, gradients and the optimizer state stay fp32,
so the all-reduce averages fp32 gradients and a bf16 miner and an fp32 validator differ only by
the rounding inside matmuls (measured in docs/validator.md), never by the dtype of what is sent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from template.config import ConfigError

PRECISIONS = ("fp32", "bf16")


def resolve_device(spec: str) -> torch.device:
    """`auto` -> cuda when one is visible else cpu; `cpu`; `cuda`; `cuda:N`.

    Raises :class:`ConfigError` naming `--neuron.device` when a CUDA device is asked for and the
    machine has none (or fewer than N+1), instead of failing later inside the first forward pass.
    """
    flag = "--neuron.device"
    text = spec.strip().lower()
    if text == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        index_text = text.partition(":")[2] or "0"
        if not index_text.isdigit():
            raise ConfigError(flag, f"bad CUDA index in {spec!r}; use cuda or cuda:N (N >= 0)")
        index = int(index_text)
        if not torch.cuda.is_available():
            raise ConfigError(
                flag, f"{spec!r} asked for, but torch sees no CUDA device; use cpu or auto"
            )
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(
                flag,
                f"{spec!r} asked for, but only {count} CUDA device(s) (cuda:0..cuda:{count - 1})",
            )
        return torch.device("cuda", index)
    raise ConfigError(flag, f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")


def resolve_precision(spec: str, device: torch.device) -> str:
    """`auto` -> `bf16` on CUDA, `fp32` elsewhere; `fp32` and `bf16` are taken as given.

    bf16 on CPU is allowed (it is how tests exercise the switch) but is slower than fp32 on most
    CPUs; `auto` therefore never picks it there.
    """
    text = spec.strip().lower()
    if text == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    if text in PRECISIONS:
        return text
    raise ConfigError(
        "--neuron.precision", f"unknown precision {spec!r}; use auto, {', '.join(PRECISIONS)}"
    )


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast around forward (and the loss) when `precision == "bf16"`; nothing for fp32.

    Parameters stay fp32, so `.grad` tensors are fp32 whatever the precision: only the matmuls
    inside the context run in bf16. Wrap the forward pass; `backward()` may run inside or
    outside (autograd replays the dtypes recorded in the forward).
    """
    if precision == "fp32":
        yield
        return
    if precision != "bf16":
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
        yield
