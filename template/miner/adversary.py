"""RED-TEAM ONLY: misbehaving miners, for validator operators to test their scoring.

Selected by `--neuron.adversary KIND` (off by default). Each kind cheats in one way a real
attacker would, so a local swarm shows what the validator catches:

* `lazy`: trains the first batch only and claims the whole epoch (repeats that batch's sketch).
* `random-gradient`: trains nothing; reports random sketches and averages a random gradient.
* `copycat`: trains nothing; answers `Train` with another miner's answer, averages zeros.
* `no-show`: trains honestly but never joins an all-reduce round.
* `slow-link`: trains honestly but sends its all-reduce parts through a throttled link.
* `poisoner`: trains and answers Train honestly, but puts something else into the all-reduce;
  each epoch it draws one of :data:`POISONS` with random strength (`poisoner-<name>` fixes
  the variant; the strength still varies).
* `forger`: trains, answers and averages honestly, but before each round pushes other weights
  as the next epoch's checkpoint, signed with its own hotkey, so it always wins the race for
  the tag; each epoch it draws one of :data:`FORGERIES` (noise, rescaled or un-stepped
  weights) with random strength. `forger-unsigned` pushes them unsigned, naming an honest
  member as pusher.
* `unbound`: trains and answers Train honestly but binds no PeerID and never averages.
* `vanisher`: honest for one epoch, then its process exits (the uid stays registered).
* `padder`: honest, but pads every all-reduce message with 1-3x its size in junk bytes.
* `reducer`: trains, answers and sends honestly, but returns a wrong average for its own
  shard; each round it draws one of :data:`CORRUPTIONS` with random strength
  (`reducer-<name>` fixes the variant); `cover` also reports received parts that explain it.

They plug into the miner through hooks (`fake_epoch`, `joins_rounds`, `binds_peer_id`,
`epochs`, `answer_train`, `contribute`, `before_round`) and two averager options
(`compression`, `corruption`), so the honest code path has no adversarial branches.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import math
import random
import threading
import time
from typing import TYPE_CHECKING, Any

import torch
from hivemind.compression import NoCompression

from template.attestation import sign_push
from template.checkpoints import CheckpointError
from template.config import CORRUPTIONS, FORGERIES, POISONS
from template.contribution import Commitment, block_ranges, commit
from template.data import VOCAB_SIZE
from template.model import parameter_hash
from template.projection import BASES, CHUNK, chunk_signs
from template.proof import SKETCH_DIMS
from template.protocol import MAX_BATCHES, Train

if TYPE_CHECKING:
    from template.miner.miner import Miner

logger = logging.getLogger(__name__)


class Adversary:
    """Honest by default: every hook does what an honest miner does."""

    kind = "honest"
    joins_rounds = True
    binds_peer_id = True
    """Bind the DHT PeerID (and record key) to the hotkey on chain at start."""

    def epochs(self, configured: int) -> int:
        """Epochs to run before exiting (``--neuron.epochs``; 0 = forever)."""
        return configured

    def fake_epoch(self, miner: Miner, epoch: int, batches: list[torch.Tensor]) -> int | None:
        """Fill the ledger and `.grad` instead of training and return how many batches were
        really trained; None = train honestly."""
        return None

    def answer_train(self, miner: Miner, synapse: Train) -> Train | None:
        """Answer `Train` instead of the ledger; None = honest answer."""
        return None

    def corruption(self) -> object | None:
        """A reducer hook for the averager (``SwarmAverager(corrupt=...)``); None = honest."""
        return None

    def compression(self) -> object | None:
        """Averager compression to use instead of `--averaging.compression`."""
        return None

    def contribute(self, epoch: int, buffers: list[torch.Tensor],
                   commitment: Commitment) -> Commitment:
        """Change what goes into the round (``buffers``, in place) and return the commitment
        to gather; honest: nothing changes."""
        return commitment

    def before_round(self, miner: Miner, epoch: int) -> None:
        """Called once the round of ``epoch`` was requested, before averaging; honest: no-op."""


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


class Unbound(Adversary):
    """Trains and answers Train honestly, but never binds a PeerID nor joins a round."""

    kind = "unbound"
    joins_rounds = False
    binds_peer_id = False


class Vanisher(Adversary):
    """Honest for its first epoch, then gone (the process exits; its uid stays registered)."""

    kind = "vanisher"

    def epochs(self, configured: int) -> int:
        return 1


class Padder(Adversary):
    """Honest work, but every all-reduce message carries 1-3x its tensor's size in junk."""

    kind = "padder"

    def compression(self) -> object:
        return PaddedCompression()


