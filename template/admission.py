"""Which DHT progress records may steer this neuron: bound signers, believable claims.

    admission = swarm_admission(chain, store, max_samples=cfg.averaging.target_batch_size)
    state = read_swarm_state(dht, run_id=..., target_batch_size=..., admission=admission)

The signing keys come from the chain (``Chain.record_keys``: a ``dt2`` binding commitment per
hotkey), the epoch bound from the checkpoint store (the last canonical checkpoint + 1).
"""

from __future__ import annotations

import logging

from hivemind_utils.swarm_state import Admission, AdmissionCache
from template.chain.base import Chain, ChainError
from template.checkpoints.base import CheckpointError, CheckpointStore

logger = logging.getLogger(__name__)


def swarm_admission(chain: Chain, store: CheckpointStore, *, max_samples: int,
                    refresh_interval: float = 10.0) -> AdmissionCache:
    """An :class:`AdmissionCache` over ``chain``'s record keys and ``store``'s last epoch.

    A chain or store that cannot be read keeps the previous admission's value for that part
    (no keys at all before the first success: nothing counts until the chain answers).
    """
    last: dict[str, object] = {"keys": {}, "max_epoch": None}

    def load() -> Admission:
        try:
            last["keys"] = chain.record_keys()
        except ChainError as err:
            logger.warning("could not read record-key bindings (keeping the last ones): %s", err)
        try:
            latest = store.latest_epoch()
            last["max_epoch"] = (latest or 0) + 1
        except CheckpointError as err:
            logger.warning("could not read the last checkpoint epoch (keeping %s): %s",
                           last["max_epoch"], err)
        keys = last["keys"]
        max_epoch = last["max_epoch"]
        assert isinstance(keys, dict) and (max_epoch is None or isinstance(max_epoch, int))
        return Admission(keys=keys, max_epoch=max_epoch, max_samples=max_samples)

    return AdmissionCache(load, refresh_interval=refresh_interval)
