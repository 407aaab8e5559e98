"""Stable peer identity per hotkey: a libp2p key and an RSA record-signing key kept with the wallet.

A restarted miner must be the same peer: same libp2p PeerID (so other peers' routing tables and
the validator's bookkeeping still point at it) and same RSA key (so its progress record in the
DHT is *overwritten*, not duplicated under a second subkey until the old one expires).

Both files live next to the wallet, one pair per hotkey::

    <wallet.path>/<wallet.name>/hivemind/<hotkey>.key   libp2p private key (written by p2pd)
    <wallet.path>/<wallet.name>/hivemind/<hotkey>.rsa   RSA key that signs DHT records (DER)

They are created on first use with mode 0400. Losing them only costs a new PeerID.
"""

from __future__ import annotations

import os
from pathlib import Path

from hivemind.p2p import P2P, PeerID
from hivemind.utils.crypto import RSAPrivateKey

from template.config import WalletConfig


def identity_path(wallet: WalletConfig) -> Path:
    """Where the libp2p identity of ``wallet``'s hotkey lives (the file may not exist yet)."""
    root = Path(os.path.expanduser(wallet.path)) / wallet.name / "hivemind"
    return root / f"{wallet.hotkey}.key"


def ensure_identity(path: str | os.PathLike[str]) -> PeerID:
    """Create the libp2p identity file at ``path`` if missing; return the PeerID it stands for."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        P2P.generate_identity(str(path))  # writes a fresh Ed25519 key, chmod 0400
    return PeerID.from_identity(path.read_bytes())


def record_key_path(identity: str | os.PathLike[str]) -> Path:
    """The RSA record-signing key kept beside a libp2p identity file."""
    return Path(identity).with_suffix(".rsa")


def load_or_create_record_key(path: str | os.PathLike[str]) -> RSAPrivateKey:
    """The RSA key stored at ``path`` (created on first use): signs this peer's DHT records."""
    path = Path(path)
    if path.is_file():
        key = RSAPrivateKey.__new__(RSAPrivateKey)
        key.__setstate__({"_private_key": path.read_bytes()})  # hivemind's own (de)serialisation
        return key
    key = RSAPrivateKey()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(key.to_bytes())
    os.chmod(tmp, 0o400)
    os.replace(tmp, path)
    return key
