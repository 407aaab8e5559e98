"""Contribution audit in a real butterfly all-reduce on loopback: the validator's auxiliary peer
sees what each miner delivered on its shard and holds it against the gathered commitment."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from hivemind_utils.averaging import SwarmAverager
from hivemind_utils.dht import start_dht, visible_maddrs
from template.config import AveragingConfig, DHTConfig
from template.contribution import audit_gather, block_tolerance, commit, gather_digest
from template.miner.adversary import Poisoner
from template.projection import project
from template.proof import SKETCH_DIMS
from template.protocol import MAX_BATCHES, AllReduce
from template.validator.allreduce_round import ContributionRules, judge_contributions

pytestmark = pytest.mark.multiprocess

SHAPES = [(40_000,), (100, 1000), (3000,)]
TOTAL = sum(torch.Size(s).numel() for s in SHAPES)
FAST = AveragingConfig(matchmaking_time=2.0, request_timeout=1.0, min_group_size=2,
                       target_group_size=8, allreduce_timeout=30.0, next_chunk_timeout=5.0)
SEED = 1234
BATCH = 4


@pytest.fixture(scope="module")
def dhts():
    boot = start_dht(DHTConfig(), run_id="contrib")
    nodes = [boot] + [start_dht(DHTConfig(), run_id="contrib", initial_peers=visible_maddrs(boot))
                      for _ in range(3)]
    yield nodes
    for node in reversed(nodes):
        node.shutdown()


def _work(rng: torch.Generator):
    """Two 'batch gradients', their sketches, and the mean the miner sends."""
    batches = [[torch.randn(s, generator=rng) for s in SHAPES] for _ in range(2)]
    sketches = [project(b, seed=SEED, dims=SKETCH_DIMS).tolist() for b in batches]
    mean = [(a + b) / 2 for a, b in zip(*batches, strict=True)]
    return mean, sketches


def _round(dhts, run_id, adversaries):
    """One round of 3 miners (``adversaries[i]`` None = honest) and the auditing validator."""
    rng = torch.Generator().manual_seed(hash(run_id) % 2**31)
    works = [_work(rng) for _ in adversaries]
    miners = [SwarmAverager(dht=d, run_id=run_id, cfg=FAST, part_size_bytes=16_384,
                            tensors=[t.clone() for t in mean])
              for d, (mean, _) in zip(dhts[:3], works, strict=True)]
    aux = SwarmAverager(dht=dhts[3], run_id=run_id, cfg=FAST, part_size_bytes=16_384,
                        auxiliary=True, audit=True,
                        params=[torch.empty(s, device="meta") for s in SHAPES])
    try:
        gathers = []
        for miner, (_, sketches), adversary in zip(miners, works, adversaries, strict=True):
            with miner.get_tensors() as buffers:
                c = commit(buffers, seed=SEED, samples=2 * BATCH, batch_sketches=sketches,
                           dims=SKETCH_DIMS, max_batches=MAX_BATCHES)
                if adversary is not None:
                    c = adversary.contribute(0, list(buffers), c)
            gathers.append(c)
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(m.average, weight=c.samples, gather=gather_digest(c),
                                   timeout=20)
                       for m, c in zip(miners, gathers, strict=True)]
            futures.append(pool.submit(aux.average, weight=0, gather=audit_gather(SEED),
                                       timeout=20))
            results = [f.result() for f in futures]
        assert all(r.ok for r in results), [r.error for r in results]
        bindings = {uid: str(m.peer_id) for uid, m in enumerate(miners)}
        rules = ContributionRules(seed=SEED, batch_size=BATCH,
                                  block_tolerance=block_tolerance("none"), num_values=TOTAL,
                                  proofs={uid: w[1] for uid, w in enumerate(works)})
        replies = {uid: AllReduce(commitment=c.to_text()) for uid, c in enumerate(gathers)}
        return results[3], judge_contributions(results[3], bindings, [0, 1, 2], replies, rules)
    finally:
        for a in [*miners, aux]:
            a.shutdown()


def test_an_honest_round_passes_every_member(dhts):
    aux, verdicts = _round(dhts, "honest", [None, None, None])
    assert set(verdicts) == {0, 1, 2}
    for verdict in verdicts.values():
        assert verdict.ok, verdict
        assert verdict.blocks_audited >= 1
    assert len(aux.delivered) == 3


@pytest.mark.parametrize("variant", ["flip", "noise", "weight", "flip-recommit"])
def test_a_poisoner_is_named_and_only_the_poisoner(dhts, variant):
    poisoner = Poisoner(variant)
    poisoner.rng = random.Random(variant)
    _, verdicts = _round(dhts, f"poison-{variant}", [None, poisoner, None])
    assert verdicts[0].ok and verdicts[2].ok, verdicts
    assert not verdicts[1].ok, verdicts[1]
