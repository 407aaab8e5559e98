"""Token batches: documents -> GPT-2 ids -> ``[batch_size, seq_len]`` LongTensors.

The token stream of an ordered list of pages is ``tokens(page_0) + [EOS] + tokens(page_1) +
[EOS] + ...`` (EOS = 50256 after every page, as GPT-2 was trained). Batch ``k`` is the slice
``stream[k*B*L : (k+1)*B*L]`` reshaped to ``[B, L]`` (``B`` = batch_size, ``L`` = seq_len).
The trailing partial batch is dropped, so every batch is full. Labels are the inputs
themselves (the model shifts them internally).

Batch ``k`` is a pure function of the page texts in order, so a validator that re-derives a
miner's pages recomputes any batch with :func:`batch_at`. :class:`TokenBatcher` produces the
same batches lazily and can stop and resume mid-stream via ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from template.data.tokenizer import EOS_ID

_ENCODE_WINDOW = 32  # pages tokenized per call: batch-encoding is much faster than one by one


def encode_documents(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """GPT-2 ids of each text, without special tokens and without length warnings."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
    return [list(tokenizer.encode(t, add_special_tokens=False)) for t in texts]


def token_stream(texts: Sequence[str], tokenizer: Any, *, eos_id: int = EOS_ID) -> list[int]:
    """All pages' ids with ``eos_id`` after each page."""
    stream: list[int] = []
    for ids in encode_documents(tokenizer, texts):
        stream.extend(ids)
        stream.append(eos_id)
    return stream


def _check_shape(seq_len: int, batch_size: int) -> None:
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be >= 1 (got {seq_len}, {batch_size}); "
                         "see --data.seq_len / --data.batch_size")


def epoch_batches(texts: Sequence[str], tokenizer: Any, *, seq_len: int,
                  batch_size: int) -> list[torch.Tensor]:
    """Every full batch of ``texts`` in order (the trailing partial batch is dropped)."""
    _check_shape(seq_len, batch_size)
    stream = token_stream(texts, tokenizer)
    per_batch = seq_len * batch_size
    full = len(stream) // per_batch
    if full == 0:
        return []
    data = torch.tensor(stream[: full * per_batch], dtype=torch.long)
    return list(data.view(full, batch_size, seq_len).unbind(0))


def num_batches(texts: Sequence[str], tokenizer: Any, *, seq_len: int, batch_size: int) -> int:
    """How many full batches ``texts`` make."""
    _check_shape(seq_len, batch_size)
    return len(token_stream(texts, tokenizer)) // (seq_len * batch_size)


def batch_at(texts: Sequence[str], tokenizer: Any, index: int, *, seq_len: int,
             batch_size: int) -> torch.Tensor:
    """Batch ``index`` of ``texts`` (what a validator recomputes); IndexError past the end."""
    _check_shape(seq_len, batch_size)
    per_batch = seq_len * batch_size
    start, stop = index * per_batch, (index + 1) * per_batch
    if index < 0:
        raise IndexError(f"batch index {index} < 0")
    stream: list[int] = []
    for lo in range(0, len(texts), _ENCODE_WINDOW):  # tokenize only as far as needed
        for ids in encode_documents(tokenizer, texts[lo : lo + _ENCODE_WINDOW]):
            stream.extend(ids)
            stream.append(EOS_ID)
        if len(stream) >= stop:
            return torch.tensor(stream[start:stop], dtype=torch.long).view(batch_size, seq_len)
    raise IndexError(f"batch {index} past the end: the pages make "
                     f"{len(stream) // per_batch} full batches")


class TokenBatcher:
    """Iterates the full batches of ``texts`` lazily; resumable with ``state_dict``.

    The state is ``{"page": p, "offset": o, "batches": k}``: the next batch starts at token
    ``o`` of page ``p``'s ids (EOS included) and ``k`` batches were produced before it.
    """

    def __init__(self, texts: Sequence[str], tokenizer: Any, *, seq_len: int,
                 batch_size: int) -> None:
        _check_shape(seq_len, batch_size)
        self.texts = list(texts)
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.batch_size = batch_size
        self._page = 0
        self._offset = 0
        self._batches = 0
        self._encoded: dict[int, list[int]] = {}

    @property
    def batches_done(self) -> int:
        """Batches produced so far (the index of the next batch)."""
        return self._batches

    def _ids(self, page: int) -> list[int]:
        if page not in self._encoded:
            self._encoded = {}  # keep only the current window
            window = self.texts[page : page + _ENCODE_WINDOW]
            for i, ids in enumerate(encode_documents(self.tokenizer, window)):
                self._encoded[page + i] = ids + [EOS_ID]
        return self._encoded[page]

    def state_dict(self) -> dict[str, int]:
        return {"page": self._page, "offset": self._offset, "batches": self._batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        page, offset, batches = int(state["page"]), int(state["offset"]), int(state["batches"])
        if not 0 <= page <= len(self.texts) or batches < 0:
            raise ValueError(f"batcher state {state} does not fit {len(self.texts)} pages")
        if page < len(self.texts) and not 0 <= offset < len(self._ids(page)):
            raise ValueError(f"batcher state {state}: offset outside page {page}")
        self._page, self._offset, self._batches = page, offset, batches

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        need = self.seq_len * self.batch_size
        out: list[int] = []
        page, offset = self._page, self._offset
        while len(out) < need:
            if page >= len(self.texts):
                raise StopIteration  # partial tail dropped; state stays at its start
            ids = self._ids(page)
            take = ids[offset : offset + need - len(out)]
            out.extend(take)
            offset += len(take)
            if offset >= len(ids):
                page, offset = page + 1, 0
        self._page, self._offset = page, offset
        self._batches += 1
        return torch.tensor(out, dtype=torch.long).view(self.batch_size, self.seq_len)
