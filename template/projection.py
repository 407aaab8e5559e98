"""Seeded random projection of many tensors to a few numbers.

Both the parameter fingerprint (:func:`template.model.fingerprint`) and the gradient sketches
(:mod:`template.proof`) are this projection, so miner and validator compute them identically.

How it works. The tensors are walked in the order given; each is flattened and cut into chunks
of ``CHUNK`` values (the last chunk zero-padded). Chunk ``c`` of the whole walk contributes
``sign[c] * (chunk_c @ R[c % BASES])``, where each ``R[k]`` is a ``CHUNK x dims`` matrix of
N(0, 1/dims) values and ``sign`` a +-1 vector, all drawn from a CPU ``torch.Generator`` seeded
with ``seed``. This is a Johnson-Lindenstrauss projection: for any vectors ``a`` and ``b``,
``E[<P a, P b>] = <a, b>``, so cosine similarity and norm ratio of two projections estimate
those of the full vectors (relative error about ``1/sqrt(dims)``), and every value counts.
Several bases, not one: a change that repeats from chunk to chunk (an optimizer step on the
rows of a matrix looks like that) would otherwise be measured through a single random sum of
signs, with a spread far wider than ``1/sqrt(dims)``.

Cost: one ``(N/CHUNK) x CHUNK @ CHUNK x dims`` matmul, about ``2 * dims`` FLOPs per value;
full chunks are read in place (no copy), only a tensor's last partial chunk is padded. The
result is float64 on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import torch

CHUNK = 4096
BASES = 8


@lru_cache(maxsize=8)
def _basis(seed: int, dims: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(BASES, CHUNK, dims, generator=gen, dtype=torch.float32) / dims**0.5


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
        total += _project_flat(flat, basis_cache[device], seed=seed, first_chunk=chunk_index)
        chunk_index += -(-flat.numel() // CHUNK)
    return total


def _project_flat(flat: torch.Tensor, basis: torch.Tensor, *, seed: int,
                  first_chunk: int) -> torch.Tensor:
    full = flat.numel() // CHUNK
    chunks = flat[: full * CHUNK].view(full, CHUNK)
    if flat.numel() % CHUNK:
        last = torch.nn.functional.pad(flat[full * CHUNK:], (0, CHUNK - flat.numel() % CHUNK))
        chunks = torch.cat([chunks, last.view(1, CHUNK)])
    signs = _signs(seed, first_chunk, chunks.shape[0]).to(flat.device)
    out = torch.zeros(basis.shape[-1], dtype=torch.float64, device=flat.device)
    for k in range(BASES):
        start = (k - first_chunk) % BASES  # chunks whose global index is k modulo BASES
        rows = chunks[start::BASES]
        if rows.shape[0]:
            part = signs[start::BASES] @ (rows.float() @ basis[k])
            out += part.double()
    return out.cpu()
