"""Stopping neurons: group SIGTERM exits 0 in time with no child left; kill -9 leaves no orphan.

Real `neurons/miner.py` / `neurons/validator.py` processes on the local devnet (127.0.0.1),
each in its own session (`LocalNet.spawn`), signalled the way timeout/systemd/pm2 do.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from template.localnet import Child, LocalNet, parse_args

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
UP_TIMEOUT = 45.0  # s for a neuron to import, build and log its "uid ..." line on 2 cores
STOP_TIMEOUT = 15.0  # --neuron.stop_timeout given to the neurons under test


_TRACKED: list[psutil.Process] = []  # every descendant seen, killed by PID after each test


@pytest.fixture
def net(tmp_path: Path) -> Iterator[LocalNet]:
    args = parse_args(["--workdir", str(tmp_path), "--miners", "2", "--validators", "1",
                       "--epochs", "0", "--demo_pages", "64", "--seq_len", "32",
                       "--batch_size", "2", "--pages_per_epoch", "2"])
    local = LocalNet.prepare(args)
    try:
        yield local
    finally:
        for child in local.children:  # by PID: each neuron and what it was seen to start
            with contextlib.suppress(psutil.NoSuchProcess):
                _TRACKED.append(psutil.Process(child.proc.pid))
        for proc in _TRACKED:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(_TRACKED, timeout=5)
        _TRACKED.clear()
        for child in local.children:
            child.proc.wait(timeout=10)
        local.chain.close()


def _wait_until_up(child: Child, marker: str) -> list[psutil.Process]:
    """Wait for the neuron's start-up line; return its descendants (DHT, averager, p2pd)."""
    deadline = time.monotonic() + UP_TIMEOUT
    while marker not in child.log.read_text(errors="replace"):
        assert child.proc.poll() is None, f"{child.name} exited early:\n{child.tail()}"
        assert time.monotonic() < deadline, f"{child.name} not up:\n{child.tail()}"
        time.sleep(0.5)
    descendants = psutil.Process(child.proc.pid).children(recursive=True)
    _TRACKED.extend(descendants)
    names = {_name(p) for p in descendants}
    assert "p2pd" in names, names  # the DHT's daemon is among what must die
    return descendants


def _alive(procs: list[psutil.Process]) -> list[str]:
    live = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                live.append(f"{p.pid} {p.name()}")
        except psutil.NoSuchProcess:
            continue
    return live


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.NoSuchProcess:
        return ""


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while _alive(procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _alive(procs)


def _stop_group_and_check(child: Child, sig: signal.Signals, descendants: list[psutil.Process]
                          ) -> None:
    started = time.monotonic()
    os.killpg(child.proc.pid, sig)  # the session LocalNet.spawn made: pgid == pid
    code = child.proc.wait(timeout=STOP_TIMEOUT + 10)
    took = time.monotonic() - started
    log = child.tail(40)
    assert code == 0, log
    assert took < STOP_TIMEOUT + 2, (took, log)
    assert f"stopping: received {sig.name}" in log, log
    assert _wait_gone(descendants, 3.0) == [], log


def test_miner_stops_on_group_sigterm_with_no_child_left(net: LocalNet) -> None:
    miner = net.start_miner("miner1", [], extra=["--neuron.stop_timeout", str(STOP_TIMEOUT)])
    descendants = _wait_until_up(miner, "miner uid")
    _stop_group_and_check(miner, signal.SIGTERM, descendants)


def test_validator_stops_on_group_sigint_with_no_child_left(net: LocalNet) -> None:
    validator = net.spawn("validator1", "validator", [
        *net.common_flags(), "--wallet.name", "validator1", "--neuron.initial_peers",
        "--neuron.workdir", str(net.workdir / "validators" / "validator1"),
        "--neuron.stop_timeout", str(STOP_TIMEOUT)])
    descendants = _wait_until_up(validator, "validator uid")
    _stop_group_and_check(validator, signal.SIGINT, descendants)


def test_kill_9_of_a_miner_takes_its_children_with_it(net: LocalNet) -> None:
    miner = net.start_miner("miner1", [])
    descendants = _wait_until_up(miner, "miner uid")
    os.kill(miner.proc.pid, signal.SIGKILL)  # the main PID only: nobody gets to clean up
    miner.proc.wait(timeout=10)
    assert _wait_gone(descendants, 5.0) == [], [_name(p) for p in descendants]


_LAUNCHER = """
import asyncio, sys, uvloop
from hivemind_utils import compat
compat.install_p2pd_death_signal()
async def main():
    proc = await asyncio.subprocess.create_subprocess_exec(sys.argv[1], "60")
    print(proc.pid, flush=True)
    await asyncio.sleep(60)
uvloop.run(main())
"""


def test_p2pd_dies_with_the_process_that_launched_it(tmp_path: Path) -> None:
    # hivemind launches p2pd through asyncio.subprocess under uvloop; the patched call arms
    # PR_SET_PDEATHSIG, so SIGKILL of the launcher (the DHT process) takes p2pd with it.
    fake_p2pd = tmp_path / "p2pd"
    fake_p2pd.symlink_to(shutil.which("sleep") or "/bin/sleep")
    launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(fake_p2pd)],
                                stdout=subprocess.PIPE, text=True)
    daemon: psutil.Process | None = None
    try:
        assert launcher.stdout is not None
        daemon = psutil.Process(int(launcher.stdout.readline()))
        assert _alive([daemon])
        launcher.kill()
        launcher.wait(timeout=10)
        assert _wait_gone([daemon], 5.0) == []
    finally:
        for proc in (launcher, daemon):
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                proc.kill()
        launcher.wait(timeout=10)


_STUCK = """
import logging, os, signal, subprocess, sys, time
from hivemind_utils.lifetime import StopController
logging.basicConfig(level=logging.INFO)
StopController(stop_timeout=1.0, on_stop=lambda: None).install()  # a stop that never finishes
child = subprocess.Popen(["sleep", "60"])
print(child.pid, flush=True)
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(60)
"""


def test_a_stop_past_stop_timeout_kills_the_children_and_exits_1() -> None:
    proc = subprocess.Popen([sys.executable, "-c", _STUCK], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    child: psutil.Process | None = None
    try:
        assert proc.stdout is not None
        child = psutil.Process(int(proc.stdout.readline()))
        _TRACKED.append(child)
        assert proc.wait(timeout=15) == 1
        assert _wait_gone([child], 3.0) == []
        assert "graceful stop took longer than --neuron.stop_timeout" in proc.stderr.read()
    finally:
        for p in (proc, child):
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                p.kill()
        proc.wait(timeout=10)
        _TRACKED.clear()
