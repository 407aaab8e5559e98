"""Logging setup and wandb offline runs."""

from __future__ import annotations

import logging

from template.config import Config, LoggingConfig, WandbConfig
from template.telemetry import Telemetry, setup_logging


def test_logs_go_to_file(tmp_path):
    log = setup_logging(LoggingConfig(dir=str(tmp_path)), name="unit")
    log.info("hello %d", 42)
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert "hello 42" in (tmp_path / "unit.log").read_text()


def test_wandb_offline_writes_a_local_run(tmp_path):
    cfg = Config(logging=LoggingConfig(dir=str(tmp_path)))
    tel = Telemetry(cfg, role="miner", name="m1")
    tel.log({"loss": 3.5}, step=1)
    run_dir = tel.run_dir
    tel.close()
    assert run_dir is not None and str(tmp_path) in run_dir
    assert any(tmp_path.rglob("*.wandb"))


def test_wandb_disabled_is_a_no_op(tmp_path):
    cfg = Config(logging=LoggingConfig(dir=str(tmp_path)), wandb=WandbConfig(mode="disabled"))
    tel = Telemetry(cfg, role="miner", name="m1")
    tel.log({"loss": 1.0})
    tel.close()
    assert tel.run_dir is None
