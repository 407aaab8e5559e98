"""Real Axon/Dendrite round trips on 127.0.0.1 against a LocalChain metagraph."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time

import aiohttp
import bittensor as bt
import psutil
import pytest
from aiohttp import web

from template import protocol as P
from template.chain.base import Metagraph, NeuronInfo
from template.chain.local import LocalChain
from template.chain.wallets import create_wallet
from template.protocol import Reason
from template.transport import (
    AxonPortInUse,
    MetagraphCache,
    build_axon,
    build_dendrite,
    caller_priority,
    check_caller,
    check_port_free,
    free_port,
    start_axon,
)

PEER = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
STATE: dict[str, object] = {}


async def train_handler(synapse: P.Train) -> P.Train:
    STATE["train_calls"] = int(STATE.get("train_calls", 0)) + 1
    synapse.epoch += int(STATE.get("epoch_shift", 0))
    synapse.loss, synapse.samples = 2.5, 16
    synapse.pages, synapse.batches = [3, 1, 4], [0, 1]
    synapse.sketches = [[0.5] * 8, [-0.25] * 8]
    synapse.sketch_seed, synapse.peer_id, synapse.model_fingerprint = 9, PEER, [1.0] * 4
    return synapse


def allreduce_handler(synapse: P.AllReduce) -> P.AllReduce:
    """Synchronous on purpose: the Axon wrapper must run it in an executor."""
    STATE["allreduce_calls"] = int(STATE.get("allreduce_calls", 0)) + 1
    time.sleep(float(STATE.get("allreduce_sleep", 0.0)))
    synapse.success, synapse.peer_id, synapse.participants = True, PEER, [PEER]
    synapse.bytes_sent, synapse.bytes_received, synapse.seconds = 100, 120, 0.3
    synapse.fingerprint = [1.0] * 4
    return synapse


async def alive_handler(synapse: P.IsAlive) -> P.IsAlive:
    synapse.alive, synapse.epoch, synapse.peer_id = True, 3, PEER
    return synapse


HANDLERS = {P.Train: train_handler, P.AllReduce: allreduce_handler, P.IsAlive: alive_handler}



@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """Miner axon (uid 0), a staked validator (uid 1), a registered non-validator (uid 2) and
    an unregistered wallet."""
    path = tmp_path_factory.mktemp("transport")
    chain = LocalChain(path / "chain.sqlite")
    wallets = {n: create_wallet(path, n) for n in ("miner", "validator", "other", "stranger")}
    for name in ("miner", "validator", "other"):
        chain.register(wallets[name])
    chain.add_stake(wallets["validator"].hotkey.ss58_address, 100)
    cache = MetagraphCache(chain, refresh_interval=0.2)
    axons = {}
    for permit_only in (False, True):
        port = free_port()
        axons[permit_only] = start_axon(build_axon(
            wallet=wallets["miner"], handlers=HANDLERS, graph=cache.get, port=port,
            force_validator_permit=permit_only))
    chain.serve_axon(wallets["miner"], ip="127.0.0.1", port=axons[False].port)
    yield dict(chain=chain, wallets=wallets, axons=axons, info=chain.metagraph().axon(0))
    for axon in axons.values():
        axon.stop()


@pytest.fixture(autouse=True)
def _reset_state():
    STATE.clear()


def call(wallet, target, synapse, timeout: float = 10.0):
    async def go():
        dendrite = build_dendrite(wallet)
        try:
            return await dendrite.call(target, synapse, timeout=timeout, deserialize=False)
        finally:
            await dendrite.aclose_session()

    return asyncio.run(go())


def test_train_allreduce_and_isalive_round_trip(net):
    v = net["wallets"]["validator"]
    reply = call(v, net["info"], P.Train(epoch=5, nonce=1234, max_batches=4))
    assert reply.is_success, reply.dendrite.status_message
    assert P.validate_train_response(reply, epoch=5, nonce=1234, sketch_seed=9,
                                     limits=P.TrainLimits(sketch_dims=8)) is None
    assert reply.sketches == [[0.5] * 8, [-0.25] * 8] and reply.pages == [3, 1, 4]
    reply = call(v, net["info"], P.AllReduce(epoch=5, round_id="e5-r0"))
    assert P.validate_allreduce_response(reply, epoch=5, round_id="e5-r0") is None
    assert reply.bytes_received == 120
    reply = call(v, net["info"], P.IsAlive())
    assert reply.alive and reply.epoch == 3 and reply.peer_id == PEER


def test_unregistered_hotkey_is_refused_before_the_handler(net):
    reply = call(net["wallets"]["stranger"], net["info"], P.Train(epoch=5, nonce=1))
    rejection = P.validate_train_response(reply, epoch=5, nonce=1)
    assert rejection.reason is Reason.BLACKLISTED and "not registered" in rejection.detail
    assert "train_calls" not in STATE


def test_force_validator_permit_refuses_non_validators(net):
    target = net["axons"][True].info()
    other = call(net["wallets"]["other"], target, P.IsAlive())
    assert other.dendrite.status_code == 403 and "validator permit" in other.dendrite.status_message
    assert call(net["wallets"]["validator"], target, P.IsAlive()).alive


def test_wrong_epoch_in_a_response_is_rejected(net):
    STATE["epoch_shift"] = 1
    reply = call(net["wallets"]["validator"], net["info"], P.Train(epoch=5, nonce=2))
    assert reply.is_success
    assert P.validate_train_response(reply, epoch=5, nonce=2).reason is Reason.WRONG_EPOCH


def test_malformed_request_is_answered_without_calling_the_handler(net):
    bad = P.AllReduce(epoch=5, round_id="e5-r1", target_group_size=2, min_group_size=4)
    reply = call(net["wallets"]["validator"], net["info"], bad)
    rejection = P.validate_allreduce_response(reply, epoch=5, round_id="e5-r1")
    assert reply.dendrite.status_code == 422
    assert rejection.reason is Reason.INCONSISTENT and "rejected request" in rejection.detail
    assert "allreduce_calls" not in STATE


def test_oversized_request_is_refused_by_the_schema(net):
    huge = P.Train.model_construct(epoch=5, nonce=3, max_batches=10**6,
                                   sketches=[[0.0] * 300] * 100)
    reply = call(net["wallets"]["validator"], net["info"], huge)
    assert not reply.is_success and P.transport_rejection(reply) is not None
    assert "train_calls" not in STATE


def test_tampered_request_body_is_refused(net):
    v = net["wallets"]["validator"]

    async def go():
        dendrite = build_dendrite(v)
        synapse = dendrite.preprocess_synapse_for_request(net["info"], P.Train(epoch=5, nonce=4))
        body = synapse.model_dump()
        body["nonce"] = 5  # changed after signing
        url = f"http://127.0.0.1:{net['info'].port}/Train"
        async with aiohttp.ClientSession() as session, session.post(
                url, headers=synapse.to_headers(), json=body) as response:
            return response.status, response.headers.get("bt_header_axon_status_message", "")

    status, reason = asyncio.run(go())
    assert status == 400 and "body hash mismatch" in reason  # bittensor alone: a bare 500
    assert "train_calls" not in STATE


@pytest.mark.parametrize(("patch", "reason"), [
    ({"loss": math.nan}, Reason.NOT_FINITE),
    ({"sketches": [[0.0] * (P.MAX_SKETCH_DIMS + 1)]}, Reason.TOO_LARGE),
    ({"pages": [-3]}, Reason.NEGATIVE),
])
def test_forged_responses_from_a_raw_http_server_are_rejected(net, patch, reason):
    """A miner speaking raw HTTP can send anything; the Dendrite's parse plus the checks hold."""
    body = P.Train(epoch=5, nonce=6).model_dump(mode="json")
    body.update(patch)
    payload = json.dumps(body)  # json.dumps writes NaN as a bare token

    async def handle(_request):
        return web.Response(text=payload, content_type="application/json")

    async def go():
        app = web.Application()
        app.router.add_post("/Train", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        target = bt.AxonInfo(version=1, ip="127.0.0.1", port=port, ip_type=4,
                             hotkey=net["wallets"]["miner"].hotkey.ss58_address,
                             coldkey=net["wallets"]["miner"].coldkeypub.ss58_address)
        dendrite = build_dendrite(net["wallets"]["validator"])
        try:
            return await dendrite.call(target, P.Train(epoch=5, nonce=6), timeout=5,
                                       deserialize=False)
        finally:
            await dendrite.aclose_session()
            await runner.cleanup()

    reply = asyncio.run(go())
    rejection = P.validate_train_response(reply, epoch=5, nonce=6)
    assert rejection is not None and rejection.reason is reason, rejection


def test_blocking_handler_does_not_block_other_requests(net):
    STATE["allreduce_sleep"] = 1.5
    v = net["wallets"]["validator"]

    async def go():
        dendrite = build_dendrite(v)
        try:
            slow = asyncio.ensure_future(dendrite.call(
                net["info"], P.AllReduce(epoch=1, round_id="slow"), timeout=10,
                deserialize=False))
            await asyncio.sleep(0.3)
            start = time.perf_counter()
            ping = await dendrite.call(net["info"], P.IsAlive(), timeout=10, deserialize=False)
            ping_time = time.perf_counter() - start
            return await slow, ping, ping_time
        finally:
            await dendrite.aclose_session()

    slow, ping, ping_time = asyncio.run(go())
    assert slow.success and ping.alive
    assert ping_time < 0.8, f"ping waited {ping_time:.2f}s behind a blocking handler"


def test_axon_listens_only_on_the_configured_host(net):
    port = net["axons"][False].port
    listening = [c.laddr.ip for c in psutil.Process().net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert listening == ["127.0.0.1"]
    with pytest.raises(ValueError, match="--axon.external_ip"):
        build_axon(wallet=net["wallets"]["miner"], handlers={}, graph=lambda: None,
                   ip="0.0.0.0", port=free_port())


def test_a_taken_axon_port_fails_at_start(net):
    from template.config import ConfigError

    with socket.socket() as other:  # another server already listens on the port
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        for host in ("127.0.0.1", "0.0.0.0"):
            with pytest.raises(AxonPortInUse) as err:
                check_port_free(host, port)
            assert str(err.value) == f"--axon.port {port} is in use"
            assert isinstance(err.value, ConfigError) and err.value.flag == "--axon.port"
        axon = build_axon(wallet=net["wallets"]["miner"], handlers={}, graph=lambda: None,
                          ip="127.0.0.1", port=port)
        with pytest.raises(AxonPortInUse, match=f"^--axon.port {port} is in use$"):
            start_axon(axon, startup_timeout=1.0)
    check_port_free("127.0.0.1", port)  # free again once the other server closed


def test_build_dendrite_never_looks_up_the_public_ip(net):
    from bittensor.utils import networking

    before = networking.get_external_ip
    dendrite = build_dendrite(net["wallets"]["validator"], external_ip="127.0.0.9")
    assert dendrite.external_ip == "127.0.0.9"
    assert networking.get_external_ip is before


def test_caller_policy_is_pure():
    graph = Metagraph(netuid=3, block=0, neurons=(
        NeuronInfo(uid=0, hotkey="hm", coldkey="c", stake=0.0, validator_permit=False),
        NeuronInfo(uid=1, hotkey="hv", coldkey="c", stake=50.0, validator_permit=True),
    ))
    assert check_caller(graph, "hv", force_validator_permit=True) == (False, "uid 1")
    assert check_caller(graph, "hm", force_validator_permit=False)[0] is False
    assert check_caller(graph, "hm", force_validator_permit=True)[0] is True
    assert check_caller(graph, "nobody", force_validator_permit=False)[0] is True
    assert check_caller(graph, None, force_validator_permit=False)[0] is True
    assert caller_priority(graph, "hv") == 50.0 and caller_priority(graph, "nobody") == 0.0


def test_metagraph_cache_refreshes_in_the_background(tmp_path):
    chain = LocalChain(tmp_path / "c.sqlite")
    cache = MetagraphCache(chain, refresh_interval=0.1)
    assert cache.get().uids == []
    chain.register_hotkey("5Fake", "5Cold")
    time.sleep(0.15)
    cache.get()  # stale: starts a refresh, returns the old snapshot at once
    deadline = time.time() + 5
    while cache.get().uids != [0] and time.time() < deadline:
        time.sleep(0.02)
    assert cache.get().uids == [0]


def test_miner_exits_2_with_one_line_when_its_axon_port_is_taken():
    import subprocess
    import sys
    from pathlib import Path

    miner = Path(__file__).resolve().parents[1] / "neurons" / "miner.py"
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        proc = subprocess.run([sys.executable, str(miner), "--axon.ip", "127.0.0.1",
                               "--axon.port", str(port)],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"--axon.port {port} is in use"]
