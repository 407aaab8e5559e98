"""All-reduce benchmark: N peers average a payload with SwarmAverager; seconds vs the bound.

    sudo .venv/bin/python scripts/bench_allreduce.py --peers 2 4 8 --mb 10 100 \\
        --links loopback shaped --rounds 2

Each peer is a separate process with its own DHT node and SwarmAverager. ``loopback``: peers on
127.0.0.1 (CPU-bound). ``shaped``: each peer in its own network namespace, joined by a veth pair
to a bridge, each direction of each link shaped by ``tc tbf`` to ``--mbit`` (default 100);
the script creates and removes the namespaces itself (needs root and iproute2).

Reported per (link, N, payload): median over rounds of the slowest peer's all-reduce seconds
(matchmaking excluded), and the ratio to the butterfly bound 2(N-1)/N x payload / bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PREFIX = "arb"  # namespace / interface name prefix, removed on exit
SUBNET = "10.77.0"


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def setup_shaped(n: int, mbit: float) -> list[str]:
    """Bridge + one namespace per peer, every veth end shaped; returns the peers' IPs."""
    teardown_shaped(n)
    sh("ip", "link", "add", f"{PREFIX}br", "type", "bridge")
    sh("ip", "addr", "add", f"{SUBNET}.1/24", "dev", f"{PREFIX}br")
    sh("ip", "link", "set", f"{PREFIX}br", "up")
    ips = []
    for i in range(n):
        ns, host, peer, ip = f"{PREFIX}{i}", f"{PREFIX}h{i}", f"{PREFIX}p{i}", f"{SUBNET}.{10 + i}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
        sh("ip", "link", "set", peer, "netns", ns)
        sh("ip", "link", "set", host, "master", f"{PREFIX}br")
        sh("ip", "link", "set", host, "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", peer)
        sh("ip", "-n", ns, "link", "set", peer, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        tbf = ["tbf", "rate", f"{mbit}mbit", "burst", "128kb", "latency", "100ms"]
        sh("tc", "qdisc", "add", "dev", host, "root", *tbf)              # download of peer i
        sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", peer, "root", *tbf)  # upload
        ips.append(ip)
    return ips


def teardown_shaped(n: int) -> None:
    for i in range(max(n, 16)):
        subprocess.run(["ip", "netns", "del", f"{PREFIX}{i}"], capture_output=True)
        subprocess.run(["ip", "link", "del", f"{PREFIX}h{i}"], capture_output=True)
    subprocess.run(["ip", "link", "del", f"{PREFIX}br"], capture_output=True)


def run_case(n: int, mb: float, rounds: int, ips: list[str] | None, workdir: Path) -> list[float]:
    """Start n workers, wait for them, return per-round max all-reduce seconds."""
    case = workdir / f"{n}-{mb}-{'s' if ips else 'l'}"
    case.mkdir()
    procs = []
    for i in range(n):
        cmd = [sys.executable, __file__, "_worker", "--index", str(i), "--peers", str(n),
               "--mb", str(mb), "--rounds", str(rounds), "--dir", str(case),
               "--ip", ips[i] if ips else "127.0.0.1"]
        if ips:
            cmd = ["ip", "netns", "exec", f"{PREFIX}{i}", *cmd]
        with open(case / f"{i}.err", "w") as err:  # the child keeps its own copy of the fd
            procs.append(subprocess.Popen(cmd, start_new_session=True,
                                          stdout=subprocess.DEVNULL, stderr=err))
    try:
        for proc in procs:
            proc.wait(timeout=60 + rounds * (30 + mb * 4))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # our own worker's session only
                proc.wait()
    per_round: list[list[float]] = [[] for _ in range(rounds)]
    for i in range(n):
        path = case / f"{i}.json"
        if not path.exists():
            raise RuntimeError(f"worker {i} failed: {(case / f'{i}.err').read_text()[-2000:]}")
        for r, row in enumerate(json.loads(path.read_text())):
            if not row["ok"]:
                raise RuntimeError(f"worker {i} round {r}: {row['error']}")
            per_round[r].append(row["allreduce_seconds"])
    return [max(times) for times in per_round]


def worker(args: argparse.Namespace) -> None:
    import torch

    from hivemind_utils.averaging import SwarmAverager
    from hivemind_utils.dht import start_dht, visible_maddrs
    from template.config import AveragingConfig, DHTConfig

    torch.set_num_threads(1)
    folder = Path(args.dir)
    boot_file = folder / "boot"
    peers: list[str] = []
    if args.index > 0:
        while not boot_file.exists():
            time.sleep(0.1)
        peers = json.loads(boot_file.read_text())
    dht = start_dht(DHTConfig(ip=args.ip), run_id="bench", initial_peers=peers)
    if args.index == 0:
        (folder / "boot.tmp").write_text(json.dumps(visible_maddrs(dht)))
        os.replace(folder / "boot.tmp", boot_file)
    cfg = AveragingConfig(target_group_size=args.peers, min_group_size=args.peers,
                          matchmaking_time=4.0, request_timeout=2.0,
                          allreduce_timeout=600.0, next_chunk_timeout=120.0)
    tensor = torch.randn(int(args.mb * 1e6 / 4))
    averager = SwarmAverager(dht=dht, run_id="bench", cfg=cfg, tensors=[tensor])
    (folder / f"{args.index}.ready").touch()
    while len(list(folder.glob("*.ready"))) < args.peers:
        time.sleep(0.1)
    rows = []
    for _ in range(args.rounds):
        result = averager.average(weight=1.0, timeout=60.0)
        rows.append(dict(ok=result.ok, error=result.error, seconds=result.seconds,
                         allreduce_seconds=result.allreduce_seconds,
                         bytes_sent=result.bytes_sent, group=len(result.participants)))
    (folder / f"{args.index}.json").write_text(json.dumps(rows))
    averager.shutdown()
    dht.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    w = sub.add_parser("_worker")
    for name, kind in (("index", int), ("peers", int), ("mb", float), ("rounds", int),
                       ("dir", str), ("ip", str)):
        w.add_argument(f"--{name}", type=kind, required=True)
    parser.add_argument("--peers", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--mb", type=float, nargs="+", default=[10, 100])
    parser.add_argument("--links", nargs="+", default=["loopback", "shaped"],
                        choices=["loopback", "shaped"])
    parser.add_argument("--mbit", type=float, default=100.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.cmd == "_worker":
        worker(args)
        return
    bandwidth = args.mbit * 1e6 / 8  # bytes/s
    print(f"{'link':<9} {'N':>2} {'MB':>6} {'median s':>9} {'bound s':>8} {'ratio':>6}  rounds")
    with tempfile.TemporaryDirectory(prefix="bench-allreduce-") as tmp:
        for link in args.links:
            for n in args.peers:
                for mb in args.mb:
                    ips = setup_shaped(n, args.mbit) if link == "shaped" else None
                    try:
                        times = run_case(n, mb, args.rounds, ips, Path(tmp))
                    finally:
                        if ips:
                            teardown_shaped(n)
                    bound = 2 * (n - 1) / n * mb * 1e6 / bandwidth
                    med = statistics.median(times)
                    ratio = f"{med / bound:6.2f}" if link == "shaped" else "     -"
                    print(f"{link:<9} {n:>2} {mb:>6g} {med:>9.2f} {bound:>8.2f} {ratio}  "
                          f"{' '.join(f'{t:.2f}' for t in times)}", flush=True)


if __name__ == "__main__":
    main()
