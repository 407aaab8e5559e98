"""LocalChain on a real SQLite file (also from several processes), consensus, PeerID binding,
and the BittensorChain adapter offline."""

from __future__ import annotations

import multiprocessing as mp
import socket
import sqlite3
import threading
import time
from types import SimpleNamespace

import bittensor as bt
import pytest

from template.chain import ChainError, build_chain, encode_binding, resolve_bindings
from template.chain.base import Commitment
from template.chain.consensus import incentive, stake_weighted_quantile
from template.chain.local import LocalChain
from template.chain.subtensor import BittensorChain
from template.chain.wallets import create_wallet
from template.config import Config, LocalChainConfig

PEER_A = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
PEER_B = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"



@pytest.fixture(scope="module")
def wallets(tmp_path_factory):
    path = tmp_path_factory.mktemp("wallets")
    return {name: create_wallet(path, name) for name in ("m0", "m1", "m2", "v0", "v1", "x")}


def new_chain(tmp_path, **kwargs) -> LocalChain:
    return LocalChain(tmp_path / "chain.sqlite", **kwargs)


def test_registration_is_sequential_idempotent_and_capped(tmp_path, wallets):
    chain = new_chain(tmp_path, max_uids=3)
    uids = [chain.register(wallets[n]) for n in ("m0", "m1", "v0")]
    assert uids == [0, 1, 2]
    assert chain.register(wallets["m1"]) == 1
    with pytest.raises(ChainError, match="full"):
        chain.register(wallets["x"])
    graph = chain.metagraph()
    assert graph.hotkeys == [wallets[n].hotkey.ss58_address for n in ("m0", "m1", "v0")]
    assert graph.coldkeys[0] == wallets["m0"].coldkeypub.ss58_address


def test_validator_permit_needs_stake_and_top_k(tmp_path, wallets):
    chain = new_chain(tmp_path, max_validators=1, validator_min_stake=10)
    for name in ("m0", "v0", "v1"):
        chain.register(wallets[name])
    chain.add_stake(wallets["v0"].hotkey.ss58_address, 100)
    chain.add_stake(wallets["v1"].hotkey.ss58_address, 50)
    assert chain.metagraph().validator_permits == [False, True, False]  # top-1 only
    chain.add_stake(wallets["v1"].hotkey.ss58_address, 100)
    assert chain.metagraph().validator_permits == [False, False, True]
    assert chain.metagraph().stakes == [0.0, 100.0, 150.0]
    with pytest.raises(ChainError):
        chain.add_stake(wallets["x"].hotkey.ss58_address, 1)


def test_serve_axon_updates_the_metagraph(tmp_path, wallets):
    chain = new_chain(tmp_path)
    uid = chain.register(wallets["m0"])
    assert chain.serve_axon(wallets["m0"], ip="127.0.0.1", port=9123).success
    assert not chain.serve_axon(wallets["x"], ip="127.0.0.1", port=9123).success
    axon = chain.metagraph().axon(uid)
    assert (axon.ip, axon.port, axon.hotkey) == ("127.0.0.1", 9123,
                                                 wallets["m0"].hotkey.ss58_address)


def test_weights_validated_normalised_and_rate_limited(tmp_path, wallets):
    chain = new_chain(tmp_path, block_time=0.05, weights_rate_limit=4)
    for name in ("m0", "m1", "v0"):
        chain.register(wallets[name])
    v0 = wallets["v0"]
    assert "permit" in chain.set_weights(v0, [0, 1], [1, 1]).message  # no stake yet
    chain.add_stake(v0.hotkey.ss58_address, 10)
    assert not chain.set_weights(wallets["m0"], [0, 1], [1, 1]).success
    for uids, weights in (([0, 7], [1, 1]), ([0, 1], [1, float("nan")]), ([0, 0], [1, 1]),
                          ([0, 1], [0, 0]), ([0, 1], [1]), ([0, 1], [-1, 2])):
        assert not chain.set_weights(v0, uids, weights).success
    result = chain.set_weights(v0, [0, 1], [1, 3])
    assert result.success, result
    assert chain.weights() == {2: {0: 0.25, 1: 0.75}}
    limited = chain.set_weights(v0, [0, 1], [1, 1])
    assert not limited.success and 0 < limited.retry_after_blocks <= 4
    assert chain.weights() == {2: {0: 0.25, 1: 0.75}}  # unchanged
    time.sleep(limited.retry_after_blocks * 0.05 + 0.06)
    assert chain.set_weights(v0, [1], [1]).success
    assert chain.weights() == {2: {1: 1.0}}  # the row is replaced, not merged


