"""Deterministic page assignment: portable, disjoint between miners, new pages every epoch,
and never a page of the held-out slice."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from template.data.assignment import (
    HELDOUT_MAX_PAGES,
    _key,
    assign_pages,
    heldout_count,
    heldout_pages,
    permuted_index,
    training_size,
)


def _reference(run_id: str, epoch: int, miner: int, ppm: int, n: int) -> list[int]:
    """Written from the module docstring alone: the spec a third party would implement."""
    key = hashlib.sha256(f"assign_pages:v2:{run_id}:{epoch}:{n}".encode()).digest()
    m = n - min(8192, max(1, n // 32))  # the last pages are held out
    h = (max(1, (m - 1).bit_length()) + 1) // 2
    mask = (1 << h) - 1

    def enc(x: int) -> int:
        left, right = x >> h, x & mask
        for r in range(4):
            d = hashlib.sha256(key + bytes([r]) + right.to_bytes(8, "big")).digest()
            left, right = right, left ^ (int.from_bytes(d[:8], "big") & mask)
        return (left << h) | right

    out = []
    for i in range(miner * ppm, (miner + 1) * ppm):
        y = enc(i)
        while y >= m:
            y = enc(y)
        out.append(y)
    return out


def test_matches_documented_algorithm_and_is_repeatable():
    for run_id, epoch, miner, ppm, n in [("run", 0, 0, 8, 2470), ("démo", 7, 3, 5, 100),
                                        ("r", 123, 255, 8, 10**9), ("x", 0, 0, 1, 2)]:
        got = assign_pages(run_id=run_id, epoch=epoch, miner=miner, pages_per_miner=ppm,
                           dataset_size=n)
        assert got == _reference(run_id, epoch, miner, ppm, n)
        assert got == assign_pages(run_id=run_id, epoch=epoch, miner=miner,
                                   pages_per_miner=ppm, dataset_size=n)
        assert all(0 <= p < n for p in got) and len(set(got)) == ppm


def test_golden_values():
    # Pinned so a change of the algorithm (which would break validators) cannot go unnoticed.
    # Version 2 (held-out slice) changed them from version 1's [578, 384, 547, 592].
    assert assign_pages(run_id="golden", epoch=3, miner=2, pages_per_miner=4,
                        dataset_size=1000) == _reference("golden", 3, 2, 4, 1000)
    assert assign_pages(run_id="golden", epoch=3, miner=2, pages_per_miner=4,
                        dataset_size=1000) == [375, 303, 150, 40]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 100, 1023, 1025])
def test_permutation_is_a_bijection(n):
    key = _key("run", 0, n)
    assert sorted(permuted_index(i, key=key, dataset_size=n) for i in range(n)) == list(range(n))


def test_miners_of_one_epoch_are_disjoint_and_cover_the_training_pages():
    ppm, miners = 7, 40
    n = 289  # 289 // 32 = 9 held out: 280 = ppm * miners training pages
    assert training_size(n) == ppm * miners
    pages = [assign_pages(run_id="r", epoch=5, miner=u, pages_per_miner=ppm, dataset_size=n)
             for u in range(miners)]
    for a, b in itertools.combinations(pages, 2):
        assert not set(a) & set(b)
    assert sorted(itertools.chain.from_iterable(pages)) == list(range(training_size(n)))


@pytest.mark.parametrize("n", [2, 33, 200, 2373, 100_000])
def test_no_miner_is_ever_given_a_held_out_page(n):
    held = set(heldout_pages(n))
    assert held and len(held) == heldout_count(n) and max(held) == n - 1
    ppm = max(1, min(4, training_size(n) // 8))
    miners = training_size(n) // ppm
    for run_id in ("r", "local-demo", "fineweb-gpt2"):
        for epoch in range(0, 60, 3):
            for uid in range(0, miners, max(1, miners // 16)):
                pages = assign_pages(run_id=run_id, epoch=epoch, miner=uid,
                                     pages_per_miner=ppm, dataset_size=n)
                assert not held & set(pages), (run_id, epoch, uid)


def test_held_out_slice_is_fixed_by_the_dataset_size():
    assert list(heldout_pages(2)) == [1]
    assert heldout_pages(200) == range(194, 200)
    assert heldout_pages(2373) == range(2299, 2373)  # the full demo set: 74 pages
    assert len(heldout_pages(10**9)) == HELDOUT_MAX_PAGES
    assert heldout_pages(2373) == heldout_pages(2373)  # no run id, epoch or uid in it


def test_epoch_and_run_change_the_pages():
    base = dict(miner=3, pages_per_miner=8, dataset_size=100_000)
    e0 = assign_pages(run_id="r", epoch=0, **base)
    e1 = assign_pages(run_id="r", epoch=1, **base)
    other = assign_pages(run_id="r2", epoch=0, **base)
    assert e0 != e1 and len(set(e0) & set(e1)) <= 1
    assert e0 != other
    # not just a shifted window: pages look spread over the dataset
    assert max(e0) - min(e0) > 10_000


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="--data.pages_per_epoch"):
        assign_pages(run_id="r", epoch=0, miner=10, pages_per_miner=10, dataset_size=100)
    with pytest.raises(ValueError, match="3 held out"):  # 97 training pages: uid 9 no longer fits
        assign_pages(run_id="r", epoch=0, miner=9, pages_per_miner=10, dataset_size=100)
    assign_pages(run_id="r", epoch=0, miner=9, pages_per_miner=10, dataset_size=104)  # fits
    for bad in (dict(run_id=""), dict(epoch=-1), dict(miner=-1), dict(pages_per_miner=0),
                dict(dataset_size=0), dict(dataset_size=1), dict(miner=True),
                dict(epoch=1.5), dict(dataset_size=True)):
        kwargs = dict(run_id="r", epoch=0, miner=0, pages_per_miner=1, dataset_size=10) | bad
        with pytest.raises(ValueError):
            assign_pages(**kwargs)
    with pytest.raises(ValueError):
        permuted_index(10, key=_key("r", 0, 10), dataset_size=10)
