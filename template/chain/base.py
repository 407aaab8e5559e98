"""The one `Chain` interface every neuron talks to, and the plain values it returns.

Two implementations: :class:`template.chain.local.LocalChain` (embedded SQLite devnet) and
:class:`template.chain.subtensor.BittensorChain` (a real subtensor). Neurons never branch on
which one they hold. Values are frozen dataclasses, so a metagraph snapshot can be handed to
pure functions (blacklist, priority, scoring) and compared in tests.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from template.chain.identity import encode_binding, resolve_bindings, resolve_record_keys

if TYPE_CHECKING:
    import bittensor as bt
    from bittensor_wallet import Wallet


class ChainError(RuntimeError):
    """The chain refused an operation for a reason the operator must fix (e.g. subnet full)."""


@dataclass(frozen=True)
class ChainResult:
    """Outcome of a write. ``retry_after_blocks`` > 0 when refused by a rate limit."""

    success: bool
    message: str = ""
    retry_after_blocks: int = 0


@dataclass(frozen=True)
class NeuronInfo:
    uid: int
    hotkey: str
    coldkey: str
    stake: float
    validator_permit: bool
    ip: str = "0.0.0.0"
    port: int = 0
    registered_block: int = 0

    @property
    def is_serving(self) -> bool:
        return self.port > 0 and self.ip not in ("", "0.0.0.0")


@dataclass(frozen=True)
class Metagraph:
    """A snapshot of one subnet at ``block``: neurons ordered by uid."""

    netuid: int
    block: int
    neurons: tuple[NeuronInfo, ...]

    @property
    def uids(self) -> list[int]:
        return [n.uid for n in self.neurons]

    @property
    def hotkeys(self) -> list[str]:
        return [n.hotkey for n in self.neurons]

    @property
    def coldkeys(self) -> list[str]:
        return [n.coldkey for n in self.neurons]

    @property
    def stakes(self) -> list[float]:
        return [n.stake for n in self.neurons]

    @property
    def validator_permits(self) -> list[bool]:
        return [n.validator_permit for n in self.neurons]

    def neuron(self, uid: int) -> NeuronInfo | None:
        return next((n for n in self.neurons if n.uid == uid), None)

    def uid_of(self, hotkey: str) -> int | None:
        return next((n.uid for n in self.neurons if n.hotkey == hotkey), None)

    def axon(self, uid: int) -> bt.AxonInfo:
        """The Dendrite's address book entry for ``uid`` (raises KeyError if unknown)."""
        import bittensor as bt

        n = self.neuron(uid)
        if n is None:
            raise KeyError(f"uid {uid} is not registered on netuid {self.netuid}")
        return bt.AxonInfo(version=1, ip=n.ip, port=n.port, ip_type=4, hotkey=n.hotkey,
                           coldkey=n.coldkey, protocol=4)


@dataclass(frozen=True)
class Commitment:
    """Data a hotkey committed on chain, authenticated by the hotkey, at ``block``."""

    uid: int
    hotkey: str
    data: str
    block: int


class Chain(abc.ABC):
    """Block, metagraph, registration, axon serving, weights and commitments of one subnet."""

    netuid: int

    @abc.abstractmethod
    def block(self) -> int:
        """Current block height."""

    @abc.abstractmethod
    def metagraph(self) -> Metagraph:
        """A fresh snapshot of the subnet."""

    @abc.abstractmethod
    def register(self, wallet: Wallet) -> int:
        """Register the wallet's hotkey (no-op if registered); returns its uid."""

    @abc.abstractmethod
    def serve_axon(self, wallet: Wallet, *, ip: str, port: int) -> ChainResult:
        """Announce the Axon address of the wallet's hotkey."""

    @abc.abstractmethod
    def set_weights(self, wallet: Wallet, uids: Sequence[int], weights: Sequence[float],
                    ) -> ChainResult:
        """Set the validator's weights (normalised by the chain); may be rate limited."""

    @abc.abstractmethod
    def weights(self) -> dict[int, dict[int, float]]:
        """Last weights of every validator: ``{validator_uid: {uid: weight}}``, rows sum to 1."""

    @abc.abstractmethod
    def commit(self, wallet: Wallet, data: str) -> ChainResult:
        """Commit ``data`` under the wallet's hotkey (replaces its previous commitment)."""

    @abc.abstractmethod
    def commitments(self) -> dict[int, Commitment]:
        """The authenticated commitment of every registered uid that has one."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections."""

    # ------------------------------------------------------------ derived helpers

    def uid_of(self, hotkey: str) -> int | None:
        return self.metagraph().uid_of(hotkey)

    def bind_peer_id(self, wallet: Wallet, peer_id: str,
                     record_key: str | None = None) -> ChainResult:
        """Bind the hivemind PeerID (and the id of the key signing its DHT records) to the
        wallet's hotkey, in a commitment signed by the hotkey.

        Re-binding the same PeerID and key keeps the original block (see
        :func:`resolve_bindings`: the earliest claim of a PeerID wins).
        """
        current = self.commitments()
        uid = self.uid_of(wallet.hotkey.ss58_address)
        data = encode_binding(peer_id, record_key)
        if uid is not None and uid in current and current[uid].data == data:
            return ChainResult(True, "already bound")
        return self.commit(wallet, data)

    def peer_bindings(self) -> dict[int, str]:
        """``{uid: peer_id}`` for uids whose binding stands (duplicate claims resolved)."""
        return resolve_bindings(self.commitments().values())

    def record_keys(self) -> dict[str, str]:
        """``{record key id: hotkey}`` of every registered uid that bound its DHT record key."""
        return resolve_record_keys(self.commitments().values())