def test_blocks_follow_the_clock_and_genesis_params_are_fixed(tmp_path):
    chain = new_chain(tmp_path, block_time=0.05)
    first = chain.block()
    time.sleep(0.16)
    assert chain.block() >= first + 3
    again = new_chain(tmp_path, block_time=0.05)
    assert again.genesis == chain.genesis
    with pytest.raises(ChainError, match="--localchain.block_time"):
        new_chain(tmp_path, block_time=1.0)
    with pytest.raises(ChainError, match="--localchain.weights_rate_limit"):
        new_chain(tmp_path, block_time=0.05, weights_rate_limit=3)


def test_commitments_are_signed_and_checked_on_read(tmp_path, wallets):
    chain = new_chain(tmp_path)
    chain.register(wallets["m0"])
    chain.register(wallets["m1"])
    assert chain.commit(wallets["m0"], "hello").success
    assert not chain.commit(wallets["x"], "unregistered").success
    # m1 tries to publish a commitment under m0's... its own uid, signed by someone else:
    forged = wallets["m0"].hotkey.sign("localchain-commit:1:"
                                       f"{wallets['m1'].hotkey.ss58_address}:evil").hex()
    assert chain.commit_signed(wallets["m1"].hotkey.ss58_address, "evil", forged).success
    got = chain.commitments()
    assert set(got) == {0} and got[0].data == "hello"
    # Tampering with the stored data invalidates the signature.
    with sqlite3.connect(tmp_path / "chain.sqlite") as db:
        db.execute("UPDATE commitments SET data = 'changed' WHERE uid = 0")
    assert chain.commitments() == {}


def test_peer_id_binding_and_duplicate_claims(tmp_path, wallets):
    chain = new_chain(tmp_path, block_time=0.05)
    for name in ("m0", "m1", "m2"):
        chain.register(wallets[name])
    assert chain.bind_peer_id(wallets["m1"], PEER_A).success
    time.sleep(0.12)
    assert chain.bind_peer_id(wallets["m0"], PEER_A).success  # later claim of the same PeerID
    assert chain.bind_peer_id(wallets["m2"], PEER_B).success
    assert chain.peer_bindings() == {1: PEER_A, 2: PEER_B}
    block = chain.commitments()[1].block
    time.sleep(0.12)
    assert chain.bind_peer_id(wallets["m1"], PEER_A).message == "already bound"
    assert chain.commitments()[1].block == block  # re-binding keeps the early claim
    with pytest.raises(ValueError):
        encode_binding("not/a/peer")


def test_resolve_bindings_rule_is_pure():
    claims = [Commitment(uid=5, hotkey="h5", data=encode_binding(PEER_A), block=10),
              Commitment(uid=2, hotkey="h2", data=encode_binding(PEER_A), block=10),
              Commitment(uid=7, hotkey="h7", data=encode_binding(PEER_A), block=3),
              Commitment(uid=8, hotkey="h8", data="something else", block=1),
              Commitment(uid=9, hotkey="h9", data="dt1:bad id", block=1)]
    assert resolve_bindings(claims) == {7: PEER_A}
    assert resolve_bindings(claims[:2]) == {2: PEER_A}  # same block: lower uid


