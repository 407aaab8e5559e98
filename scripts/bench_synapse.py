"""Round-trip latency of each synapse at its maximum allowed size, Axon and Dendrite on loopback.

    python scripts/bench_synapse.py --repeats 30

A miner Axon runs in a child process (its own GIL, as in a real deployment) and answers every
synapse with a response at the schema's caps (template.protocol MAX_*); the validator's
Dendrite in this process measures wall time per call. Both response encoders (ours and
bittensor's) are measured side by side in one run. Prints a markdown table of medians.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import bittensor as bt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from template import protocol as P  # noqa: E402
from template.chain.local import LocalChain  # noqa: E402
from template.transport import (  # noqa: E402
    MetagraphCache,
    build_axon,
    build_dendrite,
    free_port,
    start_axon,
)

PEER = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"


def make_wallet(path: str, name: str) -> bt.Wallet:
    wallet = bt.Wallet(name=name, hotkey="default", path=path)
    wallet.create_new_coldkey(use_password=False, overwrite=True, suppress=True)
    wallet.create_new_hotkey(use_password=False, overwrite=True, suppress=True)
    return wallet


async def full_train(synapse: P.Train) -> P.Train:
    """A Train response at every cap (values with float64 precision, as sketches are)."""
    synapse.loss = 3.14159265358979
    synapse.pages = list(range(P.MAX_PAGES))
    synapse.batches = list(range(P.MAX_BATCHES))
    synapse.samples = 8 * P.MAX_BATCHES
    synapse.sketches = [[(i * 7919 + j) / 1e5 + 1e-9 for j in range(P.MAX_SKETCH_DIMS)]
                        for i in range(P.MAX_BATCHES)]
    synapse.sketch_seed = 12345
    synapse.peer_id = PEER
    synapse.model_fingerprint = [j / 3.0 for j in range(P.MAX_FINGERPRINT_DIMS)]
    return synapse


async def full_allreduce(synapse: P.AllReduce) -> P.AllReduce:
    synapse.success = True
    synapse.peer_id = PEER
    synapse.participants = [PEER[:-3] + f"{i:03d}".replace("0", "a")
                            for i in range(P.MAX_PARTICIPANTS)]
    synapse.bytes_sent = synapse.bytes_received = 2**40
    synapse.seconds = 12.5
    synapse.fingerprint = [j / 3.0 for j in range(P.MAX_FINGERPRINT_DIMS)]
    return synapse


async def alive(synapse: P.IsAlive) -> P.IsAlive:
    synapse.alive, synapse.epoch, synapse.peer_id = True, 7, PEER
    return synapse


def serve(chain_path: str, wallet_path: str, port: int, fast: bool, ready: mp.Event,
          stop: mp.Event) -> None:
    chain = LocalChain(chain_path)
    wallet = bt.Wallet(name="miner", hotkey="default", path=wallet_path)
    cache = MetagraphCache(chain)
    axon = build_axon(wallet=wallet, graph=cache.get, port=port, fast_responses=fast,
                      handlers={P.Train: full_train, P.AllReduce: full_allreduce,
                                P.IsAlive: alive})
    start_axon(axon)
    ready.set()
    stop.wait()
    axon.stop()


def requests() -> dict[str, bt.Synapse]:
    return {
        "Train": P.Train(epoch=3, nonce=99, max_batches=P.MAX_BATCHES),
        "AllReduce": P.AllReduce(epoch=3, round_id="r-3", learning_rate=1e-3),
        "IsAlive": P.IsAlive(),
    }


async def measure(dendrite: bt.Dendrite, axon: bt.AxonInfo, repeats: int) -> dict[str, dict]:
    out = {}
    for name, template in requests().items():
        times, size = [], 0
        for i in range(repeats + 2):
            synapse = template.model_copy(deep=True)
            start = time.perf_counter()
            reply = await dendrite.call(axon, synapse, timeout=30, deserialize=False)
            elapsed = time.perf_counter() - start
            if not reply.is_success:
                raise RuntimeError(f"{name}: {reply.dendrite.status_message}")
            if i >= 2:  # first two calls open the connection and warm caches
                times.append(elapsed)
            size = len(reply.model_dump_json())
        out[name] = {"median_ms": 1e3 * statistics.median(times),
                     "p90_ms": 1e3 * sorted(times)[int(0.9 * (len(times) - 1))],
                     "bytes": size}
    return out


def run(repeats: int) -> dict[bool, dict[str, dict]]:
    workdir = tempfile.mkdtemp(prefix="bench-synapse-")
    chain_path = os.path.join(workdir, "chain.sqlite")
    chain = LocalChain(chain_path)
    miner, validator = make_wallet(workdir, "miner"), make_wallet(workdir, "validator")
    chain.register(miner)
    chain.register(validator)
    dendrite = build_dendrite(validator)
    results: dict[bool, dict[str, dict]] = {}
    loop = asyncio.new_event_loop()
    ctx = mp.get_context("fork")
    for fast in (True, False):
        port = free_port()
        ready, stop = ctx.Event(), ctx.Event()
        proc = ctx.Process(target=serve, args=(chain_path, workdir, port, fast, ready, stop))
        proc.start()
        try:
            if not ready.wait(30):
                raise RuntimeError("axon did not start")
            chain.serve_axon(miner, ip="127.0.0.1", port=port)
            info = chain.metagraph().axon(chain.uid_of(miner.hotkey.ss58_address))
            results[fast] = loop.run_until_complete(measure(dendrite, info, repeats))
        finally:
            stop.set()
            proc.join(10)
    loop.run_until_complete(dendrite.aclose_session())
    loop.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    results = run(args.repeats)
    print(f"| synapse | response bytes | median ms (fast encoder) | p90 ms | "
          f"median ms (bittensor encoder) | ratio |   (repeats={args.repeats})")
    print("|---|---|---|---|---|---|")
    for name in results[True]:
        fast, slow = results[True][name], results[False][name]
        print(f"| {name} | {fast['bytes']} | {fast['median_ms']:.1f} | {fast['p90_ms']:.1f} | "
              f"{slow['median_ms']:.1f} | {slow['median_ms'] / fast['median_ms']:.2f}x |")


if __name__ == "__main__":
    main()
