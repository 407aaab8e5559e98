"""The validator's own copy of the model, kept at the epoch it verifies (``theta_e``).

Epoch ``e``'s weights are its canonical checkpoint: the first of ``epoch-e`` and its
candidates that is signed by a chain-bound pusher and, once the validator judged the round that
produced it, agrees with what that round's members reported (:mod:`template.attestation`); a
forged ``epoch-e`` is passed over. Epoch 0 may have no checkpoint, and then it is built from
``--neuron.seed`` (every peer builds the same ``theta_0``). The reference never trains: it only
recomputes the gradients of checked batches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence

import torch

from template.attestation import Attested, resolve, signed_checkpoints, within
from template.checkpoints import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    MissingCheckpointError,
)
from template.config import ModelConfig
from template.model import ModelError, build_model, fingerprint, load_state_into

logger = logging.getLogger(__name__)


class ReferenceModel:
    """``model`` holds ``theta_epoch`` and ``fingerprint`` its fingerprint, once :meth:`ensure`
    returned True for that epoch."""

    def __init__(self, *, model_cfg: ModelConfig, seed: int, store: CheckpointStore,
                 run_id: str, peers: Callable[[], Mapping[str, str]], tolerance: float,
                 device: torch.device | None = None):
        """``peers``: ``{hotkey: bound PeerID}`` now (:func:`template.attestation.hotkey_peers`);
        ``tolerance``: the consensus tolerance a checkpoint must meet against :meth:`expect`."""
        self.store = store
        self.run_id = run_id
        self.peers = peers
        self.tolerance = tolerance
        self.device = device or torch.device("cpu")
        self.model = build_model(model_cfg, seed=seed).to(self.device)
        self.epoch: int | None = None
        self.fingerprint: tuple[float, ...] = ()
        self.expected: dict[int, list[float]] = {}
        """Per epoch, the fingerprint its round's members reported (the judged reference)."""
        self._seed_model_epoch0 = True

    def expect(self, epoch: int, reference: Sequence[float]) -> None:
        """Only a checkpoint of ``epoch`` within the tolerance of ``reference`` will be loaded."""
        self.expected = {e: fp for e, fp in self.expected.items() if e >= epoch - 2}
        self.expected[epoch] = list(reference)

    def ensure(self, epoch: int) -> bool:
        """Load ``theta_epoch`` if not loaded; False when its checkpoint is not available yet."""
        if self.epoch == epoch:
            return True
        expected = self.expected.get(epoch)
        try:
            checkpoint = resolve(self.store, epoch, run_id=self.run_id, peers=self.peers(),
                                 agrees=None if expected is None else within(
                                     expected, self.tolerance)).checkpoint
        except MissingCheckpointError:
            if epoch == 0 and self._seed_model_epoch0:
                self._adopt(0)
                return True
            return False
        except CheckpointError as err:
            logger.warning("checkpoint epoch-%d unusable: %s", epoch, err)
            return False
        return self.load(checkpoint)

    def load(self, checkpoint: Checkpoint) -> bool:
        """Adopt a pulled checkpoint as the reference (False if it does not fit the model)."""
        try:
            load_state_into(self.model, checkpoint.state_dict)
        except ModelError as err:
            logger.error("checkpoint epoch-%d does not fit the model: %s", checkpoint.epoch, err)
            return False
        self._adopt(checkpoint.epoch)
        return True

    def _adopt(self, epoch: int) -> None:
        # Always the fingerprint of the weights actually loaded, never a manifest's claim.
        self._seed_model_epoch0 = False
        self.epoch = epoch
        self.fingerprint = tuple(fingerprint(self.model))
        logger.info("reference model at epoch %d", epoch)


async def wait_for_signed(store: CheckpointStore, epoch: int, *, run_id: str,
                          peers: Mapping[str, str], timeout: float,
                          poll: float = 2.0) -> list[Attested]:
    """Poll the store for up to ``timeout`` seconds until ``epoch``'s checkpoints include one
    signed by a chain-bound pusher; return every such one (empty: none appeared).

    Reads run in a worker thread (they download and hash files). Unsigned, badly signed or
    corrupt checkpoints are logged and skipped: the pusher may still be writing.
    """
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = await loop.run_in_executor(None, lambda: signed_checkpoints(
                store, epoch, run_id=run_id, peers=peers))
        except CheckpointError as err:  # the store itself failed (auth, unavailable)
            logger.warning("checkpoints of epoch %d not readable: %s", epoch, err)
            found = []
        if found:
            return found
        if time.monotonic() + poll > deadline:
            logger.warning("no signed checkpoint of epoch %d after %.0f s", epoch, timeout)
            return []
        await asyncio.sleep(poll)
