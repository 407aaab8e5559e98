"""Seeded random projection of many tensors to a few numbers.

Both the parameter fingerprint (:func:`template.model.fingerprint`) and the gradient sketches
(:mod:`template.proof`) are this projection, so miner and validator compute them identically.

How it works. The tensors are walked in the order given; each is flattened and cut into chunks
of ``CHUNK`` values (the last chunk zero-padded). Chunk ``c`` of the whole walk contributes
``sign[c] * (chunk_c @ R)``, where ``R`` is a ``CHUNK x dims`` matrix of N(0, 1/dims) values and
``sign`` a +-1 vector, both drawn from a CPU ``torch.Generator`` seeded with ``seed``. This is a
Johnson-Lindenstrauss projection: for any vectors ``a`` and ``b``,
``E[<P a, P b>] = <a, b>``, so cosine similarity and norm ratio of two projections estimate
those of the full vectors (relative error about ``1/sqrt(dims)``), and every value counts.

Cost: one ``(N/CHUNK) x CHUNK @ CHUNK x dims`` matmul, about ``2 * dims`` FLOPs per value;
memory is one chunk matrix per tensor. The result is float64 on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import torch

CHUNK = 4096


@lru_cache(maxsize=8)
def _basis(seed: int, dims: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(CHUNK, dims, generator=gen, dtype=torch.float32) / dims**0.5


def _signs(seed: int, start: int, count: int) -> torch.Tensor:
    # Signs for chunks [start, start + count): a generator per block of 2**16 chunks keeps the
    # draw independent of how tensors are split, without materialising one sign per chunk.
    out = torch.empty(count, dtype=torch.float32)
    block = 1 << 16
    pos = 0
    while pos < count:
        index = start + pos
        b, offset = divmod(index, block)
        gen = torch.Generator().manual_seed((seed * 1_000_003 + b + 1) % (2**63))
        signs = torch.randint(0, 2, (block,), generator=gen, dtype=torch.int8)
        take = min(count - pos, block - offset)
        out[pos : pos + take] = signs[offset : offset + take].float() * 2 - 1
        pos += take
    return out


@torch.no_grad()
def project(tensors: Iterable[torch.Tensor], *, seed: int, dims: int) -> torch.Tensor:
    """Project the concatenation of ``tensors`` to ``dims`` numbers (float64, CPU)."""
    total = torch.zeros(dims, dtype=torch.float64)
    chunk_index = 0
    basis_cache: dict[torch.device, torch.Tensor] = {}
    for tensor in tensors:
        flat = tensor.detach().reshape(-1)
        if flat.numel() == 0:
            continue
        device = flat.device
        if device not in basis_cache:
            basis_cache[device] = _basis(seed, dims).to(device)
        pad = (-flat.numel()) % CHUNK
        chunks = torch.nn.functional.pad(flat.float(), (0, pad)).view(-1, CHUNK)
        signs = _signs(seed, chunk_index, chunks.shape[0]).to(device)
        total += (signs @ (chunks @ basis_cache[device])).double().cpu()
        chunk_index += chunks.shape[0]
    return total
