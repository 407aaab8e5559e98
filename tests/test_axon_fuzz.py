"""A real Axon on 127.0.0.1 under malformed requests and an AllReduce flood, plus the pure
policy behind it (who may call, one pending round per hotkey and epoch, body checks)."""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Iterator

import bittensor as bt
import pytest
import requests

from template import protocol as P
from template.chain.base import Metagraph, NeuronInfo
from template.chain.local import LocalChain
from template.chain.wallets import create_wallet
from template.config import BlacklistConfig, ConfigError
from template.transport import (
    MAX_BODY_BYTES,
    CallerPolicy,
    MetagraphCache,
    RoundGate,
    admit_round,
    build_axon,
    build_dendrite,
    check_caller,
    check_request_body,
    free_port,
    start_axon,
)

PEER = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
ROUND_SECONDS = 3.0
SEED = 1234
FUZZ_REQUESTS = 300


def alive(synapse: P.IsAlive) -> P.IsAlive:
    """Synchronous like the miner's: it runs in the event loop's default pool."""
    synapse.alive, synapse.epoch, synapse.peer_id = True, 1, PEER
    return synapse


def train(synapse: P.Train) -> P.Train:
    synapse.peer_id, synapse.error = PEER, "no batch trained yet"
    return synapse


def allreduce(synapse: P.AllReduce) -> P.AllReduce:
    time.sleep(ROUND_SECONDS)  # a round in progress holds its thread
    synapse.success, synapse.peer_id, synapse.participants = True, PEER, [PEER]
    return synapse


HANDLERS = {P.IsAlive: alive, P.Train: train, P.AllReduce: allreduce}


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """Miner (uid 0), a staked validator with a permit (uid 1), a registered stakeless hotkey
    (uid 2). Two axons: devnet policy (any registered caller) and production policy."""
    path = tmp_path_factory.mktemp("fuzz")
    chain = LocalChain(path / "chain.sqlite")
    wallets = {n: create_wallet(path, n) for n in ("miner", "validator", "flooder")}
    for name in wallets:
        chain.register(wallets[name])
    chain.add_stake(wallets["validator"].hotkey.ss58_address, 100)
    cache = MetagraphCache(chain, refresh_interval=60)
    assert cache.get().neuron(1).validator_permit and not cache.get().neuron(2).validator_permit
    axons = {
        "devnet": build_axon(wallet=wallets["miner"], handlers=HANDLERS, graph=cache.get,
                             port=free_port(), max_pending_rounds=2),
        "production": build_axon(
            wallet=wallets["miner"], handlers=HANDLERS, graph=cache.get, port=free_port(),
            policy=CallerPolicy.from_config(BlacklistConfig(), local_devnet=False)),
    }
    for axon in axons.values():
        start_axon(axon)
    yield dict(wallets=wallets, axons=axons)
    for axon in axons.values():
        axon.stop()


def target(axon: bt.Axon) -> bt.AxonInfo:
    return bt.AxonInfo(version=1, ip="127.0.0.1", port=axon.port, ip_type=4,
                       hotkey=axon.wallet.hotkey.ss58_address,
                       coldkey=axon.wallet.coldkeypub.ss58_address)


# ---------------------------------------------------------------- fuzz


def _synapse(rng: random.Random) -> bt.Synapse:
    return rng.choice([
        lambda: P.Train(epoch=rng.randrange(10), nonce=rng.randrange(10**6)),
        lambda: P.AllReduce(epoch=rng.randrange(10), round_id=f"r{rng.randrange(99)}"),
        lambda: P.IsAlive(),
    ])()


