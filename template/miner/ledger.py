"""The miner's record of its work per epoch, shared between the training loop and the Axon.

The training loop appends each batch as it finishes; the `Train` handler (on the Axon's thread)
reads a consistent copy. Only the last few epochs are kept: a validator asks about the current
epoch or the one just averaged.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class EpochWork:
    """What a miner trained in one epoch; the evidence a `Train` response is built from."""

    epoch: int
    pages: tuple[int, ...]
    fingerprint: tuple[float, ...]
    """Fingerprint of the weights the epoch was trained at (theta_e)."""
    losses: tuple[float, ...] = ()
    sketches: tuple[tuple[float, ...], ...] = ()
    samples: int = 0
    tokens: int = 0
    finished: bool = False

    @property
    def batches(self) -> tuple[int, ...]:
        """Indices of the batches trained, in the order of the epoch's token stream."""
        return tuple(range(len(self.sketches)))

    @property
    def mean_loss(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else float("nan")


@dataclass
class WorkLedger:
    """Thread-safe per-epoch work records (the newest `keep` epochs)."""

    keep: int = 3
    _epochs: OrderedDict[int, EpochWork] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def begin(self, epoch: int, *, pages: list[int], fingerprint: list[float]) -> None:
        with self._lock:
            self._epochs[epoch] = EpochWork(
                epoch=epoch, pages=tuple(pages), fingerprint=tuple(fingerprint)
            )
            while len(self._epochs) > self.keep:
                self._epochs.popitem(last=False)

    def add_batch(self, epoch: int, *, loss: float, sketch: list[float], samples: int,
                  tokens: int) -> None:
        with self._lock:
            work = self._epochs[epoch]
            self._epochs[epoch] = replace(
                work,
                losses=work.losses + (loss,),
                sketches=work.sketches + (tuple(sketch),),
                samples=work.samples + samples,
                tokens=work.tokens + tokens,
            )

    def finish(self, epoch: int) -> None:
        with self._lock:
            self._epochs[epoch] = replace(self._epochs[epoch], finished=True)

    def get(self, epoch: int) -> EpochWork | None:
        with self._lock:
            return self._epochs.get(epoch)

    def latest(self) -> EpochWork | None:
        with self._lock:
            return next(reversed(self._epochs.values()), None)
