"""Validator entry point: parse flags, build, run Train and AllReduce rounds, close.

    python neurons/validator.py --wallet.name validator1 --wallet.hotkey default \
        --neuron.initial_peers /ip4/1.2.3.4/tcp/8009/p2p/Qm...

The chain defaults to the real network (``--subtensor.network finney``; the devnet needs
``local-devnet``); every flag is listed by ``--help`` and documented in docs/validator.md.
A set-up mistake exits 2 with one line naming the fix (docs/miner.md, "Start-up errors").
The same program as the ``subnet-validator`` console script (template/cli.py).
"""

from __future__ import annotations

import sys

from template.cli import validator as main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
