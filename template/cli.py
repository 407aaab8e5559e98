"""The neurons' entry points, importable so that ``pip install`` gives console scripts.

    subnet-miner --wallet.name miner1 --wallet.hotkey default --neuron.initial_peers ...
    subnet-validator --wallet.name validator1 --wallet.hotkey default ...
    subnet-inspect --initial_peers ... [--json | --serve PORT]   (= python scripts/inspect_dht.py;
        template.inspect_dht.main, named in setup.py)

``neurons/miner.py`` and ``neurons/validator.py`` call the same functions, so
``python neurons/miner.py ...`` and ``subnet-miner ...`` are one program (setup.py names them).
Each returns the exit status: 0, or 2 with one line naming the fix for a set-up mistake.
"""

from __future__ import annotations

import bittensor  # noqa: F401  (import before hivemind: it resets existing loggers)

from hivemind_utils.lifetime import stoppable
from template.config import NEURON_DEFAULTS, parse_config
from template.miner.build import build_miner
from template.preflight import STARTUP_ERRORS, check_start, report
from template.telemetry import setup_logging
from template.validator.validator import Validator


def miner(argv: list[str] | None = None) -> int:
    """Parse flags, build, train with the swarm, close."""
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


def validator(argv: list[str] | None = None) -> int:
    """Parse flags, build, run Train and AllReduce rounds, close."""
    cfg = parse_config(argv, description="Collaborative-training validator",
                       defaults=NEURON_DEFAULTS)
    log = setup_logging(cfg.logging, name=f"validator-{cfg.wallet.name}")
    # SIGTERM/SIGINT (to the PID or its group) interrupt the loop like Ctrl+C; state is saved
    # on close, within --neuron.stop_timeout, and no child process outlives the validator.
    with stoppable(stop_timeout=cfg.neuron.stop_timeout, log=log) as stopper:
        try:
            check_start(cfg, role="validator")  # seconds, before minutes of set-up
            validator = Validator(cfg)
        except STARTUP_ERRORS as err:  # one line naming the fix; exit status 2
            return report(err, debug=cfg.logging.debug or cfg.logging.trace)
        try:
            validator.run()
        finally:
            stopper.closing()
            validator.close()
    return 0
