"""Chain access: one `Chain` interface, the embedded devnet chain and the subtensor adapter.

    chain = build_chain(cfg)          # LocalChain for `local-devnet`, BittensorChain otherwise
    uid = chain.register(wallet)
    chain.bind_peer_id(wallet, dht.peer_id.to_base58())
    graph = chain.metagraph()         # frozen snapshot: uids, hotkeys, stake, permits, axons

Selection is by ``--subtensor.network`` only (``local-devnet`` is the default).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from template.chain.base import (
    Chain,
    ChainError,
    ChainResult,
    Commitment,
    Metagraph,
    NeuronInfo,
)
from template.chain.identity import decode_binding, encode_binding, resolve_bindings

if TYPE_CHECKING:
    from template.config import Config

__all__ = [
    "Chain", "ChainError", "ChainResult", "Commitment", "Metagraph", "NeuronInfo",
    "build_chain", "decode_binding", "encode_binding", "resolve_bindings",
]


def build_chain(cfg: Config, *, reader: bool = False) -> Chain:
    """The chain named by ``--subtensor.network`` for ``--netuid``.

    ``reader``: a process that only reads (the DHT inspector) opens the devnet file with the
    settings it was created with and refuses a missing file (:meth:`LocalChain.open_existing`).
    """
    if cfg.subtensor.is_local_devnet:
        from template.chain.local import LocalChain

        if reader:
            return LocalChain.open_existing(cfg.localchain.path, netuid=cfg.netuid)
        return LocalChain(cfg.localchain.path, netuid=cfg.netuid,
                          block_time=cfg.localchain.block_time,
                          weights_rate_limit=cfg.localchain.weights_rate_limit)
    from template.chain.subtensor import BittensorChain

    return BittensorChain(network=cfg.subtensor.network, netuid=cfg.netuid,
                          chain_endpoint=cfg.subtensor.chain_endpoint)
