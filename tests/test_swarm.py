"""Miner processes train one model together on 127.0.0.1 (no validator: swarm trigger).

Every test starts real `neurons/miner.py` processes through the same code as the demo launcher
and stops each by its process group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hivemind_utils.dht import start_dht, visible_maddrs
from hivemind_utils.swarm_state import read_swarm_state
from template.checkpoints import LocalStore
from template.config import DHTConfig, ModelConfig, OptimConfig
from template.data import assign_pages, epoch_batches, load_tokenizer, local_source
from template.localnet import RUN_ID, LocalNet, die_with_parent, epochs_done, parse_args
from template.model import (
    FINGERPRINT_TOLERANCE,
    build_model,
    canonical_state,
    fingerprint,
    fingerprint_distance,
    load_state_into,
)
from template.training import (
    accumulate,
    apply_gradients,
    build_optimizer,
    learning_rate,
    mean_gradient,
)

# Launcher gives up at 500 s (clean stop, exit 1); the subprocess at 600 s; pytest at 800 s.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(800)]
REPO = Path(__file__).resolve().parents[1]
SMALL = ["--demo_pages", "200", "--seq_len", "64", "--batch_size", "4",
         "--pages_per_epoch", "2", "--matchmaking_time", "4"]
LR = 3e-3


def _run_launcher(tmp_path: Path, *extra: str) -> dict:
    summary = tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "local_swarm.py"), "--workdir", str(tmp_path),
         "--summary", str(summary), "--timeout", "500", *SMALL, *extra],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"),
        preexec_fn=die_with_parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(summary.read_text())


def _stepped(store: LocalStore, epoch: int, grads: list[torch.Tensor], *,
             lr_scale: float = 1.0) -> torch.nn.Module:
    """theta_epoch (with its optimizer state) after one AdamW step with `grads`."""
    model = build_model(ModelConfig(preset="tiny"), seed=0)
    optim_cfg = OptimConfig(lr=LR, warmup_epochs=1)
    optimizer = build_optimizer(model, optim_cfg)
    if epoch > 0:
        ckpt = store.pull(epoch)
        load_state_into(model, ckpt.state_dict)
        optimizer.load_state_dict(ckpt.optimizer_state)
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g.clone()
    outcome = apply_gradients(model, optimizer, lr=lr_scale * learning_rate(epoch, optim_cfg),
                              max_grad_norm=optim_cfg.max_grad_norm)
    assert outcome.applied
    return model


def _miner_gradients(store: LocalStore, epoch: int, uids: list[int], *, pages_per_epoch: int,
                     seq_len: int, batch_size: int,
                     shards: Path) -> dict[int, tuple[list[torch.Tensor], int]]:
    """Each miner's mean gradient at theta_epoch over its assigned pages, and its samples."""
    model = build_model(ModelConfig(preset="tiny"), seed=0)
    if epoch > 0:
        load_state_into(model, store.pull(epoch).state_dict)
    source, tokenizer = local_source(shards), load_tokenizer()
    out = {}
    for uid in uids:
        pages = assign_pages(run_id=RUN_ID, epoch=epoch, miner=uid,
                             pages_per_miner=pages_per_epoch, dataset_size=source.num_pages)
        batches = epoch_batches(source.pages(pages), tokenizer, seq_len=seq_len,
                                batch_size=batch_size)
        model.zero_grad(set_to_none=True)
        for batch in batches:
            accumulate(model, batch)
        mean_gradient(model, len(batches))
        out[uid] = ([p.grad.clone() for p in model.parameters()], len(batches) * batch_size)
    return out


def test_three_miners_agree_and_match_the_reference_step(tmp_path):
    # The plain weighted mean, exactly: robust clipping (the default) may shrink sparse parts
    summary = _run_launcher(tmp_path, "--miners", "3", "--validators", "0", "--epochs", "3",
                            "--clip_factor", "0")
    assert summary["ok"]
    store = LocalStore(tmp_path / "checkpoints")
    uids = sorted(int(u) for u in summary["roles"])
    for entry in summary["epochs"]:
        assert entry["participants"] == uids and entry["failed"] == []
        assert entry["checkpoint_tag"] == f"epoch-{entry['epoch']}"
        canonical = entry["canonical_fingerprint"]
        for uid, fp in entry["fingerprints"].items():
            assert fingerprint_distance(fp, canonical) < FINGERPRINT_TOLERANCE, uid
        epoch = entry["epoch"] - 1
        grads = _miner_gradients(store, epoch, uids, pages_per_epoch=2, seq_len=64,
                                 batch_size=4, shards=tmp_path / "shards")
        total = sum(n for _, n in grads.values())
        mean = [sum(g[i] * n for g, n in grads.values()) / total
                for i in range(len(grads[uids[0]][0]))]
        reference = _stepped(store, epoch, mean)
        assert fingerprint_distance(fingerprint(reference), canonical) < FINGERPRINT_TOLERANCE
        # Full parameters, not only fingerprints: the pushed weights are the reference step's,
        # up to the test's other thread count (ulp noise that AdamW's first steps, about
        # lr * sign(g), can turn into a 2 lr difference on entries whose gradient is ~0).
        pushed = store.pull(entry["epoch"]).state_dict
        ours = canonical_state(reference)
        diff = torch.cat([(ours[n] - pushed[n]).flatten() for n in ours])
        whole = torch.cat([pushed[n].flatten() for n in ours])
        assert diff.norm() / whole.norm() < FINGERPRINT_TOLERANCE, float(diff.norm())
        assert diff.abs().max() <= 2 * LR * 1.01, float(diff.abs().max())
        # A miner that applied only its own gradient, or another learning rate, is far off.
        own_only = fingerprint(_stepped(store, epoch, grads[uids[0]][0]))
        assert fingerprint_distance(own_only, canonical) > 10 * FINGERPRINT_TOLERANCE
        double_lr = fingerprint(_stepped(store, epoch, mean, lr_scale=2.0))
        assert fingerprint_distance(double_lr, canonical) > 10 * FINGERPRINT_TOLERANCE
    assert summary["epochs"][-1]["loss"] < summary["epochs"][0]["loss"]


