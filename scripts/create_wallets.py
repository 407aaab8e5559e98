"""Create local wallets without prompts and register them on the devnet chain.

    python scripts/create_wallets.py --names miner1,miner2,validator1 \\
        --path ~/.bittensor/wallets --localchain ~/.distributed_training/localchain.sqlite \\
        --stake validator1=1000

Each name becomes a wallet (coldkey ``<name>``, hotkey ``default``) with unencrypted keys: for
the local devnet only, never for keys that hold real TAO. Existing wallets are reused, so the
script is idempotent (same uids on a re-run). Prints ``name uid hotkey stake`` per wallet.
The library behind it is :mod:`template.chain.wallets`.
"""

from __future__ import annotations

import argparse

from template.chain.local import LocalChain
from template.chain.wallets import Registered, create_and_register, parse_stakes


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