def test_stake_weighted_median_clips_a_minority_validator():
    assert stake_weighted_quantile([0.1, 0.5, 0.9], [0.2, 0.5, 0.3], 0.5) == 0.5
    weights = {10: {0: 0.5, 1: 0.5}, 11: {0: 0.5, 1: 0.5}, 12: {0: 0.0, 1: 0.0, 2: 1.0}}
    stakes = {10: 40.0, 11: 40.0, 12: 20.0}
    permits = {10: True, 11: True, 12: True}
    inc = incentive(weights, stakes, permits, [0, 1, 2])
    assert inc[2] == 0.0  # only 20% of stake supports uid 2: clipped to the median (0)
    assert inc[0] == pytest.approx(0.5) and inc[1] == pytest.approx(0.5)
    # Without a permit a validator's weights do not count at all.
    assert incentive(weights, stakes, {10: False, 11: False, 12: True}, [0, 1, 2])[2] == 1.0
    assert incentive({}, stakes, permits, [0, 1]) == {0: 0.0, 1: 0.0}


def test_local_chain_incentive_from_weights(tmp_path, wallets):
    chain = new_chain(tmp_path, weights_rate_limit=0)
    for name in ("m0", "m1", "v0", "v1"):
        chain.register(wallets[name])
    chain.add_stake(wallets["v0"].hotkey.ss58_address, 60)
    chain.add_stake(wallets["v1"].hotkey.ss58_address, 40)
    assert chain.set_weights(wallets["v0"], [0, 1], [3, 1]).success
    assert chain.set_weights(wallets["v1"], [0, 1], [1, 3]).success
    inc = chain.incentive()
    assert inc[0] > inc[1] > 0 and inc[2] == inc[3] == 0
    assert sum(inc.values()) == pytest.approx(1.0)


# ---------------------------------------------------------------- several processes


def _worker(path: str, wallet_path: str, name: str, is_validator: bool, n_miners: int) -> None:
    chain = LocalChain(path, weights_rate_limit=0)
    wallet = bt.Wallet(name=name, hotkey="default", path=wallet_path)
    uid = chain.register(wallet)
    assert chain.commit(wallet, f"hello from {name} uid {uid}").success
    if is_validator:
        chain.add_stake(wallet.hotkey.ss58_address, 10)
        deadline = time.time() + 20
        while len(chain.metagraph().uids) < n_miners and time.time() < deadline:
            time.sleep(0.01)
        for round_ in range(5):
            result = chain.set_weights(wallet, list(range(n_miners)), [1.0 + round_] * n_miners)
            assert result.success, result
    chain.close()


def test_several_processes_share_one_chain_consistently(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    LocalChain(path, weights_rate_limit=0)  # genesis
    names = [f"n{i}" for i in range(8)]
    for name in names:
        create_wallet(tmp_path, name)
    validators = {"n6", "n7"}
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(path, str(tmp_path), n, n in validators, 8))
             for n in names]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    chain = LocalChain(path, weights_rate_limit=0)
    graph = chain.metagraph()
    assert sorted(graph.uids) == list(range(8))
    assert len(set(graph.hotkeys)) == 8
    commitments = chain.commitments()
    assert {c.data for c in commitments.values()} == {
        f"hello from {n} uid {graph.uid_of(bt.Wallet(name=n, hotkey='default', path=str(tmp_path)).hotkey.ss58_address)}"  # noqa: E501
        for n in names}
    weights = chain.weights()
    assert set(weights) == {uid for uid, n in enumerate(graph.neurons) if n.stake > 0}
    assert all(len(row) == 8 and sum(row.values()) == pytest.approx(1) for row in weights.values())


# ---------------------------------------------------------------- selection and adapter


def test_build_chain_selects_by_network(tmp_path):
    cfg = Config(localchain=LocalChainConfig(path=str(tmp_path / "c.sqlite")))
    chain = build_chain(cfg)
    assert isinstance(chain, LocalChain) and chain.netuid == cfg.netuid


