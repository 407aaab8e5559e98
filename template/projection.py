"""Seeded random projection of many tensors to a few numbers.

Both the parameter fingerprint (:func:`template.model.fingerprint`) and the gradient sketches
(:mod:`template.proof`) are this projection, so miner and validator compute them identically.

How it works. The tensors are walked in the order given, flattened and concatenated, and the
resulting vector is cut into chunks of ``CHUNK`` values (the last one zero-padded). Chunk ``c``
contributes ``sign[c] * (chunk_c @ R[c % BASES])``, where each ``R[k]`` is a ``CHUNK x dims``
matrix of N(0, 1/dims) values and ``sign`` a +-1 vector, all drawn from a CPU
``torch.Generator`` seeded with ``seed``. This is a Johnson-Lindenstrauss projection: for any
vectors ``a`` and ``b``, ``E[<P a, P b>] = <a, b>``, so cosine similarity and norm ratio of two
projections estimate those of the full vectors (relative error about ``1/sqrt(dims)``), and
every value counts.
Several bases, not one: a change that repeats from chunk to chunk (an optimizer step on the rows
of a matrix looks like that) would otherwise be measured through a single random sum of signs,
with a spread far wider than ``1/sqrt(dims)``.

Cost: the signed chunks of each basis are summed first (``sign @ chunks``, 2 FLOPs per value),
then ``BASES`` products of one ``CHUNK`` vector with a ``CHUNK x dims`` matrix, whatever the
model size: the same linear map as projecting every chunk, ``dims`` times cheaper (the sketch of
a gpt2-124m gradient went from ~0.6 s to memory speed on 2 CPU cores). Full chunks are read in
place (no copy); only chunks that straddle two tensors are copied. The result is float64 on the
CPU.
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
    """Project the concatenation of ``tensors`` to ``dims`` numbers (float64, CPU).

    Chunks run across tensor boundaries (the walk is one long vector), so many small tensors
    (biases, norms) share chunks instead of each paying for a padded chunk of its own.
    """
    total = torch.zeros(dims, dtype=torch.float64)
    chunk_index = 0
    carry: torch.Tensor | None = None  # the start of a chunk not yet full
    basis: torch.Tensor | None = None
    for tensor in tensors:
        flat = tensor.detach().reshape(-1).float()
        if flat.numel() == 0:
            continue
        if basis is None or basis.device != flat.device:
            basis = _basis(seed, dims).to(flat.device)
        if carry is not None:
            need = CHUNK - carry.numel()
            carry = torch.cat([carry.to(flat.device), flat[:need]])
            flat = flat[need:]
            if carry.numel() < CHUNK:
                continue
            total += _project_chunks(carry.view(1, CHUNK), basis, seed=seed, first=chunk_index)
            chunk_index, carry = chunk_index + 1, None
        full = flat.numel() // CHUNK
        if full:
            chunks = flat[: full * CHUNK].view(full, CHUNK)
            total += _project_chunks(chunks, basis, seed=seed, first=chunk_index)
            chunk_index += full
        if flat.numel() % CHUNK:
            carry = flat[full * CHUNK:].clone()
    if carry is not None and basis is not None:
        padded = torch.nn.functional.pad(carry, (0, CHUNK - carry.numel()))
        total += _project_chunks(padded.view(1, CHUNK), basis, seed=seed, first=chunk_index)
    return total


def _project_chunks(chunks: torch.Tensor, basis: torch.Tensor, *, seed: int,
                    first: int) -> torch.Tensor:
    """Sum over rows c of ``sign[first + c] * chunks[c] @ basis[(first + c) % BASES]``."""
    signs = _signs(seed, first, chunks.shape[0]).to(chunks.device)
    out = torch.zeros(basis.shape[-1], dtype=torch.float64, device=chunks.device)
    for k in range(BASES):
        start = (k - first) % BASES  # rows whose global chunk index is k modulo BASES
        rows = chunks[start::BASES]
        if rows.shape[0]:  # fold first: (s @ rows) @ R == s @ (rows @ R), 2 FLOPs per value
            out += ((signs[start::BASES] @ rows) @ basis[k]).double()
    return out.cpu()
