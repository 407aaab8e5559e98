"""Butterfly all-reduce among real peers on loopback (hivemind's own test pattern).

Each test starts its DHT nodes in this process, one ``SwarmAverager`` per peer (each averager is
its own forked process), runs one round from threads, and compares with plain torch.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator  # noqa: UP035 - hivemind reads typing.AsyncIterator hints

import pytest
import torch
from hivemind.p2p import P2PContext
from hivemind.proto import averaging_pb2

from hivemind_utils.averaging import SwarmAverager, epoch_group_bits
from hivemind_utils.dht import start_dht, visible_maddrs
from template.config import AveragingConfig, DHTConfig

pytestmark = pytest.mark.multiprocess

SHAPES = [(257,), (16, 33), (5,)]
# clip_factor 0: these tests compare with hivemind's plain weighted mean (tests/test_robust.py
# covers the default clipped reduction)
FAST = AveragingConfig(matchmaking_time=1.5, request_timeout=1.0, min_group_size=2,
                       target_group_size=8, allreduce_timeout=20.0, next_chunk_timeout=3.0,
                       clip_factor=0.0)
PART = 512  # bytes per streamed part: small, so every peer reduces a shard of small tensors


@pytest.fixture(scope="module")
def dhts():
    boot = start_dht(DHTConfig(), run_id="avg")
    nodes = [boot] + [start_dht(DHTConfig(), run_id="avg", initial_peers=visible_maddrs(boot))
                      for _ in range(3)]
    yield nodes
    for node in reversed(nodes):
        node.shutdown()


def _run_round(averagers, weights, timeout=20.0):
    with ThreadPoolExecutor(len(averagers)) as pool:
        futures = [pool.submit(a.average, weight=w, timeout=timeout)
                   for a, w in zip(averagers, weights, strict=True)]
        return [f.result() for f in futures]


def _weighted_mean(values, weights):
    total = sum(weights)
    return [sum(w * v[i] for v, w in zip(values, weights, strict=True)) / total
            for i in range(len(values[0]))]


def _shutdown(averagers):
    for averager in averagers:
        if averager.is_alive():
            averager.shutdown()


def test_three_peers_get_the_sample_weighted_mean_and_aux_records_senders(dhts):
    torch.manual_seed(0)
    values = [[torch.randn(s) for s in SHAPES] for _ in range(3)]
    weights = [1.0, 3.0, 12.0]
    miners = [SwarmAverager(dht=d, run_id="w3", cfg=FAST, part_size_bytes=PART,
                            tensors=[v.clone() for v in vals])
              for d, vals in zip(dhts[:3], values, strict=True)]
    aux = SwarmAverager(dht=dhts[3], run_id="w3", cfg=FAST, part_size_bytes=PART, auxiliary=True,
                        params=[torch.empty(s, device="meta") for s in SHAPES])
    try:
        results = _run_round([*miners, aux], [*weights, 0.0])
        for r in results:
            assert r.ok, r.error
            assert r.complete and r.failed_fraction == 0.0
        expected = _weighted_mean(values, weights)
        for miner in miners:
            with miner.get_tensors() as got:
                for g, e in zip(got, expected, strict=True):
                    assert torch.allclose(g, e, rtol=0, atol=1e-6), (g - e).abs().max()
        ids = [str(a.peer_id) for a in miners]
        aux_result = results[3]
        assert {r.group_id for r in results} == {aux_result.group_id}
        assert set(aux_result.participants) == {*ids, str(aux.peer_id)}
        assert aux_result.auxiliaries == (str(aux.peer_id),)
        # the aux peer reduced a shard, so it saw every miner's upload with its declared weight
        assert set(ids) <= set(aux_result.senders)
        for peer, weight in zip(ids, weights, strict=True):
            stats = aux_result.senders[peer]
            assert stats.bytes > 0 and stats.parts > 0 and stats.weight == weight
            assert stats.seconds >= 0 and not stats.banned
        assert aux_result.peer_fractions[str(aux.peer_id)] > 0
        assert abs(sum(aux_result.peer_fractions.values()) - 1) < 1e-9
        for r in results:
            assert r.bytes_sent > 0 and r.bytes_received > 0 and r.seconds > 0
    finally:
        _shutdown([*miners, aux])


@pytest.mark.parametrize(("compression", "tolerance"), [("fp16", 2e-3), ("8bit", 6e-2)])
def test_compression_stays_close_to_the_mean(dhts, compression, tolerance):
    """Documented error (docs/swarm.md): max |result - mean| / max |mean| within ``tolerance``."""
    torch.manual_seed(1)
    cfg = AveragingConfig(**{**FAST.__dict__, "compression": compression})
    values = [[torch.randn(s) for s in SHAPES] for _ in range(3)]
    weights = [2.0, 1.0, 1.0]
    run = f"c-{compression}"
    avgs = [SwarmAverager(dht=d, run_id=run, cfg=cfg, part_size_bytes=PART,
                          tensors=[v.clone() for v in vals])
            for d, vals in zip(dhts[:3], values, strict=True)]
    try:
        assert all(r.ok for r in _run_round(avgs, weights))
        expected = torch.cat([e.flatten() for e in _weighted_mean(values, weights)])
        for avg in avgs:
            with avg.get_tensors() as got:
                flat = torch.cat([g.flatten() for g in got])
            error = (flat - expected).abs().max() / expected.abs().max()
            assert error < tolerance, error
            assert error > 0  # compression really happened
    finally:
        _shutdown(avgs)


class DyingAverager(SwarmAverager):
    """Fault injection (as in hivemind's test_allreduce_fault_tolerance): the averaging process
    kills itself (SIGKILL, no cleanup) once it has received the first part of the round."""

    async def rpc_aggregate_part(
        self, stream: AsyncIterator[averaging_pb2.AveragingData], context: P2PContext
    ) -> AsyncIterator[averaging_pb2.AveragingData]:
        async for message in super().rpc_aggregate_part(stream, context):
            os.kill(os.getpid(), signal.SIGKILL)
            yield message


def test_a_peer_dying_mid_round_does_not_stall_the_others(dhts):
    torch.manual_seed(2)
    shapes = [(64_000,)]
    values = [[torch.randn(s) for s in shapes] for _ in range(3)]
    kinds = [SwarmAverager, SwarmAverager, DyingAverager]
    avgs = [kind(dht=d, run_id="die", cfg=FAST, part_size_bytes=4096,
                 tensors=[v.clone() for v in vals])
            for kind, d, vals in zip(kinds, dhts[:3], values, strict=True)]
    victim = str(avgs[2].peer_id)
    try:
        started = time.monotonic()
        results = _run_round(avgs[:2] + avgs[2:], [1.0, 1.0, 1.0])
        elapsed = time.monotonic() - started
        assert not avgs[2].is_alive()
        assert elapsed < FAST.matchmaking_time + FAST.allreduce_timeout + 10
        for r in results[:2]:
            if r.ok:  # survivors finish without the victim ...
                assert victim in r.failed_peers, r
                assert not r.complete
            else:  # ... or fail cleanly with a reason
                assert r.error
        assert not results[2].ok
    finally:
        _shutdown(avgs)


def test_gradients_go_in_and_out_through_cpu_buffers(dhts):
    model = torch.nn.Linear(4, 3).to(torch.bfloat16)
    avg = SwarmAverager(dht=dhts[0], run_id="io", cfg=FAST, params=model.parameters())
    try:
        model.weight.grad = torch.full((3, 4), 2.0, dtype=torch.bfloat16)
        avg.load_gradients(model.parameters())  # bias.grad is None -> zeros
        with avg.get_tensors() as bufs:
            assert all(b.device.type == "cpu" and b.dtype == torch.float32 for b in bufs)
            assert bufs[0].eq(2.0).all() and bufs[1].eq(0).all()
            bufs[0].fill_(0.5)
        avg.write_gradients(model.parameters())
        assert model.weight.grad.dtype == torch.bfloat16 and model.weight.grad.eq(0.5).all()
        assert model.bias.grad is not None and model.bias.grad.eq(0).all()
        with pytest.raises(ValueError, match="weight must be > 0"):
            avg.average(weight=0.0)
    finally:
        avg.shutdown()


def test_peers_only_group_with_peers_of_the_same_epoch(dhts):
    """Two peers at epoch 4 and two at epoch 5 average at the same time: two groups, each with
    the mean of its own epoch (never a mix of gradients taken at different weights)."""
    values = [[torch.full(s, float(i)) for s in SHAPES] for i in range(4)]
    epochs = [4, 5, 4, 5]
    avgs = [SwarmAverager(dht=d, run_id="ep", cfg=FAST, part_size_bytes=PART,
                          tensors=[v.clone() for v in vals])
            for d, vals in zip(dhts, values, strict=True)]
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(a.average, weight=1.0, timeout=20.0, epoch=e)
                       for a, e in zip(avgs, epochs, strict=True)]
            results = [f.result() for f in futures]
        assert all(r.ok and len(r.participants) == 2 for r in results), [r.error for r in results]
        for avg, epoch in zip(avgs, epochs, strict=True):
            expected = 1.0 if epoch == 4 else 2.0  # mean of peers (0, 2) and of peers (1, 3)
            with avg.get_tensors() as got:
                assert all(torch.allclose(g, torch.full_like(g, expected)) for g in got)
    finally:
        _shutdown(avgs)
    with pytest.raises(ValueError, match="out of range"):
        epoch_group_bits(-1)


def test_a_group_of_expected_members_forms_without_waiting_out_matchmaking(dhts):
    """With every member's PeerID expected, the leader assembles as soon as they joined: far
    inside a 20 s ``matchmaking_time`` that ``target_group_size`` 8 would wait out. A missing
    expected member falls back to hivemind's rule (the others average at the deadline)."""
    slow = dataclasses.replace(FAST, matchmaking_time=20.0)
    values = [[torch.full(s, float(i)) for s in SHAPES] for i in range(3)]
    avgs = [SwarmAverager(dht=d, run_id="expect", cfg=slow, part_size_bytes=PART,
                          tensors=[v.clone() for v in vals])
            for d, vals in zip(dhts[:3], values, strict=True)]
    members = [a.peer_id.to_base58() for a in avgs]
    try:
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(a.average, weight=1.0, timeout=40.0, expected=members)
                       for a in avgs]
            results = [f.result() for f in futures]
        assert all(r.ok and len(r.participants) == 3 for r in results), [r.error for r in results]
        assert max(r.seconds for r in results) < slow.matchmaking_time / 2, [
            r.seconds for r in results]
        for avg in avgs:
            with avg.get_tensors() as got:
                assert all(torch.allclose(g, torch.full_like(g, 1.0)) for g in got)
    finally:
        _shutdown(avgs)
    short = dataclasses.replace(FAST, matchmaking_time=3.0)
    avgs = [SwarmAverager(dht=d, run_id="expect2", cfg=short, part_size_bytes=PART,
                          tensors=[v.clone() for v in vals])
            for d, vals in zip(dhts[:2], values[:2], strict=True)]
    absent = "QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN"
    try:
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(a.average, weight=1.0, timeout=20.0,
                                   expected=[*(x.peer_id.to_base58() for x in avgs), absent])
                       for a in avgs]
            results = [f.result() for f in futures]
        assert all(r.ok and len(r.participants) == 2 for r in results), [r.error for r in results]
    finally:
        _shutdown(avgs)


