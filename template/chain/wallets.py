"""Devnet wallets: created without prompts, registered and staked on the local chain.

Unencrypted keys: for the local devnet only, never for keys that hold real TAO. Existing wallets
are reused, so calling this again gives the same uids.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import bittensor as bt

from template.chain.local import LocalChain

HOTKEY = "default"


def create_wallet(path: str | Path, name: str, hotkey: str = HOTKEY) -> bt.Wallet:
    """The wallet ``name``/``hotkey`` under ``path``, created without password if missing."""
    wallet = bt.Wallet(name=name, hotkey=hotkey, path=str(Path(path).expanduser()))
    if not wallet.coldkeypub_file.exists_on_device():
        wallet.create_new_coldkey(use_password=False, overwrite=True, suppress=True)
    if not wallet.hotkey_file.exists_on_device():
        wallet.create_new_hotkey(use_password=False, overwrite=True, suppress=True)
    return wallet


@dataclass(frozen=True)
class Registered:
    name: str
    uid: int
    hotkey: str
    stake: float


def create_and_register(names: Iterable[str], *, wallet_path: str | Path, chain: LocalChain,
                        stakes: Mapping[str, float] | None = None) -> list[Registered]:
    """Create (or reuse) each wallet, register it and top its stake up to ``stakes[name]``."""
    stakes = dict(stakes or {})
    unknown = set(stakes) - set(names)
    if unknown:
        raise ValueError(f"--stake names wallets not in --names: {sorted(unknown)}")
    out = []
    for name in names:
        wallet = create_wallet(wallet_path, name)
        hotkey = wallet.hotkey.ss58_address
        uid = chain.register(wallet)
        current = chain.metagraph().neuron(uid)
        stake = current.stake if current is not None else 0.0
        if stakes.get(name, 0.0) > stake:
            stake = chain.add_stake(hotkey, stakes[name] - stake)
        out.append(Registered(name=name, uid=uid, hotkey=hotkey, stake=stake))
    return out


def parse_stakes(items: Iterable[str]) -> dict[str, float]:
    """``["validator1=1000", "v2=5"]`` (or comma-joined) -> ``{"validator1": 1000.0, ...}``."""
    stakes = {}
    for item in (part for chunk in items for part in chunk.split(",") if part):
        name, sep, amount = item.partition("=")
        if not sep:
            raise ValueError(f"--stake {item!r}: use NAME=AMOUNT")
        stakes[name.strip()] = float(amount)
    return stakes
