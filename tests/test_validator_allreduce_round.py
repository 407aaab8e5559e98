"""AllReduce rounds: the trigger and the judge (literal values), and one real round on loopback.

The real round: three miner Axons whose AllReduce handler joins a real ``SwarmAverager`` round
(small tensors standing in for gradients) and reports the fingerprint of what it averaged, a
fourth miner that never joins, and the validator's auxiliary averager in the same group. One
miner lies about its post-step fingerprint. The canonical fingerprint is the exact weighted mean.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from hivemind_utils.averaging import SwarmAverager
from hivemind_utils.dht import start_dht, visible_maddrs
from hivemind_utils.round_stats import AveragingResult, SenderStats
from hivemind_utils.swarm_state import PeerProgress, SwarmState
from template.chain.local import LocalChain
from template.chain.wallets import create_wallet
from template.config import AveragingConfig, DHTConfig
from template.consensus import HONEST_SPREAD, consensus_tolerance
from template.model import fingerprint
from template.protocol import AllReduce, Reason
from template.transport import MetagraphCache, build_axon, build_dendrite, free_port, start_axon
from template.validator.allreduce_round import (
    AllReduceOutcome,
    Canonical,
    ContributionRules,
    allreduce_round,
    choose_reference,
    judge_reductions,
    judge_round,
    live_participants,
    ready_for_round,
)
from template.validator.epoch import EpochRecord, epoch_scores

pytestmark = pytest.mark.multiprocess

P = ["QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
     "QmQ7TnVMMwpLuoyGMqNg8o3sKMKZt8DmTB1Eo3BtNE4W7Z",
     "QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN",
     "QmbLHAnMoJPWSCR5Zhtx6BHJX9KiKNN6tpvbUcqanj75Nb",
     "QmcZf59bWwK5XFi76CZX8cbJ4BhTzzA3gU1ZjYZcYW3dwt"]
TOL = 1e-4


def _peer(peer_id, epoch, samples, finished=False):
    return PeerProgress(peer_id=peer_id, hotkey="hk", epoch=epoch, samples=samples,
                        tokens_per_second=1.0, age_seconds=0.0, finished=finished)


def test_trigger_waits_for_the_target_batch_or_a_stalled_swarm():
    peers = [_peer(P[0], 3, 40), _peer(P[1], 3, 30), _peer(P[2], 2, 500)]
    state = SwarmState(global_epoch=3, target_batch_size=64, samples_accumulated=70, peers=peers)
    assert ready_for_round(state, min_peers=2, idle_seconds=0, patience=60)
    assert not ready_for_round(state, min_peers=3, idle_seconds=0, patience=60)  # a straggler
    short = SwarmState(global_epoch=3, target_batch_size=640, samples_accumulated=70,
                       peers=peers)
    assert not ready_for_round(short, min_peers=2, idle_seconds=10, patience=60)
    assert ready_for_round(short, min_peers=2, idle_seconds=61, patience=60)
    done = SwarmState(global_epoch=3, target_batch_size=640, samples_accumulated=70,
                      peers=[_peer(P[0], 3, 40, True), _peer(P[1], 3, 30, True)])
    assert ready_for_round(done, min_peers=2, idle_seconds=0, patience=60)  # all finished
    # ... but a live peer one epoch behind (still stepping or pushing) is waited for, a while
    late = SwarmState(global_epoch=3, target_batch_size=640, samples_accumulated=70,
                      peers=[*done.peers, _peer(P[2], 2, 16, True)])
    assert not ready_for_round(late, min_peers=2, idle_seconds=5, patience=60, straggler_wait=30)
    assert ready_for_round(late, min_peers=2, idle_seconds=31, patience=60, straggler_wait=30)
    # participants: bound, live at the global epoch, serving
    bindings = {0: P[0], 1: P[1], 2: P[2], 3: P[3]}
    assert live_participants(state, bindings, serving=[0, 1, 2, 3]) == [0, 1]
    assert live_participants(state, bindings, serving=[1]) == [1]


def test_reference_is_the_canonical_unless_the_majority_disagrees():
    good = [1.0, 2.0, 3.0]
    near = [1.0, 2.0, 3.0 + 1e-6]
    bad = [1.5, 2.0, 3.0]
    assert choose_reference([good], {0: near, 1: near, 2: bad}, tolerance=TOL)[1:] == (
        "canonical", 0)
    ref, kind, index = choose_reference([bad], {0: near, 1: near, 2: good}, tolerance=TOL)
    assert kind == "median" and abs(ref[2] - 3.0) < 1e-5 and index is None
    # a forged epoch-N first, the honest candidate second: the candidate is the reference
    assert choose_reference([bad, good], {0: near, 1: near, 2: good}, tolerance=TOL) == (
        good, "canonical", 1)
    assert choose_reference([bad], {0: good, 1: good}, tolerance=TOL)[1] == "canonical"  # no quorum
    assert choose_reference([], {0: good, 1: good}, tolerance=TOL) == (None, "none", None)
    assert choose_reference([], {0: good, 1: good, 2: near}, tolerance=TOL)[1] == "median"


def test_tolerance_clears_the_measured_honest_spread_with_margin():
    for compression, spread in HONEST_SPREAD.items():
        assert consensus_tolerance(compression) >= 3 * spread
    assert consensus_tolerance("fp16", 0.5) == 0.5
    with pytest.raises(ValueError, match="fingerprint_tolerance"):
        consensus_tolerance("zstd")


def _reply(uid, *, rid="r1", fp=(1.0, 2.0, 3.0), success=True, peer=None):
    syn = AllReduce(epoch=5, round_id=rid, success=success, peer_id=peer or P[uid],
                    participants=[P[0], P[1]], fingerprint=list(fp))
    syn.dendrite.status_code = 200
    return syn


def test_a_signed_push_out_of_line_with_the_majority_gates_its_signer_only():
    aux = AveragingResult(ok=True, participants=(P[0], P[1], P[2], P[3]), auxiliaries=(P[3],))
    replies = {u: _reply(u, rid="r1") for u in (0, 1, 2)}
    bindings = {0: P[0], 1: P[1], 2: P[2], 7: P[4]}
    honest = Canonical([1.0, 2.0, 3.0], signer=P[1], tag="epoch-6-aaaaaaaaaaaa")
    kwargs = dict(epoch=5, round_id="r1", participants=[0, 1, 2], replies=replies, aux=aux,
                  bindings=bindings, tolerance=TOL)
    for signer, blamed in ((P[0], 0), (P[4], 7), (None, None), ("QmNotBoundToAnyUid", None)):
        forged = Canonical([9.0, 9.0, 9.0], signer=signer, tag="epoch-6")
        out = judge_round(**kwargs, canonicals=[forged])
        assert out.reference == "median" and out.canonical_tag is None
        assert out.reference_fingerprint == (1.0, 2.0, 3.0)
        assert all(d == 0.0 for u, d in out.drift.items() if u != blamed), out.drift
        if blamed is not None:
            assert out.drift[blamed] > TOL  # a non-participant that forged is gated too
        out = judge_round(**kwargs, canonicals=[forged, honest])
        assert out.reference == "canonical" and out.canonical_tag == honest.tag
        assert blamed is None or out.drift[blamed] > TOL


def test_judge_maps_observations_through_the_chain_binding_only():
    aux = AveragingResult(ok=True, participants=(P[0], P[1], P[2], P[3]), auxiliaries=(P[3],),
                          senders={P[0]: SenderStats(1000, 2, 0.5, 2000.0, 8.0, False),
                                   P[1]: SenderStats(1000, 2, 2.0, 500.0, 8.0, False),
                                   P[2]: SenderStats(1000, 2, 0.5, 2000.0, 8.0, True)},
                          banned_senders=(P[2],))
    replies = {0: _reply(0), 1: _reply(1, fp=(1.0, 2.0, 3.5)), 2: _reply(2, peer=P[0]),
               4: _reply(4, rid="other", peer=P[3])}
    out = judge_round(epoch=5, round_id="r1", participants=[0, 1, 2, 4, 5],
                      replies=replies, aux=aux, bindings={0: P[0], 1: P[1], 2: P[2], 4: P[3]},
                      canonicals=[Canonical([1.0, 2.0, 3.0])], tolerance=TOL)
    assert out.completed == (0, 1) and out.reference == "canonical" and out.observed
    assert out.drift[0] == 0.0 and out.drift[1] > TOL
    assert out.failures[2].reason is Reason.UNVERIFIED          # claimed someone else's PeerID
    assert out.failures[4].reason is Reason.WRONG_ROUND
    assert out.failures[5].reason is Reason.UNREACHABLE
    assert out.transfers[0].bytes_received == 1000 and out.transfers[2].banned
    assert out.transfers[5] is None
    record = EpochRecord(epoch=5)
    record.add_allreduce(participants=list(out.participants), transfers=out.transfers,
                         drift=out.drift, observed=out.observed,
                         consensus_checked=out.consensus_checked)
    scores = epoch_scores(record, tolerance=TOL)
    assert scores[0] > 0 and scores[1] == 0.0 and scores[2] == scores[4] == scores[5] == 0.0


def test_a_reducer_refused_by_most_members_is_gated_through_the_binding_only():
    """Members name the reducer whose result they refused (AllReduce.accused); the validator
    counts a uid's answer only from its bound PeerID, and gates a reducer a majority named."""
    aux = AveragingResult(ok=True, participants=(P[0], P[1], P[2], P[3], P[4]),
                          auxiliaries=(P[4],))
    rules = ContributionRules(seed=1, batch_size=4, block_tolerance=1e-4, num_values=1000,
                              proofs={})
    bindings = {0: P[0], 1: P[1], 2: P[2], 3: P[3]}

    def replies(accusing: dict[int, list[str]], peers: dict[int, str] | None = None):
        out = {u: _reply(u, success=u == 3, peer=(peers or {}).get(u)) for u in range(4)}
        for uid, accused in accusing.items():
            out[uid].accused = accused
        return out

    majority = replies({0: [P[3]], 1: [P[3]]})
    assert set(judge_reductions(aux, bindings, [0, 1, 2, 3], majority, rules, {})) == {3}
    minority = replies({0: [P[3]]})
    assert judge_reductions(aux, bindings, [0, 1, 2, 3], minority, rules, {}) == {}
    # uid 1's answer comes from another PeerID: its accusation is not a vote
    spoofed = replies({0: [P[3]], 1: [P[3]]}, peers={1: P[2]})
    assert judge_reductions(aux, bindings, [0, 1, 2, 3], spoofed, rules, {}) == {}
    outcome = AllReduceOutcome(epoch=5, round_id="r1", participants=(0, 1, 2, 3),
                               reductions={3: "2 of 3 members refused its result"})
    assert outcome.tampered == {3: "reducer: 2 of 3 members refused its result"}


