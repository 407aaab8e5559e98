"""Who pushed a checkpoint, and which of an epoch's checkpoints a reader takes as canonical.

The first writer of a tag is whoever was fastest, so a tag proves nothing about its weights. A
push therefore carries, in its manifest's metadata, the pusher's PeerID, its hotkey and the
hotkey's signature over ``(run_id, epoch, parameter_hash, pusher)``::

    metadata.update(sign_push(wallet.hotkey, run_id=.., epoch=.., parameter_hash=.., pusher=..))
    store.push(epoch, model, tokenizer, metadata)

and a reader accepts a checkpoint only when (:func:`attest`):

- the signature verifies for that hotkey over the weights' ``parameter_hash`` (recomputed from
  the files by :func:`~template.checkpoints.base.read_checkpoint`), so the push is attributable;
- the hotkey is registered and its chain-bound PeerID is the ``pusher`` the manifest names;
- where the reader knows what the round computed (a validator: the median of the members'
  reported fingerprints; a member: its own post-step weights), the checkpoint's fingerprint
  agrees with it within the consensus tolerance.

An epoch may hold ``epoch-N`` and *candidates* ``epoch-N-<hash>``
(:func:`~template.checkpoints.base.candidate_tag`): a member whose weights disagree with what
already holds ``epoch-N`` pushes its own there. :func:`resolve` takes the first checkpoint, in
that order, that passes. A signed push that disagrees with the round names its signer, who is
blamed (:class:`PushRejected.signer`); an unsigned or badly signed one cannot be attributed and
is simply not read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from template.checkpoints import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    MissingCheckpointError,
    StoreAuthError,
    StoreUnavailableError,
    tag_for,
)
from template.model import fingerprint_distance

logger = logging.getLogger(__name__)

PUSHER, PUSHER_HOTKEY, SIGNATURE = "pusher", "pusher_hotkey", "push_signature"
"""The manifest metadata fields a signed push carries."""


class PushRejected(CheckpointError):
    """A checkpoint no reader should take as canonical; ``signer`` is the hotkey whose valid
    signature it carries (the push is attributable to it), or None."""

    def __init__(self, tag: str, reason: str, *, signer: str | None = None):
        super().__init__(f"{tag}: {reason}")
        self.tag = tag
        self.reason = reason
        self.signer = signer


class NoCanonicalCheckpoint(CheckpointError):
    """Checkpoints of the epoch exist but every one was rejected (the message lists why)."""

    def __init__(self, epoch: int, rejected: Sequence[CheckpointError]):
        super().__init__(f"no acceptable checkpoint of epoch {epoch}: "
                         + "; ".join(str(err) for err in rejected))
        self.epoch = epoch
        self.rejected = list(rejected)


def push_message(*, run_id: str, epoch: int, parameter_hash: str, pusher: str) -> bytes:
    return f"dt-push:{run_id}:{epoch}:{parameter_hash}:{pusher}".encode()


def sign_push(hotkey: Any, *, run_id: str, epoch: int, parameter_hash: str,
              pusher: str) -> dict[str, str]:
    """The metadata fields that make a push attributable (``hotkey``: a bittensor Keypair)."""
    message = push_message(run_id=run_id, epoch=epoch, parameter_hash=parameter_hash,
                           pusher=pusher)
    return {PUSHER: pusher, PUSHER_HOTKEY: hotkey.ss58_address,
            SIGNATURE: hotkey.sign(message).hex()}


def hotkey_peers(chain: Any) -> dict[str, str]:
    """``{hotkey: bound PeerID}`` of every registered uid whose PeerID binding stands."""
    hotkeys = {n.uid: n.hotkey for n in chain.metagraph().neurons}
    return {hotkeys[uid]: peer for uid, peer in chain.peer_bindings().items() if uid in hotkeys}


@dataclass(frozen=True)
class Attested:
    """A checkpoint that passed :func:`attest`."""

    checkpoint: Checkpoint
    tag: str
    hotkey: str
    pusher: str
    """The signer's chain-bound PeerID (the manifest's ``pusher``)."""

    @property
    def fingerprint(self) -> list[float]:
        return list(self.checkpoint.manifest["fingerprint"])


def signer_of(checkpoint: Checkpoint, *, run_id: str, tag: str) -> tuple[str, str]:
    """``(hotkey, pusher)`` of a validly signed push; :class:`PushRejected` otherwise."""
    from bittensor_wallet import Keypair  # imported here: bittensor's import is heavy

    meta = checkpoint.metadata
    hotkey, pusher, signature = meta.get(PUSHER_HOTKEY), meta.get(PUSHER), meta.get(SIGNATURE)
    if not all(isinstance(v, str) and v for v in (hotkey, pusher, signature)):
        raise PushRejected(tag, "unsigned push (no pusher, pusher_hotkey or push_signature)")
    message = push_message(run_id=run_id, epoch=checkpoint.epoch, pusher=pusher,
                           parameter_hash=checkpoint.manifest["parameter_hash"])
    try:
        valid = Keypair(ss58_address=hotkey).verify(message, bytes.fromhex(signature))
    except (ValueError, TypeError) as err:
        raise PushRejected(tag, f"malformed push signature or hotkey: {err}") from err
    if not valid:
        raise PushRejected(tag, f"push signature does not verify for hotkey {hotkey} over "
                                "these weights and this run")
    return hotkey, pusher


def attest(checkpoint: Checkpoint, *, run_id: str, tag: str, peers: Mapping[str, str],
           agrees: Callable[[list[float]], bool] | None = None) -> Attested:
    """``checkpoint`` if it may be canonical (see the module docstring), else
    :class:`PushRejected`. ``peers``: :func:`hotkey_peers`; ``agrees``: the reader's check of
    the (recomputed) fingerprint against what the round computed, None if it knows nothing."""
    hotkey, pusher = signer_of(checkpoint, run_id=run_id, tag=tag)
    if peers.get(hotkey) != pusher:
        raise PushRejected(tag, f"pusher {pusher} is not the PeerID bound to hotkey {hotkey}",
                           signer=hotkey)
    if agrees is not None and not agrees(list(checkpoint.manifest["fingerprint"])):
        raise PushRejected(tag, f"weights pushed by {hotkey} disagree with the round",
                           signer=hotkey)
    return Attested(checkpoint=checkpoint, tag=tag, hotkey=hotkey, pusher=pusher)


def within(reference: Sequence[float], tolerance: float) -> Callable[[list[float]], bool]:
    """An ``agrees`` check: fingerprint distance from ``reference`` at most ``tolerance``."""
    return lambda fp: len(fp) == len(reference) and fingerprint_distance(
        fp, list(reference)) <= tolerance


def epoch_tags(store: CheckpointStore, epoch: int) -> list[str]:
    """``epoch-N`` (when present) then its candidates: the order readers try them in."""
    refs = set(store.refs())
    primary = [tag_for(epoch)] if tag_for(epoch) in refs else []
    return primary + store.candidates(epoch)


def _attempts(store: CheckpointStore, epoch: int, *, run_id: str, peers: Mapping[str, str],
              agrees: Callable[[list[float]], bool] | None = None,
              ) -> Iterator[Attested | CheckpointError]:
    """Each of the epoch's checkpoints (:func:`epoch_tags` order), lazily: attested, or why not
    (unreadable, corrupt, a manifest that lies, a rejected push). Store failures propagate."""
    for tag in epoch_tags(store, epoch):
        try:
            yield attest(store.pull(epoch, tag=tag), run_id=run_id, tag=tag, peers=peers,
                         agrees=agrees)
        except (StoreAuthError, StoreUnavailableError):
            raise
        except CheckpointError as err:
            logger.warning("checkpoint %s not taken: %s", tag, err)
            yield err


def signed_checkpoints(store: CheckpointStore, epoch: int, *, run_id: str,
                       peers: Mapping[str, str]) -> list[Attested]:
    """Every checkpoint of ``epoch`` (in :func:`epoch_tags` order) signed by a bound pusher,
    whatever its weights: the validator holds them against the round's reports."""
    return [a for a in _attempts(store, epoch, run_id=run_id, peers=peers)
            if isinstance(a, Attested)]


def resolve(store: CheckpointStore, epoch: int, *, run_id: str, peers: Mapping[str, str],
            agrees: Callable[[list[float]], bool] | None = None,
            on_reject: Callable[[PushRejected], None] | None = None) -> Attested:
    """The first of the epoch's checkpoints (:func:`epoch_tags`) that passes :func:`attest`.

    Raises :class:`MissingCheckpointError` when the epoch has none, :class:`NoCanonicalCheckpoint`
    when every one was rejected (unreadable ones included). ``on_reject`` sees each rejected
    push (to blame its signer). Store failures (auth, unavailable) propagate.
    """
    rejected: list[CheckpointError] = []
    for attempt in _attempts(store, epoch, run_id=run_id, peers=peers, agrees=agrees):
        if isinstance(attempt, Attested):
            return attempt
        if isinstance(attempt, PushRejected) and on_reject is not None:
            on_reject(attempt)
        rejected.append(attempt)
    if not rejected:
        raise MissingCheckpointError(f"no checkpoint of epoch {epoch} in {store!r}")
    raise NoCanonicalCheckpoint(epoch, rejected)
