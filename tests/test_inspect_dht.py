"""The DHT inspector against a live local swarm, run as a subprocess like an operator would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hivemind_utils.dht import start_dht, visible_maddrs
from hivemind_utils.swarm_state import ProgressReporter
from template.config import DHTConfig

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "inspect_dht.py"
RUN = "inspect-run"
HOTKEYS = ["5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY",
           "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty",
           "5FLSigC9HGRKVhB9FiEo4Y3koPsNmBmLJbpXg2mp1hXcS59Y"]


def _inspect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def swarm():
    boot = start_dht(DHTConfig(), run_id=RUN)
    nodes = [boot] + [start_dht(DHTConfig(), run_id=RUN, initial_peers=visible_maddrs(boot))
                      for _ in range(2)]
    for node, hotkey, (epoch, samples) in zip(nodes, HOTKEYS, [(5, 10), (5, 20), (4, 99)],
                                              strict=True):
        assert ProgressReporter(dht=node, hotkey=hotkey).report(
            epoch=epoch, samples=samples, tokens_per_second=123.5)
    yield nodes
    for node in reversed(nodes):
        node.shutdown()


def test_json_shows_the_live_swarm(swarm):
    proc = _inspect("--initial_peers", visible_maddrs(swarm[1])[0], "--run_id", RUN,
                    "--target_batch_size", "64", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    state = json.loads(lines[0])
    assert set(state) == {"global_epoch", "target_batch_size", "samples_accumulated", "peers"}
    assert (state["global_epoch"], state["target_batch_size"], state["samples_accumulated"]) == (
        5, 64, 30)
    rows = {row["peer_id"]: row for row in state["peers"]}
    assert set(rows) == {str(node.peer_id) for node in swarm}
    for node, hotkey in zip(swarm, HOTKEYS, strict=True):
        row = rows[str(node.peer_id)]
        assert set(row) >= {"peer_id", "hotkey", "epoch", "samples", "tokens_per_second",
                            "age_seconds"}
        assert row["hotkey"] == hotkey and row["tokens_per_second"] == 123.5
        assert 0 <= row["age_seconds"] < 60


def test_table_output(swarm):
    proc = _inspect("--initial_peers", *visible_maddrs(swarm[0]), "--run_id", RUN,
                    "--target_batch_size", "60")
    assert proc.returncode == 0, proc.stderr
    assert "global epoch 5: 30/60 samples (50%), 3 live peers" in proc.stdout
    assert all(str(node.peer_id) in proc.stdout for node in swarm)


@pytest.mark.parametrize("address", [
    "not-an-address",
    "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWKzGC1CRXAGhYQDXK8f1Y8DfQyK2jS295nt5adDvBwx1K",
])
def test_bad_address_exits_2_without_traceback(address):
    proc = _inspect("--initial_peers", address, "--json")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "inspect_dht: error:" in proc.stderr
    assert proc.stdout == ""


def test_a_run_id_without_records_says_so(swarm):
    proc = _inspect("--initial_peers", visible_maddrs(swarm[0])[0], "--run_id", "other-run")
    assert proc.returncode == 0, proc.stderr
    assert "no progress records for run id other-run" in proc.stdout
    assert "--run_id" in proc.stdout and "live peers" not in proc.stdout


def _inspector_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("inspect_dht", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_progress_uses_the_runs_target_and_says_when_it_is_a_default():
    from hivemind_utils.swarm_state import PeerProgress, SwarmState
    from template.config import AveragingConfig
    from template.localnet import RUN_ID as LOCAL_RUN_ID
    from template.localnet import parse_args as launcher_args

    inspector = _inspector_module()
    local = inspector.parse_args(["--initial_peers", "x", "--run_id", LOCAL_RUN_ID])
    assert not local.target_given
    assert local.target_batch_size == launcher_args([]).target_batch_size
    other = inspector.parse_args(["--initial_peers", "x", "--run_id", "some-run"])
    assert other.target_batch_size == AveragingConfig.target_batch_size
    given = inspector.parse_args(["--initial_peers", "x", "--target_batch_size", "7"])
    assert given.target_given and given.target_batch_size == 7

    peer = PeerProgress(peer_id="p", hotkey="h", epoch=1, samples=5, tokens_per_second=1.0,
                        age_seconds=0.5)
    state = SwarmState(global_epoch=1, target_batch_size=10, samples_accumulated=5,
                       peers=[peer])
    text = inspector.render(state, run_id="r", target_given=False)
    assert "5/10 samples (50%)" in text and "default for run id r" in text
    assert "default for" not in inspector.render(state, run_id="r", target_given=True)
    empty = SwarmState(global_epoch=0, target_batch_size=10, samples_accumulated=0)
    assert inspector.render(empty, run_id="r").startswith("no progress records for run id r")


def test_launcher_writes_the_run_id_and_the_inspector_command(tmp_path):
    from template.localnet import RUN_ID as LOCAL_RUN_ID
    from template.localnet import write_swarm_files

    command = write_swarm_files(tmp_path, ["/ip4/127.0.0.1/tcp/1/p2p/X"], target_batch_size=64)
    assert (tmp_path / "initial_peers.txt").read_text() == "/ip4/127.0.0.1/tcp/1/p2p/X\n"
    assert (tmp_path / "run_id.txt").read_text().strip() == LOCAL_RUN_ID
    assert "inspect_dht.py" in command
    assert f"--initial_peers $(cat {tmp_path / 'initial_peers.txt'})" in command
    assert f"--run_id {LOCAL_RUN_ID}" in command and "--target_batch_size 64" in command
