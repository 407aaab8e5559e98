"""Process management for a local subnet: one child process per neuron, stopped as a group.

Used by `scripts/local_swarm.py` (the demo) and by the multi-process tests, so both start
neurons exactly the same way: `neurons/miner.py` / `neurons/validator.py` with devnet flags.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from template.chain.local import LocalChain
from template.chain.wallets import create_and_register
from template.config import ADVERSARIES
from template.data import ensure_demo_shards
from template.transport import free_port

REPO = Path(__file__).resolve().parents[1]
RUN_ID = "local-demo"
TARGET_BATCH_SIZE = 10**6  # the launcher's --target_batch_size: rounds end when every miner is done
MINER_LINGER = 120.0  # s miners keep answering after their last epoch (validators judge it);
# the launcher stops them as soon as the validators are done, so it never waits this long
VALIDATOR_STAKE = 1000.0
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
CHAOS_FIRST_EPOCH = 30.0  # s: epoch 1's length as assumed to time its kill (none measured yet)
RESTART_DELAY = 1.0  # s from a kill to the restart (about what pm2 or systemd take)
ORPHAN_CHECK_DELAY = 10.0  # s after a kill: the dead miner's descendants still alive are orphans
STALL_TIMEOUT = 180.0  # s with no honest miner reaching the next epoch: that epoch stalled
# (a miner waits up to --averaging.round_wait 120 s for a round, which then takes up to
# --averaging.allreduce_timeout 60 s; longer than both together is no longer a retry)


@dataclass
class Child:
    name: str
    role: str
    proc: subprocess.Popen
    log: Path
    flags: list[str] = field(default_factory=list)  # the command line, to restart it as it was
    killed: bool = False  # killed on purpose (chaos): its exit is not a crash

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as err:
            return f"(no log: {err})"


@dataclass
class LocalNet:
    """A prepared devnet (shards, chain, registered wallets) and the neuron processes on it."""

    args: argparse.Namespace
    workdir: Path
    chain: LocalChain
    uids: dict[str, int]
    miners: list[str]
    cheaters: dict[str, str]
    validators: list[str]
    children: list[Child] = field(default_factory=list)

    @classmethod
    def prepare(cls, args: argparse.Namespace) -> LocalNet:
        """Shards built if absent, chain file, wallets created, registered and staked."""
        workdir = Path(args.workdir).expanduser().resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        ensure_demo_shards(workdir / "shards", max_pages=args.demo_pages or None)
        miners = [f"miner{i + 1}" for i in range(args.miners)]
        cheaters = {f"cheater{i + 1}": kind for i, kind in enumerate(args.cheater_kinds)}
        validators = [f"validator{i + 1}" for i in range(args.validators)]
        chain = LocalChain(workdir / "chain.sqlite", netuid=1, block_time=args.block_time,
                           weights_rate_limit=args.weights_rate_limit)
        registered = create_and_register(
            [*miners, *cheaters, *validators], wallet_path=workdir / "wallets", chain=chain,
            stakes={v: VALIDATOR_STAKE for v in validators})
        return cls(args, workdir, chain, {r.name: r.uid for r in registered}, miners, cheaters,
                   validators)

    def start_miner(self, name: str, peers: list[str], *, adversary: str = "",
                    extra: list[str] | None = None) -> Child:
        flags = [*self.common_flags(), "--wallet.name", name,
                 "--axon.port", str(free_port()), "--neuron.epochs", str(self.args.epochs),
                 "--neuron.linger", str(MINER_LINGER),
                 "--neuron.workdir", str(self.workdir / "miners" / name),
                 "--neuron.initial_peers", *peers]
        if adversary:
            flags += ["--neuron.adversary", adversary]
        return self.spawn(name, "miner", [*flags, *(extra or [])])

    def start_validator(self, name: str, peers: list[str]) -> Child:
        return self.spawn(name, "validator", [
            *self.common_flags(), "--wallet.name", name, "--neuron.initial_peers", *peers,
            "--neuron.workdir", str(self.workdir / "validators" / name),
            "--neuron.epochs", str(self.args.epochs)])

    def common_flags(self) -> list[str]:
        a, w = self.args, self.workdir
        return [
            "--netuid", "1", "--subtensor.network", "local-devnet",
            "--localchain.path", str(w / "chain.sqlite"),
            "--localchain.block_time", str(a.block_time),
            "--localchain.weights_rate_limit", str(a.weights_rate_limit),
            "--wallet.path", str(w / "wallets"), "--wallet.hotkey", "default",
            "--neuron.run_id", RUN_ID, "--neuron.device", "cpu",
            "--model.preset", a.preset,
            "--data.dir", str(w / "shards"), "--data.seq_len", str(a.seq_len),
            "--data.batch_size", str(a.batch_size),
            "--data.pages_per_epoch", str(a.pages_per_epoch),
            "--store.dir", str(w / "checkpoints"), "--logging.dir", str(w / "logs"),
            "--optim.lr", str(a.lr), "--optim.warmup_epochs", "1",
            "--averaging.target_batch_size", str(a.target_batch_size),
            "--averaging.matchmaking_time", str(a.matchmaking_time),
            "--averaging.compression", a.compression,
            "--averaging.trigger", "validator" if a.validators else "swarm",
            "--wandb.mode", "offline",
            *(["--averaging.clip_factor", str(a.clip_factor)] if a.clip_factor is not None
              else []),
        ]

    def spawn(self, name: str, role: str, flags: list[str], *, log_name: str = "") -> Child:
        log = self.workdir / "logs" / (log_name or f"{name}.out")
        log.parent.mkdir(parents=True, exist_ok=True)
        entry = REPO / "neurons" / f"{role}.py"
        env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", WANDB_SILENT="true",
                   TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(self.args.threads))
        with log.open("w") as out:
            # A new session per child: stopping it stops the processes it started (p2pd,
            # averager workers) through its process group, and our Ctrl+C is not sent twice.
            proc = subprocess.Popen([sys.executable, str(entry), *flags], stdout=out,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    preexec_fn=die_with_parent)
        child = Child(name, role, proc, log, flags=list(flags))
        self.children.append(child)
        return child

    def restart(self, child: Child) -> Child:
        """Start `child` again with the same command line, logging to a fresh
        `<name>.restartN.out`. The old entry stays in `children` (mark it `killed` first if
        its death was on purpose, so `crashed` does not report it)."""
        runs = sum(c.name == child.name for c in self.children)
        return self.spawn(child.name, child.role, child.flags,
                          log_name=f"{child.name}.restart{runs}.out")

    def crashed(self) -> Child | None:
        return next((c for c in self.children
                     if not c.killed and c.proc.poll() not in (None, 0)), None)

    def stop_all(self, timeout: float = 20.0) -> None:
        """SIGTERM each child's process group, then SIGKILL what is left after `timeout`.

        SIGINT/SIGTERM are ignored meanwhile: a second Ctrl+C, or the death signal of a parent
        that is itself being stopped, must not cut this short and leave orphans.
        """
        previous = {sig: signal.signal(sig, signal.SIG_IGN)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            # A child killed on purpose was reaped then, its processes by PID (`reap_orphans`):
            # its PID may since belong to another process, so it is not signalled again.
            live = [c for c in self.children if not c.killed]
            for child in live:
                _signal_group(child.proc, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for child in live:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                _signal_group(child.proc, signal.SIGKILL)  # helpers of an exited child too
                child.proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def die_with_parent() -> None:
    """In a child before exec: receive SIGTERM when the process that started it dies (Linux
    `prctl(PR_SET_PDEATHSIG)`), so a launcher killed without cleanup leaves no orphans."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group we created with start_new_session (pgid == pid)
    except ProcessLookupError:
        return


