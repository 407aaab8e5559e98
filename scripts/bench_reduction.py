"""Result integrity: honest refusals, corrupt reducers caught, and what the checks cost.

    python scripts/bench_reduction.py --rounds 12 --clip_factor 0
    python scripts/bench_reduction.py --rounds 12 --clip_factor 1

Runs real butterfly all-reduce rounds on 127.0.0.1: 3 miners averaging the tiny preset's
gradients (2 batches of their own per round) and the validator's auxiliary peer. Rounds
alternate between checked ones (``integrity=``: every reducer serves its report, every member
checks every result before it counts, the validator's peer fetches the reports) and plain ones,
so the cost is measured side by side. Every ``--corrupt_every``-th checked round the third
miner is a corrupt reducer (``reducer-<variant>``, the variants of ``CORRUPTIONS`` in turn, a
random strength each round).
Prints one JSON line with:

- honest checked rounds and how many some member refused (the false-positive rate),
- corrupt rounds, how many every honest member refused, and how many the validator gated
  (:func:`template.reduction.judge_reports` on the members' refusals and the reports), by
  variant,
- median round seconds checked and plain, and the median report size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import torch
from bench_contribution import BATCH, _gradients  # same miners' work as the audit benchmark

from hivemind_utils.averaging import SwarmAverager
from hivemind_utils.dht import start_dht, visible_maddrs
from template.config import CORRUPTIONS, AveragingConfig, DHTConfig, ModelConfig
from template.contribution import Commitment, block_tolerance, commit, gather_digest
from template.miner.adversary import CorruptReducer
from template.model import build_model
from template.proof import SKETCH_DIMS, sketch_seed
from template.protocol import MAX_BATCHES
from template.reduction import OwnPart, RoundIntegrity, judge_reports


def _integrity(checked: bool, seed: int, tolerance: float, peer: str | None = None,
               commitment: Commitment | None = None) -> RoundIntegrity | None:
    if not checked:
        return None
    own = None if peer is None or commitment is None else OwnPart(
        peer=peer, blocks=commitment.blocks, weight=float(commitment.samples))
    return RoundIntegrity(seed=seed, tolerance=tolerance, own=own)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12, help="checked rounds (as many plain)")
    parser.add_argument("--corrupt_every", type=int, default=2)
    parser.add_argument("--clip_factor", type=float, default=1.0)
    parser.add_argument("--compression", default="none", choices=("none", "fp16", "8bit"))
    args = parser.parse_args()

    cfg = AveragingConfig(matchmaking_time=2.0, request_timeout=1.0, min_group_size=2,
                          target_group_size=8, allreduce_timeout=60.0, next_chunk_timeout=10.0,
                          compression=args.compression, clip_factor=args.clip_factor)
    tolerance = block_tolerance(args.compression)
    model = build_model(ModelConfig(preset="tiny"), seed=0)
    shapes = [tuple(p.shape) for p in model.parameters()]
    boot = start_dht(DHTConfig(), run_id="bench")
    dhts = [boot] + [start_dht(DHTConfig(), run_id="bench", initial_peers=visible_maddrs(boot))
                     for _ in range(3 + len(CORRUPTIONS))]  # miners, aux, one per variant
    honest = [SwarmAverager(dht=d, run_id="bench", cfg=cfg, params=model.parameters())
              for d in dhts[:3]]
    aux = SwarmAverager(dht=dhts[3], run_id="bench", cfg=cfg, auxiliary=True, audit=True,
                        params=[torch.empty(s, device="meta") for s in shapes])
    cheaters = {}
    for i, (variant, dht) in enumerate(zip(CORRUPTIONS, dhts[4:], strict=True)):
        hook = CorruptReducer(variant).hook
        hook.rng.seed(i)  # the strength of each round, drawn in the averaging process
        cheaters[variant] = SwarmAverager(dht=dht, run_id="bench", cfg=cfg,
                                          params=model.parameters(), corrupt=hook)
    gen = torch.Generator().manual_seed(0)
    clean = clean_refused = bad = bad_refused = bad_gated = 0
    variants: Counter[str] = Counter()
    missed: Counter[str] = Counter()
    checked_s, plain_s, report_bytes, problems = [], [], [], []
    try:
        for r in range(2 * args.rounds):
            checked, epoch = r % 2 == 0, r
            seed = sketch_seed("bench", epoch)
            corrupt_round = checked and (r // 2) % args.corrupt_every == 1
            variant = CORRUPTIONS[bad % len(CORRUPTIONS)]
            miners = [*honest[:2], cheaters[variant] if corrupt_round else honest[2]]
            commitments = []
            for miner in miners:
                grads, sketches = _gradients(model, seed, gen)
                with miner.get_tensors() as buffers:
                    for buf, g in zip(buffers, grads, strict=True):
                        buf.copy_(g)
                    commitments.append(commit(buffers, seed=seed, samples=2 * BATCH,
                                              batch_sketches=sketches, dims=SKETCH_DIMS,
                                              max_batches=MAX_BATCHES))
            peers = [str(m.peer_id) for m in miners]
            with ThreadPoolExecutor(4) as pool:
                started = time.perf_counter()
                futures = [pool.submit(m.average, weight=c.samples, gather=gather_digest(c),
                                       epoch=epoch, timeout=30, integrity=_integrity(
                                           checked, seed, tolerance, p, c))
                           for m, p, c in zip(miners, peers, commitments, strict=True)]
                aux_result = pool.submit(aux.average, weight=0, epoch=epoch, timeout=30,
                                         integrity=_integrity(checked, seed, tolerance)).result()
                results = [f.result() for f in futures]
                seconds = time.perf_counter() - started
            if not aux_result.ok or any(not x.ok and not x.accused for x in results):
                problems.append(f"round {r}: {aux_result.error or [x.error for x in results]}")
                continue
            if not checked:
                plain_s.append(seconds)
                continue
            report_bytes += [len(rep.to_bytes()) for rep in aux_result.reports.values()]
            refused = [bool(x.accused) for x in results[:2]]
            if not corrupt_round:
                checked_s.append(seconds)
                clean += 1
                clean_refused += any(refused) or bool(results[2].accused)
                if any(x.accused for x in results):
                    problems.append(f"round {r}: honest refused {[x.error for x in results]}")
                continue
            variants[variant] += 1
            bad += 1
            bad_refused += all(refused)
            gated = judge_reports(aux_result.reports, dict(zip(peers, commitments, strict=True)),
                                  {p: list(x.accused) for p, x in zip(peers, results,
                                                                      strict=True)},
                                  members=list(aux_result.participants), tolerance=tolerance)
            bad_gated += set(gated) == {peers[2]}
            if set(gated) != {peers[2]}:
                missed[variant] += 1
                problems.append(f"round {r}: {variant} not gated ({gated})")
    finally:
        for averager in [*honest, *cheaters.values(), aux]:
            averager.shutdown()
        for node in reversed(dhts):
            node.shutdown()
    print(json.dumps({
        "compression": args.compression, "clip_factor": args.clip_factor,
        "honest_rounds": clean, "honest_rounds_refused": clean_refused,
        "corrupt_rounds": bad, "refused_by_every_honest_member": bad_refused,
        "gated_by_the_validator": bad_gated, "variants": dict(variants),
        "missed": dict(missed),
        "round_s_median_checked": round(statistics.median(checked_s), 3) if checked_s else None,
        "round_s_median_plain": round(statistics.median(plain_s), 3) if plain_s else None,
        "report_bytes_median": statistics.median(report_bytes) if report_bytes else None,
        "problems": problems[:10],
    }))


if __name__ == "__main__":
    main()
