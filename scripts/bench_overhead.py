"""Miner overhead between rounds: tokens/s and peak memory vs a bare PyTorch loop.

    python scripts/bench_overhead.py --preset tiny --batch_size 8 --seq_len 128 --batches 12

Runs each mode in its own subprocess (so peak RSS is the mode's own), same model, batch shape
and thread count, and prints one JSON line per mode plus the ratios:

Memory (`memory_mb`) is the main process's peak RSS plus the PSS of its children at the end
(the averager's fork, the DHT process, p2pd; PSS splits pages shared copy-on-write with the
parent, which RSS would count twice).

* `bare`: forward + backward per batch (`template.training.accumulate`) on random tokens.
* `miner`: the miner's between-rounds path, `Miner.train_batches`, which adds per-batch
  gradient sketches, the work ledger and signed DHT progress records; the process also holds
  what a miner holds between rounds (a running DHT node and the gradient averager's buffers).

Targets (issue: swarm training): miner/bare tokens/s >= 0.95, peak RSS <= 1.5x.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bittensor  # noqa: F401  (import before hivemind: NOTES)
import psutil
import torch


def _batches(count: int, batch_size: int, seq_len: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, 50257, (batch_size, seq_len), generator=gen) for _ in range(count)]


def _children_pss_mb() -> float:
    """PSS of this process's children (the averager's fork, the DHT process, p2pd), in MiB.

    PSS, not RSS: a forked child shares the parent's pages copy-on-write, and summing RSS would
    count the model twice; PSS splits each shared page among the processes that map it.
    """
    total = 0
    for proc in psutil.Process().children(recursive=True):
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / 2**20


def run_mode(args: argparse.Namespace) -> dict[str, float]:
    from template.config import Config, ModelConfig
    from template.model import build_model
    from template.training import accumulate

    torch.set_num_threads(args.threads)
    model = build_model(ModelConfig(preset=args.preset), seed=0)
    batches = _batches(args.batches + 1, args.batch_size, args.seq_len)
    if args.mode == "bare":
        accumulate(model, batches[0])  # warm-up
        started = time.perf_counter()
        for batch in batches[1:]:
            accumulate(model, batch)
        seconds = time.perf_counter() - started
        children = 0.0
    else:
        miner, closers = _miner(Config(), model)
        miner.train_batches(0, batches[:1])  # warm-up (sketch basis, first DHT store)
        miner.ledger.begin(1, pages=[], fingerprint=[])
        started = time.perf_counter()
        trained = miner.train_batches(1, batches[1:])
        seconds = time.perf_counter() - started
        assert trained == args.batches, trained
        children = _children_pss_mb()  # their memory is flat: buffers, DHT, p2pd
        for close in reversed(closers):
            close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"mode": args.mode, "tokens_per_second": _tps(args, seconds), "peak_rss_mb": peak,
            "children_pss_mb": children, "memory_mb": peak + children}


def _tps(args: argparse.Namespace, seconds: float) -> float:
    return args.batches * args.batch_size * args.seq_len / seconds


def _miner(cfg, model):  # type: ignore[no-untyped-def]
    """A miner with the parts its between-rounds path uses (no chain, no Axon)."""
    import functools

    from hivemind_utils.averaging import SwarmAverager
    from hivemind_utils.dht import start_dht
    from hivemind_utils.swarm_state import ProgressReporter, read_swarm_state
    from template.checkpoints import LocalStore
    from template.config import WandbConfig
    from template.miner.miner import Miner
    from template.telemetry import Telemetry
    from template.training import build_optimizer

    cfg = cfg.replace(wandb=WandbConfig(mode="disabled"))
    dht = start_dht(cfg.dht, run_id="bench")
    averager = SwarmAverager(dht=dht, run_id="bench", cfg=cfg.averaging, params=model.parameters())
    hotkey = "5" + "C" * 47  # any ss58-shaped string: the record schema checks the shape
    miner = Miner(
        cfg=cfg, uid=0, peer_id=dht.peer_id.to_base58(), wallet=None, chain=None, model=model,
        optimizer=build_optimizer(model, cfg.optim), tokenizer=None, source=None,
        store=LocalStore(tempfile.mkdtemp()), averager=averager,
        reporter=ProgressReporter(dht=dht, hotkey=hotkey),
        read_state=functools.partial(read_swarm_state, dht, run_id="bench",
                                     target_batch_size=10**9),
        device=torch.device("cpu"), precision="fp32", telemetry=Telemetry(cfg, role="bench",
                                                                          name="bench"),
    )
    miner.ledger.begin(0, pages=[], fingerprint=[])
    return miner, [dht.shutdown, averager.shutdown]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="runs per mode (median reported)")
    p.add_argument("--mode", choices=("bare", "miner"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mode:
        print(json.dumps(run_mode(args)), flush=True)
        return
    flags = [f"--{k}={v}" for k, v in vars(args).items() if k not in ("mode", "repeats")]
    results: dict[str, list[dict[str, float]]] = {"bare": [], "miner": []}
    for _ in range(args.repeats):
        for mode in ("bare", "miner"):  # interleaved: load drifts hit both modes alike
            out = subprocess.run([sys.executable, __file__, f"--mode={mode}", *flags],
                                 capture_output=True, text=True, check=True)
            results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {mode: {key: statistics.median(r[key] for r in rows) for key in
                  ("tokens_per_second", "peak_rss_mb", "children_pss_mb", "memory_mb")}
           for mode, rows in results.items()}
    print(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "mode"},
                      "median": med,
                      "throughput_ratio": med["miner"]["tokens_per_second"]
                      / med["bare"]["tokens_per_second"],
                      "memory_ratio": med["miner"]["memory_mb"] / med["bare"]["memory_mb"]},
                     indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
