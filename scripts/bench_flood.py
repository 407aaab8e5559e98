"""Median IsAlive/Train latency of a miner's Axon with and without an AllReduce flood.

One registered, stakeless hotkey sends ``--floods`` concurrent AllReduce requests (each held
``--round_seconds`` by a sleeping handler, as a real round holds its thread) while a validator
with a permit measures IsAlive and Train round trips. Runs the devnet policy (any registered
caller; the round gate admits one round per hotkey) and the production policy (permit or
--blacklist.min_stake). Everything on 127.0.0.1, offline.

    python scripts/bench_flood.py --floods 16 --pings 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HOME", tempfile.mkdtemp(prefix="bench-flood-home-"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bittensor as bt  # noqa: E402

from template import protocol as P  # noqa: E402
from template.chain.local import LocalChain  # noqa: E402
from template.chain.wallets import create_wallet  # noqa: E402
from template.config import BlacklistConfig  # noqa: E402
from template.transport import (  # noqa: E402
    CallerPolicy,
    MetagraphCache,
    build_axon,
    build_dendrite,
    free_port,
    start_axon,
)

PEER = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"


def handlers(round_seconds: float) -> dict[type[bt.Synapse], object]:
    def alive(synapse: P.IsAlive) -> P.IsAlive:
        synapse.alive, synapse.peer_id = True, PEER
        return synapse

    def train(synapse: P.Train) -> P.Train:
        synapse.peer_id, synapse.error = PEER, "no batch trained yet"
        return synapse

    def allreduce(synapse: P.AllReduce) -> P.AllReduce:
        time.sleep(round_seconds)
        synapse.success = True
        return synapse

    return {P.IsAlive: alive, P.Train: train, P.AllReduce: allreduce}


async def measure(axon: bt.Axon, validator: bt.Wallet, flooder: bt.Wallet, *, floods: int,
                  pings: int, round_seconds: float) -> dict[str, object]:
    info = bt.AxonInfo(version=1, ip="127.0.0.1", port=axon.port, ip_type=4,
                       hotkey=axon.wallet.hotkey.ss58_address,
                       coldkey=axon.wallet.coldkeypub.ss58_address)
    dendrite = build_dendrite(validator)
    flood_dendrites = [build_dendrite(flooder) for _ in range(floods)]

    async def timed(d: bt.Dendrite, syn: bt.Synapse) -> tuple[bt.Synapse, float]:
        start = time.perf_counter()
        reply = await d.call(info, syn, timeout=round_seconds + 30, deserialize=False)
        return reply, time.perf_counter() - start

    async def probe() -> dict[str, float]:
        out = {}
        for kind, make in (("IsAlive", P.IsAlive), ("Train", lambda: P.Train(epoch=1, nonce=1))):
            times = [(await timed(dendrite, make()))[1] for _ in range(pings)]
            out[kind] = statistics.median(times) * 1e3
        return out

    try:
        quiet = await probe()
        flood = [asyncio.ensure_future(timed(d, P.AllReduce(epoch=1, round_id=f"f{i}")))
                 for i, d in enumerate(flood_dendrites)]
        await asyncio.sleep(0.2)
        loud = await probe()
        results = await asyncio.gather(*flood)
    finally:
        for d in [dendrite, *flood_dendrites]:
            await d.aclose_session()
    codes = Counter(r.dendrite.status_code for r, _ in results)
    refusals = [s for r, s in results if r.dendrite.status_code != 200]
    return dict(quiet=quiet, flood=loud, codes=dict(codes),
                refusal_ms=statistics.median(refusals) * 1e3 if refusals else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--floods", type=int, default=16)
    parser.add_argument("--pings", type=int, default=20)
    parser.add_argument("--round_seconds", type=float, default=5.0)
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    chain = LocalChain(path / "chain.sqlite")
    wallets = {n: create_wallet(path, n) for n in ("miner", "validator", "flooder")}
    for wallet in wallets.values():
        chain.register(wallet)
    chain.add_stake(wallets["validator"].hotkey.ss58_address, 100)
    cache = MetagraphCache(chain, refresh_interval=600)
    for mode, local in (("devnet", True), ("production", False)):
        axon = start_axon(build_axon(
            wallet=wallets["miner"], handlers=handlers(args.round_seconds), graph=cache.get,
            port=free_port(), policy=CallerPolicy.from_config(BlacklistConfig(),
                                                              local_devnet=local)))
        try:
            result = asyncio.run(measure(axon, wallets["validator"], wallets["flooder"],
                                         floods=args.floods, pings=args.pings,
                                         round_seconds=args.round_seconds))
        finally:
            axon.stop()
        q, f = result["quiet"], result["flood"]
        print(f"{mode:10s} IsAlive median {q['IsAlive']:.1f} ms quiet, {f['IsAlive']:.1f} ms "
              f"flooded | Train {q['Train']:.1f} ms quiet, {f['Train']:.1f} ms flooded | "
              f"flood replies {result['codes']}, median refusal {result['refusal_ms']:.1f} ms")


if __name__ == "__main__":
    main()
