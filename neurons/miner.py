"""Miner entry point: parse flags, build, train with the swarm, close.

    python neurons/miner.py --wallet.name miner1 --wallet.hotkey default \
        --neuron.initial_peers /ip4/1.2.3.4/tcp/8009/p2p/Qm...
"""

from __future__ import annotations

import sys

import bittensor  # noqa: F401  (import before hivemind: it resets existing loggers)

from hivemind_utils.lifetime import stoppable
from template.config import NEURON_DEFAULTS, parse_config
from template.miner.build import build_miner
from template.preflight import STARTUP_ERRORS, check_start, report
from template.telemetry import setup_logging


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv, description="Collaborative-training miner",
                       defaults=NEURON_DEFAULTS)
    log = setup_logging(cfg.logging, name=f"miner-{cfg.wallet.name}")
    # SIGTERM/SIGINT (to the PID or its group): stop within --neuron.stop_timeout, no orphans.
    with stoppable(stop_timeout=cfg.neuron.stop_timeout, log=log) as stopper:
        try:
            check_start(cfg, role="miner")  # seconds, before minutes of set-up
            miner = build_miner(cfg)
        except STARTUP_ERRORS as err:  # one line naming the fix; exit status 2
            return report(err, debug=cfg.logging.debug or cfg.logging.trace)
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
