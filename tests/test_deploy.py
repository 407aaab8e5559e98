"""Deployment: the console scripts setup.py declares, the pm2 file and the systemd units."""

from __future__ import annotations

import ast
import importlib
import json
import shutil
import subprocess
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


UNITS = [REPO / "deploy" / "systemd" / f"subnet-{role}.service" for role in ("miner", "validator")]
PM2 = REPO / "deploy" / "ecosystem.config.js"
STOP_TIMEOUT = 20.0
"""--neuron.stop_timeout's default: the process managers wait longer before SIGKILL."""


def unit_settings(text: str) -> dict[str, str]:
    settings = {}
    for line in text.replace("\\\n", " ").splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def test_stop_timeout_default_is_the_one_the_deploy_files_wait_for():
    from template.config import NeuronConfig

    assert NeuronConfig.stop_timeout == STOP_TIMEOUT


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_unit_lets_the_neuron_stop_its_children(unit):
    settings = unit_settings(unit.read_text())
    role = unit.stem.removeprefix("subnet-")
    assert settings["EnvironmentFile"].endswith("deploy/.env")
    assert settings["WorkingDirectory"].startswith("/")
    assert settings["ExecStart"].startswith(settings["WorkingDirectory"] + "/.venv/bin/python")
    assert f"neurons/{role}.py" in settings["ExecStart"]
    assert settings["Restart"] == "on-failure" and settings["RestartPreventExitStatus"] == "2"
    assert settings["KillMode"] == "mixed"  # SIGTERM to the neuron only, SIGKILL to leftovers
    assert float(settings["TimeoutStopSec"]) > STOP_TIMEOUT
    assert "HF_TOKEN" not in settings and "WANDB_API_KEY" not in settings


def test_secrets_live_in_an_untracked_env_file():
    example = (REPO / "deploy" / ".env.example").read_text()
    assert "HF_TOKEN=" in example and "WANDB_API_KEY=" in example
    assert "/deploy/.env" in (REPO / ".gitignore").read_text().splitlines()
    text = PM2.read_text()
    for key in ("readFileSync", 'path.resolve(__dirname, "..", ".venv/bin/python")',
                "cwd: ROOT", "treekill: false", "kill_timeout: 30000"):
        assert key in text, key
    assert "hf_" not in text and "<HF_WRITE_TOKEN>" not in text


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_pm2_file_loads_with_node_and_takes_the_env_file(tmp_path):
    (tmp_path / "deploy").mkdir()
    shutil.copy(PM2, tmp_path / "deploy" / PM2.name)
    config = json.dumps(str(tmp_path / "deploy" / PM2.name))
    script = f"console.log(JSON.stringify(require({config})))"
    missing = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "cp deploy/.env.example deploy/.env" in missing.stderr
    (tmp_path / "deploy" / ".env").write_text('# comment\nHF_TOKEN="hf_abc"\n\nWANDB_API_KEY=k=1\n')
    proc = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    apps = {app["name"]: app for app in json.loads(proc.stdout)["apps"]}
    assert apps.keys() == {"miner", "validator"}
    for name, app in apps.items():
        assert app["interpreter"] == str(tmp_path / ".venv" / "bin" / "python")
        assert app["cwd"] == str(tmp_path)
        assert app["script"] == str(tmp_path / "neurons" / f"{name}.py")
        assert app["env"] == {"HF_TOKEN": "hf_abc", "WANDB_API_KEY": "k=1"}
        assert app["treekill"] is False and app["kill_timeout"] > 1000 * STOP_TIMEOUT
