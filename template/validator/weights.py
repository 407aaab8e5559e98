"""Setting weights: the moving averages, normalised, at the chain's rate limit.

The chain refuses a second ``set_weights`` within ``weights_rate_limit`` blocks; asking anyway
costs a round trip (and on a real subtensor, fees and log noise). :func:`weights_due` decides
from the block of the last success (persisted in the validator state, so a restart does not
reset it), and a refusal that names a wait (``ChainResult.retry_after_blocks``) moves the next
attempt past it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from template.chain.base import Chain, ChainResult, Metagraph
from template.validator.scoring import normalize_weights

if TYPE_CHECKING:
    from bittensor_wallet import Wallet

logger = logging.getLogger(__name__)

DEFAULT_RATE_LIMIT = 100
"""Blocks between two weight updates when the chain does not say (subtensor's usual value)."""


def chain_rate_limit(chain: Chain, *, fallback: int = DEFAULT_RATE_LIMIT) -> int:
    """The chain's ``weights_rate_limit`` in blocks (the devnet chain knows it exactly)."""
    value = getattr(chain, "weights_rate_limit", None)  # LocalChain; the interface has no field
    return int(value) if isinstance(value, int) and value >= 0 else fallback


def weights_due(*, block: int, last_block: int, rate_limit: int) -> bool:
    """Whether ``rate_limit`` blocks have passed since the last successful update."""
    return last_block < 0 or block - last_block >= rate_limit


def weight_vector(ema: Mapping[int, float], graph: Metagraph) -> tuple[list[int], list[float]]:
    """``(uids, weights)`` over the registered uids with a positive moving average, summing to
    1; empty when nobody has earned anything (the chain refuses all-zero weights)."""
    registered = set(graph.uids)
    weights = normalize_weights({uid: s for uid, s in ema.items() if uid in registered})
    uids = sorted(uid for uid, w in weights.items() if w > 0)
    return uids, [weights[uid] for uid in uids]


def set_weights(*, chain: Chain, wallet: Wallet, ema: Mapping[int, float], graph: Metagraph,
                ) -> ChainResult:
    """Push the normalised moving averages; a no-op result when there is nothing to set."""
    uids, weights = weight_vector(ema, graph)
    if not uids:
        return ChainResult(False, "no positive scores yet")
    result = chain.set_weights(wallet, uids, weights)
    level = logging.INFO if result.success else logging.WARNING
    logger.log(level, "set_weights %d uids: %s", len(uids), result.message)
    return result
