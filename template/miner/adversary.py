"""RED-TEAM ONLY: misbehaving miners, for validator operators to test their scoring.

Selected by `--neuron.adversary KIND` (off by default). Each kind cheats in one way a real
attacker would, so a local swarm shows what the validator catches:

* `lazy`: trains the first batch only and claims the whole epoch (repeats that batch's sketch).
* `random-gradient`: trains nothing; reports random sketches and averages a random gradient.
* `copycat`: trains nothing; answers `Train` with another miner's answer, averages zeros.
* `no-show`: trains honestly but never joins an all-reduce round.
* `slow-link`: trains honestly but sends its all-reduce parts through a throttled link.

They plug into the miner through three hooks (`fake_epoch`, `joins_rounds`, `answer_train`)
and one averager option (`compression`), so the honest code path has no adversarial branches.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import time
from typing import TYPE_CHECKING

import torch
from hivemind.compression import NoCompression

from template.data import VOCAB_SIZE
from template.proof import SKETCH_DIMS
from template.protocol import Train

if TYPE_CHECKING:
    from template.miner.miner import Miner

logger = logging.getLogger(__name__)


class Adversary:
    """Honest by default: every hook does what an honest miner does."""

    kind = "honest"
    joins_rounds = True

    def fake_epoch(self, miner: Miner, epoch: int, batches: list[torch.Tensor]) -> int | None:
        """Fill the ledger and `.grad` instead of training and return how many batches were
        really trained; None = train honestly."""
        return None

    def answer_train(self, miner: Miner, synapse: Train) -> Train | None:
        """Answer `Train` instead of the ledger; None = honest answer."""
        return None

    def compression(self) -> object | None:
        """Averager compression to use instead of `--averaging.compression`."""
        return None


class Lazy(Adversary):
    kind = "lazy"

    def fake_epoch(self, miner: Miner, epoch: int, batches: list[torch.Tensor]) -> int | None:
        if not miner.train_batches(epoch, batches[:1]):
            return None
        work = miner.ledger.get(epoch)
        for batch in batches[1:]:  # claims the rest with the first batch's evidence
            miner.ledger.add_batch(epoch, loss=work.losses[0], sketch=list(work.sketches[0]),
                                   samples=batch.shape[0], tokens=batch.numel())
        return 1


class RandomGradient(Adversary):
    kind = "random-gradient"

    def fake_epoch(self, miner: Miner, epoch: int, batches: list[torch.Tensor]) -> int | None:
        gen = torch.Generator().manual_seed(epoch)
        for batch in batches:
            sketch = (torch.randn(SKETCH_DIMS, generator=gen) * 0.1).tolist()
            miner.ledger.add_batch(epoch, loss=math.log(VOCAB_SIZE), sketch=sketch,
                                   samples=batch.shape[0], tokens=batch.numel())
        for p in miner.model.parameters():
            p.grad = torch.randn(p.shape, generator=gen).to(p.device) * 1e-4
        return 1


class Copycat(Adversary):
    kind = "copycat"

    def fake_epoch(self, miner: Miner, epoch: int, batches: list[torch.Tensor]) -> int | None:
        for batch in batches:  # claims samples (to get a share of the average) without work
            miner.ledger.add_batch(epoch, loss=math.log(VOCAB_SIZE), sketch=[0.0] * SKETCH_DIMS,
                                   samples=batch.shape[0], tokens=batch.numel())
        for p in miner.model.parameters():
            p.grad = torch.zeros_like(p)
        return 1

    def answer_train(self, miner: Miner, synapse: Train) -> Train | None:
        """Ask another serving miner the same question and return its answer as ours."""
        victim = _other_miner_axon(miner)
        if victim is None:
            return None
        from template.transport import build_dendrite  # only copycats need a Dendrite

        async def ask() -> Train:
            dendrite = build_dendrite(miner.wallet)
            try:
                return await dendrite.call(victim, Train(epoch=synapse.epoch, nonce=synapse.nonce,
                                                         max_batches=synapse.max_batches),
                                           timeout=10.0, deserialize=False)
            finally:
                await dendrite.aclose_session()

        copied = asyncio.run(ask())
        for name in ("loss", "pages", "batches", "samples", "sketches", "sketch_seed",
                     "model_fingerprint"):
            setattr(synapse, name, getattr(copied, name))
        synapse.peer_id = miner.peer_id
        return synapse


def _other_miner_axon(miner: Miner) -> object | None:
    graph = miner.chain.metagraph()
    others = [n for n in graph.neurons
              if n.uid != miner.uid and not n.validator_permit and n.port > 0]
    if not others:
        return None
    return graph.axon(random.Random(time.time()).choice(others).uid)


class NoShow(Adversary):
    kind = "no-show"
    joins_rounds = False


class SlowLink(Adversary):
    kind = "slow-link"

    def compression(self) -> object:
        return ThrottledCompression(bytes_per_second=SLOW_LINK_BYTES_PER_SECOND)


SLOW_LINK_BYTES_PER_SECOND = 1_000_000  # 8 Mbit/s in total: far below loopback, within timeouts


class ThrottledCompression(NoCompression):
    """No compression, but everything this peer sends shares one slow link.

    hivemind compresses the parts for each groupmate in parallel threads, so a per-call delay
    would slow nothing down; a shared schedule (a token bucket of one sender) caps the total.
    """

    def __init__(self, *, bytes_per_second: float):
        super().__init__()
        self.bytes_per_second = bytes_per_second
        self._lock = threading.Lock()
        self._link_free_at = 0.0

    def compress(self, tensor: torch.Tensor, info: object, allow_inplace: bool = False):  # type: ignore[override]
        seconds = tensor.numel() * tensor.element_size() / self.bytes_per_second
        with self._lock:
            done_at = max(time.monotonic(), self._link_free_at) + seconds
            self._link_free_at = done_at
        time.sleep(max(0.0, done_at - time.monotonic()))
        return super().compress(tensor, info, allow_inplace)


KINDS: dict[str, type[Adversary]] = {
    cls.kind: cls for cls in (Lazy, RandomGradient, Copycat, NoShow, SlowLink)
}


def make_adversary(kind: str) -> Adversary:
    """`--neuron.adversary` -> the behaviour ('' = honest)."""
    if not kind:
        return Adversary()
    logger.warning("RED-TEAM MODE: this miner cheats on purpose (--neuron.adversary %s)", kind)
    return KINDS[kind]()
