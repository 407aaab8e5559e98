"""An operator's wallet and uid from ``--wallet.*``: each mistake is one line with its fix.

    wallet = load_wallet(cfg.wallet)           # StartupError naming --wallet.name/--wallet.hotkey
    uid = registered_uid(chain, wallet, cfg)   # StartupError with the `btcli subnet register` line

A neuron needs the hotkey (it signs requests and records) and the coldkey's public part
(``coldkeypub.txt``, announced with the Axon); never the private coldkey.
"""

from __future__ import annotations

import os
from pathlib import Path

import bittensor as bt
from bittensor_wallet.errors import KeyFileError

from template.chain.base import Chain
from template.config import Config, WalletConfig
from template.preflight import StartupError


def _names(folder: Path, *, dirs: bool) -> str:
    try:
        found = sorted(p.name for p in folder.iterdir()
                       if p.is_dir() == dirs and not p.name.endswith("pub.txt"))
    except OSError:
        found = []
    return ", ".join(found) or "none"


def load_wallet(cfg: WalletConfig) -> bt.Wallet:
    """The wallet named by the config, its hotkey loaded (no prompts, no creation)."""
    root = Path(cfg.path).expanduser()
    folder = root / cfg.name
    if not folder.is_dir():
        raise StartupError("--wallet.name", f"no wallet {cfg.name!r} in {root} (found: "
                           f"{_names(root, dirs=True)}); pick one with --wallet.name (and "
                           f"--wallet.path) or create it: `btcli wallet create --wallet.name "
                           f"{cfg.name}`")
    wallet = bt.Wallet(name=cfg.name, hotkey=cfg.hotkey, path=str(root))
    if not wallet.coldkeypub_file.exists_on_device():
        raise StartupError("--wallet.name", f"wallet {cfg.name!r} in {root} has no coldkey "
                           "(coldkeypub.txt); restore its public part: `btcli wallet "
                           f"regen_coldkeypub --wallet.name {cfg.name}`")
    hotkey_file = wallet.hotkey_file
    if not hotkey_file.exists_on_device():
        raise StartupError("--wallet.hotkey", f"wallet {cfg.name!r} has no hotkey {cfg.hotkey!r} "
                           f"(found: {_names(folder / 'hotkeys', dirs=False)}); pick one with "
                           f"--wallet.hotkey or create it: `btcli wallet new_hotkey --wallet.name "
                           f"{cfg.name} --wallet.hotkey {cfg.hotkey}`")
    if hotkey_file.is_encrypted() and not os.environ.get(hotkey_file.env_var_name()):
        raise StartupError("--wallet.hotkey", f"hotkey {cfg.hotkey!r} of wallet {cfg.name!r} is "
                           "encrypted and a neuron cannot prompt for its password; set "
                           f"{hotkey_file.env_var_name()} or regenerate it unencrypted")
    try:
        wallet.hotkey  # noqa: B018 - loads (and so checks) the key file now, not mid-run
    except KeyFileError as err:
        raise StartupError("--wallet.hotkey", f"cannot read hotkey {hotkey_file.path}: "
                           f"{' '.join(str(err).split())}") from err
    return wallet


def register_command(cfg: Config) -> str:
    """The command that registers ``--wallet.*`` on ``--netuid`` of ``--subtensor.network``."""
    w = cfg.wallet
    if cfg.subtensor.is_local_devnet:
        return (f"python scripts/create_wallets.py --names {w.name} --path {w.path} "
                f"--localchain {cfg.localchain.path} --netuid {cfg.netuid}")
    network = cfg.subtensor.chain_endpoint or cfg.subtensor.network
    return (f"btcli subnet register --netuid {cfg.netuid} --wallet.name {w.name} "
            f"--wallet.hotkey {w.hotkey} --network {network}")


def registered_uid(chain: Chain, wallet: bt.Wallet, cfg: Config) -> int:
    """The uid of the wallet's hotkey on ``--netuid``, or a :class:`StartupError` saying how to
    register it."""
    hotkey = wallet.hotkey.ss58_address
    uid = chain.uid_of(hotkey)
    if uid is None:
        raise StartupError("--wallet.hotkey", f"hotkey {cfg.wallet.hotkey!r} ({hotkey}) of wallet "
                           f"{cfg.wallet.name!r} is not registered on netuid {cfg.netuid} of "
                           f"{cfg.subtensor.network}; register it: `{register_command(cfg)}`")
    return uid