def parse_args(argv: list[str] | None = None, *, description: str = "") -> argparse.Namespace:
    """The launcher's flags (`scripts/local_swarm.py --help`), also used by the tests."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--miners", type=int, default=3)
    p.add_argument("--validators", type=int, default=1)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--cheaters", default="", help=f"comma-separated kinds: {','.join(ADVERSARIES)}")
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--summary", default="", help="write the run's JSON summary here")
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--pages_per_epoch", type=int, default=16,
                   help="demo pages are short (docstrings): 16 make a few 8 x 128 batches")
    p.add_argument("--target_batch_size", type=int, default=TARGET_BATCH_SIZE,
                   help="samples per round; the default leaves it to 'every miner done'")
    p.add_argument("--matchmaking_time", type=float, default=5.0)
    p.add_argument("--compression", default="none", choices=("none", "fp16", "8bit"),
                   help="--averaging.compression of every peer")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip_factor", type=float, default=None,
                   help="--averaging.clip_factor of every peer (default: the neurons' own; "
                        "0 = plain mean)")
    p.add_argument("--block_time", type=float, default=0.5)
    p.add_argument("--weights_rate_limit", type=int, default=2)
    p.add_argument("--demo_pages", type=int, default=0, help="cap demo shard pages (0 = all)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--timeout", type=float, default=900.0, help="give up after this many s")
    p.add_argument("--chaos", action="store_true",
                   help="kill a random honest miner (SIGKILL) at a random moment of some epochs "
                        "and restart it; the summary reports kills, recoveries, missed epochs "
                        "and stalls")
    p.add_argument("--chaos_rate", type=float, default=0.5,
                   help="with --chaos: the chance that an epoch gets a kill")
    p.add_argument("--chaos_seed", type=int, default=0, help="with --chaos: seed of the draws")
    args = p.parse_args(argv)
    if not 0.0 <= args.chaos_rate <= 1.0:
        p.error("--chaos_rate: must be between 0 and 1")
    kinds = [k for k in args.cheaters.split(",") if k]
    bad = [k for k in kinds if k not in ADVERSARIES]
    if bad:
        p.error(f"--cheaters: unknown kind(s) {bad}; use {', '.join(ADVERSARIES)}")
    if args.miners + len(kinds) < 2:
        p.error("--miners: a swarm needs at least 2 miners to average")
    args.cheater_kinds = kinds
    return args


def inspector_command(workdir: Path, *, run_id: str = RUN_ID, target_batch_size: int) -> str:
    """The `scripts/inspect_dht.py` command line that watches the swarm started in `workdir`."""
    return (f"{sys.executable} {REPO / 'scripts' / 'inspect_dht.py'} "
            f"--initial_peers $(cat {workdir / 'initial_peers.txt'}) "
            f"--run_id {run_id} --target_batch_size {target_batch_size} "
            f"--netuid 1 --localchain.path {workdir / 'chain.sqlite'} "
            f"--store.dir {workdir / 'checkpoints'}")


def write_swarm_files(workdir: Path, peers: list[str], *, run_id: str = RUN_ID,
                      target_batch_size: int) -> str:
    """Write `initial_peers.txt` and `run_id.txt` in `workdir`; return the inspector command."""
    (workdir / "initial_peers.txt").write_text(" ".join(peers) + "\n")
    (workdir / "run_id.txt").write_text(run_id + "\n")
    return inspector_command(workdir, run_id=run_id, target_batch_size=target_batch_size)


def epoch_rows(miner_dir: Path) -> list[dict]:
    """The lines a miner appended to `epochs.jsonl`, one per completed epoch."""
    path = miner_dir / "epochs.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_rows(miner_dir: Path) -> list[dict]:
    """The lines a miner appended to `loads.jsonl`, one each time it loaded state (from a peer
    or a checkpoint): `{"epoch", "source", "time"}`."""
    path = miner_dir / "loads.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def epochs_done(miner_dir: Path) -> int:
    """The newest epoch a miner reached: by its own step (`epochs.jsonl`) or by loading the
    state of a peer or a checkpoint (`loads.jsonl`; a restarted or late miner catches up so)."""
    rows = [*epoch_rows(miner_dir), *load_rows(miner_dir)]
    return max((row["epoch"] for row in rows), default=0)


@dataclass
class Kill:
    """One chaos kill and what followed it."""

    miner: str
    epoch: int  # the step in progress (the one that makes epoch-N, as in the summary)
    at: float  # wall-clock time of the SIGKILL
    reached: int  # the swarm's newest epoch then: recovered once the restart is back there
    restart: Child
    descendants: list[psutil.Process]  # the killed miner's processes (DHT, averager, p2pd)
    recovered_at: float | None = None
    orphans: int | None = None


@dataclass
class Chaos:
    """Kill a random honest miner with SIGKILL (by PID) at a random moment of some epochs,
    restart it with the same command line, and keep the figures the summary reports.

    The launcher's watch loop calls :meth:`tick` with the newest epoch any honest miner reached.
    When step N (1..``--epochs``) begins, one draw decides whether a kill comes in it (chance
    ``rate``) and one when: a uniform moment of a step as long as the previous one
    (:data:`CHAOS_FIRST_EPOCH` for the first). One kill is pending at a time; a kill due after
    its step ended lands in the next. Victims are honest miners that recovered from any earlier
    kill. Raise ``rate`` for more faults; a fixed ``seed`` repeats the draws.
    """

    net: LocalNet
    rate: float
    seed: int
    started: float = field(default_factory=time.time)
    kills: list[Kill] = field(default_factory=list)
    epoch_seconds: dict[int, float] = field(default_factory=dict)
    stalls: dict[int, float] = field(default_factory=dict)  # step -> s it has waited so far
    _begun: dict[int, float] = field(default_factory=dict)
    _due: float | None = None
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def tick(self, front: int) -> list[str]:
        """Advance: time epochs, note stalls, kill and restart when due, follow recoveries.
        Returns one line per kill, for the launcher to print."""
        now, events = time.time(), []
        last = self.net.args.epochs
        if front < last:
            step = front + 1
            if step not in self._begun:
                self._begin(step, now)
            if now - self._begun[step] > STALL_TIMEOUT:
                self.stalls[step] = now - self._begun[step]
            if self._due is not None and now >= self._due:
                self._due = None
                events += self._kill(step, front, now)
        else:
            self._due = None
            if last in self._begun and last not in self.epoch_seconds:
                self.epoch_seconds[last] = now - self._begun[last]
        self._follow(now)
        return events

    def _begin(self, step: int, now: float) -> None:
        if step - 1 in self._begun:
            self.epoch_seconds[step - 1] = now - self._begun[step - 1]
        self._begun[step] = now
        hit, moment = self._rng.random(), self._rng.random()
        if hit < self.rate and self._due is None:
            self._due = now + moment * self.epoch_seconds.get(step - 1, CHAOS_FIRST_EPOCH)

    def _kill(self, step: int, front: int, now: float) -> list[str]:
        recovering = {k.miner for k in self.kills if k.recovered_at is None}
        alive = [c for c in self.net.children if c.role == "miner" and c.name in self.net.miners
                 and not c.killed and c.proc.poll() is None and c.name not in recovering]
        if not alive:
            return []
        victim = self._rng.choice(sorted(alive, key=lambda c: c.name))
        try:
            descendants = psutil.Process(victim.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        victim.killed = True
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()
        time.sleep(RESTART_DELAY)
        restart = self.net.restart(victim)
        self.kills.append(Kill(victim.name, step, now, front, restart, descendants))
        return [f"chaos: killed {victim.name} (pid {victim.proc.pid}) in epoch {step}; "
                f"restarted as pid {restart.proc.pid}, log {restart.log}"]

    def _follow(self, now: float) -> None:
        for kill in self.kills:
            if kill.recovered_at is None:
                miner_dir = self.net.workdir / "miners" / kill.miner
                rows = [*epoch_rows(miner_dir), *load_rows(miner_dir)]
                kill.recovered_at = min((r["time"] for r in rows if r["time"] > kill.at
                                         and r["epoch"] >= kill.reached), default=None)
            if kill.orphans is None and now - kill.at >= ORPHAN_CHECK_DELAY:
                kill.orphans = reap_orphans(kill.descendants)

    def finish(self) -> None:
        """Before the launcher stops everything: last recovery check, orphans counted and
        killed for kills younger than :data:`ORPHAN_CHECK_DELAY`."""
        self._follow(time.time())
        for kill in self.kills:
            if kill.orphans is None:
                kill.orphans = reap_orphans(kill.descendants)

    def report(self) -> dict:
        """The summary's `chaos` object (docs/local-devnet.md)."""
        last = self.net.args.epochs
        missed = {}
        for name in sorted({k.miner for k in self.kills}):
            stepped = {r["epoch"] for r in epoch_rows(self.net.workdir / "miners" / name)}
            missed[name] = [n for n in range(1, last + 1) if n not in stepped]
        return {
            "seed": self.seed, "rate": self.rate, "kills": len(self.kills),
            "recoveries": sum(k.recovered_at is not None for k in self.kills),
            "events": [{"miner": k.miner, "epoch": k.epoch, "at": round(k.at - self.started, 1),
                        "recovered_after": None if k.recovered_at is None
                        else round(k.recovered_at - k.at, 1),
                        "orphans": k.orphans, "log": k.restart.log.name} for k in self.kills],
            "missed_epochs": missed,
            "epoch_seconds": {str(n): round(s, 1) for n, s in sorted(self.epoch_seconds.items())},
            "stalls": [{"epoch": n, "seconds": round(s, 1)}
                       for n, s in sorted(self.stalls.items())],
        }


def reap_orphans(processes: list[psutil.Process]) -> int:
    """SIGKILL those of `processes` still running (psutil checks each is the same process, not
    a reused PID) and wait up to 5 s for them to go; return how many there were."""
    alive = []
    for proc in processes:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            continue
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=5.0)
    return len(alive)
