"""Fixes for hivemind 1.1.12: the 8-bit codec, and p2pd outliving the DHT process.

The 8-bit codec, two problems, both measured here (tests/test_averaging.py covers them):

1. ``Quantization.extract`` does ``int(np.frombuffer(..., count=1))``; NumPy >= 2.4 refuses to
   turn a 1-element array into an int, so every 8-bit part fails to decode and the round keeps
   ~1/N of the average (``Averaging: received 33.3% results``).
2. ``Uniform8BitQuantization`` divides by the part's standard deviation: a constant part (the
   auxiliary peer's zeros, an unused parameter's zero gradient) or a 1-value part cannot be
   quantized. Those parts are sent as float16 instead; the receiver decodes each part by the
   codec named in the part itself, so this stays compatible with unpatched peers.

hivemind decodes (and re-encodes reducer deltas) through its codec table, keyed by wire type, so
the fixed codec is registered there; the wire format is unchanged.

p2pd: ``P2P.create`` launches the daemon with ``asyncio.subprocess.create_subprocess_exec`` and
no ``preexec_fn``, so a DHT process killed with SIGKILL leaves its p2pd running forever.
:func:`install_p2pd_death_signal` wraps that call (p2pd launches only) to add
:func:`hivemind_utils.lifetime.p2pd_preexec`: p2pd gets SIGKILL when its DHT process dies.
"""

from __future__ import annotations

import asyncio.subprocess
import functools
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import torch
from hivemind.compression import serialization
from hivemind.compression.base import CompressionInfo
from hivemind.compression.floating import Float16Compression
from hivemind.compression.quantization import Uniform8BitQuantization
from hivemind.proto import runtime_pb2

from hivemind_utils.lifetime import p2pd_preexec


class SafeUniform8BitQuantization(Uniform8BitQuantization):
    """hivemind's uniform 8-bit codec, decodable with NumPy >= 2.4, float16 for constant parts."""

    _fallback = Float16Compression()

    def compress(self, tensor: torch.Tensor, info: CompressionInfo,
                 allow_inplace: bool = False) -> runtime_pb2.Tensor:
        flat = tensor.detach()
        if flat.numel() < 2 or not bool(flat.max() > flat.min()):
            return self._fallback.compress(tensor, info, allow_inplace)
        return super().compress(tensor, info, allow_inplace)

    def extract(self, serialized_tensor: runtime_pb2.Tensor) -> torch.Tensor:
        buffer = serialized_tensor.buffer
        codebook_size = int(np.frombuffer(buffer, count=1, dtype=np.int64)[0])
        codebook = np.frombuffer(buffer, offset=8, count=codebook_size, dtype=self.codebook_dtype)
        quantized = np.frombuffer(buffer, offset=8 + codebook.nbytes, dtype=self.indices_dtype)
        shape = tuple(serialized_tensor.size)
        indices = torch.as_tensor(quantized, dtype=torch.int64).reshape(shape)
        values = torch.as_tensor(codebook).to(dtype=getattr(torch, serialized_tensor.dtype))
        return values[indices].requires_grad_(serialized_tensor.requires_grad)


def install() -> None:
    """Register the fixed codec for the UNIFORM_8BIT wire type (idempotent)."""
    table = serialization._BASE_COMPRESSION_TYPES  # hivemind 1.1.12's codec table (pinned)
    if not isinstance(table["UNIFORM_8BIT"], SafeUniform8BitQuantization):
        table["UNIFORM_8BIT"] = SafeUniform8BitQuantization()


def _with_p2pd_death_signal(
    launch: Callable[..., Awaitable[asyncio.subprocess.Process]],
) -> Callable[..., Awaitable[asyncio.subprocess.Process]]:
    @functools.wraps(launch)
    def create_subprocess_exec(program: Any, *args: Any, **kwargs: Any
                               ) -> Awaitable[asyncio.subprocess.Process]:
        # PDEATHSIG follows the launching *thread*: arm it only from the main thread (hivemind
        # starts p2pd there, in the DHT process), else a finished worker thread would kill p2pd.
        if (os.path.basename(str(program)) == "p2pd" and "preexec_fn" not in kwargs
                and threading.current_thread() is threading.main_thread()):
            kwargs["preexec_fn"] = p2pd_preexec(os.getpid())
        return launch(program, *args, **kwargs)

    create_subprocess_exec._p2pd_death_signal = True  # type: ignore[attr-defined]
    return create_subprocess_exec


def install_p2pd_death_signal() -> None:
    """Make every p2pd hivemind launches from now on die with the process that launched it
    (idempotent; only calls whose program is ``p2pd`` change)."""
    launch = asyncio.subprocess.create_subprocess_exec
    if not getattr(launch, "_p2pd_death_signal", False):
        asyncio.subprocess.create_subprocess_exec = _with_p2pd_death_signal(launch)
