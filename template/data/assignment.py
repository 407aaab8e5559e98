"""Deterministic page assignment: which pages miner ``uid`` trains on in epoch ``e``.

A validator must re-derive exactly the pages a miner was given, on any machine, so the
assignment is a pure function of ``(run_id, epoch, miner, pages_per_miner, dataset_size)``
built from SHA-256 only (never Python's salted ``hash()``, never a global RNG).

The last pages of the dataset are a *held-out slice* that no miner is ever assigned: the
evaluator measures each checkpoint's loss on them (:mod:`template.evaluation`). It is fixed by
``dataset_size`` alone (the same for every epoch, uid and run on the same pages), contiguous
(cheap to read: a few row groups) and excluded by construction, since the permutation below
only ranges over the pages before it.

Algorithm (version 2), precise enough to re-implement:

0. ``n = dataset_size`` (at least 2). Held-out count
   ``H = min(HELDOUT_MAX_PAGES, max(1, n // HELDOUT_DIVISOR))`` (8192 and 32); the held-out
   slice is pages ``[n - H, n)``; miners draw from the ``m = n - H`` training pages ``[0, m)``.
1. Key ``K = SHA256(f"assign_pages:v2:{run_id}:{epoch}:{n}")`` (UTF-8; ``n``, not ``m``).
2. A keyed permutation ``P`` of ``[0, m)``: a balanced Feistel network on ``2*h`` bits, where
   ``b = max(1, (m - 1).bit_length())`` and ``h = ceil(b / 2)``, so the Feistel domain
   ``[0, 2**(2h))`` covers ``[0, m)`` and is smaller than ``4m``. To encrypt ``x``: split
   ``L = x >> h``, ``R = x & (2**h - 1)``; for round ``r = 0..3``:
   ``L, R = R, L ^ F(r, R)`` with ``F(r, R) = int.from_bytes(D[:8], "big") & (2**h - 1)``,
   ``D = SHA256(K + bytes([r]) + R.to_bytes(8, "big"))``;
   the output is ``(L << h) | R``. Feistel networks are bijections for any round function.
3. Cycle walking: ``P(i)`` starts at ``y = E(i)`` and repeats ``y = E(y)`` while ``y >= m``.
   Because ``E`` is a bijection of the larger domain, this is a bijection of ``[0, m)``
   (expected fewer than 4 steps).
4. Miner ``u`` gets ``[P(i) for i in range(u * ppm, (u + 1) * ppm)]`` (``ppm`` =
   ``pages_per_miner``): consecutive slices of one permutation, hence disjoint between miners
   of the same epoch; a new epoch changes ``K`` and so the whole permutation.

Version 1 was the same with no held-out slice (``m = n``) and ``v1`` in the key.
Cost: ``ppm`` evaluations of ``P``, each a few SHA-256 calls; independent of ``n``.
"""

from __future__ import annotations

import hashlib

ROUNDS = 4
VERSION = "v2"
HELDOUT_DIVISOR = 32
"""One page in 32 (about 3%) is held out: ~74 pages (~20k tokens) of the full demo set."""
HELDOUT_MAX_PAGES = 8192
"""Cap of the held-out slice: ~8M tokens of FineWeb, far more than one evaluation reads."""


def _check_size(dataset_size: int) -> None:
    if isinstance(dataset_size, bool) or not isinstance(dataset_size, int) or dataset_size < 2:
        raise ValueError(f"dataset_size must be an integer >= 2 (one page is held out), "
                         f"got {dataset_size!r}")


def heldout_count(dataset_size: int) -> int:
    """How many pages of a ``dataset_size``-page dataset are held out (step 0 above)."""
    _check_size(dataset_size)
    return min(HELDOUT_MAX_PAGES, max(1, dataset_size // HELDOUT_DIVISOR))


def heldout_pages(dataset_size: int) -> range:
    """The held-out slice: the last :func:`heldout_count` pages, never assigned to a miner."""
    return range(dataset_size - heldout_count(dataset_size), dataset_size)


def training_size(dataset_size: int) -> int:
    """Pages miners draw from: every page before the held-out slice."""
    return dataset_size - heldout_count(dataset_size)


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
    """Image of ``position`` under the keyed permutation of ``[0, dataset_size)`` (steps 2-3;
    :func:`assign_pages` calls it with the training size ``m``)."""
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
    get disjoint pages; the same miner gets different pages in different epochs; no page of
    :func:`heldout_pages` is ever returned. Raises ``ValueError`` when the training pages are
    too few to give ``miner`` its own pages.
    """
    if not isinstance(run_id, str) or not run_id:
        raise ValueError("run_id must be a non-empty string (--neuron.run_id)")
    for name, value, low in (("epoch", epoch, 0), ("miner", miner, 0),
                             ("pages_per_miner", pages_per_miner, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    usable = training_size(dataset_size)
    end = (miner + 1) * pages_per_miner
    if end > usable:
        raise ValueError(
            f"dataset has {dataset_size} pages ({usable} after the {dataset_size - usable} "
            f"held out) but miner uid {miner} needs pages up to position {end} "
            f"((uid + 1) * pages_per_miner with pages_per_miner={pages_per_miner}); lower "
            f"--data.pages_per_epoch or use more pages (more shards in --data.dir, or "
            f"--data.source fineweb)"
        )
    key = _key(run_id, epoch, dataset_size)
    return [permuted_index(i, key=key, dataset_size=usable)
            for i in range(miner * pages_per_miner, end)]
