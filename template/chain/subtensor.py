"""`BittensorChain`: the `Chain` interface over a real subtensor (bittensor 10.5).

A thin adapter: each method is one bittensor call plus conversion to this package's plain
values. Commitments are authenticated by the chain itself (the extrinsic is signed by the
hotkey), and their block comes from the ``Commitments.CommitmentOf`` storage entry, which the
PeerID duplicate-claim rule needs. Weight setting goes through ``Subtensor.set_weights`` so
commit-reveal subnets work unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from template.chain.base import Chain, ChainError, ChainResult, Commitment, Metagraph, NeuronInfo

if TYPE_CHECKING:
    from bittensor_wallet import Wallet

logger = logging.getLogger(__name__)


class BittensorChain(Chain):
    """One subnet on a bittensor network (``finney``, ``test``, ``local`` or ``ws://...``)."""

    def __init__(self, *, network: str, netuid: int, chain_endpoint: str = "",
                 subtensor: Any = None):
        """Connects at construction. ``subtensor`` injects an already built
        ``bittensor.Subtensor`` (shared connection, or an offline test double)."""
        self.netuid = netuid
        self.network = network
        if subtensor is None:
            import bittensor as bt
            from websockets.exceptions import WebSocketException

            try:
                subtensor = bt.Subtensor(network=chain_endpoint or network)
            except (OSError, TimeoutError, WebSocketException) as err:
                # refused / unreachable / an endpoint that is not a substrate websocket
                raise ChainError(f"--subtensor.network: cannot reach {chain_endpoint or network}"
                                 f" ({type(err).__name__}: {err}); check the endpoint "
                                 "(--subtensor.chain_endpoint) and the network, or use "
                                 "--subtensor.network local-devnet for the devnet") from err
        self.subtensor = subtensor

    def close(self) -> None:
        self.subtensor.close()

    def block(self) -> int:
        return int(self.subtensor.get_current_block())

    def metagraph(self) -> Metagraph:
        mg = self.subtensor.metagraph(self.netuid)
        uids = [int(u) for u in mg.uids]
        stakes = [float(s) for s in mg.S]
        permits = [bool(p) for p in mg.validator_permit]
        neurons = tuple(
            NeuronInfo(uid=uid, hotkey=axon.hotkey, coldkey=axon.coldkey, stake=stakes[i],
                       validator_permit=permits[i], ip=_ip_of(axon), port=int(axon.port))
            for i, (uid, axon) in enumerate(zip(uids, mg.axons, strict=True))
        )
        return Metagraph(netuid=self.netuid, block=int(mg.block), neurons=neurons)

    def register(self, wallet: Wallet) -> int:
        hotkey = wallet.hotkey.ss58_address
        uid = self.subtensor.get_uid_for_hotkey_on_subnet(hotkey, self.netuid)
        if uid is None:
            response = self.subtensor.burned_register(wallet, self.netuid)
            if not response.success:
                raise ChainError(f"registration on netuid {self.netuid} failed: "
                                 f"{response.message}")
            uid = self.subtensor.get_uid_for_hotkey_on_subnet(hotkey, self.netuid)
        if uid is None:
            raise ChainError(f"hotkey {hotkey} has no uid on netuid {self.netuid}")
        return int(uid)

    def serve_axon(self, wallet: Wallet, *, ip: str, port: int) -> ChainResult:
        from bittensor.core.extrinsics.serving import serve_extrinsic

        response = serve_extrinsic(self.subtensor, wallet, ip, port, 4, self.netuid)
        return ChainResult(bool(response.success), str(response.message))

    def set_weights(self, wallet: Wallet, uids: Sequence[int], weights: Sequence[float],
                    ) -> ChainResult:
        response = self.subtensor.set_weights(wallet, self.netuid, list(uids), list(weights))
        return ChainResult(bool(response.success), str(response.message))

    def weights(self) -> dict[int, dict[int, float]]:
        out: dict[int, dict[int, float]] = {}
        for validator, row in self.subtensor.weights(self.netuid):
            total = sum(w for _, w in row)
            if total > 0:
                out[int(validator)] = {int(u): w / total for u, w in row}
        return out

    def commit(self, wallet: Wallet, data: str) -> ChainResult:
        response = self.subtensor.set_commitment(wallet, self.netuid, data)
        return ChainResult(bool(response.success), str(response.message))

    def commitments(self) -> dict[int, Commitment]:
        from bittensor.core.chain_data.utils import decode_metadata

        uid_of = {n.hotkey: n.uid for n in self.metagraph().neurons}
        out = {}
        for hotkey, value in self.subtensor.query_map("Commitments", "CommitmentOf",
                                                      params=[self.netuid]):
            hotkey = str(hotkey)
            raw = getattr(value, "value", value)
            if hotkey not in uid_of:
                continue
            try:
                data = decode_metadata(raw)
            except (KeyError, TypeError, ValueError, IndexError) as err:
                logger.warning("skipping undecodable commitment of %s: %s", hotkey, err)
                continue
            out[uid_of[hotkey]] = Commitment(uid=uid_of[hotkey], hotkey=hotkey, data=data,
                                             block=int(raw["block"]))
        return out


def _ip_of(axon: Any) -> str:
    """AxonInfo.ip holds a dotted string on recent bittensor; an int on older chains."""
    ip = axon.ip
    if isinstance(ip, int):
        import ipaddress

        return str(ipaddress.ip_address(ip))
    return str(ip)