def test_bittensor_chain_reports_unreachable_endpoints(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(ChainError, match="--subtensor.network"):
        BittensorChain(network=f"ws://127.0.0.1:{closed}", netuid=1)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def answer_500() -> None:  # a local endpoint that answers, but is no substrate node
        conn, _ = server.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
        conn.close()

    threading.Thread(target=answer_500, daemon=True).start()
    with pytest.raises(ChainError, match="cannot reach"):
        BittensorChain(network=f"ws://127.0.0.1:{server.getsockname()[1]}", netuid=1)
    server.close()


class RecordingSubtensor:
    """Stands in for bittensor.Subtensor offline (no node exists here); records calls."""

    def __init__(self, hotkeys: list[str]):
        self.calls: list[tuple] = []
        self.hotkeys = hotkeys

    def _ok(self, *call):
        self.calls.append(call)
        return SimpleNamespace(success=True, message="ok")

    def set_weights(self, wallet, netuid, uids, weights):
        return self._ok("set_weights", wallet, netuid, uids, weights)

    def set_commitment(self, wallet, netuid, data):
        return self._ok("set_commitment", wallet, netuid, data)

    def get_current_block(self):
        return 1234

    def get_uid_for_hotkey_on_subnet(self, hotkey, netuid):
        return self.hotkeys.index(hotkey) if hotkey in self.hotkeys else None

    def burned_register(self, wallet, netuid):
        self.hotkeys.append(wallet.hotkey.ss58_address)
        return self._ok("burned_register", wallet, netuid)

    def metagraph(self, netuid):
        axons = [bt.AxonInfo(version=1, ip=f"10.0.0.{i + 1}", port=8000 + i, ip_type=4,
                             hotkey=h, coldkey="c" + h) for i, h in enumerate(self.hotkeys)]
        return SimpleNamespace(uids=list(range(len(axons))), S=[5.0] * len(axons),
                               validator_permit=[True] * len(axons), axons=axons, block=77)

    def weights(self, netuid):
        return [(1, [(0, 65535), (1, 21845)])]

    def query_map(self, module, name, params):
        assert (module, name, params) == ("Commitments", "CommitmentOf", [1])
        data = encode_binding(PEER_A).encode().hex()
        yield self.hotkeys[0], {"block": 42, "deposit": 0,
                                "info": {"fields": [{f"Raw{len(data) // 2}": "0x" + data}]}}
        yield "5Unregistered", {"block": 1, "info": {"fields": [{"Raw3": "0x616263"}]}}


def test_bittensor_chain_builds_the_right_calls(wallets):
    fake = RecordingSubtensor(["hk0"])
    chain = BittensorChain(network="finney", netuid=1, subtensor=fake)
    wallet = wallets["m0"]
    assert chain.block() == 1234
    assert chain.register(wallet) == 1
    assert chain.register(wallet) == 1  # registered already: no second extrinsic
    assert [c[0] for c in fake.calls] == ["burned_register"]
    assert chain.set_weights(wallet, [0, 1], [0.25, 0.75]).success
    assert fake.calls[-1] == ("set_weights", wallet, 1, [0, 1], [0.25, 0.75])
    assert chain.bind_peer_id(wallet, PEER_B).success
    assert fake.calls[-1] == ("set_commitment", wallet, 1, encode_binding(PEER_B))
    graph = chain.metagraph()
    assert graph.block == 77 and graph.uids == [0, 1] and graph.axon(1).ip == "10.0.0.2"
    assert graph.neuron(0).validator_permit and graph.stakes == [5.0, 5.0]
    assert chain.weights() == {1: {0: pytest.approx(0.75), 1: pytest.approx(0.25)}}
    commitments = chain.commitments()
    assert list(commitments) == [0] and commitments[0].block == 42
    assert chain.peer_bindings() == {0: PEER_A}
