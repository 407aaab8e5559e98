"""End to end: `scripts/local_swarm.py` (what `make demo` runs) with miners and a validator.

Each test runs the launcher as a subprocess, exactly as a newcomer does, and asserts on the
summary it writes. The launcher stops every process it started (each in its own group).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hivemind_utils.dht import start_dht
from hivemind_utils.swarm_state import ProgressReporter
from template.config import DHTConfig
from template.localnet import RUN_ID, die_with_parent
from template.model import fingerprint_distance

# Launcher gives up at 700 s (clean stop, exit 1); the subprocess at 900 s; pytest at 1000 s.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1000)]
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


class RecordForger:
    """Two DHT nodes of an outsider that, for the whole run, publish progress records signed by
    keys of their own (valid signatures, bound to no hotkey): far-future and next epochs,
    10^12 samples, finished flags, some naming an honest miner's hotkey."""

    def __init__(self, workdir: Path):
        self.workdir, self.stop, self.stored = workdir, threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        peers = self.workdir / "initial_peers.txt"
        while not self.stop.is_set() and not peers.exists():
            self.stop.wait(0.2)
        if self.stop.is_set():
            return
        nodes = [start_dht(DHTConfig(), run_id=RUN_ID,
                           initial_peers=peers.read_text().split()) for _ in range(2)]
        rng = random.Random(11)
        try:
            while not self.stop.is_set():
                for node in nodes:
                    hotkey = rng.choice([_some_miner_hotkey(self.workdir), "5" + "F" * 47])
                    self.stored += ProgressReporter(dht=node, hotkey=hotkey, expiration=5).report(
                        epoch=rng.choice([10**9, 10**6, rng.randrange(1, 4)]),
                        samples=rng.choice([10**12, 10**6, 64]), tokens_per_second=1e9,
                        finished=rng.random() < 0.5)
                self.stop.wait(1.0)
        finally:
            for node in nodes:
                node.shutdown()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def _some_miner_hotkey(workdir: Path) -> str:
    keys = sorted((workdir / "wallets").glob("miner*/hotkeys/default"))
    return json.loads(keys[0].read_text())["ss58Address"] if keys else "5" + "H" * 47


def test_honest_subnet_trains_agrees_checkpoints_and_sets_weights(tmp_path):
    """The honest run, while an outsider floods the DHT with validly signed but unbound
    progress records claiming any epoch and sample count: no epoch is lost or skipped, and the
    validator never records an epoch the swarm did not reach."""
    forger = RecordForger(tmp_path)
    try:
        summary = run_demo(tmp_path, "--miners", "3", "--validators", "1", "--epochs", "2")
    finally:
        forger.close()
    assert forger.stored > 10, forger.stored  # the forged records were there throughout
    assert summary["ok"]
    state = json.loads(next((tmp_path / "validators").glob("*/validator-*.json")).read_text())
    assert state["last_epoch"] == 1 and sorted(state["history"]) == ["0", "1"], state["history"]
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


def test_every_red_team_mode_earns_less_than_every_honest_miner(tmp_path):
    """random-gradient, no-show, lazy, copycat and slow-link in one swarm with 3 honest miners:
    each earns less than every honest miner, together they get under 5% of the weight, and no
    honest miner scores zero in any round (no false positive)."""
    summary = run_demo(tmp_path, "--miners", "3", "--validators", "1", "--epochs", "3",
                       "--cheaters", "random-gradient,no-show,lazy,copycat,slow-link")
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


def test_a_reducer_that_returns_a_wrong_average_is_refused_and_not_paid(tmp_path):
    """`reducer`: trains, answers Train and sends its parts honestly, but returns a wrong
    average for its own shard, a different corruption each round (scaled, noised, on half its
    parts, or scaled with a report that covers it). Every honest member refuses the round
    before stepping and names it; the validator gates it, retries without it and distrusts its
    push of e+1: it earns nothing, every honest miner is paid and agrees with the canonical
    checkpoint, and the loss falls as in an honest run."""
    summary = run_demo(tmp_path, "--miners", "3", "--validators", "1", "--epochs", "2",
                       "--cheaters", "reducer", "--clip_factor", "0")
    assert summary["ok"]
    cheater, honest = next(iter(summary["cheaters"])), honest_uids(summary)
    losses = [e["loss"] for e in summary["epochs"]]
    assert losses[-1] < losses[0], losses
    for entry in summary["epochs"]:
        rounds = entry["round_scores"]
        assert rounds.get(cheater, 0) == 0, rounds
        assert all(rounds.get(u, 0) > 0 for u in honest), rounds
        for u in honest:
            assert fingerprint_distance(entry["fingerprints"][u], entry[
                "canonical_fingerprint"]) < entry["fingerprint_tolerance"], (entry["epoch"], u)
    assert summary["weights"].get(cheater, 0.0) < min(summary["weights"][u] for u in honest)