class PaddedCompression(NoCompression):
    """No compression; each serialized part gets an unknown protobuf field of junk bytes, which
    hivemind's receiver parses and ignores (the wire bytes grow, the tensor does not)."""

    FIELD = 1000  # far above runtime_pb2.Tensor's own field numbers

    def __init__(self) -> None:
        super().__init__()
        self.rng = random.Random()

    def compress(self, tensor: torch.Tensor, info: object, allow_inplace: bool = False):  # type: ignore[override]
        message = super().compress(tensor, info, allow_inplace)
        junk = bytes(int(len(message.buffer) * self.rng.uniform(1.0, 3.0)))
        message.MergeFromString(_varint(self.FIELD << 3 | 2) + _varint(len(junk)) + junk)
        return message


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


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


# ------------------------------------------------------------------ poisoning the all-reduce


def _flat_views(buffers: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([b.reshape(-1) for b in buffers])


def _write_back(buffers: list[torch.Tensor], flat: torch.Tensor) -> None:
    offset = 0
    for b in buffers:
        b.copy_(flat[offset : offset + b.numel()].view(b.shape))
        offset += b.numel()


def _null_vector(flat: torch.Tensor, *, seed: int, strength: float,
                 rng: random.Random) -> torch.Tensor:
    """A vector the public sketch cannot see, ``strength x |flat|`` long, in every block.

    Chunks ``c`` and ``c + BASES`` go through the same basis with signs ``s_c``, ``s_{c+B}``:
    ``s_c u`` on one and ``-s_{c+B} u`` on the other cancel in the fold, so the projection is
    exactly unchanged while the values are not.
    """
    out = torch.zeros_like(flat)
    chunks = flat.numel() // CHUNK
    signs = chunk_signs(seed, 0, chunks)
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    for lo, hi in block_ranges(flat.numel()):
        first, last = lo // CHUNK, min(hi // CHUNK, chunks)
        for c in range(first, last - BASES, 2 * BASES):
            for k in range(BASES):
                a, b = c + k, c + k + BASES
                if b >= last:
                    break
                u = torch.randn(CHUNK, generator=gen)
                out[a * CHUNK : (a + 1) * CHUNK] = signs[a] * u
                out[b * CHUNK : (b + 1) * CHUNK] = -signs[b] * u
    norm = float(out.norm())
    return out * (strength * float(flat.norm()) / norm) if norm > 0 else out


# What a poisoner sends instead of its gradient g (config.POISONS; strength drawn per epoch):
# - flip: -k g (k in 1..10), committing to g;
# - flip-recommit: -k g, committing to what it sends (blocks and batch sketches);
# - noise: g + n, |n| = 1..5 |g|, committing to g;
# - partial: -k g on a random third to two thirds of the blocks only;
# - null-space: g + v with P v = 0 for the public sketch, |v| = 1..3 |g|;
# - weight: sends g but declares 2-5x its samples (a bigger share of the mean).


class Poisoner(Adversary):
    """Honest training and Train answers; a different tensor in the all-reduce."""

    kind = "poisoner"

    def __init__(self, variant: str | None = None):
        self.variant = variant
        self.rng = random.Random()
        self.last: tuple[str, float] | None = None
        """The poison and strength of the latest round (for logs and tests)."""

    def contribute(self, epoch: int, buffers: list[torch.Tensor],
                   commitment: Commitment) -> Commitment:
        variant = self.variant or self.rng.choice(POISONS)
        flat = _flat_views(buffers)
        dims = commitment.blocks.shape[1]
        if variant in ("flip", "flip-recommit"):
            strength = self.rng.uniform(1.0, 10.0)
            flat.mul_(-strength)
        elif variant == "noise":
            strength = self.rng.uniform(1.0, 5.0)
            noise = torch.randn(flat.shape, generator=torch.Generator().manual_seed(epoch))
            flat.add_(noise * (strength * float(flat.norm()) / float(noise.norm())))
        elif variant == "partial":
            ranges = block_ranges(flat.numel())
            chosen = self.rng.sample(ranges, max(1, int(len(ranges) * self.rng.uniform(1/3, 2/3))))
            strength = self.rng.uniform(1.0, 10.0)
            for lo, hi in chosen:
                flat[lo:hi].mul_(-strength)
        elif variant == "null-space":
            strength = self.rng.uniform(1.0, 3.0)
            flat.add_(_null_vector(flat, seed=commitment.seed, strength=strength, rng=self.rng))
        elif variant == "weight":
            strength = self.rng.uniform(2.0, 5.0)
            commitment = dataclasses.replace(commitment,
                                             samples=int(commitment.samples * strength))
        else:
            raise ValueError(f"unknown poison {variant!r}")
        _write_back(buffers, flat)
        self.last = (variant, strength)
        logger.warning("RED-TEAM: epoch %d contributes %s (strength %.2f)", epoch, variant,
                       strength)
        if variant == "flip-recommit":
            lie = commit(buffers, seed=commitment.seed, samples=commitment.samples,
                         batch_sketches=[commitment.mean_sketch * -strength], dims=dims,
                         max_batches=MAX_BATCHES)
            return dataclasses.replace(lie, batches=commitment.batches,
                                       batch_sketches=commitment.batch_sketches * -strength)
        return commitment


class Forger(Adversary):
    """Honest work; a forged checkpoint of the next epoch pushed before every round."""

    kind = "forger"

    def __init__(self, *, signed: bool = True):
        self.signed = signed
        self.rng = random.Random()
        self.last: tuple[str, float] | None = None

    def before_round(self, miner: Miner, epoch: int) -> None:
        variant = self.rng.choice(FORGERIES)
        strength = 0.0 if variant == "stale" else self.rng.uniform(0.01, 0.3)
        forged = copy.deepcopy(miner.model)
        with torch.no_grad():
            for param in forged.parameters():
                if variant == "noise":
                    param.add_(torch.randn_like(param) * strength * float(param.std() + 1e-3))
                elif variant == "scale":
                    param.mul_(1.0 + strength)
        members = [p for p in miner.swarm_state().peers if p.peer_id != miner.peer_id]
        meta: dict[str, object] = {"run_id": miner.cfg.neuron.run_id, "forged": True}
        if self.signed:
            meta.update(sign_push(miner.wallet.hotkey, run_id=miner.cfg.neuron.run_id,
                                  epoch=epoch + 1, parameter_hash=parameter_hash(forged),
                                  pusher=miner.peer_id))
        elif members:
            meta["pusher"] = members[0].peer_id  # blames an honest member, if anyone listened
        try:
            tag = miner.store.push(epoch + 1, forged, miner.tokenizer, meta)
        except CheckpointError as err:
            logger.warning("RED-TEAM: forged push for epoch %d failed: %s", epoch + 1, err)
            return
        self.last = (variant, strength)
        logger.warning("RED-TEAM: pushed forged %s (%s, strength %.2f, %s)", tag, variant,
                       strength, "signed" if self.signed else "unsigned")


# What a corrupt reducer returns instead of its shard's average r (config.CORRUPTIONS; strength
# drawn per round, in the averaging process):
# - scale: k r, k in -3..-0.5 or 1.5..4;
# - noise: r + n, |n| = 0.5..3 |r| on every part;
# - partial: k r on a random half of its parts only;
# - cover: k r, and a report that says every sender sent k times its part (the report is then
#   consistent with the result; only each sender's own part betrays it).


class _Corruption:
    """The hook that runs inside the averaging process (a fork carries it there)."""

    def __init__(self, variant: str | None):
        self.variant, self.rng = variant, random.Random()
        self.round: tuple[str, float] | None = None

    def __call__(self, part_index: int, result: torch.Tensor) -> torch.Tensor:
        if part_index == 0 or self.round is None:
            variant = self.variant or self.rng.choice(CORRUPTIONS)
            if variant == "noise":
                strength = self.rng.uniform(0.5, 3.0)
            elif self.rng.random() < 0.5:
                strength = -self.rng.uniform(0.5, 3.0)
            else:
                strength = self.rng.uniform(1.5, 4.0)
            self.round = (variant, strength)
            logger.warning("RED-TEAM: this reducer returns %s (strength %.2f)", *self.round)
        variant, strength = self.round
        if variant == "partial" and self.rng.random() < 0.5:
            return result
        if variant == "noise":
            noise = torch.randn(result.shape, generator=torch.Generator().manual_seed(part_index))
            return result + noise * (strength * float(result.norm()) / float(noise.norm()))
        return result * strength

    def report(self, report: Any) -> Any:
        if self.round is None or self.round[0] != "cover":
            return report
        return dataclasses.replace(report, sketches=report.sketches * self.round[1])


class CorruptReducer(Adversary):
    """Honest training, Train answers and parts; a wrong average for its own shard."""

    kind = "reducer"

    def __init__(self, variant: str | None = None):
        self.hook = _Corruption(variant)

    def corruption(self) -> object | None:
        return self.hook


KINDS: dict[str, type[Adversary]] = {
    cls.kind: cls for cls in (Lazy, RandomGradient, Copycat, NoShow, SlowLink, Poisoner, Forger,
                              Unbound, Vanisher, Padder, CorruptReducer)
}


def make_adversary(kind: str) -> Adversary:
    """`--neuron.adversary` -> the behaviour ('' = honest)."""
    if not kind:
        return Adversary()
    logger.warning("RED-TEAM MODE: this miner cheats on purpose (--neuron.adversary %s)", kind)
    if kind.startswith("poisoner-"):
        return Poisoner(kind.removeprefix("poisoner-"))
    if kind.startswith("reducer-"):
        return CorruptReducer(kind.removeprefix("reducer-"))
    if kind == "forger-unsigned":
        return Forger(signed=False)
    return KINDS[kind]()