# ------------------------------------------------------------------ a real round

SHAPES = [(1000,), (7, 11)]
FAST = AveragingConfig(matchmaking_time=2.0, request_timeout=1.0, min_group_size=2,
                       target_group_size=8, allreduce_timeout=20.0, next_chunk_timeout=3.0,
                       clip_factor=0.0)  # the canonical below is the plain weighted mean
WEIGHTS = [8.0, 16.0, 8.0]



def _as_state(tensors):
    return {f"t{i}": t.clone() for i, t in enumerate(tensors)}


def _miner_handler(averager, weight, *, lie=False, join=True):
    def handle(synapse: AllReduce) -> AllReduce:
        if not join:
            synapse.success, synapse.error = False, "not joining"
            return synapse
        result = averager.average(weight=weight, timeout=FAST.matchmaking_time * 3,
                                  expected=synapse.expected_peers)
        synapse.success, synapse.peer_id = result.ok, str(averager.peer_id)
        synapse.participants = list(result.participants)
        with averager.get_tensors() as tensors:
            fp = fingerprint(_as_state(tensors))
        synapse.fingerprint = [2 * x for x in fp] if lie else fp
        synapse.error = result.error or ""
        return synapse
    return handle


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("allreduce")
    torch.manual_seed(0)
    values = [[torch.randn(s) for s in SHAPES] for _ in WEIGHTS]
    total = sum(WEIGHTS)
    mean = [sum(w * v[i] for v, w in zip(values, WEIGHTS, strict=True)) / total
            for i in range(len(SHAPES))]
    boot = start_dht(DHTConfig(), run_id="vround")
    dhts = [boot] + [start_dht(DHTConfig(), run_id="vround", initial_peers=visible_maddrs(boot))
                     for _ in range(3)]
    miners = [SwarmAverager(dht=d, run_id="vround", cfg=FAST, part_size_bytes=512,
                            tensors=[v.clone() for v in vals])
              for d, vals in zip(dhts[:3], values, strict=True)]
    aux = SwarmAverager(dht=dhts[3], run_id="vround", cfg=FAST, part_size_bytes=512,
                        auxiliary=True, params=[torch.empty(s, device="meta") for s in SHAPES])
    chain = LocalChain(tmp / "chain.sqlite")
    names = ["honest-a", "honest-b", "liar", "no-show", "validator"]
    wallets = {n: create_wallet(tmp, n) for n in names}
    uids = {n: chain.register(wallets[n]) for n in names}
    chain.add_stake(wallets["validator"].hotkey.ss58_address, 100)
    cache = MetagraphCache(chain, refresh_interval=0.5)
    handlers = {
        "honest-a": _miner_handler(miners[0], WEIGHTS[0]),
        "honest-b": _miner_handler(miners[1], WEIGHTS[1]),
        "liar": _miner_handler(miners[2], WEIGHTS[2], lie=True),
        "no-show": _miner_handler(None, 1.0, join=False),
    }
    axons = []
    for name, handler in handlers.items():
        axon = start_axon(build_axon(wallet=wallets[name], graph=cache.get, port=free_port(),
                                     handlers={AllReduce: handler}))
        chain.serve_axon(wallets[name], ip="127.0.0.1", port=axon.port)
        axons.append(axon)
    peers = [str(m.peer_id) for m in miners] + ["QmbLHAnMoJPWSCR5Zhtx6BHJX9KiKNN6tpvbUcqanj75Nb"]
    bindings = {uids[n]: p for n, p in zip(handlers, peers, strict=True)}
    yield dict(chain=chain, wallets=wallets, uids=uids, aux=aux, bindings=bindings,
               canonical=fingerprint(_as_state(mean)))
    for axon in axons:
        axon.stop()
    for averager in [*miners, aux]:
        averager.shutdown()
    for node in reversed(dhts):
        node.shutdown()