def test_skipped_step_is_outside_the_tolerance(tmp_path):
    """Weights that missed one step are far from the canonical ones (so they would fail)."""
    summary = _run_launcher(tmp_path, "--miners", "2", "--validators", "0", "--epochs", "2")
    store = LocalStore(tmp_path / "checkpoints")
    stale = store.pull(1).manifest["fingerprint"]
    canonical = summary["epochs"][1]["canonical_fingerprint"]
    assert fingerprint_distance(stale, canonical) > 10 * FINGERPRINT_TOLERANCE


@pytest.fixture
def localnet(tmp_path, request):
    """A prepared devnet of 3 miners (not started) and a bootstrap DHT node in this process;
    `@pytest.mark.epochs(N)` sets how many epochs each miner runs."""
    marker = request.node.get_closest_marker("epochs")
    epochs = marker.args[0] if marker else 4
    args = parse_args(["--workdir", str(tmp_path), "--validators", "0", "--epochs", str(epochs),
                       "--miners", "3", *SMALL])
    net = LocalNet.prepare(args)
    dht = start_dht(DHTConfig(), run_id=RUN_ID)
    yield net, dht, visible_maddrs(dht)
    net.stop_all()
    dht.shutdown()
    net.chain.close()


def _wait(predicate, *, timeout: float, what: str, net: LocalNet) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        crashed = net.crashed()
        assert crashed is None, f"{crashed.name} crashed:\n{crashed.tail()}"
        time.sleep(0.5)
    tails = "\n".join(f"--- {c.name}\n{c.tail(20)}" for c in net.children)
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def _last_fingerprints(net: LocalNet, epoch: int) -> dict[str, list[float]]:
    out = {}
    for name in net.miners:
        path = net.workdir / "miners" / name / "epochs.jsonl"
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row["epoch"] == epoch:
                out[name] = row["fingerprint"]
    return out


@pytest.mark.epochs(10)
def test_late_joiner_catches_up_and_agrees(localnet):
    """Two miners run 10 epochs; a third joins after epoch 2 (while they go on), downloads the
    state of a peer, then takes part in the remaining rounds and agrees with them."""
    net, dht, peers = localnet
    for name in net.miners[:2]:
        net.start_miner(name, peers)
    miners = lambda: [epochs_done(net.workdir / "miners" / m) for m in net.miners]  # noqa: E731
    _wait(lambda: min(miners()[:2]) >= 2, timeout=300, what="two epochs", net=net)
    net.start_miner(net.miners[2], peers)
    _wait(lambda: min(miners()[:2]) >= 10, timeout=400, what="miners at epoch 10", net=net)
    # The joiner may miss the very last round (the others stop after it), not the ones before.
    _wait(lambda: miners()[2] >= 9, timeout=60, what="the joiner at epoch 9", net=net)
    last = miners()[2]
    late_rows = (net.workdir / "miners" / net.miners[2] / "epochs.jsonl").read_text()
    assert late_rows.count("\n") >= 2, "the joiner took part in at least two rounds"
    fps = _last_fingerprints(net, last)
    assert len(fps) == 3
    ref = fps[net.miners[0]]
    assert all(fingerprint_distance(fp, ref) < FINGERPRINT_TOLERANCE for fp in fps.values())
    late_log = (net.workdir / "logs" / "miner3.out").read_text()
    assert "loaded state from a peer at epoch" in late_log


def test_killed_miner_does_not_stall_the_others(localnet):
    net, dht, peers = localnet
    children = {name: net.start_miner(name, peers) for name in net.miners}
    victim = children[net.miners[2]]

    def round_starting() -> bool:
        state = read_swarm_state(dht, run_id=RUN_ID, target_batch_size=10**6)
        here = [p for p in state.peers if p.epoch == 1]
        return len(here) == 3 and all(p.finished for p in here)

    _wait(round_starting, timeout=300, what="epoch 1 round", net=net)
    os.killpg(victim.proc.pid, signal.SIGKILL)  # the group we started for this miner
    victim.proc.wait()
    net.children.remove(victim)
    survivors = lambda: [epochs_done(net.workdir / "miners" / m) for m in net.miners[:2]]  # noqa: E731
    _wait(lambda: min(survivors()) >= 4, timeout=300, what="survivors at epoch 4", net=net)
    fps = _last_fingerprints(net, 4)
    a, b = fps[net.miners[0]], fps[net.miners[1]]
    assert fingerprint_distance(a, b) < FINGERPRINT_TOLERANCE
