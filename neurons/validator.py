"""Validator entry point: parse flags, build, run Train and AllReduce rounds, close.

    python neurons/validator.py --wallet.name validator1 --wallet.hotkey default \
        --neuron.initial_peers /ip4/1.2.3.4/tcp/8009/p2p/Qm...

The chain defaults to the real network (``--subtensor.network finney``; the devnet needs
``local-devnet``); every flag is listed by ``--help`` and documented in docs/validator.md.
A set-up mistake exits 2 with one line naming the fix (docs/miner.md, "Start-up errors").
"""

from __future__ import annotations

import sys

import bittensor  # noqa: F401  (import before hivemind: it resets existing loggers)

from hivemind_utils.lifetime import stoppable
from template.config import NEURON_DEFAULTS, parse_config
from template.preflight import STARTUP_ERRORS, check_start, report
from template.telemetry import setup_logging
from template.validator.validator import Validator


def main(argv: list[str] | None = None) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
