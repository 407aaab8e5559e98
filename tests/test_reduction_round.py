"""Result integrity in a real butterfly all-reduce on loopback: every reducer serves a report of
what it received, every member checks what came back before the round counts, and a reducer
that returns a wrong average is refused by the members and named (template/reduction.py)."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from hivemind_utils.averaging import SwarmAverager
from hivemind_utils.dht import start_dht, visible_maddrs
from template.config import CORRUPTIONS, AveragingConfig, DHTConfig
from template.contribution import block_ranges, block_tolerance, commit, gather_digest
from template.miner.adversary import CorruptReducer
from template.proof import SKETCH_DIMS
from template.protocol import MAX_BATCHES
from template.reduction import OwnPart, RoundIntegrity, judge_reports

pytestmark = pytest.mark.multiprocess

SHAPES = [(60_000,), (100, 1000), (3000,)]
FAST = AveragingConfig(matchmaking_time=2.0, request_timeout=1.0, min_group_size=2,
                       target_group_size=8, allreduce_timeout=30.0, next_chunk_timeout=5.0)
SEED = 4321
TOL = block_tolerance("none")


@pytest.fixture(scope="module")
def dhts():
    boot = start_dht(DHTConfig(), run_id="reduce")
    nodes = [boot] + [start_dht(DHTConfig(), run_id="reduce", initial_peers=visible_maddrs(boot))
                      for _ in range(3)]
    yield nodes
    for node in reversed(nodes):
        node.shutdown()


def _round(dhts, run_id, corrupt=None, *, clip_factor=0.0):
    """3 miners (miner 0 reduces with ``corrupt``) and the validator's auxiliary peer."""
    rng = torch.Generator().manual_seed(sum(map(ord, run_id)))
    cfg = AveragingConfig(**{**FAST.__dict__, "clip_factor": clip_factor})
    grads = [[torch.randn(s, generator=rng) + 0.5 for s in SHAPES] for _ in range(3)]
    miners = [SwarmAverager(dht=d, run_id=run_id, cfg=cfg, part_size_bytes=16_384,
                            tensors=[t.clone() for t in g], corrupt=corrupt if i == 0 else None)
              for i, (d, g) in enumerate(zip(dhts[:3], grads, strict=True))]
    aux = SwarmAverager(dht=dhts[3], run_id=run_id, cfg=cfg, part_size_bytes=16_384,
                        auxiliary=True, audit=True,
                        params=[torch.empty(s, device="meta") for s in SHAPES])
    try:
        commitments = []
        for miner in miners:
            with miner.get_tensors() as buffers:
                commitments.append(commit(buffers, seed=SEED, samples=8,
                                          batch_sketches=[[0.0] * SKETCH_DIMS], dims=SKETCH_DIMS,
                                          max_batches=MAX_BATCHES))
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(
                m.average, weight=c.samples, gather=gather_digest(c), timeout=20,
                integrity=RoundIntegrity(seed=SEED, tolerance=TOL, own=OwnPart(
                    peer=str(m.peer_id), blocks=c.blocks, weight=float(c.samples))))
                for m, c in zip(miners, commitments, strict=True)]
            futures.append(pool.submit(aux.average, weight=0, timeout=20,
                                       integrity=RoundIntegrity(seed=SEED, tolerance=TOL)))
            results = [f.result() for f in futures]
        with miners[1].get_tensors() as buffers:
            averaged = [b.clone() for b in buffers]
        peers = [str(m.peer_id) for m in miners]
        return results, peers, commitments, grads, averaged
    finally:
        for a in [*miners, aux]:
            a.shutdown()


def test_an_honest_round_passes_every_check_and_every_reducer_reports(dhts):
    results, peers, commitments, grads, averaged = _round(dhts, "honest-reduce")
    assert all(r.ok and r.complete and not r.accused for r in results), [r.error for r in results]
    expected = [sum(g[i] for g in grads) / 3 for i in range(len(SHAPES))]
    for got, want in zip(averaged, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    aux = results[3]
    aux_members = list(aux.participants)  # the validator's peer sends (empty) parts too
    assert set(aux.reports) == set(aux.participants), "every reducer's report was fetched"
    blocks = len(block_ranges(sum(torch.Size(s).numel() for s in SHAPES)))
    # every block but those straddling two of the 4 shards is audited by its reducer
    assert sum(len(r.blocks) for r in aux.reports.values()) >= blocks - 3
    gated = judge_reports(aux.reports, dict(zip(peers, commitments, strict=True)),
                          {p: [] for p in peers}, members=aux_members, tolerance=TOL)
    assert gated == {}


def test_an_honest_clipped_round_passes(dhts):
    results, *_ = _round(dhts, "honest-clip", clip_factor=1.0)
    assert all(r.ok and not r.accused for r in results), [r.error for r in results]


@pytest.mark.parametrize("variant", CORRUPTIONS)
def test_a_corrupt_reducer_is_refused_by_every_member_and_gated(dhts, variant):
    corrupt = CorruptReducer(variant)
    corrupt.hook.rng = random.Random(variant)
    results, peers, commitments, *_ = _round(dhts, f"corrupt-{variant}", corrupt.hook)
    bad = peers[0]
    for honest in results[1:3]:
        assert not honest.ok, "an honest member applied a corrupted result"
        assert set(honest.accused) == {bad}, honest.accused
    accusations = {p: list(r.accused) for p, r in zip(peers, results, strict=False)}
    aux_members = list(results[3].participants)
    gated = judge_reports(results[3].reports, dict(zip(peers, commitments, strict=True)),
                          accusations, members=aux_members, tolerance=TOL)
    assert set(gated) == {bad}, gated