_INT = ["x", -1, 2**70, 1.5, None, [], {}]
_BAD_FIELDS: dict[str, dict[str, list[object]]] = {
    "Train": {"epoch": _INT, "nonce": _INT, "max_batches": [0, 65, *_INT],
              "loss": ["x", -1, [], {}], "pages": ["x", [-1], [2**41], {}, [1.5]],
              "sketches": ["x", [[0.0] * 300], [["a"]], [[0.0]] * 65],
              "peer_id": [1, [], "x" * 200],
              "error": ["x" * 600, 5], "model_fingerprint": [[0.0] * 600, "x"]},
    "AllReduce": {"epoch": _INT, "round_id": [1, [], "x" * 200], "target_group_size": [0, 300],
                  "min_group_size": [0, "x"], "matchmaking_time": [0, -1, "x", 1e9],
                  "allreduce_timeout": [0, 4000], "learning_rate": [-1, 11, "x"],
                  "success": ["maybe", 2, []], "participants": ["x", ["p"] * 300]},
    "IsAlive": {"alive": ["maybe", 2, []], "epoch": _INT, "peer_id": [1, "x" * 200]},
}
_HASHED_CHANGES = {"Train": {"epoch": 7777, "nonce": 7777, "max_batches": 3},
                   "AllReduce": {"epoch": 7777, "round_id": "changed", "learning_rate": 0.5}}


def _body_mutation(rng: random.Random, name: str, body: dict, raw: str,
                   ) -> tuple[str, bytes] | None:
    """``(label, malformed body)``, or None: keep the body, mutate the headers instead."""
    kind = rng.randrange(9)
    if kind == 0:
        return "truncated JSON", raw[: rng.randrange(1, len(raw) - 1)].encode()
    if kind == 1:
        return "random bytes", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if kind == 2:
        return "JSON not an object", json.dumps(rng.choice([[1, 2], 3, "t", None, True])).encode()
    if kind == 3:
        field = rng.choice(sorted(_BAD_FIELDS[name]))
        value = rng.choice(_BAD_FIELDS[name][field])
        return f"wrong {field}", json.dumps({**body, field: value}).encode()
    if kind == 4 and name in _HASHED_CHANGES:
        field, value = rng.choice(sorted(_HASHED_CHANGES[name].items()))
        return f"{field} changed after signing", json.dumps({**body, field: value}).encode()
    if kind == 5:
        field = {"Train": "loss", "AllReduce": "learning_rate", "IsAlive": "epoch"}[name]
        return f"NaN {field}", json.dumps({**body, field: math.nan}).encode()  # bare NaN
    if kind == 6:
        bad = rng.choice(["x", 1, [], {"nonce": "abc"}, {"status_code": "x"}])
        return "dendrite not a TerminalInfo", json.dumps({**body, "dendrite": bad}).encode()
    if kind == 7:
        return rng.choice([("deep nesting", b"[" * 100_000), ("empty body", b""),
                           ("JSON with trailing garbage", raw.encode() + b"}}")])
    return None


_SIGNED = ("bt_header_dendrite_signature", "bt_header_dendrite_nonce",
           "bt_header_dendrite_hotkey", "bt_header_dendrite_uuid", "computed_body_hash")


def _header_mutation(rng: random.Random, headers: dict[str, str],
                     ) -> tuple[str, dict[str, str], str | None]:
    """``(label, headers, path override)``: malformed headers or an unknown synapse."""
    headers = dict(headers)
    kind = rng.randrange(5)
    if kind == 0:
        key = rng.choice(_SIGNED)
        headers.pop(key, None)
        return f"no {key}", headers, None
    if kind == 1:
        key = rng.choice(_SIGNED)
        headers[key] = rng.choice(["abc", "-1", "nan", "", "1e999", "0x00"])
        return f"bad {key}", headers, None
    if kind == 2:
        headers["bt_header_dendrite_hotkey"] = rng.choice(["5Garbage", "x" * 48])
        return "bad hotkey", headers, None
    if kind == 3:
        return "unknown synapse", headers, rng.choice(["/Nope", "/", "//x", "/train", "/Synapsee"])
    headers["timeout"] = rng.choice(["-5", "nan", "inf", "0", "x", "1e400"])
    return "bad timeout", headers, None


