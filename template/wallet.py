"""Load an operator's wallet from `--wallet.*`, with an error that says how to create one."""

from __future__ import annotations

from pathlib import Path

import bittensor as bt

from template.config import ConfigError, WalletConfig


def load_wallet(cfg: WalletConfig) -> bt.Wallet:
    """The wallet named by the config; its hotkey file must exist (no prompts, no creation)."""
    wallet = bt.Wallet(name=cfg.name, hotkey=cfg.hotkey, path=str(Path(cfg.path).expanduser()))
    if not Path(wallet.hotkey_file.path).exists():
        raise ConfigError(
            "--wallet.name",
            f"no hotkey {cfg.hotkey!r} for wallet {cfg.name!r} under {cfg.path}; create it with "
            "`btcli wallet new_hotkey` or, on the devnet, scripts/create_wallets.py",
        )
    return wallet
