"""Contribution audit: honest false positives, poison detection and the validator's extra cost.

    python scripts/bench_contribution.py --rounds 20 --compression none

Runs real butterfly all-reduce rounds on 127.0.0.1: 3 miners averaging the tiny preset's
gradients (each miner trains 2 batches of its own per round) and the validator's auxiliary peer.
Rounds alternate between the auditing peer (``audit=True``, what the validator runs) and a
plain one, so the audit's cost is measured side by side. Every ``--poison_every``-th audited
round one miner is a `poisoner` (random variant and strength). Prints one JSON line with:

- honest verdicts and how many failed (the false-positive rate),
- poisoned rounds and how many the audit caught (a `partial` poison outside the validator's
  shard is, by design, only caught when it lands there),
- median commit time per miner, median round seconds with and without the audit, the
  commitment's size in the AllReduce answer and in the gathered metadata.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import msgpack
import torch

from hivemind_utils.averaging import SwarmAverager
from hivemind_utils.dht import start_dht, visible_maddrs
from template.config import AveragingConfig, DHTConfig, ModelConfig
from template.contribution import audit_gather, block_tolerance, commit, gather_digest
from template.miner.adversary import Poisoner
from template.model import build_model, count_parameters
from template.proof import SKETCH_DIMS, SketchRecorder, sketch_seed
from template.protocol import MAX_BATCHES, AllReduce
from template.training import accumulate, mean_gradient
from template.validator.allreduce_round import ContributionRules, judge_contributions

BATCH, SEQ = 4, 64


def _gradients(model: torch.nn.Module, seed: int, gen: torch.Generator):
    model.zero_grad(set_to_none=True)
    recorder = SketchRecorder(seed=seed)
    sketches = []
    for _ in range(2):
        accumulate(model, torch.randint(0, 50257, (BATCH, SEQ), generator=gen))
        sketches.append(recorder.record(model))
    mean_gradient(model, 2)
    return [p.grad.detach().clone() for p in model.parameters()], sketches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="audited rounds (as many plain)")
    parser.add_argument("--poison_every", type=int, default=3)
    parser.add_argument("--compression", default="none", choices=("none", "fp16", "8bit"))
    args = parser.parse_args()

    cfg = AveragingConfig(matchmaking_time=2.0, request_timeout=1.0, min_group_size=2,
                          target_group_size=8, allreduce_timeout=60.0, next_chunk_timeout=10.0,
                          compression=args.compression)
    model = build_model(ModelConfig(preset="tiny"), seed=0)
    shapes = [tuple(p.shape) for p in model.parameters()]
    boot = start_dht(DHTConfig(), run_id="bench")
    dhts = [boot] + [start_dht(DHTConfig(), run_id="bench", initial_peers=visible_maddrs(boot))
                     for _ in range(4)]  # miners, the auditing peer, the plain peer
    miners = [SwarmAverager(dht=d, run_id="bench", cfg=cfg, params=model.parameters())
              for d in dhts[:3]]
    auditor = SwarmAverager(dht=dhts[3], run_id="bench", cfg=cfg, auxiliary=True, audit=True,
                            params=[torch.empty(s, device="meta") for s in shapes])
    plain = SwarmAverager(dht=dhts[4], run_id="bench", cfg=cfg, auxiliary=True,
                          params=[torch.empty(s, device="meta") for s in shapes])
    gen, rng = torch.Generator().manual_seed(0), random.Random(0)
    honest = honest_failed = poisoned = caught = 0
    commit_s, audited_s, plain_s, sizes, problems, kinds = [], [], [], [], [], []
    try:
        for r in range(2 * args.rounds):
            audit = r % 2 == 0
            epoch = r
            seed = sketch_seed("bench", epoch)
            cheater = (rng.randrange(3) if audit and (r // 2) % args.poison_every == 1
                       else None)
            commitments, proofs = [], {}
            for uid, miner in enumerate(miners):
                grads, sketches = _gradients(model, seed, gen)
                with miner.get_tensors() as buffers:
                    for buf, g in zip(buffers, grads, strict=True):
                        buf.copy_(g)
                    started = time.perf_counter()
                    c = commit(buffers, seed=seed, samples=2 * BATCH, batch_sketches=sketches,
                               dims=SKETCH_DIMS, max_batches=MAX_BATCHES)
                    commit_s.append(time.perf_counter() - started)
                    if uid == cheater:
                        poisoner = Poisoner()
                        poisoner.rng.seed(r)
                        c = poisoner.contribute(epoch, list(buffers), c)
                        kinds.append(poisoner.last[0])
                commitments.append(c)
                proofs[uid] = sketches
            aux = auditor if audit else plain
            with ThreadPoolExecutor(4) as pool:
                futures = [pool.submit(m.average, weight=c.samples, gather=gather_digest(c),
                                       epoch=epoch, timeout=30)
                           for m, c in zip(miners, commitments, strict=True)]
                started = time.perf_counter()
                aux_result = pool.submit(aux.average, weight=0, epoch=epoch, timeout=30,
                                         gather=audit_gather(seed)).result()
                seconds = time.perf_counter() - started
                results = [f.result() for f in futures]
            if not (aux_result.ok and all(x.ok for x in results)):
                problems.append(f"round {r}: {aux_result.error or [x.error for x in results]}")
                continue
            (audited_s if audit else plain_s).append(seconds)
            if not audit:
                continue
            replies = {u: AllReduce(commitment=c.to_text()) for u, c in enumerate(commitments)}
            sizes.append(len(replies[0].commitment))
            rules = ContributionRules(seed=seed, batch_size=BATCH,
                                      block_tolerance=block_tolerance(args.compression),
                                      num_values=count_parameters(model), proofs=proofs)
            bindings = {u: str(m.peer_id) for u, m in enumerate(miners)}
            verdicts = judge_contributions(aux_result, bindings, [0, 1, 2], replies, rules)
            for uid, verdict in verdicts.items():
                if uid == cheater:
                    poisoned += 1
                    caught += not verdict.ok
                    if verdict.ok:
                        problems.append(f"round {r}: {kinds[-1]} poison not caught on this shard")
                else:
                    honest += 1
                    honest_failed += not verdict.ok
                    if not verdict.ok:
                        problems.append(f"round {r} uid {uid}: {verdict.problem}")
    finally:
        for averager in [*miners, auditor, plain]:
            averager.shutdown()
        for node in reversed(dhts):
            node.shutdown()
    print(json.dumps({
        "compression": args.compression, "audited_rounds": len(audited_s),
        "honest_verdicts": honest, "honest_failed": honest_failed,
        "poisoned_rounds": poisoned, "poisons_caught": caught,
        "commit_ms_median": round(1e3 * statistics.median(commit_s), 2),
        "round_s_median_audited": round(statistics.median(audited_s), 3) if audited_s else None,
        "round_s_median_plain": round(statistics.median(plain_s), 3) if plain_s else None,
        "commitment_b64_chars": statistics.median(sizes) if sizes else None,
        "gathered_bytes": len(msgpack.packb(gather_digest(commitments[0]), use_bin_type=True)),
        "problems": problems[:10],
    }))


if __name__ == "__main__":
    main()
