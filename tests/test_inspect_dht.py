"""The DHT inspector against a live local swarm, run as a subprocess like an operator would.

The swarm's miners are registered on a devnet chain and bound their record keys, as miners
do at start; a forger holds a validly signed record under a key nobody bound (naming an
honest hotkey, claiming a huge epoch and sample count), and a bound miner claims an epoch
beyond the last checkpoint + 1. The inspector must show the first as UNBOUND and the second as
IMPLAUSIBLE, never as peers, and count neither.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hivemind_utils.dht import start_dht, visible_maddrs
from hivemind_utils.records import record_key_id
from hivemind_utils.swarm_state import ProgressReporter
from template.chain.local import LocalChain
from template.chain.wallets import create_wallet
from template.config import DHTConfig
from template.swarm_snapshot import ChainView, LocalView, Snapshot, StoreView, build_snapshot

pytestmark = pytest.mark.multiprocess

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "inspect_dht.py"
RUN = "inspect-run"
HONEST = [(1, 10), (1, 20), (0, 99)]  # (epoch, samples) of the three bound miners
FAR = 9  # the epoch the fourth bound miner claims: the empty store allows at most 1


def _inspect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inspect")
    chain = LocalChain(tmp / "chain.sqlite", netuid=1, block_time=0.5)  # not the default 1.0
    (tmp / "checkpoints").mkdir()
    boot = start_dht(DHTConfig(), run_id=RUN)
    nodes = [boot]
    try:
        nodes += [start_dht(DHTConfig(), run_id=RUN, initial_peers=visible_maddrs(boot))
                  for _ in range(4)]
        yield _populate(nodes, chain, tmp)
    finally:
        for node in reversed(nodes):
            node.shutdown()
        chain.close()


def _populate(nodes, chain: LocalChain, tmp: Path) -> dict:
    honest, far, forger = nodes[:3], nodes[3], nodes[4]
    hotkeys = []
    for i, node in enumerate([*honest, far]):
        wallet = create_wallet(tmp / "wallets", f"miner{i}")
        chain.register(wallet)
        assert chain.bind_peer_id(wallet, node.peer_id.to_base58(),
                                  record_key_id(node.record_subkey)).success
        hotkeys.append(wallet.hotkey.ss58_address)
    for node, hotkey, (epoch, samples) in zip(honest, hotkeys[:3], HONEST, strict=True):
        assert ProgressReporter(dht=node, hotkey=hotkey).report(
            epoch=epoch, samples=samples, tokens_per_second=123.5)
    assert ProgressReporter(dht=far, hotkey=hotkeys[3]).report(
        epoch=FAR, samples=5, tokens_per_second=1.0)
    assert ProgressReporter(dht=forger, hotkey=hotkeys[0]).report(  # signed, never bound
        epoch=10**9, samples=10**12, tokens_per_second=1e9, finished=True)
    flags = ["--netuid", "1", "--localchain.path", str(tmp / "chain.sqlite"),
             "--store.dir", str(tmp / "checkpoints")]
    return dict(nodes=nodes, honest=honest, far=far, forger=forger, hotkeys=hotkeys,
                flags=flags, tmp=tmp)


def test_json_shows_the_bound_swarm_and_lists_forged_records_apart(swarm):
    proc = _inspect("--initial_peers", visible_maddrs(swarm["nodes"][1])[0], "--run_id", RUN,
                    "--target_batch_size", "64", "--json", *swarm["flags"])
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    state = json.loads(lines[0])
    assert set(state) == {f.name for f in dataclasses.fields(Snapshot)}
    assert state["run_id"] == RUN and state["netuid"] == 1 and state["latest_checkpoint"] is None
    assert (state["global_epoch"], state["target_batch_size"], state["samples_accumulated"]) == (
        1, 64, 30)
    rows = {row["peer_id"]: row for row in state["peers"]}
    assert set(rows) == {str(node.peer_id) for node in swarm["honest"]}
    for node, hotkey in zip(swarm["honest"], swarm["hotkeys"], strict=False):
        row = rows[str(node.peer_id)]
        assert set(row) >= {"peer_id", "hotkey", "epoch", "samples", "tokens_per_second",
                            "age_seconds"}
        assert row["hotkey"] == hotkey and row["tokens_per_second"] == 123.5
        assert row["uid"] == swarm["hotkeys"].index(hotkey) and row["role"] == "miner"
        assert 0 <= row["age_seconds"] < 60
    (forged,) = state["unbound"]  # listed, not a peer, counted nowhere
    assert forged["peer_id"] == str(swarm["forger"].peer_id)
    assert (forged["uid"], forged["role"]) == (None, "unbound")
    assert (forged["hotkey"], forged["epoch"], forged["samples"]) == (
        swarm["hotkeys"][0], 10**9, 10**12)
    (far,) = state["implausible"]
    assert (far["peer_id"], far["epoch"], far["role"]) == (
        str(swarm["far"].peer_id), FAR, "implausible")


def test_table_marks_unbound_and_implausible_records(swarm):
    proc = _inspect("--initial_peers", *visible_maddrs(swarm["nodes"][0]), "--run_id", RUN,
                    "--target_batch_size", "60", *swarm["flags"])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "global epoch 1: 30/60 samples (50%), 3 live peers" in out
    counted, _, apart = out.partition("not counted")
    assert all(str(node.peer_id) in counted for node in swarm["honest"])
    assert str(swarm["forger"].peer_id) not in counted
    assert str(swarm["far"].peer_id) not in counted
    forged = next(line for line in apart.splitlines() if str(swarm["forger"].peer_id) in line)
    assert forged.endswith("UNBOUND")
    far = next(line for line in out.splitlines() if str(swarm["far"].peer_id) in line)
    assert far.endswith("IMPLAUSIBLE")


def test_without_the_chain_nothing_is_shown_as_the_swarm(swarm):
    missing = ["--localchain.path", str(swarm["tmp"] / "nope.sqlite"),
               "--store.dir", str(swarm["tmp"] / "checkpoints")]
    proc = _inspect("--initial_peers", visible_maddrs(swarm["nodes"][0])[0], "--run_id", RUN,
                    "--json", *missing)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "inspect_dht: error: --localchain.path: no devnet chain at" in proc.stderr
    assert not (swarm["tmp"] / "nope.sqlite").exists()  # not created either
    proc = _inspect("--initial_peers", visible_maddrs(swarm["nodes"][0])[0], "--run_id", RUN,
                    "--json", *swarm["flags"][:4], "--store.dir", str(swarm["tmp"] / "nostore"))
    assert proc.returncode == 2 and "--store.dir: no checkpoint store at" in proc.stderr
    proc = _inspect("--initial_peers", "x", "--subtensor.network", "nonsense")
    assert proc.returncode == 2 and "--subtensor.network" in proc.stderr


@pytest.mark.parametrize("address", [
    "not-an-address",
    "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWKzGC1CRXAGhYQDXK8f1Y8DfQyK2jS295nt5adDvBwx1K",
])
def test_bad_address_exits_2_without_traceback(address, swarm):
    proc = _inspect("--initial_peers", address, "--json", *swarm["flags"])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "inspect_dht: error:" in proc.stderr
    assert proc.stdout == ""


def test_a_run_id_without_records_says_so(swarm):
    proc = _inspect("--initial_peers", visible_maddrs(swarm["nodes"][0])[0], "--run_id",
                    "other-run", *swarm["flags"])
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

    def snap(swarm_state: SwarmState, source: str) -> Snapshot:
        return build_snapshot(swarm_state, chain=ChainView(), store=StoreView(),
                              local=LocalView(), run_id="r", now=0.0, target_source=source)

    text = inspector.render(snap(state, "default"))
    assert "5/10 samples (50%)" in text and "default for run id r" in text
    assert "default for" not in inspector.render(snap(state, "flag"))
    empty = SwarmState(global_epoch=0, target_batch_size=10, samples_accumulated=0)
    assert inspector.render(snap(empty, "flag")).startswith("no progress records for run id r")

def test_launcher_writes_the_run_id_and_the_inspector_command(tmp_path):
    from template.localnet import RUN_ID as LOCAL_RUN_ID
    from template.localnet import write_swarm_files

    command = write_swarm_files(tmp_path, ["/ip4/127.0.0.1/tcp/1/p2p/X"], target_batch_size=64)
    assert (tmp_path / "initial_peers.txt").read_text() == "/ip4/127.0.0.1/tcp/1/p2p/X\n"
    assert (tmp_path / "run_id.txt").read_text().strip() == LOCAL_RUN_ID
    assert "inspect_dht.py" in command
    assert f"--initial_peers $(cat {tmp_path / 'initial_peers.txt'})" in command
    assert f"--run_id {LOCAL_RUN_ID}" in command and "--target_batch_size 64" in command
    assert f"--localchain.path {tmp_path / 'chain.sqlite'}" in command
    assert f"--store.dir {tmp_path / 'checkpoints'}" in command and "--netuid 1" in command
