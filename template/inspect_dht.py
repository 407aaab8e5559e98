"""Show a swarm's training state: global epoch, progress to the target batch, one row per peer.

    subnet-inspect --initial_peers /ip4/127.0.0.1/tcp/8009/p2p/12D3Koo.. \\
        [--run_id fineweb-gpt2] [--target_batch_size 64] [--json] [--watch SECONDS] \\
        [--netuid 1 --subtensor.network finney | --localchain.path WORKDIR/chain.sqlite] \\
        [--store.dir WORKDIR/checkpoints | --store.kind hub --store.repo_id org/name]

(or ``python scripts/inspect_dht.py ...``: the same program.)

The swarm shown is what miners and validators count: only records whose signing key is bound
on chain (``--subtensor.*``, ``--netuid``; the devnet chain file is ``--localchain.path``) to a
registered hotkey, at an epoch no later than the last checkpoint in the store (``--store.*``)
+ 1, samples capped at the target batch (the reader's admission,
:mod:`template.admission`). Records signed by unbound keys (anyone can sign records with a key
of its own making) and bound records claiming an impossible epoch are listed apart, marked
UNBOUND / IMPLAUSIBLE, and count nowhere.

A local devnet (`scripts/local_swarm.py`) prints the exact command; its run id is in
`WORKDIR/run_id.txt` (`local-demo`). Without ``--target_batch_size`` the progress percentage
uses the default target of the run id (the launcher's for `local-demo`, else the miners'
``--averaging.target_batch_size`` default) and the table says so.

Joins as a DHT *client* (stores nothing, accepts no connections) with the run's record validators,
so unsigned or malformed records are not shown. ``--json`` prints one JSON object per read:
``peers`` (counted), ``unbound`` and ``implausible`` (not counted). A bad or unreachable
address, chain or store exits with status 2 and a one-line error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from hivemind_utils.dht import DHTError, start_dht
from hivemind_utils.swarm_state import PeerProgress, SwarmState, read_swarm_state
from template.admission import swarm_admission
from template.chain import ChainError, build_chain
from template.checkpoints import CheckpointError, build_store
from template.config import (
    AveragingConfig,
    Config,
    ConfigError,
    DHTConfig,
    NeuronConfig,
    add_config_flags,
    config_from_sections,
)
from template.localnet import RUN_ID as LOCAL_RUN_ID
from template.localnet import TARGET_BATCH_SIZE as LOCAL_TARGET_BATCH_SIZE

DEFAULT_TARGETS = {LOCAL_RUN_ID: LOCAL_TARGET_BATCH_SIZE}
"""Target batch size by run id, for runs whose target is known here (the launcher's)."""
CONFIG_SECTIONS = ("netuid", "subtensor", "localchain", "store")
"""The neurons' flags the inspector takes: where the chain and the checkpoint store are."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--initial_peers", nargs="+", required=True, metavar="MADDR",
                        help="multiaddrs of swarm peers, e.g. /ip4/1.2.3.4/tcp/8009/p2p/12D3Koo..")
    parser.add_argument("--run_id", default=NeuronConfig.run_id, help="run to inspect")
    parser.add_argument("--target_batch_size", type=int, default=None,
                        help="samples per round, to show progress against (default: the run "
                             f"id's known target, {LOCAL_TARGET_BATCH_SIZE} for "
                             f"{LOCAL_RUN_ID}, else {AveragingConfig.target_batch_size})")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--watch", type=float, default=0.0, metavar="SECONDS",
                        help="refresh every SECONDS until Ctrl+C (0 = once)")
    parser.add_argument("--startup_timeout", type=float, default=DHTConfig.startup_timeout)
    parser.add_argument("--join_retries", type=int, default=1)
    add_config_flags(parser, CONFIG_SECTIONS)
    args = parser.parse_args(argv)
    try:
        args.config = config_from_sections(args, CONFIG_SECTIONS)
    except ConfigError as err:
        parser.error(str(err))
    args.target_given = args.target_batch_size is not None
    if not args.target_given:
        args.target_batch_size = default_target(args.run_id)
    return args


def default_target(run_id: str) -> int:
    """The target batch size the swarm of ``run_id`` uses when nobody set one."""
    return DEFAULT_TARGETS.get(run_id, AveragingConfig.target_batch_size)


_HEADER = f"{'peer_id':<54} {'hotkey':<50} {'epoch':>5} {'samples':>8} {'tok/s':>9} {'age s':>6}"


def _row(p: PeerProgress, mark: str = "") -> str:
    return (f"{p.peer_id:<54} {p.hotkey:<50} {p.epoch:>5} {p.samples:>8} "
            f"{p.tokens_per_second:>9.1f} {p.age_seconds:>6.1f}" + (f"  {mark}" if mark else ""))


def render(state: SwarmState, *, run_id: str = "", target_given: bool = True) -> str:
    """A human table of the counted swarm, then the records that count nowhere (marked); a
    plain message when ``run_id`` has no records at all."""
    if not (state.peers or state.unbound or state.implausible_peers):
        return (f"no progress records for run id {run_id or '?'}"
                + (f" ({state.rejected} refused)" if state.rejected else "")
                + "\nis the swarm up and the run id right? pass --run_id (a local devnet's "
                  "is in WORKDIR/run_id.txt)")
    pct = 100.0 * state.samples_accumulated / max(1, state.target_batch_size)
    lines = [
        f"global epoch {state.global_epoch}: {state.samples_accumulated}/"
        f"{state.target_batch_size} samples ({pct:.0f}%), {len(state.peers)} live peers",
        _HEADER, *(_row(p) for p in state.peers),
    ]
    if not state.peers:
        lines.insert(1, "no records signed by a key bound on chain to a registered hotkey: "
                        "are --netuid, --subtensor.network / --localchain.path right?")
    if not target_given:
        lines.insert(1, f"(target {state.target_batch_size} is the default for run id "
                        f"{run_id}; pass --target_batch_size if the swarm uses another)")
    if state.unbound:
        lines += ["", f"not counted: {len(state.unbound)} records signed by keys no registered "
                      "hotkey bound on chain", *(_row(p, "UNBOUND") for p in state.unbound)]
    if state.implausible_peers:
        lines += ["", f"not counted: {len(state.implausible_peers)} bound records claiming an "
                      "epoch beyond the last checkpoint + 1",
                  *(_row(p, "IMPLAUSIBLE") for p in state.implausible_peers)]
    return "\n".join(lines)


def open_admission(cfg: Config, *, max_samples: int):
    """The neurons' admission over the chain and store ``cfg`` names (ChainError,
    CheckpointError or OSError when either cannot be opened)."""
    chain = build_chain(cfg, reader=True)
    if cfg.store.kind == "local" and not Path(cfg.store.dir).expanduser().is_dir():
        raise CheckpointError(f"--store.dir: no checkpoint store at {cfg.store.dir} (a local "
                              "swarm's is WORKDIR/checkpoints)")
    store = build_store(cfg.store)
    if chain.metagraph().neurons == ():
        print(f"inspect_dht: warning: netuid {cfg.netuid} has no registered hotkeys: every "
              "record will show as UNBOUND (is --netuid right?)", file=sys.stderr, flush=True)
    return swarm_admission(chain, store, max_samples=max_samples, refresh_interval=0.0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("hivemind").setLevel(logging.ERROR)
    try:
        admission = open_admission(args.config, max_samples=args.target_batch_size)
    except (ChainError, CheckpointError, OSError) as err:
        print(f"inspect_dht: error: {err}", file=sys.stderr)
        return 2
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
                                     target_batch_size=args.target_batch_size,
                                     admission=admission)
            if args.json:
                print(json.dumps(state.to_json()), flush=True)
                if not state.peers:
                    print(f"inspect_dht: no progress records for run id {args.run_id}; "
                          "pass --run_id", file=sys.stderr, flush=True)
            else:
                print(render(state, run_id=args.run_id, target_given=args.target_given),
                      flush=True)
            if args.watch <= 0:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
    finally:
        dht.shutdown()


if __name__ == "__main__":
    sys.exit(main())
