"""End to end: `scripts/local_swarm.py` (what `make demo` runs) with miners and a validator.

Each test runs the launcher as a subprocess, exactly as a newcomer does, and asserts on the
summary it writes. The launcher stops every process it started (each in its own group).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from template import localnet
from template.localnet import Chaos, Child, die_with_parent
from template.model import fingerprint_distance

# Launcher gives up at 700 s (clean stop, exit 1); the subprocess at 900 s; pytest at 1000 s.
pytestmark = pytest.mark.timeout(1000)
REPO = Path(__file__).resolve().parents[1]
SMALL = ["--demo_pages", "200", "--seq_len", "64", "--batch_size", "4",
         "--pages_per_epoch", "4", "--matchmaking_time", "4", "--timeout", "700"]


def run_demo(tmp_path: Path, *flags: str) -> dict:
    summary = tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "local_swarm.py"), "--workdir", str(tmp_path),
         "--summary", str(summary), *SMALL, *flags],
        capture_output=True, text=True, timeout=900, env=dict(os.environ, HF_HUB_OFFLINE="1"),
        preexec_fn=die_with_parent)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (tmp_path / "initial_peers.txt").read_text().startswith("/ip4/127.0.0.1/")
    assert summary.with_suffix(".png").stat().st_size > 0
    return json.loads(summary.read_text())


def honest_uids(summary: dict) -> list[str]:
    return [u for u, name in summary["roles"].items()
            if name.startswith("miner") and u not in summary["cheaters"]]


def test_honest_subnet_trains_agrees_checkpoints_and_sets_weights(tmp_path):
    summary = run_demo(tmp_path, "--miners", "3", "--validators", "1", "--epochs", "2")
    assert summary["ok"]
    epochs = summary["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    honest = honest_uids(summary)
    for entry in epochs:
        assert entry["checkpoint_tag"] == f"epoch-{entry['epoch']}"
        assert (Path(summary["store"]) / entry["checkpoint_tag"]).is_dir()
        assert sorted(entry["fingerprints"]) == sorted(honest)
        for uid in honest:
            distance = fingerprint_distance(entry["fingerprints"][uid],
                                            entry["canonical_fingerprint"])
            assert distance < entry["fingerprint_tolerance"], (entry["epoch"], uid, distance)
            assert entry["round_scores"].get(uid, 0) > 0, (entry["epoch"], uid)
    for uid in honest:
        assert summary["weights"][uid] > 0
        assert summary["incentive"][uid] > 0


def test_cheaters_end_with_the_least_weight(tmp_path):
    summary = run_demo(tmp_path, "--miners", "3", "--validators", "1", "--epochs", "2",
                       "--cheaters", "random-gradient,no-show")
    assert summary["ok"]
    weights = {u: summary["weights"].get(u, 0.0) for u in summary["roles"]
               if summary["roles"][u].startswith(("miner", "cheater"))}
    cheaters = set(summary["cheaters"])
    honest = honest_uids(summary)
    assert max(weights[u] for u in cheaters) < min(weights[u] for u in honest)
    assert sum(weights[u] for u in cheaters) < 0.05
    for entry in summary["epochs"]:  # no false positive: honest miners score in every round
        assert all(entry["round_scores"].get(u, 0) > 0 for u in honest), entry["round_scores"]


def test_every_red_team_mode_earns_less_than_every_honest_miner(tmp_path):
    """lazy, copycat and slow-link here (random-gradient and no-show above): together they
    get under 5% of the weight, and no honest miner scores zero in any round."""
    summary = run_demo(tmp_path, "--miners", "3", "--validators", "1", "--epochs", "3",
                       "--cheaters", "lazy,copycat,slow-link")
    assert summary["ok"]
    cheaters, honest = set(summary["cheaters"]), honest_uids(summary)
    weights = {u: summary["weights"].get(u, 0.0) for u in [*cheaters, *honest]}
    assert max(weights[u] for u in cheaters) < min(weights[u] for u in honest), weights
    assert sum(weights[u] for u in cheaters) < 0.05, weights
    for entry in summary["epochs"]:
        assert all(entry["round_scores"].get(u, 0) > 0 for u in honest), entry["round_scores"]


def test_miners_that_put_something_else_into_the_all_reduce_are_not_paid(tmp_path):
    """A sign-flipped, scaled gradient (`flip`, checked on the validator's shard) and an
    inflated averaging weight (`weight`, checked against the commitment), both after honest
    training and honest Train answers: zero in every round, no honest miner is flagged, and
    the loss still falls (every reducer clips by default)."""
    summary = run_demo(tmp_path, "--miners", "3", "--validators", "1", "--epochs", "2",
                       "--cheaters", "poisoner-flip,poisoner-weight")
    assert summary["ok"]
    cheaters, honest = set(summary["cheaters"]), honest_uids(summary)
    weights = {u: summary["weights"].get(u, 0.0) for u in [*cheaters, *honest]}
    assert max(weights[u] for u in cheaters) < min(weights[u] for u in honest), weights
    losses = [e["loss"] for e in summary["epochs"]]
    assert losses[-1] < losses[0], losses
    for entry in summary["epochs"]:
        assert all(entry["round_scores"].get(u, 0) == 0 for u in cheaters), entry["round_scores"]
        assert all(entry["round_scores"].get(u, 0) > 0 for u in honest), entry["round_scores"]


def test_a_checkpoint_forger_wins_the_tag_but_not_the_epoch_or_the_pay(tmp_path):
    """Before every round the forger pushes other weights as epoch-(e+1), signed with its own
    hotkey (noise, rescaled or un-stepped weights, drawn at random each epoch), so it always
    wins the race for the tag. The round's pusher stores the round's weights as a candidate;
    the validator measures against that one, gates the signer of the forgery, and verifies the
    next epoch's Train answers at the honest weights: honest miners are paid every round."""
    summary = run_demo(tmp_path, "--miners", "3", "--validators", "1", "--epochs", "3",
                       "--cheaters", "forger")
    assert summary["ok"]
    cheaters, honest = set(summary["cheaters"]), honest_uids(summary)
    weights = {u: summary["weights"].get(u, 0.0) for u in [*cheaters, *honest]}
    assert max(weights[u] for u in cheaters) < min(weights[u] for u in honest), weights
    losses = [e["loss"] for e in summary["epochs"]]
    assert losses == sorted(losses, reverse=True), losses
    for entry in summary["epochs"]:
        tag = f"epoch-{entry['epoch']}"
        assert tag in entry["rejected_checkpoints"], entry  # the forgery held the tag
        assert entry["checkpoint_tag"].startswith(f"{tag}-"), entry  # the round's candidate
        for uid in honest:
            assert fingerprint_distance(entry["fingerprints"][uid], entry[
                "canonical_fingerprint"]) < entry["fingerprint_tolerance"]
        assert all(entry["round_scores"].get(u, 0) == 0 for u in cheaters), entry["round_scores"]
        assert all(entry["round_scores"].get(u, 0) > 0 for u in honest), entry["round_scores"]


def test_miners_paid_without_contributing_gain_nothing(tmp_path):
    """`unbound` trains and answers Train but binds no PeerID and never averages: zero every
    round. `vanisher` works one epoch and exits: paid for that round, nothing after, and its
    moving average decays below every honest miner's. `padder` pads every all-reduce message
    with 1-3x junk: bandwidth counts decoded tensor bytes, so it earns what an honest miner
    earns, within noise (counting wire bytes gave it bandwidth 1.0 and +18% weight)."""
    summary = run_demo(tmp_path, "--miners", "3", "--validators", "1", "--epochs", "3",
                       "--cheaters", "unbound,vanisher,padder")
    assert summary["ok"]
    kind = {u: k for u, k in summary["cheaters"].items()}
    uid = {k: u for u, k in kind.items()}
    honest = honest_uids(summary)
    scores = summary["scores"]
    total = {u: scores.get(u, {}).get("total", 0.0) for u in [*kind, *honest]}
    losses = [e["loss"] for e in summary["epochs"]]
    assert losses == sorted(losses, reverse=True), losses
    for entry in summary["epochs"]:
        rounds = entry["round_scores"]
        assert all(rounds.get(u, 0) > 0 for u in honest), rounds
        assert rounds.get(uid["unbound"], 0) == 0, rounds
        if entry["epoch"] > 1:
            assert rounds.get(uid["vanisher"], 0) == 0, rounds
    assert summary["epochs"][0]["round_scores"].get(uid["vanisher"], 0) > 0
    assert total[uid["unbound"]] == 0
    assert total[uid["vanisher"]] < min(total[u] for u in honest), total
    # Honest work is paid like honest work; what padding must not buy is the 2-4x throughput
    # that counting wire bytes would show (run-to-run noise between honest miners is ~10-20%).
    assert total[uid["padder"]] <= 1.1 * max(total[u] for u in honest), total
    bandwidth = {u: scores[u].get("bandwidth", 0.0) for u in [uid["padder"], *honest]}
    assert bandwidth[uid["padder"]] <= 1.25 * max(bandwidth[u] for u in honest), bandwidth


def test_two_validators_judge_the_same_rounds_and_both_pay_every_honest_miner(tmp_path):
    """Each validator sends its own AllReduce per epoch; miners run ONE round per epoch and
    answer both with its report, so neither validator fails an honest miner."""
    summary = run_demo(tmp_path, "--miners", "3", "--validators", "2", "--epochs", "2")
    assert summary["ok"]
    honest = honest_uids(summary)
    for entry in summary["epochs"]:
        assert sorted(entry["fingerprints"]) == sorted(honest), entry["epoch"]
    states = [json.loads(p.read_text())
              for p in sorted((tmp_path / "validators").glob("*/validator-*.json"))]
    assert len(states) == 2
    for state in states:
        assert sorted(state["history"]) == ["0", "1"], state["history"]
        for epoch, scores in state["history"].items():
            assert all(scores.get(u, 0) > 0 for u in honest), (epoch, scores)
        assert state["last_weights_block"] >= 0  # it set weights on the chain
    for uid in honest:
        assert summary["weights"][uid] > 0


def test_chaos_killed_miners_restart_catch_up_and_the_swarm_agrees(tmp_path):
    """`--chaos`: random honest miners get SIGKILL at random moments (seed 2 draws kills early
    in epoch 2 and midway through epoch 4) and are restarted with the same command line. They
    catch up (from a peer or the store: that counts as reaching the epoch), none of their
    processes outlive them, no epoch stalls, a restarted miner takes part in a later round, and
    every fingerprint any miner reported agrees with the canonical checkpoint."""
    summary = run_demo(tmp_path, "--miners", "3", "--validators", "1", "--epochs", "4",
                       "--chaos", "--chaos_rate", "0.5", "--chaos_seed", "2")
    assert summary["ok"]
    chaos = summary["chaos"]
    events = chaos["events"]
    assert chaos["kills"] == len(events) >= 1, chaos
    assert chaos["recoveries"] == chaos["kills"], chaos
    assert chaos["stalls"] == [], chaos
    assert all(event["orphans"] == 0 for event in events), events
    assert set(chaos["missed_epochs"]) == {event["miner"] for event in events}, chaos
    for event in events:
        assert (tmp_path / "logs" / event["log"]).stat().st_size > 0, event
    missed = chaos["missed_epochs"]
    assert any(set(range(e["epoch"], 5)) - set(missed[e["miner"]]) for e in events), chaos
    honest = honest_uids(summary)
    for entry in summary["epochs"]:
        assert entry["checkpoint_tag"] is not None, entry
        assert set(entry["fingerprints"]) <= set(honest), entry
        assert len(entry["fingerprints"]) >= 2, entry  # a round needs two miners
        for uid, fp in entry["fingerprints"].items():
            distance = fingerprint_distance(fp, entry["canonical_fingerprint"])
            assert distance < entry["fingerprint_tolerance"], (entry["epoch"], uid, distance)


class _SleepNet:
    """What `Chaos` uses of a `LocalNet`, with stand-in miners: each a process with a child of
    its own that does not die with it (so a kill leaves one orphan to find)."""

    def __init__(self, workdir: Path, *, epochs: int):
        self.workdir, self.args = workdir, argparse.Namespace(epochs=epochs)
        self.miners = ["miner1", "miner2"]
        self.children = [self._spawn(name) for name in self.miners]

    def _spawn(self, name: str) -> Child:
        code = "import subprocess, time; subprocess.Popen(['sleep', '120']); time.sleep(120)"
        proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
        deadline = time.monotonic() + 20
        while not psutil.Process(proc.pid).children() and time.monotonic() < deadline:
            time.sleep(0.05)
        return Child(name, "miner", proc, self.workdir / f"{name}.out")

    def restart(self, child: Child) -> Child:
        new = self._spawn(child.name)
        self.children.append(new)
        return new


def _append_row(miner_dir: Path, file: str, epoch: int) -> None:
    miner_dir.mkdir(parents=True, exist_ok=True)
    with (miner_dir / file).open("a") as f:
        f.write(json.dumps({"epoch": epoch, "time": time.time()}) + "\n")


def test_chaos_kills_restarts_and_reports_orphans_recoveries_missed_epochs_and_stalls(
        tmp_path, monkeypatch):
    monkeypatch.setattr(localnet, "CHAOS_FIRST_EPOCH", 0.0)  # epoch 1's kill is due at once
    monkeypatch.setattr(localnet, "RESTART_DELAY", 0.0)
    monkeypatch.setattr(localnet, "ORPHAN_CHECK_DELAY", 0.0)
    monkeypatch.setattr(localnet, "STALL_TIMEOUT", 0.3)
    net = _SleepNet(tmp_path, epochs=2)
    try:
        chaos = Chaos(net, rate=1.0, seed=3)
        events = chaos.tick(0)
        assert len(events) == 1 and "killed" in events[0], events
        chaos.rate = 0.0  # no further kills: the rest checks what follows this one
        kill = chaos.kills[0]
        victim = next(c for c in net.children if c.killed)
        assert victim.proc.returncode == -signal.SIGKILL and victim.name == kill.miner
        assert kill.restart.proc.poll() is None and kill.restart in net.children
        assert kill.orphans == 1  # its `sleep` outlived it; now killed by PID
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                       for p in kill.descendants)
        other = next(m for m in net.miners if m != kill.miner)
        assert chaos.report()["recoveries"] == 0
        _append_row(tmp_path / "miners" / other, "epochs.jsonl", 1)
        _append_row(tmp_path / "miners" / kill.miner, "loads.jsonl", 1)  # caught up
        assert localnet.epochs_done(tmp_path / "miners" / kill.miner) == 1
        chaos.tick(1)
        time.sleep(0.4)
        chaos.tick(1)  # epoch 2 has waited past STALL_TIMEOUT
        for name in net.miners:
            _append_row(tmp_path / "miners" / name, "epochs.jsonl", 2)
        chaos.tick(2)
        chaos.finish()
        report = chaos.report()
        assert report["kills"] == report["recoveries"] == 1, report
        assert report["missed_epochs"] == {kill.miner: [1]}, report
        assert [s["epoch"] for s in report["stalls"]] == [2], report
        assert sorted(report["epoch_seconds"]) == ["1", "2"], report
        assert report["events"][0]["epoch"] == 1 and report["events"][0]["orphans"] == 1
    finally:
        for child in net.children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGKILL)
            child.proc.wait()


def test_epochs_done_counts_epochs_reached_by_loading_state(tmp_path):
    assert localnet.epochs_done(tmp_path) == 0
    _append_row(tmp_path, "epochs.jsonl", 1)
    _append_row(tmp_path, "loads.jsonl", 3)  # restarted, then loaded a peer's state at epoch 3
    assert localnet.epochs_done(tmp_path) == 3
    _append_row(tmp_path, "epochs.jsonl", 4)
    assert localnet.epochs_done(tmp_path) == 4
