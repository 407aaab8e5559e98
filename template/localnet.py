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
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass
class Child:
    name: str
    role: str
    proc: subprocess.Popen
    log: Path

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

    def spawn(self, name: str, role: str, flags: list[str]) -> Child:
        log = self.workdir / "logs" / f"{name}.out"
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
        child = Child(name, role, proc, log)
        self.children.append(child)
        return child

    def crashed(self) -> Child | None:
        return next((c for c in self.children if c.proc.poll() not in (None, 0)), None)

    def stop_all(self, timeout: float = 20.0) -> None:
        """SIGTERM each child's process group, then SIGKILL what is left after `timeout`.

        SIGINT/SIGTERM are ignored meanwhile: a second Ctrl+C, or the death signal of a parent
        that is itself being stopped, must not cut this short and leave orphans.
        """
        previous = {sig: signal.signal(sig, signal.SIG_IGN)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for child in self.children:
                _signal_group(child.proc, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for child in self.children:
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
    args = p.parse_args(argv)
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


def epochs_done(miner_dir: Path) -> int:
    """Epochs a miner completed."""
    return max((row["epoch"] for row in epoch_rows(miner_dir)), default=0)
