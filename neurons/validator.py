"""Validator entry point: parse flags, build, run Train and AllReduce rounds, close.

    python neurons/validator.py --wallet.name validator1 --wallet.hotkey default \
        --neuron.initial_peers /ip4/1.2.3.4/tcp/8009/p2p/Qm...

Defaults run against the local devnet chain (``--subtensor.network local-devnet``); every flag
is listed by ``--help`` and documented in docs/validator.md.
"""

from __future__ import annotations

import signal
import sys

import bittensor  # noqa: F401  (import before hivemind: it resets existing loggers)

from template.config import parse_config
from template.telemetry import setup_logging
from template.validator.validator import Validator


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the loop like Ctrl+C: state is saved on close


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv, description="Collaborative-training validator")
    log = setup_logging(cfg.logging, name=f"validator-{cfg.wallet.name}")
    validator = Validator(cfg)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        validator.run()
    except KeyboardInterrupt:
        log.info("interrupted")
    finally:
        validator.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