def test_a_real_round_pays_honest_peers_and_gates_the_liar(swarm):
    uids, graph = swarm["uids"], swarm["chain"].metagraph()
    miners = [uids[n] for n in ("honest-a", "honest-b", "liar", "no-show")]

    async def canonical():
        return [Canonical(swarm["canonical"])]

    async def go():
        dendrite = build_dendrite(swarm["wallets"]["validator"])
        try:
            return await allreduce_round(
                dendrite=dendrite, targets={u: graph.axon(u) for u in miners},
                bindings=swarm["bindings"],
                average=lambda expected: swarm["aux"].average(
                    weight=0, timeout=FAST.matchmaking_time * 3, expected=expected),
                aux_peer=swarm["aux"].peer_id.to_base58(),
                canonical=canonical, epoch=0, round_id="e0", cfg=FAST,
                learning_rate=1e-3, tolerance=TOL, retries=1)
        finally:
            await dendrite.aclose_session()

    started = time.monotonic()
    out = asyncio.run(go())
    assert time.monotonic() - started < 60
    assert out.observed and out.reference == "canonical", out
    assert set(out.completed) == {uids["honest-a"], uids["honest-b"], uids["liar"]}
    assert out.failures[uids["no-show"]].reason is Reason.MINER_ERROR
    for name in ("honest-a", "honest-b"):
        assert out.drift[uids[name]] < 1e-6  # ulp-level: local + delta, not bitwise equal
        assert out.transfers[uids[name]].bytes_received > 0
    assert out.drift[uids["liar"]] > 0.5
    record = EpochRecord(epoch=0)
    record.add_allreduce(participants=list(out.participants), transfers=out.transfers,
                         drift=out.drift, observed=out.observed,
                         consensus_checked=out.consensus_checked)
    scores = epoch_scores(record, tolerance=TOL)
    assert scores[uids["honest-a"]] > 0 and scores[uids["honest-b"]] > 0
    assert scores[uids["liar"]] == 0.0 and scores[uids["no-show"]] == 0.0