def fuzz_cases(wallet: bt.Wallet, info: bt.AxonInfo, *, seed: int, count: int,
               ) -> Iterator[tuple[str, str, dict[str, str], bytes | Iterator[bytes]]]:
    """``(label, path, headers, body)`` of ``count`` malformed requests, each freshly signed.

    Every case is malformed for its synapse type: a valid request would get 200, so the test
    can demand a 4xx from every one.
    """
    rng = random.Random(seed)
    dendrite = build_dendrite(wallet)
    for i in range(count):
        syn = dendrite.preprocess_synapse_for_request(info, _synapse(rng), timeout=12)
        body, raw = syn.model_dump(), syn.model_dump_json()
        headers = {k: v for k, v in syn.to_headers().items() if k.lower() != "content-length"}
        headers["Content-Type"] = rng.choice(["application/json",
                                              "application/json; charset=utf-8"])
        path = f"/{syn.name}"
        data: bytes | Iterator[bytes]
        if i % 20 == 3:
            label, data = "oversize body", b"x" * (MAX_BODY_BYTES + 1)
        elif i % 20 == 7:
            label, data = "chunked, no Content-Length", iter([raw.encode()])
        elif i % 20 == 11:
            label, data = "Content-Type not JSON", raw.encode()
            headers["Content-Type"] = rng.choice(["text/plain", "application/x-www-form"])
        elif i % 20 == 15 and syn.name == "AllReduce":
            label = "refused by the request checks"
            data = json.dumps({**body, "min_group_size": 9, "target_group_size": 2}).encode()
        elif (mutated := _body_mutation(rng, str(syn.name), body, raw)) is not None:
            label, data = mutated
        else:
            label, headers, override = _header_mutation(rng, headers)
            path, data = override or path, raw.encode()
        yield label, path, headers, data


def test_every_malformed_request_gets_a_4xx_with_a_reason(net):
    axon = net["axons"]["devnet"]
    info = target(axon)
    url = f"http://127.0.0.1:{axon.port}"
    statuses: Counter[int] = Counter()
    failures = []
    labels: Counter[str] = Counter()
    with requests.Session() as session:
        for label, path, headers, data in fuzz_cases(net["wallets"]["validator"], info,
                                                     seed=SEED, count=FUZZ_REQUESTS):
            response = session.post(url + path, headers=headers, data=data, timeout=10)
            reason = response.headers.get("bt_header_axon_status_message") or response.reason
            statuses[response.status_code] += 1
            labels[label.split(" ")[0]] += 1
            if not (400 <= response.status_code < 500 and reason):
                failures.append((label, path, response.status_code, reason))
    assert not failures, failures[:5]
    assert sum(statuses.values()) == FUZZ_REQUESTS
    assert {400, 411, 413, 415, 422} <= set(statuses), statuses
    print("fuzz statuses:", dict(sorted(statuses.items())), "cases:", dict(labels))

    async def ping() -> bt.Synapse:
        dendrite = build_dendrite(net["wallets"]["validator"])
        try:
            return await dendrite.call(info, P.IsAlive(), timeout=5, deserialize=False)
        finally:
            await dendrite.aclose_session()

    assert asyncio.run(ping()).alive  # still serving


def test_a_handler_crash_is_still_a_500(tmp_path):
    chain = LocalChain(tmp_path / "c.sqlite")
    wallet = create_wallet(tmp_path, "m")
    chain.register(wallet)

    def broken(synapse: P.IsAlive) -> P.IsAlive:
        raise RuntimeError("bug")

    axon = start_axon(build_axon(wallet=wallet, handlers={P.IsAlive: broken},
                                 graph=MetagraphCache(chain).get, port=free_port()))
    try:
        async def go() -> bt.Synapse:
            dendrite = build_dendrite(wallet)
            try:
                return await dendrite.call(target(axon), P.IsAlive(), timeout=5,
                                           deserialize=False)
            finally:
                await dendrite.aclose_session()

        assert asyncio.run(go()).dendrite.status_code == 500
    finally:
        axon.stop()


# ---------------------------------------------------------------- flood


