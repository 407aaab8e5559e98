"""End to end: `scripts/local_swarm.py` (what `make demo` runs) with miners and a validator.

Each test runs the launcher as a subprocess, exactly as a newcomer does, and asserts on the
summary it writes. The launcher stops every process it started (each in its own group).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from template.localnet import die_with_parent
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
