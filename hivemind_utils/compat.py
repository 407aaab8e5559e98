"""A fix for hivemind 1.1.12's 8-bit codec, installed where hivemind looks codecs up.

Two problems, both measured here (tests/test_averaging.py covers them):

1. ``Quantization.extract`` does ``int(np.frombuffer(..., count=1))``; NumPy >= 2.4 refuses to
   turn a 1-element array into an int, so every 8-bit part fails to decode and the round keeps
   ~1/N of the average (``Averaging: received 33.3% results``).
2. ``Uniform8BitQuantization`` divides by the part's standard deviation: a constant part (the
   auxiliary peer's zeros, an unused parameter's zero gradient) or a 1-value part cannot be
   quantized. Those parts are sent as float16 instead; the receiver decodes each part by the
   codec named in the part itself, so this stays compatible with unpatched peers.

hivemind decodes (and re-encodes reducer deltas) through its codec table, keyed by wire type, so
the fixed codec is registered there; the wire format is unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
from hivemind.compression import serialization
from hivemind.compression.base import CompressionInfo
from hivemind.compression.floating import Float16Compression
from hivemind.compression.quantization import Uniform8BitQuantization
from hivemind.proto import runtime_pb2


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
