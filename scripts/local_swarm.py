"""A whole subnet on this machine: local chain, bootstrap DHT, miners, validators, checkpoints.

    python scripts/local_swarm.py --miners 3 --validators 1 --epochs 3 --workdir runs/demo

Creates and registers wallets on the embedded devnet chain, builds the demo shards if absent,
starts a bootstrap DHT node (in this process), then every miner and validator as its own
process, shows progress, and stops everything after `--epochs` epochs (or on Ctrl+C, or when a
child crashes: the exit code is then non-zero and the failing log's tail is printed).
`WORKDIR/initial_peers.txt` holds the bootstrap multiaddr as soon as the swarm is up, so
`scripts/inspect_dht.py --initial_peers $(cat WORKDIR/initial_peers.txt)` can watch the run.
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
from dataclasses import dataclass, field
from pathlib import Path

import bittensor  # noqa: F401  (import before hivemind: NOTES)

from hivemind_utils.dht import start_dht, visible_maddrs
from hivemind_utils.swarm_state import read_swarm_state
from template.chain.local import LocalChain
from template.chain.wallets import create_and_register
from template.config import ADVERSARIES, DHTConfig
from template.data import ensure_demo_shards
from template.swarm_summary import build_summary, print_table, save_plot

REPO = Path(__file__).resolve().parents[1]
RUN_ID = "local-demo"
VALIDATOR_STAKE = 1000.0


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
class Swarm:
    args: argparse.Namespace
    workdir: Path
    children: list[Child] = field(default_factory=list)

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
            "--averaging.trigger", "validator" if a.validators else "swarm",
            "--wandb.mode", "offline",
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
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        child = Child(name, role, proc, log)
        self.children.append(child)
        return child

    def crashed(self) -> Child | None:
        return next((c for c in self.children if c.proc.poll() not in (None, 0)), None)

    def stop_all(self, timeout: float = 20.0) -> None:
        """SIGTERM each child's process group, then SIGKILL what is left after `timeout`."""
        for child in self.children:
            _signal_group(child.proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            _signal_group(child.proc, signal.SIGKILL)  # helpers of a child that already exited
            child.proc.wait()


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group we created with start_new_session (pgid == pid)
    except ProcessLookupError:
        return


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--miners", type=int, default=3)
    p.add_argument("--validators", type=int, default=1)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--cheaters", default="", help=f"comma-separated kinds: {','.join(ADVERSARIES)}")
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--summary", default="", help="write the run's JSON summary here")
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--pages_per_epoch", type=int, default=4)
    p.add_argument("--target_batch_size", type=int, default=10**6,
                   help="samples per round; the default leaves it to 'every miner done'")
    p.add_argument("--matchmaking_time", type=float, default=5.0)
    p.add_argument("--lr", type=float, default=3e-3)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    swarm = Swarm(args, workdir)
    print(f"workdir {workdir}", flush=True)
    ensure_demo_shards(workdir / "shards", max_pages=args.demo_pages or None)
    miners = [f"miner{i + 1}" for i in range(args.miners)]
    cheaters = {f"cheater{i + 1}": kind for i, kind in enumerate(args.cheater_kinds)}
    validators = [f"validator{i + 1}" for i in range(args.validators)]
    chain = LocalChain(workdir / "chain.sqlite", netuid=1, block_time=args.block_time,
                       weights_rate_limit=args.weights_rate_limit)
    registered = create_and_register(
        [*miners, *cheaters, *validators], wallet_path=workdir / "wallets", chain=chain,
        stakes={v: VALIDATOR_STAKE for v in validators})
    uids = {r.name: r.uid for r in registered}
    dht = start_dht(DHTConfig(), run_id=RUN_ID)
    peers = visible_maddrs(dht)
    (workdir / "initial_peers.txt").write_text(" ".join(peers) + "\n")
    started, ok = time.monotonic(), False
    try:
        for name in [*miners, *cheaters]:
            flags = [*swarm.common_flags(), "--wallet.name", name,
                     "--axon.port", str(_free_port()), "--neuron.epochs", str(args.epochs),
                     "--neuron.workdir", str(workdir / "miners" / name),
                     "--neuron.initial_peers", *peers]
            if name in cheaters:
                flags += ["--neuron.adversary", cheaters[name]]
            swarm.spawn(name, "miner", flags)
        for name in validators:
            swarm.spawn(name, "validator", [
                *swarm.common_flags(), "--wallet.name", name, "--neuron.initial_peers", *peers,
                "--neuron.workdir", str(workdir / "validators" / name),
                "--neuron.epochs", str(args.epochs)])
        ok = _watch(swarm, dht, args, miners, started)
    except KeyboardInterrupt:
        print("interrupted: stopping every process", flush=True)
    finally:
        swarm.stop_all()
        dht.shutdown()
    summary = build_summary(workdir=workdir, chain=chain, uids=uids, miners=miners,
                            cheaters=cheaters, epochs=args.epochs, ok=ok)
    chain.close()
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=1))
        save_plot(summary, Path(args.summary).with_suffix(".png"))
    print_table(summary)
    return 0 if ok else 1


def _watch(swarm: Swarm, dht, args: argparse.Namespace, miners: list[str],
           started: float) -> bool:
    """Print progress until every honest miner finished `--epochs` epochs; False on failure."""
    last_line = ""
    while time.monotonic() - started < args.timeout:
        crashed = swarm.crashed()
        if crashed is not None:
            print(f"{crashed.name} exited with code {crashed.proc.returncode}; log tail:\n"
                  f"{crashed.tail()}", flush=True)
            return False
        done = {m: _epochs_done(swarm.workdir / "miners" / m) for m in miners}
        state = read_swarm_state(dht, run_id=RUN_ID, target_batch_size=args.target_batch_size)
        line = (f"[{time.monotonic() - started:5.0f}s] swarm epoch {state.global_epoch}, "
                f"{len(state.peers)} peers, samples {state.samples_accumulated}; epochs done "
                + ", ".join(f"{m}={n}" for m, n in done.items()))
        if line != last_line:
            print(line, flush=True)
            last_line = line
        if all(n >= args.epochs for n in done.values()):
            return _validators_finished(swarm, timeout=60.0)
        time.sleep(1.0)
    print(f"timed out after {args.timeout:g} s", flush=True)
    for child in swarm.children:
        print(f"--- {child.name} log tail:\n{child.tail(15)}", flush=True)
    return False


def _validators_finished(swarm: Swarm, *, timeout: float) -> bool:
    """Give validators a moment to score the last round and set weights (they exit then)."""
    deadline = time.monotonic() + timeout
    validators = [c for c in swarm.children if c.role == "validator"]
    while time.monotonic() < deadline and any(c.proc.poll() is None for c in validators):
        time.sleep(0.5)
    failed = [c for c in validators if c.proc.poll() not in (None, 0)]
    for child in failed:
        print(f"{child.name} exited with code {child.proc.returncode}; log tail:\n"
              f"{child.tail()}", flush=True)
    return not failed


def _epochs_done(miner_dir: Path) -> int:
    path = miner_dir / "epochs.jsonl"
    if not path.exists():
        return 0
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return max((line["epoch"] for line in lines), default=0)


def _free_port() -> int:
    from template.transport import free_port

    return free_port()


if __name__ == "__main__":
    sys.exit(main())
