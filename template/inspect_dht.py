"""Show a swarm's training state: peers, rounds, checkpoints, scores and weights; or serve it.

    subnet-inspect --initial_peers /ip4/127.0.0.1/tcp/8009/p2p/12D3Koo.. \\
        [--run_id fineweb-gpt2] [--target_batch_size 64] [--json] [--watch SECONDS] \\
        [--netuid 1 --subtensor.network finney | --localchain.path WORKDIR/chain.sqlite] \\
        [--store.dir WORKDIR/checkpoints | --store.kind hub --store.repo_id org/name] \\
        [--workdir WORKDIR] [--serve PORT]

(or ``python scripts/inspect_dht.py ...``: the same program.) ``--serve PORT`` serves a page
on http://127.0.0.1:PORT/ that refreshes itself (:mod:`template.swarm_page`) instead of
printing; ``--json`` prints the same object the page's ``/api/snapshot`` answers
(:class:`template.swarm_snapshot.Snapshot`, schema in docs/swarm.md).

The swarm shown is what miners and validators count: only records whose signing key is bound
on chain (``--subtensor.*``, ``--netuid``; the devnet chain file is ``--localchain.path``) to a
registered hotkey, at an epoch no later than the last checkpoint in the store (``--store.*``)
+ 1, samples capped at the target batch (the reader's admission,
:mod:`template.admission`). Records signed by unbound keys (anyone can sign records with a key
of its own making) and bound records claiming an impossible epoch are listed apart, marked
UNBOUND / IMPLAUSIBLE, and count nowhere. Each counted peer's uid is the one whose hotkey bound
its signing key.

The DHT carries progress only. Round members and the pusher's training loss come from the
checkpoint manifests, held-out losses from the store's evaluations (where it has them),
weights from the chain; per-miner training loss, round seconds and per-sender MB/s, scores
and what validators last did from the files neurons leave in their workdirs (``--workdir``:
miners' ``epochs.jsonl``, validators' ``validator-*.json``). What is missing is said in notes.

A local devnet (`scripts/local_swarm.py`) prints the exact command; its run id is in
`WORKDIR/run_id.txt` (`local-demo`). Without ``--target_batch_size`` the progress percentage
uses the default target of the run id (the launcher's for `local-demo`, else the miners'
``--averaging.target_batch_size`` default) and the table says so.

Joins as a DHT *client* (stores nothing, accepts no connections) with the run's record validators,
so unsigned or malformed records are not shown. A bad or unreachable address, chain or store
exits with status 2 and a one-line error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import hivemind

from hivemind_utils.dht import DHTError, start_dht
from hivemind_utils.swarm_state import AdmissionCache, read_swarm_state
from template.admission import swarm_admission
from template.chain import Chain, ChainError, build_chain
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
from template.swarm_page import SwarmPage, serve_page
from template.swarm_snapshot import (
    ChainView,
    PeerRow,
    RoundRow,
    Snapshot,
    StoreView,
    build_snapshot,
)
from template.swarm_sources import StoreReader, read_chain, read_local

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
    parser.add_argument("--workdir", nargs="*", default=[], metavar="DIR",
                        help="neuron workdirs (or a devnet WORKDIR holding them) to read miners' "
                             "epochs.jsonl (training loss, round timing) and validators' state "
                             "(scores, rounds) from")
    parser.add_argument("--serve", type=int, default=None, metavar="PORT",
                        help="serve a live page on http://127.0.0.1:PORT/ (0: any free port, "
                             "printed) and refresh it every --watch seconds (default 2)")
    parser.add_argument("--startup_timeout", type=float, default=DHTConfig.startup_timeout)
    parser.add_argument("--join_retries", type=int, default=1)
    add_config_flags(parser, CONFIG_SECTIONS)
    args = parser.parse_args(argv)
    try:
        args.config = config_from_sections(args, CONFIG_SECTIONS)
    except ConfigError as err:
        parser.error(str(err))
    if args.serve is not None and not 0 <= args.serve < 65536:
        parser.error(f"--serve: {args.serve} is not a TCP port (0 = any free port)")
    args.interval = args.watch if args.watch > 0 else 2.0
    args.target_given = args.target_batch_size is not None
    if not args.target_given:
        args.target_batch_size = default_target(args.run_id)
    return args


def default_target(run_id: str) -> int:
    """The target batch size the swarm of ``run_id`` uses when nobody set one."""
    return DEFAULT_TARGETS.get(run_id, AveragingConfig.target_batch_size)


_HEADER = (f"{'uid':>4} {'role':<9} {'peer_id':<54} {'hotkey':<50} {'epoch':>5} "
           f"{'samples':>8} {'tok/s':>9} {'loss':>8} {'age s':>6}")


def _row(p: PeerRow, mark: str = "") -> str:
    uid = "-" if p.uid is None else str(p.uid)
    loss = "-" if p.train_loss is None else f"{p.train_loss:.4f}"
    return (f"{uid:>4} {p.role:<9} {p.peer_id:<54} {p.hotkey:<50} {p.epoch:>5} {p.samples:>8} "
            f"{p.tokens_per_second:>9.1f} {loss:>8} {p.age_seconds:>6.1f}"
            + (f"  {mark}" if mark else ""))


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _round_line(r: RoundRow) -> str:
    senders = ", ".join(
        f"{'uid ' + str(s.uid) if s.uid is not None else '?'} "
        + ("failed" if s.failed else "banned" if s.banned else f"{_num(s.mb_per_second, 2)} MB/s")
        for s in r.senders)
    return (f"last round: epoch {r.epoch} -> epoch-{r.epoch + 1}, members "
            f"{list(r.participants)}" + (f" (+{r.unknown_participants} unbound)"
                                         if r.unknown_participants else "")
            + (f", failed {list(r.failed)}" if r.failed else "")
            + f", {_num(r.seconds, 2)} s" + (f", {r.samples} samples" if r.samples else "")
            + (f"; per sender ({r.source}): {senders}" if senders else ""))


def _footer(s: Snapshot) -> list[str]:
    lines = []
    if s.last_round is not None:
        lines.append(_round_line(s.last_round))
    if s.checkpoints:
        c = s.checkpoints[-1]
        lines.append(f"latest checkpoint {c.tag}: train loss {_num(c.train_loss)}, held-out "
                     f"loss {_num(c.heldout_loss)}" + (" FLAGGED" if c.flagged else ""))
    for v in s.validators:
        lines.append(f"validator uid {v.uid} ({v.hotkey}): stake {v.stake:.1f}, weights on "
                     "chain " + (", ".join(f"{u}: {w:.3f}" for u, w in sorted(v.weights.items()))
                                 or "none yet"))
    for st in s.validator_states:
        lines.append(f"validator state {st.name}: last scored epoch "
                     f"{'-' if st.last_scored_epoch is None else st.last_scored_epoch}, rounds "
                     + (", ".join(f"{k} {n}" for k, n in sorted(st.rounds.items())) or "-"))
    return lines


def render(s: Snapshot) -> str:
    """A human table of the counted swarm, what else was read, then the records that count
    nowhere (marked); a plain message when the run id has no records at all."""
    if not (s.peers or s.unbound or s.implausible):
        return "\n".join(s.notes)
    pct = 100.0 * s.samples_accumulated / max(1, s.target_batch_size)
    lines = [
        f"global epoch {s.global_epoch}: {s.samples_accumulated}/"
        f"{s.target_batch_size} samples ({pct:.0f}%), {len(s.peers)} live peers",
        _HEADER, *(_row(p) for p in s.peers),
    ]
    if s.target_source == "default":
        lines.insert(1, f"(target {s.target_batch_size} is the default for run id "
                        f"{s.run_id}; pass --target_batch_size if the swarm uses another)")
    lines += _footer(s) + [f"note: {n}" for n in s.notes]
    if s.unbound:
        lines += ["", f"not counted: {len(s.unbound)} records signed by keys no registered "
                      "hotkey bound on chain", *(_row(p, "UNBOUND") for p in s.unbound)]
    if s.implausible:
        lines += ["", f"not counted: {len(s.implausible)} bound records claiming an "
                      "epoch beyond the last checkpoint + 1",
                  *(_row(p, "IMPLAUSIBLE") for p in s.implausible)]
    return "\n".join(lines)


@dataclass(frozen=True)
class Sources:
    """What the inspector reads besides the DHT: the admission, the chain, the store, files."""

    admission: AdmissionCache
    chain: Chain
    store: StoreReader
    workdirs: tuple[str, ...] = ()


def open_sources(cfg: Config, *, max_samples: int, workdirs: Sequence[str] = ()) -> Sources:
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
    admission = swarm_admission(chain, store, max_samples=max_samples, refresh_interval=0.0)
    return Sources(admission=admission, chain=chain, store=StoreReader(store),
                   workdirs=tuple(workdirs))


def read_snapshot(dht: hivemind.DHT, sources: Sources, *, run_id: str, target_batch_size: int,
                  target_source: str) -> Snapshot:
    """One read of every source, as a :class:`Snapshot` (a chain or store that fails this
    time shows as empty, with a note)."""
    state = read_swarm_state(dht, run_id=run_id, target_batch_size=target_batch_size,
                             admission=sources.admission)
    notes = []
    try:
        chain = read_chain(sources.chain)
    except ChainError as err:
        chain, notes = ChainView(), [f"chain unreadable this time: {err}"]
    try:
        store = sources.store.view()
    except CheckpointError as err:
        store, notes = StoreView(), [*notes, f"checkpoint store unreadable this time: {err}"]
    snapshot = build_snapshot(state, chain=chain, store=store,
                              local=read_local(sources.workdirs), run_id=run_id,
                              now=time.time(), target_source=target_source)
    return dataclasses.replace(snapshot, notes=(*notes, *snapshot.notes))


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops like Ctrl+C: the DHT and the page shut down


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("hivemind").setLevel(logging.ERROR)
    try:
        sources = open_sources(args.config, max_samples=args.target_batch_size,
                               workdirs=args.workdir)
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
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    page, server = None, None
    try:
        if args.serve is not None:
            page = SwarmPage(refresh_interval=args.interval)
            try:
                server = serve_page(page, port=args.serve)
            except OSError as err:  # port taken, or not ours to bind
                print(f"inspect_dht: error: --serve {args.serve}: {err} (pick another port, or "
                      "0 for any free one)", file=sys.stderr)
                return 2
            print(f"swarm page: http://127.0.0.1:{server.server_address[1]}/", flush=True)
        while True:
            snapshot = read_snapshot(
                dht, sources, run_id=args.run_id, target_batch_size=args.target_batch_size,
                target_source="flag" if args.target_given else "default")
            if page is not None:
                page.update(snapshot)
            elif args.json:
                print(json.dumps(snapshot.to_json()), flush=True)
                if not (snapshot.peers or snapshot.unbound or snapshot.implausible):
                    print(f"inspect_dht: no progress records for run id {args.run_id}; "
                          "pass --run_id", file=sys.stderr, flush=True)
            else:
                print(render(snapshot), flush=True)
            if page is None and args.watch <= 0:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        dht.shutdown()
        sources.chain.close()


if __name__ == "__main__":
    sys.exit(main())