def test_checkpoint_forgers_and_miners_paid_without_contributing_gain_nothing(tmp_path):
    """Four cheaters beside 3 honest miners, 3 epochs.

    `forger`: before every round pushes other weights as epoch-(e+1), signed with its own
    hotkey (noise, rescaled or un-stepped, drawn each epoch), so it always wins the race for the
    tag; the round's pusher stores the round's weights as a candidate, the validator measures
    against that one and gates the forgery's signer, and the next epoch's Train answers are
    checked at the honest weights. `unbound`: trains and answers Train but binds no PeerID and
    never averages. `vanisher`: works one epoch and exits; its moving average decays below
    every honest miner's. `padder`: pads every all-reduce message with 1-3x junk; bandwidth
    counts decoded tensor bytes, so it earns what an honest miner earns, within noise (counting
    wire bytes gave it bandwidth 1.0 and +18% weight)."""
    summary = run_demo(tmp_path, "--miners", "3", "--validators", "1", "--epochs", "3",
                       "--cheaters", "forger,unbound,vanisher,padder")
    assert summary["ok"]
    uid = {k: u for u, k in summary["cheaters"].items()}
    honest = honest_uids(summary)
    scores = summary["scores"]
    total = {u: scores.get(u, {}).get("total", 0.0) for u in [*uid.values(), *honest]}
    losses = [e["loss"] for e in summary["epochs"]]
    assert losses == sorted(losses, reverse=True), losses
    for entry in summary["epochs"]:
        rounds, tag = entry["round_scores"], f"epoch-{entry['epoch']}"
        assert all(rounds.get(u, 0) > 0 for u in honest), rounds
        assert rounds.get(uid["forger"], 0) == 0 and rounds.get(uid["unbound"], 0) == 0, rounds
        if entry["epoch"] > 1:
            assert rounds.get(uid["vanisher"], 0) == 0, rounds
        assert tag in entry["rejected_checkpoints"], entry  # the forgery held the tag
        assert entry["checkpoint_tag"].startswith(f"{tag}-"), entry  # the round's candidate
        for u in honest:
            assert fingerprint_distance(entry["fingerprints"][u], entry[
                "canonical_fingerprint"]) < entry["fingerprint_tolerance"]
    assert summary["epochs"][0]["round_scores"].get(uid["vanisher"], 0) > 0
    assert total[uid["forger"]] == total[uid["unbound"]] == 0, total
    assert total[uid["vanisher"]] < min(total[u] for u in honest), total
    # Honest work is paid like honest work; what padding must not buy is the 2-4x throughput
    # that counting wire bytes would show (run-to-run noise between honest miners is ~10-20%).
    assert total[uid["padder"]] <= 1.15 * max(total[u] for u in honest), total
    bandwidth = {u: scores[u].get("bandwidth", 0.0) for u in [uid["padder"], *honest]}
    assert bandwidth[uid["padder"]] <= 1.25 * max(bandwidth[u] for u in honest), bandwidth


def test_two_validators_judge_the_same_rounds_and_both_pay_every_honest_miner(tmp_path):
    """Each validator sends its own AllReduce per epoch; miners run ONE round per epoch and
    answer both with its report, so neither validator fails an honest miner in any round it
    judged, and the rounds both judged are the same rounds."""
    summary = run_demo(tmp_path, "--miners", "3", "--validators", "2", "--epochs", "2")
    assert summary["ok"]
    honest = honest_uids(summary)
    for entry in summary["epochs"]:
        assert sorted(entry["fingerprints"]) == sorted(honest), entry["epoch"]
    states = [json.loads(p.read_text())
              for p in sorted((tmp_path / "validators").glob("*/validator-*.json"))]
    assert len(states) == 2
    # A round starts as soon as the swarm's work is done, so a validator that is a few seconds
    # behind (it came up later, or its auxiliary peer missed the group and waited) can find a
    # round already over: it judges the rounds it saw, never pays an honest miner 0 in them.
    judged = [sorted(int(e) for e in state["history"]) for state in states]
    for epochs in judged:
        assert epochs and epochs == list(range(epochs[0], epochs[-1] + 1)), judged  # no gap
    assert set(judged[0]) & set(judged[1]), judged  # at least one round judged by both
    for state in states:
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
