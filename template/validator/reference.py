"""The validator's own copy of the model, kept at the epoch it verifies (``theta_e``).

Epoch ``e``'s weights are the canonical checkpoint ``epoch-e`` in the store; epoch 0 may have
no checkpoint, and then it is built from ``--neuron.seed`` (every peer builds the same
``theta_0``). The reference never trains: it only recomputes the gradients of checked batches.
"""

from __future__ import annotations

import asyncio
import logging
import time

import torch

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
                 device: torch.device | None = None):
        self.store = store
        self.device = device or torch.device("cpu")
        self.model = build_model(model_cfg, seed=seed).to(self.device)
        self.epoch: int | None = None
        self.fingerprint: tuple[float, ...] = ()
        self._seed_model_epoch0 = True

    def ensure(self, epoch: int) -> bool:
        """Load ``theta_epoch`` if not loaded; False when its checkpoint is not available yet."""
        if self.epoch == epoch:
            return True
        try:
            checkpoint = self.store.pull(epoch)
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


async def wait_for_checkpoint(store: CheckpointStore, epoch: int, *, timeout: float,
                              poll: float = 2.0) -> Checkpoint | None:
    """Poll the store for ``epoch-{epoch}`` for up to ``timeout`` seconds (None if absent).

    Pulls run in a worker thread (they download and hash files). A corrupt checkpoint is
    logged and polled again: the pusher may still be writing it.
    """
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await loop.run_in_executor(None, store.pull, epoch)
        except MissingCheckpointError:
            pass
        except CheckpointError as err:
            logger.warning("checkpoint epoch-%d not usable yet: %s", epoch, err)
        if time.monotonic() + poll > deadline:
            logger.warning("no canonical checkpoint epoch-%d after %.0f s", epoch, timeout)
            return None
        await asyncio.sleep(poll)
