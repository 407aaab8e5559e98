"""A whole subnet on this machine: local chain, bootstrap DHT, miners, validators, checkpoints.

    python scripts/local_swarm.py --miners 3 --validators 1 --epochs 3 --workdir runs/demo

Creates and registers wallets on the embedded devnet chain, builds the demo shards if absent,
starts a bootstrap DHT node (in this process), then every miner and validator as its own
process, shows progress, and stops everything after `--epochs` epochs (or on Ctrl+C, or when a
child crashes: the exit code is then non-zero and the failing log's tail is printed).
With `--chaos` (`--chaos_rate`, `--chaos_seed`) it kills a random honest miner with SIGKILL at
a random moment of some epochs and restarts it with the same command line; the summary's
`chaos` object reports kills, recoveries, missed epochs and stalls (docs/local-devnet.md).
`WORKDIR/initial_peers.txt` holds the bootstrap multiaddr and `WORKDIR/run_id.txt` the run id
as soon as the swarm is up; the launcher prints the inspector command that watches the run:
`scripts/inspect_dht.py --initial_peers $(cat WORKDIR/initial_peers.txt) --run_id local-demo
--target_batch_size N`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import bittensor  # noqa: F401  (import before hivemind: NOTES)

from hivemind_utils.dht import start_dht, visible_maddrs
from hivemind_utils.swarm_state import read_swarm_state
from template.config import DHTConfig
from template.localnet import (
    RUN_ID,
    Chaos,
    LocalNet,
    epoch_rows,
    epochs_done,
    parse_args,
    write_swarm_files,
)
from template.swarm_summary import build_summary, print_table, save_plot

MINERS_UP_TIMEOUT = 120.0  # s to wait for every miner's first DHT record before validators start


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the run like Ctrl+C: every child is stopped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, description=__doc__.splitlines()[0])
    signal.signal(signal.SIGTERM, _interrupt)
    net = LocalNet.prepare(args)
    print(f"workdir {net.workdir}", flush=True)
    dht = start_dht(DHTConfig(), run_id=RUN_ID)
    peers = visible_maddrs(dht)
    inspect = write_swarm_files(net.workdir, peers, target_batch_size=args.target_batch_size)
    print(f"watch the swarm with: {inspect}", flush=True)
    print(f"live swarm page: {inspect} --workdir {net.workdir} --serve 8765 "
          "(then open http://127.0.0.1:8765/)", flush=True)
    started, ok, chaos = time.monotonic(), False, None
    try:
        for name in [*net.miners, *net.cheaters]:
            net.start_miner(name, peers, adversary=net.cheaters.get(name, ""))
        if net.validators:
            _wait_for_miners(net, dht, args, timeout=MINERS_UP_TIMEOUT)
        for name in net.validators:
            net.start_validator(name, peers)
        if args.chaos:
            chaos = Chaos(net, rate=args.chaos_rate, seed=args.chaos_seed)
        ok = _watch(net, dht, args, started, chaos)
    except KeyboardInterrupt:
        print("interrupted: stopping every process", flush=True)
    finally:
        if chaos is not None:
            chaos.finish()  # orphans of recent kills counted and killed before the stop
        net.stop_all()
        dht.shutdown()
    summary = build_summary(workdir=net.workdir, chain=net.chain, uids=net.uids,
                            miners=net.miners, cheaters=net.cheaters, epochs=args.epochs, ok=ok,
                            compression=args.compression)
    if chaos is not None:
        summary["chaos"] = chaos.report()
    net.chain.close()
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=1))
        save_plot(summary, Path(args.summary).with_suffix(".png"))
    print_table(summary)
    if chaos is not None:
        _print_chaos(summary["chaos"])
    return 0 if ok else 1


def _print_chaos(report: dict) -> None:
    missed = "; ".join(f"{m} missed {e or 'none'}" for m, e in report["missed_epochs"].items())
    print(f"chaos: {report['kills']} kills, {report['recoveries']} recoveries"
          f"{'; ' + missed if missed else ''}; stalled epochs: "
          f"{[s['epoch'] for s in report['stalls']] or 'none'}", flush=True)


def _watch(swarm: LocalNet, dht, args: argparse.Namespace, started: float,
           chaos: Chaos | None = None) -> bool:
    """Print progress until every honest miner finished `--epochs` epochs; False on failure.
    With `chaos`, each pass may kill and restart a miner (`Chaos.tick`)."""
    last = None
    while time.monotonic() - started < args.timeout:
        crashed = swarm.crashed()
        if crashed is not None:
            print(f"{crashed.name} exited with code {crashed.proc.returncode}; log tail:\n"
                  f"{crashed.tail()}", flush=True)
            return False
        done = {m: epochs_done(swarm.workdir / "miners" / m) for m in swarm.miners}
        for event in chaos.tick(max(done.values(), default=0)) if chaos is not None else []:
            print(f"[{time.monotonic() - started:5.0f}s] {event}", flush=True)
        state = read_swarm_state(dht, run_id=RUN_ID, target_batch_size=args.target_batch_size)
        here = [p for p in state.peers if p.epoch == state.global_epoch]
        waiting = sum(p.finished for p in here)
        status = (f"epoch {state.global_epoch}: {len(state.peers)} peers, "
                  f"{state.samples_accumulated} samples, {waiting}/{len(here)} waiting for the "
                  f"round; last loss {_last_loss(swarm)}; epochs done "
                  + ", ".join(f"{m}={n}" for m, n in done.items()))
        if status != last:
            print(f"[{time.monotonic() - started:5.0f}s] {status}", flush=True)
            last = status
        if all(n >= args.epochs for n in done.values()):
            return _validators_finished(swarm, timeout=90.0)
        time.sleep(1.0)
    print(f"timed out after {args.timeout:g} s", flush=True)
    for child in swarm.children:
        print(f"--- {child.name} log tail:\n{child.tail(15)}", flush=True)
    return False


def _wait_for_miners(swarm: LocalNet, dht, args: argparse.Namespace, *, timeout: float) -> None:
    """Start validators once every miner is in the DHT: a validator that starts first would run
    epoch 0's round with the miners that happened to be up (the others catch up, unpaid)."""
    expected = len(swarm.miners) + len(swarm.cheaters)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and swarm.crashed() is None:
        state = read_swarm_state(dht, run_id=RUN_ID, target_batch_size=args.target_batch_size)
        if len(state.peers) >= expected:
            return
        time.sleep(0.5)
    print(f"not every miner reported within {timeout:g} s: starting the validators anyway",
          flush=True)


def _last_loss(swarm: LocalNet) -> str:
    rows = [row for m in swarm.miners for row in epoch_rows(swarm.workdir / "miners" / m)]
    if not rows:
        return "-"
    newest = max(r["epoch"] for r in rows)
    losses = [r["loss"] for r in rows if r["epoch"] == newest and r["loss"] is not None]
    return f"{sum(losses) / len(losses):.3f}" if losses else "-"


def _validators_finished(swarm: LocalNet, *, timeout: float) -> bool:
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


if __name__ == "__main__":
    sys.exit(main())
