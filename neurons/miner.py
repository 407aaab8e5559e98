"""Miner entry point: parse flags, build, train with the swarm, close (template/cli.py).

    python neurons/miner.py --wallet.name miner1 --wallet.hotkey default \
        --neuron.initial_peers /ip4/1.2.3.4/tcp/8009/p2p/Qm...

The same program as the ``subnet-miner`` console script that ``pip install .`` puts on PATH.
"""

from __future__ import annotations

import sys

from template.cli import miner as main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
