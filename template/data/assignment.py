"""Deterministic page assignment: which pages miner ``uid`` trains on in epoch ``e``.

A validator must re-derive exactly the pages a miner was given, on any machine, so the
assignment is a pure function of ``(run_id, epoch, miner, pages_per_miner, dataset_size)``
built from SHA-256 only (never Python's salted ``hash()``, never a global RNG).

Algorithm (version 1), precise enough to re-implement:

1. ``n = dataset_size``. Key ``K = SHA256(f"assign_pages:v1:{run_id}:{epoch}:{n}")`` (UTF-8).
2. A keyed permutation ``P`` of ``[0, n)``: a balanced Feistel network on ``2*h`` bits, where
   ``b = max(1, (n - 1).bit_length())`` and ``h = ceil(b / 2)``, so the Feistel domain
   ``[0, 2**(2h))`` covers ``[0, n)`` and is smaller than ``4n``. To encrypt ``x``: split
   ``L = x >> h``, ``R = x & (2**h - 1)``; for round ``r = 0..3``:
   ``L, R = R, L ^ F(r, R)`` with ``F(r, R) = int.from_bytes(D[:8], "big") & (2**h - 1)``,
   ``D = SHA256(K + bytes([r]) + R.to_bytes(8, "big"))``;
   the output is ``(L << h) | R``. Feistel networks are bijections for any round function.
3. Cycle walking: ``P(i)`` starts at ``y = E(i)`` and repeats ``y = E(y)`` while ``y >= n``.
   Because ``E`` is a bijection of the larger domain, this is a bijection of ``[0, n)``
   (expected fewer than 4 steps).
4. Miner ``u`` gets ``[P(i) for i in range(u * ppm, (u + 1) * ppm)]`` (``ppm`` =
   ``pages_per_miner``): consecutive slices of one permutation, hence disjoint between miners
   of the same epoch; a new epoch changes ``K`` and so the whole permutation.

Cost: ``ppm`` evaluations of ``P``, each a few SHA-256 calls; independent of ``n``.
"""

from __future__ import annotations

import hashlib

ROUNDS = 4
VERSION = "v1"


def _key(run_id: str, epoch: int, dataset_size: int) -> bytes:
    return hashlib.sha256(
        f"assign_pages:{VERSION}:{run_id}:{epoch}:{dataset_size}".encode()
    ).digest()


def _feistel(x: int, key: bytes, half_bits: int) -> int:
    mask = (1 << half_bits) - 1
    left, right = x >> half_bits, x & mask
    for r in range(ROUNDS):
        digest = hashlib.sha256(key + bytes([r]) + right.to_bytes(8, "big")).digest()
        left, right = right, left ^ (int.from_bytes(digest[:8], "big") & mask)
    return (left << half_bits) | right


def permuted_index(position: int, *, key: bytes, dataset_size: int) -> int:
    """Image of ``position`` under the keyed permutation of ``[0, dataset_size)``."""
    if not 0 <= position < dataset_size:
        raise ValueError(f"position {position} outside [0, {dataset_size})")
    bits = max(1, (dataset_size - 1).bit_length())
    half_bits = (bits + 1) // 2
    y = _feistel(position, key, half_bits)
    while y >= dataset_size:
        y = _feistel(y, key, half_bits)
    return y


def assign_pages(*, run_id: str, epoch: int, miner: int, pages_per_miner: int,
                 dataset_size: int) -> list[int]:
    """Pages (indices into the page source) that miner uid ``miner`` trains on in ``epoch``.

    Pure and portable (see the module docstring for the exact algorithm). Miners of one epoch
    get disjoint pages; the same miner gets different pages in different epochs. Raises
    ``ValueError`` when the dataset is too small to give ``miner`` its own pages.
    """
    if not isinstance(run_id, str) or not run_id:
        raise ValueError("run_id must be a non-empty string (--neuron.run_id)")
    for name, value, low in (("epoch", epoch, 0), ("miner", miner, 0),
                             ("pages_per_miner", pages_per_miner, 1),
                             ("dataset_size", dataset_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    end = (miner + 1) * pages_per_miner
    if end > dataset_size:
        raise ValueError(
            f"dataset has {dataset_size} pages but miner uid {miner} needs pages up to "
            f"position {end} ((uid + 1) * pages_per_miner with pages_per_miner="
            f"{pages_per_miner}); lower --data.pages_per_epoch or use more pages "
            f"(more shards in --data.dir, or --data.source fineweb)"
        )
    key = _key(run_id, epoch, dataset_size)
    return [permuted_index(i, key=key, dataset_size=dataset_size)
            for i in range(miner * pages_per_miner, end)]