async def _flood_and_ping(net, axon: bt.Axon, *, floods: int, pings: int,
                          ) -> tuple[list[bt.Synapse], list[float], list[float]]:
    info = target(axon)
    validator = build_dendrite(net["wallets"]["validator"])
    flooders = [build_dendrite(net["wallets"]["flooder"]) for _ in range(floods)]

    async def timed(dendrite: bt.Dendrite, synapse: bt.Synapse) -> tuple[bt.Synapse, float]:
        start = time.perf_counter()
        reply = await dendrite.call(info, synapse, timeout=ROUND_SECONDS + 10,
                                    deserialize=False)
        return reply, time.perf_counter() - start

    try:
        quiet = [(await timed(validator, P.IsAlive()))[1] for _ in range(pings)]
        flood = [asyncio.ensure_future(timed(d, P.AllReduce(epoch=1, round_id=f"f{i}")))
                 for i, d in enumerate(flooders)]
        await asyncio.sleep(0.2)
        loud = [(await timed(validator, P.IsAlive()))[1] for _ in range(pings)]
        results = await asyncio.gather(*flood)
        replies = [r for r, _ in results]
        for (reply, seconds) in results:
            if reply.dendrite.status_code != 200:
                assert seconds < 2.0, f"refusal took {seconds:.2f}s"
        return replies, quiet, loud
    finally:
        for d in [validator, *flooders]:
            await d.aclose_session()


@pytest.mark.parametrize(("mode", "status"), [("devnet", 429), ("production", 403)])
def test_one_hotkey_flooding_allreduce_gets_one_round_and_isalive_stays_fast(
        net, mode, status):
    replies, quiet, loud = asyncio.run(_flood_and_ping(net, net["axons"][mode], floods=16,
                                                       pings=8))
    codes = Counter(r.dendrite.status_code for r in replies)
    admitted = codes.get(200, 0)
    assert admitted <= (1 if mode == "devnet" else 0), codes
    assert codes[status] == 16 - admitted, codes
    refused = next(r for r in replies if r.dendrite.status_code == status)
    assert P.transport_rejection(refused).reason is (
        P.Reason.BUSY if status == 429 else P.Reason.BLACKLISTED)
    assert statistics.median(loud) < 2.0, (quiet, loud)
    print(f"{mode}: IsAlive median {statistics.median(quiet) * 1e3:.0f} ms quiet, "
          f"{statistics.median(loud) * 1e3:.0f} ms under flood; {dict(codes)}")


def test_validator_with_permit_may_start_a_round_in_production(net):
    async def go() -> bt.Synapse:
        dendrite = build_dendrite(net["wallets"]["validator"])
        try:
            return await dendrite.call(target(net["axons"]["production"]),
                                       P.AllReduce(epoch=2, round_id="ok"),
                                       timeout=ROUND_SECONDS + 10, deserialize=False)
        finally:
            await dendrite.aclose_session()

    assert asyncio.run(go()).success


# ---------------------------------------------------------------- pure policy

GRAPH = Metagraph(netuid=3, block=0, neurons=(
    NeuronInfo(uid=0, hotkey="hm", coldkey="c", stake=0.0, validator_permit=False),
    NeuronInfo(uid=1, hotkey="hv", coldkey="c", stake=50.0, validator_permit=True),
    NeuronInfo(uid=2, hotkey="hs", coldkey="c", stake=5000.0, validator_permit=False),
))


def test_min_stake_admits_permits_or_stake():
    assert check_caller(GRAPH, "hv", force_validator_permit=False, min_stake=1000)[0] is False
    assert check_caller(GRAPH, "hs", force_validator_permit=False, min_stake=1000)[0] is False
    blocked, reason = check_caller(GRAPH, "hm", force_validator_permit=False, min_stake=1000)
    assert blocked and "--blacklist.min_stake 1000" in reason
    assert check_caller(GRAPH, "hm", force_validator_permit=False, min_stake=None)[0] is False
    assert check_caller(GRAPH, "hs", force_validator_permit=True, min_stake=1000)[0] is True


def test_policy_from_config_gates_rounds_off_the_devnet_only():
    devnet = CallerPolicy.from_config(BlacklistConfig(), local_devnet=True)
    prod = CallerPolicy.from_config(BlacklistConfig(), local_devnet=False)
    assert devnet.min_stake_for("AllReduce") is None
    assert prod.min_stake_for("AllReduce") == prod.min_stake_for("Train") == 1000.0
    assert prod.min_stake_for("IsAlive") is None
    forced = CallerPolicy.from_config(BlacklistConfig(round_callers="staked", min_stake=5),
                                      local_devnet=True)
    assert forced.min_stake_for("Train") == 5
    assert CallerPolicy.from_config(BlacklistConfig(round_callers="registered"),
                                    local_devnet=False).min_stake_for("Train") is None
    for bad in (dict(round_callers="all"), dict(min_stake=-1), dict(max_pending_rounds=0)):
        with pytest.raises(ConfigError, match="--blacklist."):
            BlacklistConfig(**bad)


