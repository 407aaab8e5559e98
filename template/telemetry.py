"""Logging and wandb for neurons and scripts: one call each, configured from the config tree."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from template.config import Config, LoggingConfig

_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"


def setup_logging(cfg: LoggingConfig, *, name: str) -> logging.Logger:
    """Log to stderr and to `<logging.dir>/<name>.log`; returns the `name` logger.

    Call it after importing bittensor: importing bittensor silences loggers that exist at that
    moment (see NOTES), so the handlers are (re)installed here.
    """
    level = logging.DEBUG if (cfg.debug or cfg.trace) else logging.INFO
    log_dir = Path(cfg.dir).expanduser()
    log_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter = logging.Formatter(_FORMAT, datefmt="%H:%M:%S")
    for handler in (logging.StreamHandler(sys.stderr),
                    logging.FileHandler(log_dir / f"{name}.log")):
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("hivemind", "template", "hivemind_utils", name):
        logging.getLogger(noisy).setLevel(level)
        logging.getLogger(noisy).disabled = False
    return logging.getLogger(name)


class Telemetry:
    """A wandb run (offline by default) that a neuron logs plain dicts to.

    `--wandb.mode disabled` makes every call a no-op, so callers never branch on it.
    """

    def __init__(self, cfg: Config, *, role: str, name: str):
        self._run: Any = None
        if cfg.wandb.mode == "disabled":
            return
        import wandb  # imported lazily: it is slow to import and not needed when disabled

        run_dir = Path(cfg.logging.dir).expanduser() / "wandb"
        run_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        self._run = wandb.init(
            mode=cfg.wandb.mode,
            project=cfg.wandb.project,
            entity=cfg.wandb.entity or None,
            dir=str(run_dir),
            name=name,
            group=cfg.neuron.run_id,
            job_type=role,
            config={"run_id": cfg.neuron.run_id, "preset": cfg.model.preset, "role": role},
            reinit="create_new",
        )

    @property
    def run_dir(self) -> str | None:
        return None if self._run is None else str(self._run.dir)

    def log(self, values: Mapping[str, float | int], *, step: int | None = None) -> None:
        if self._run is not None:
            self._run.log(dict(values), step=step)

    def close(self) -> None:
        if self._run is not None:
            import wandb

            self._run.finish()
            self._run = None
            wandb.teardown()  # stop wandb's service process now, not in an atexit hook
