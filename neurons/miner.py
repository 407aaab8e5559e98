"""Miner entry point: parse flags, build, train with the swarm, close.

    python neurons/miner.py --wallet.name miner1 --wallet.hotkey default \
        --neuron.initial_peers /ip4/1.2.3.4/tcp/8009/p2p/Qm...
"""

from __future__ import annotations

import sys

import bittensor  # noqa: F401  (import before hivemind: it resets existing loggers)

from hivemind_utils.lifetime import stoppable
from template.config import parse_config
from template.miner.build import build_miner
from template.telemetry import setup_logging
from template.transport import AxonPortInUse, check_port_free


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv, description="Collaborative-training miner")
    log = setup_logging(cfg.logging, name=f"miner-{cfg.wallet.name}")
    # SIGTERM/SIGINT (to the PID or its group): stop within --neuron.stop_timeout, no orphans.
    with stoppable(stop_timeout=cfg.neuron.stop_timeout, log=log) as stopper:
        try:
            check_port_free(cfg.axon.ip, cfg.axon.port)  # before minutes of setup; rechecked
            miner = build_miner(cfg)
        except AxonPortInUse as err:
            print(err, file=sys.stderr)  # one line: --axon.port N is in use
            return 2
        stopper.on_stop = miner.stop.set
        log.info("miner uid %d, PeerID %s, epoch %d", miner.uid, miner.peer_id, miner.epoch)
        try:
            miner.run()
        finally:
            stopper.closing()
            miner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
