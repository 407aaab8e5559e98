"""Token batches: EOS between pages, deterministic batch k, resumable batcher."""

from __future__ import annotations

import json

import pytest
import torch

from template.data.batches import (
    TokenBatcher,
    batch_at,
    epoch_batches,
    num_batches,
    token_stream,
)
from template.data.tokenizer import EOS_ID, load_tokenizer

TEXTS = [f"Document number {i} says hello to the world in {i % 7 + 1} short sentences. " * (
    1 + i % 5) for i in range(70)]  # > one encode window (32 pages)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(offline=True)


def test_eos_after_every_page(tok):
    assert token_stream(["Hello world", "Hello world"], tok) == [
        15496, 995, EOS_ID, 15496, 995, EOS_ID]
    (batch,) = epoch_batches(["Hello world", "Hello world"], tok, seq_len=3, batch_size=2)
    assert batch.tolist() == [[15496, 995, EOS_ID], [15496, 995, EOS_ID]]


def test_epoch_batches_slice_the_stream_and_drop_the_tail(tok):
    stream = token_stream(TEXTS, tok)
    seq_len, bs = 16, 3
    batches = epoch_batches(TEXTS, tok, seq_len=seq_len, batch_size=bs)
    assert len(batches) == len(stream) // (seq_len * bs) == num_batches(
        TEXTS, tok, seq_len=seq_len, batch_size=bs)
    assert len(stream) % (seq_len * bs) != 0  # the test covers a dropped partial tail
    for k, b in enumerate(batches):
        assert b.dtype == torch.long and b.shape == (bs, seq_len)
        assert b.flatten().tolist() == stream[k * seq_len * bs : (k + 1) * seq_len * bs]
    assert epoch_batches(["Hi"], tok, seq_len=16, batch_size=1) == []
    with pytest.raises(ValueError, match="--data.seq_len"):
        epoch_batches(TEXTS, tok, seq_len=0, batch_size=1)


def test_batch_at_is_what_the_validator_recomputes(tok):
    batches = epoch_batches(TEXTS, tok, seq_len=32, batch_size=2)
    for k in (0, 1, len(batches) // 2, len(batches) - 1):
        assert torch.equal(batch_at(TEXTS, tok, k, seq_len=32, batch_size=2), batches[k])
    with pytest.raises(IndexError, match="past the end"):
        batch_at(TEXTS, tok, len(batches), seq_len=32, batch_size=2)
    with pytest.raises(IndexError):
        batch_at(TEXTS, tok, -1, seq_len=32, batch_size=2)


def test_batcher_matches_and_resumes_exactly(tok):
    expected = epoch_batches(TEXTS, tok, seq_len=24, batch_size=2)
    batcher = TokenBatcher(TEXTS, tok, seq_len=24, batch_size=2)
    head = [next(batcher) for _ in range(7)]
    state = json.loads(json.dumps(batcher.state_dict()))  # survives a trip through a file
    assert state["batches"] == 7 == batcher.batches_done
    resumed = TokenBatcher(TEXTS, tok, seq_len=24, batch_size=2)
    resumed.load_state_dict(state)
    tail = list(resumed)
    assert len(head) + len(tail) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(head + tail, expected, strict=True))
    assert list(resumed) == []  # exhausted: the partial tail is never produced
    assert list(batcher)[-1].tolist() == expected[-1].tolist()


def test_batcher_rejects_foreign_state(tok):
    batcher = TokenBatcher(TEXTS[:3], tok, seq_len=8, batch_size=1)
    for bad in ({"page": 9, "offset": 0, "batches": 0}, {"page": 0, "offset": 10_000,
                                                         "batches": 0},
                {"page": 0, "offset": 0, "batches": -1}):
        with pytest.raises(ValueError):
            batcher.load_state_dict(bad)
