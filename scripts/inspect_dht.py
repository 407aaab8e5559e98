"""Show a swarm's training state: global epoch, progress to the target batch, one row per peer.

    python scripts/inspect_dht.py --initial_peers /ip4/127.0.0.1/tcp/8009/p2p/12D3Koo.. \\
        [--run_id fineweb-gpt2] [--target_batch_size 64] [--json] [--watch SECONDS]

Joins as a DHT *client* (stores nothing, accepts no connections) with the run's record validators,
so unsigned or malformed records are not shown. ``--json`` prints one JSON object per read.
A bad or unreachable address exits with status 2 and a one-line error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from hivemind_utils.dht import DHTError, start_dht
from hivemind_utils.swarm_state import SwarmState, read_swarm_state
from template.config import AveragingConfig, DHTConfig, NeuronConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--initial_peers", nargs="+", required=True, metavar="MADDR",
                        help="multiaddrs of swarm peers, e.g. /ip4/1.2.3.4/tcp/8009/p2p/12D3Koo..")
    parser.add_argument("--run_id", default=NeuronConfig.run_id, help="run to inspect")
    parser.add_argument("--target_batch_size", type=int,
                        default=AveragingConfig.target_batch_size,
                        help="samples per round, to show progress against")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--watch", type=float, default=0.0, metavar="SECONDS",
                        help="refresh every SECONDS until Ctrl+C (0 = once)")
    parser.add_argument("--startup_timeout", type=float, default=DHTConfig.startup_timeout)
    parser.add_argument("--join_retries", type=int, default=1)
    return parser.parse_args(argv)


def render(state: SwarmState) -> str:
    """A human table of the state."""
    pct = 100.0 * state.samples_accumulated / max(1, state.target_batch_size)
    lines = [
        f"global epoch {state.global_epoch}: {state.samples_accumulated}/"
        f"{state.target_batch_size} samples ({pct:.0f}%), {len(state.peers)} live peers",
        f"{'peer_id':<54} {'hotkey':<50} {'epoch':>5} {'samples':>8} {'tok/s':>9} {'age s':>6}",
    ]
    for p in state.peers:
        lines.append(f"{p.peer_id:<54} {p.hotkey:<50} {p.epoch:>5} {p.samples:>8} "
                     f"{p.tokens_per_second:>9.1f} {p.age_seconds:>6.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("hivemind").setLevel(logging.ERROR)
    cfg = DHTConfig(startup_timeout=args.startup_timeout, join_retries=max(1, args.join_retries))
    try:
        dht = start_dht(cfg, run_id=args.run_id, initial_peers=args.initial_peers,
                        client_mode=True)
    except DHTError as err:
        print(f"inspect_dht: error: {err}", file=sys.stderr)
        return 2
    try:
        while True:
            state = read_swarm_state(dht, run_id=args.run_id,
                                     target_batch_size=args.target_batch_size)
            print(json.dumps(state.to_json()) if args.json else render(state), flush=True)
            if args.watch <= 0:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
    finally:
        dht.shutdown()


if __name__ == "__main__":
    sys.exit(main())