def test_bad_combinations_are_refused():
    with pytest.raises(ValueError, match="exactly one of"):
        SwarmAverager(dht=None, run_id="x", cfg=FAST, start=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CPU tensors"):
        SwarmAverager(dht=None, run_id="x", cfg=FAST, start=False,  # type: ignore[arg-type]
                      tensors=[torch.zeros(2, device="meta")])


@pytest.mark.parametrize("values", [torch.zeros(300), torch.ones(1), torch.randn(1000) * 3])
def test_8bit_codec_roundtrips_through_hiveminds_codec_table(values):
    """compat.install() fixed decoding (NumPy >= 2.4) and constant parts, for the wire type."""
    from hivemind.compression import CompressionInfo, deserialize_torch_tensor
    from hivemind.compression.serialization import serialize_torch_tensor
    from hivemind.proto import runtime_pb2

    from hivemind_utils.averaging import make_compression

    codec = make_compression("8bit")
    for message in (codec.compress(values, CompressionInfo.from_tensor(values)),
                    serialize_torch_tensor(values, runtime_pb2.UNIFORM_8BIT)):
        restored = deserialize_torch_tensor(message)
        assert restored.shape == values.shape
        scale = float(values.abs().max()) or 1.0
        assert float((restored - values).abs().max()) <= 0.15 * scale
