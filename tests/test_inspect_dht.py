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
