"""The launcher's chaos mode (`scripts/local_swarm.py --chaos`) on stand-in processes, and
`epochs_done`; the chaos run of a real swarm is in tests/test_local_swarm.py."""

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

from template import localnet
from template.localnet import Chaos, Child


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
