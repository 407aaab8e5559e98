"""Start a DHT node: bootstrap a new swarm or join one, on loopback or the internet.

    dht = start_dht(cfg.dht, run_id=cfg.neuron.run_id, initial_peers=cfg.neuron.initial_peers,
                    identity_path=identity_path(cfg.wallet))
    print(visible_maddrs(dht))   # give these to the next peer as --neuron.initial_peers

Every node installs the run's record validators (:mod:`hivemind_utils.records`), so it refuses
unsigned or malformed records. Failures are typed: :class:`BadPeerAddress` (a multiaddr that does
not parse), :class:`DHTJoinError` (no initial peer answered after ``--dht.join_retries``
attempts), :class:`DHTStartError` (p2pd did not start within ``--dht.startup_timeout``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import hivemind
from hivemind.p2p import P2PDaemonError
from hivemind.utils.crypto import RSAPrivateKey
from hivemind.utils.multiaddr import Multiaddr

from hivemind_utils import compat
from hivemind_utils.identity import ensure_identity, load_or_create_record_key, record_key_path
from hivemind_utils.lifetime import DiesWithParent
from hivemind_utils.records import public_key_subkey, record_validators
from template.config import DHTConfig

logger = logging.getLogger(__name__)
compat.install_p2pd_death_signal()  # before any DHT forks: its p2pd dies with the DHT process


class DHTError(RuntimeError):
    """The DHT could not be started or joined; the message says what to change."""


class BadPeerAddress(DHTError, ValueError):
    """An initial peer is not a multiaddr like ``/ip4/1.2.3.4/tcp/8009/p2p/Qm..``."""


class DHTJoinError(DHTError):
    """None of the initial peers answered (wrong address, peer down, firewall)."""


class DHTStartError(DHTError):
    """The local p2p daemon did not start (raise ``--dht.startup_timeout`` on a slow machine)."""


class SwarmDHT(DiesWithParent, hivemind.DHT):
    """A ``hivemind.DHT`` that knows the RSA key its record validator signs with.

    Publishers need that key's public part to build their subkey (hivemind's validator signs a
    record only when the subkey carries the DHT's own public key). Its process (and p2pd) dies
    with the process that started it and ignores that process's group signals
    (:mod:`hivemind_utils.lifetime`).
    """

    def __init__(self, *args: object, record_key: RSAPrivateKey, run_id: str, **kwargs: object):
        self.record_key = record_key
        self.run_id = run_id
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    @property
    def record_subkey(self) -> bytes:
        """``[owner:<public key>]``: the subkey this node's records are written under."""
        return public_key_subkey(self.record_key)


def check_peer_addresses(initial_peers: Sequence[str]) -> list[str]:
    """The addresses as strings, or :class:`BadPeerAddress` naming the first bad one."""
    checked = []
    for peer in initial_peers:
        try:
            maddr = Multiaddr(str(peer))
            maddr.value_for_protocol("p2p")
        except Exception as err:  # noqa: BLE001 - multiaddr raises many types; all mean "bad address"
            raise BadPeerAddress(
                f"{peer!r} is not a peer multiaddr like /ip4/1.2.3.4/tcp/8009/p2p/Qm.. ({err})"
            ) from err
        checked.append(str(maddr))
    return checked


def _host_and_announce(cfg: DHTConfig) -> tuple[list[str], list[str] | None]:
    host = [f"/ip4/{cfg.ip}/tcp/{cfg.port}"]
    if not cfg.announce_ip:
        return host, None
    if cfg.port == 0:
        raise DHTError("--dht.announce_ip needs an explicit --dht.port (0 cannot be announced)")
    return host, [f"/ip4/{cfg.announce_ip}/tcp/{cfg.port}"]


def start_dht(
    cfg: DHTConfig,
    *,
    run_id: str,
    initial_peers: Sequence[str] = (),
    identity_path: str | os.PathLike[str] | None = None,
    client_mode: bool = False,
) -> SwarmDHT:
    """Start a DHT node; with no ``initial_peers`` it bootstraps a new swarm.

    ``identity_path`` (see :func:`hivemind_utils.identity.identity_path`) makes the PeerID and the
    record-signing key stable across restarts; both files are created on first use.
    ``client_mode=True`` makes a node that only asks (the inspector): it accepts no incoming
    connections and stores nothing for others.
    """
    peers = check_peer_addresses(initial_peers)
    host_maddrs, announce_maddrs = _host_and_announce(cfg)
    if identity_path is not None:
        ensure_identity(identity_path)
        record_key = load_or_create_record_key(record_key_path(identity_path))
    else:
        record_key = RSAPrivateKey()  # one per node, so nodes sharing a process stay distinct
    kwargs: dict[str, object] = dict(
        host_maddrs=host_maddrs,
        startup_timeout=cfg.startup_timeout,
        client_mode=client_mode,
        record_validators=record_validators(run_id, record_key),
        use_relay=cfg.use_relay,
        use_auto_relay=cfg.use_relay,
        nat_port_map=cfg.use_relay,
        auto_nat=cfg.use_relay,
    )
    if announce_maddrs is not None:
        kwargs["announce_maddrs"] = announce_maddrs
    if identity_path is not None:
        kwargs["identity_path"] = str(identity_path)
    attempts = cfg.join_retries if peers else 1
    last: BaseException | None = None
    for attempt in range(1, attempts + 1):
        try:
            return SwarmDHT(initial_peers=peers or None, start=True, record_key=record_key,
                            run_id=run_id, **kwargs)
        except P2PDaemonError as err:
            if peers and "bootstrap" in str(err):  # p2pd: "failed to connect to bootstrap peers"
                last = err
                logger.warning("DHT join attempt %d/%d failed: %s", attempt, attempts, err)
                if attempt < attempts:
                    time.sleep(min(2.0 ** (attempt - 1), 10.0))
                continue
            raise DHTStartError(
                f"p2p daemon failed to start: {err}; raise --dht.startup_timeout "
                f"(now {cfg.startup_timeout:g} s) or check --dht.ip/--dht.port"
            ) from err
        except RuntimeError as err:  # DHTNode: "bootstrap failed: none of the initial_peers ..."
            last = err
            logger.warning("DHT join attempt %d/%d failed: %s", attempt, attempts, err)
            if attempt < attempts:
                time.sleep(min(2.0 ** (attempt - 1), 10.0))
    if not peers:
        raise DHTStartError(f"could not start a DHT node: {last}")
    raise DHTJoinError(
        f"none of the initial peers answered after {attempts} attempts ({', '.join(peers)}): "
        f"{last}. Check --neuron.initial_peers, that those peers are running, and firewalls."
    ) from last


def visible_maddrs(dht: hivemind.DHT) -> list[str]:
    """Multiaddrs other peers can join with (``--neuron.initial_peers``), as strings."""
    return [str(maddr) for maddr in dht.get_visible_maddrs()]
