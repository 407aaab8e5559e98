"""Deployment: the console scripts setup.py declares, the pm2 file and the systemd units."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def console_scripts() -> dict[str, str]:
    """``name -> "module:function"`` from setup.py's ``entry_points`` (read, not run)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "entry_points":
            lines = ast.literal_eval(node.value)["console_scripts"]
            return dict(tuple(part.strip() for part in line.split("=", 1)) for line in lines)
    raise AssertionError("setup.py declares no entry_points")


def target(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def test_console_scripts_name_callable_functions():
    scripts = console_scripts()
    assert {"subnet-miner", "subnet-validator", "subnet-inspect"} <= scripts.keys()
    for spec in scripts.values():
        assert callable(target(spec)), spec


def test_console_scripts_are_the_programs_the_script_files_run():
    import runpy

    for script, name in (("neurons/miner.py", "subnet-miner"),
                         ("neurons/validator.py", "subnet-validator"),
                         ("scripts/inspect_dht.py", "subnet-inspect")):
        module = runpy.run_path(str(REPO / script), run_name="not_main")
        assert module["main"] is target(console_scripts()[name]), script


def test_a_console_script_answers_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        target(console_scripts()["subnet-inspect"])(["--help"])
    assert exit_info.value.code == 0
    assert "--initial_peers" in capsys.readouterr().out
