"""Create local wallets without prompts and register them on the devnet chain.

    python scripts/create_wallets.py --names miner1,miner2,validator1 \\
        --path ~/.bittensor/wallets --localchain ~/.distributed_training/localchain.sqlite \\
        --stake validator1=1000

Each name becomes a wallet (coldkey ``<name>``, hotkey ``default``) with unencrypted keys: for
the local devnet only, never for keys that hold real TAO. Existing wallets are reused, so the
script is idempotent (same uids on a re-run). Prints ``name uid hotkey stake`` per wallet.
The local swarm launcher calls :func:`create_and_register` directly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import bittensor as bt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from template.chain.local import LocalChain  # noqa: E402

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


def main(argv: list[str] | None = None) -> list[Registered]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", required=True, help="comma-separated wallet names")
    parser.add_argument("--path", default="~/.bittensor/wallets", help="wallets folder")
    parser.add_argument("--localchain", default="~/.distributed_training/localchain.sqlite",
                        help="SQLite file of the devnet chain (--localchain.path)")
    parser.add_argument("--netuid", type=int, default=1)
    parser.add_argument("--block_time", type=float, default=1.0,
                        help="--localchain.block_time of a new chain file")
    parser.add_argument("--weights_rate_limit", type=int, default=10,
                        help="--localchain.weights_rate_limit of a new chain file")
    parser.add_argument("--stake", action="append", default=[],
                        help="NAME=AMOUNT stake (validators need >= 1 for a permit)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    chain = LocalChain(args.localchain, netuid=args.netuid, block_time=args.block_time,
                       weights_rate_limit=args.weights_rate_limit)
    try:
        registered = create_and_register(names, wallet_path=args.path, chain=chain,
                                         stakes=parse_stakes(args.stake))
    finally:
        chain.close()
    for r in registered:
        print(f"{r.name} uid={r.uid} hotkey={r.hotkey} stake={r.stake:g}")
    return registered


if __name__ == "__main__":
    main()