def test_admit_round_one_per_hotkey_and_epoch_and_bounded():
    assert admit_round({}, ("a", 1), max_pending=3) is None
    assert "epoch 1" in admit_round({("a", 1): 1}, ("a", 1), max_pending=3)
    assert admit_round({("a", 1): 1}, ("a", 2), max_pending=3) is None  # the next epoch
    assert admit_round({("a", 1): 1}, ("b", 1), max_pending=3) is None
    assert "other epochs" in admit_round({("a", 1): 1, ("a", 2): 1}, ("a", 3), max_pending=9)
    assert admit_round({("a", 1): 1, ("a", 2): 1}, ("a", 3), max_pending=9, per_hotkey=3) is None
    assert "max_pending_rounds" in admit_round({("a", 1): 1, ("b", 1): 1}, ("c", 1),
                                               max_pending=2)
    assert "max_pending_rounds" in admit_round({("a", 1): 1, ("b", 1): 1}, ("a", 2),
                                               max_pending=2)
    gate = RoundGate(max_pending=3)
    assert gate.enter("a", 1) is None and gate.enter("a", 1) is not None
    assert gate.enter("a", 2) is None and gate.enter("a", 3) is not None
    assert gate.enter("b", 1) is None and gate.enter("c", 1) is not None and gate.pending() == 3
    gate.leave("a", 1)
    assert gate.enter("a", 1) is None and gate.enter("c", 1) is not None
    gate.leave("a", 2)
    assert gate.enter("c", 1) is None and gate.pending() == 3


def test_same_hotkey_same_epoch_gets_429_another_epoch_is_admitted(net):
    """On a real Axon (devnet policy, --blacklist.max_pending_rounds 2)."""
    info = target(net["axons"]["devnet"])

    async def go() -> list[bt.Synapse]:
        dendrites = [build_dendrite(net["wallets"]["flooder"]) for _ in range(4)]

        def ask(i: int, epoch: int) -> asyncio.Future:
            return asyncio.ensure_future(dendrites[i].call(
                info, P.AllReduce(epoch=epoch, round_id=f"e{epoch}-{i}"),
                timeout=ROUND_SECONDS + 10, deserialize=False))

        try:
            first = ask(0, 5)
            await asyncio.sleep(0.5)  # epoch 5's round is pending now
            again, other = ask(1, 5), ask(2, 6)
            await asyncio.sleep(0.5)
            third = ask(3, 7)  # a third epoch from the same hotkey
            return list(await asyncio.gather(first, again, other, third))
        finally:
            for d in dendrites:
                await d.aclose_session()

    first, again, other, third = asyncio.run(go())
    assert first.dendrite.status_code == 200 and first.success
    assert other.dendrite.status_code == 200 and other.success
    for refused, why in ((again, "pending for epoch 5"), (third, "other epochs")):
        assert refused.dendrite.status_code == 429, refused.dendrite
        rejection = P.transport_rejection(refused)
        assert rejection.reason is P.Reason.BUSY and why in rejection.detail, rejection


def test_check_request_body_gives_status_and_reason():
    syn = P.Train(epoch=1, nonce=2)
    good = syn.model_dump_json().encode()
    assert check_request_body(P.Train, good, syn.body_hash) is None
    assert check_request_body(P.Train, good, "0" * 64)[0] == 400
    assert check_request_body(P.Train, b'{"epoch": ', syn.body_hash)[0] == 400
    assert check_request_body(P.Train, b"[1]", syn.body_hash)[0] == 400
    status, reason = check_request_body(P.Train, b'{"loss": NaN}', syn.body_hash)
    assert status == 422 and "finite_number" in reason
    status, reason = check_request_body(P.Train, b'{"max_batches": 1000}', syn.body_hash)
    assert status == 422 and "max_batches" in reason
