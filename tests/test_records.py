"""Signed, typed progress records: honest peers are seen; forged or malformed records are not."""

from __future__ import annotations

import time

import hivemind
import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.utils import get_dht_time
from hivemind.utils.crypto import RSAPrivateKey

from hivemind_utils.dht import start_dht, visible_maddrs
from hivemind_utils.records import parse_progress, progress_key
from hivemind_utils.swarm_state import (
    ProgressReporter,
    SwarmState,
    read_swarm_state,
    should_start_round,
)
from template.config import DHTConfig

pytestmark = pytest.mark.multiprocess

RUN = "test-records"
HOTKEY = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
LOOPBACK = dict(host_maddrs=["/ip4/127.0.0.1/tcp/0"], use_relay=False, use_auto_relay=False,
                nat_port_map=False, auto_nat=False)


@pytest.fixture(scope="module")
def swarm():
    """Three honest nodes (validators installed) on loopback."""
    boot = start_dht(DHTConfig(), run_id=RUN)
    peers = [start_dht(DHTConfig(), run_id=RUN, initial_peers=visible_maddrs(boot))
             for _ in range(2)]
    yield [boot, *peers]
    for dht in [*peers, boot]:
        dht.shutdown()


def _record(epoch=1, samples=8, **overrides):
    value = dict(peer_id=b"peer", hotkey=HOTKEY, epoch=epoch, samples=samples,
                 tokens_per_second=10.0, time=get_dht_time())
    value.update(overrides)
    return value


def test_honest_peers_are_seen_and_counted(swarm):
    boot, a, b = swarm
    ProgressReporter(dht=a, hotkey=HOTKEY).report(epoch=3, samples=40, tokens_per_second=99.5)
    ProgressReporter(dht=b, hotkey=HOTKEY).report(epoch=3, samples=30, tokens_per_second=10.0)
    ProgressReporter(dht=boot, hotkey=HOTKEY).report(epoch=2, samples=500, tokens_per_second=1.0)
    state = read_swarm_state(a, run_id=RUN, target_batch_size=64)
    assert state.global_epoch == 3
    assert state.samples_accumulated == 70  # the epoch-2 straggler does not count
    assert should_start_round(state)
    assert not should_start_round(SwarmState(3, 71, 70))
    by_id = {p.peer_id: p for p in state.peers}
    assert set(by_id) == {str(d.peer_id) for d in swarm}
    mine = by_id[str(a.peer_id)]
    assert (mine.hotkey, mine.epoch, mine.samples, mine.tokens_per_second) == (HOTKEY, 3, 40, 99.5)
    assert 0 <= mine.age_seconds < 30
    # a second report overwrites the first (same signed subkey), it does not add a peer
    ProgressReporter(dht=a, hotkey=HOTKEY).report(epoch=3, samples=41, tokens_per_second=99.5)
    state = read_swarm_state(boot, run_id=RUN, target_batch_size=64)
    assert len(state.peers) == 3 and state.samples_accumulated == 71


def test_forged_and_malformed_records_are_not_seen():
    run = RUN + "-forged"  # every honest node of a run validates that run's keys
    boot = start_dht(DHTConfig(), run_id=run)
    honest = start_dht(DHTConfig(), run_id=run, initial_peers=visible_maddrs(boot))
    # a rogue node with NO validators: it signs nothing and checks nothing
    rogue = hivemind.DHT(initial_peers=visible_maddrs(boot), start=True, **LOOPBACK)
    # a node that signs correctly but does not check the schema
    key = RSAPrivateKey()
    sloppy = hivemind.DHT(initial_peers=visible_maddrs(boot), start=True,
                          record_validators=[RSASignatureValidator(key)], **LOOPBACK)
    try:
        ProgressReporter(dht=honest, hotkey=HOTKEY).report(epoch=1, samples=8,
                                                           tokens_per_second=1.0)
        exp = get_dht_time() + 30
        victim_subkey = honest.record_subkey
        other_subkey = RSASignatureValidator(RSAPrivateKey()).local_public_key
        # forged: another owner's subkey without (or with a fake) signature
        rogue.store(progress_key(run), subkey=other_subkey, value=_record(samples=10_000),
                    expiration_time=exp)
        rogue.store(progress_key(run), subkey=victim_subkey, value=_record(samples=20_000),
                    expiration_time=exp + 1)
        # signed, but the schema is wrong: a negative count, a float epoch, a bad hotkey
        sloppy_subkey = RSASignatureValidator(key).local_public_key
        for bad in (_record(samples=-5), _record(epoch=1.0), _record(hotkey="not-a-hotkey")):
            sloppy.store(progress_key(run), subkey=sloppy_subkey, value=bad, expiration_time=exp)
        for reader in (boot, honest):
            state = read_swarm_state(reader, run_id=run, target_batch_size=64)
            assert [p.peer_id for p in state.peers] == [str(honest.peer_id)]
            assert state.samples_accumulated == 8
    finally:
        for dht in (sloppy, rogue, honest, boot):
            dht.shutdown()


def test_records_expire_and_can_be_cleared(swarm):
    boot, a, b = swarm
    run = RUN + "-expiry"
    dht_a = start_dht(DHTConfig(), run_id=run, initial_peers=visible_maddrs(boot))
    dht_b = start_dht(DHTConfig(), run_id=run, initial_peers=visible_maddrs(boot))
    try:
        ProgressReporter(dht=dht_a, hotkey=HOTKEY, expiration=1.5).report(
            epoch=0, samples=1, tokens_per_second=0.0)
        reporter_b = ProgressReporter(dht=dht_b, hotkey=HOTKEY, expiration=60)
        reporter_b.report(epoch=0, samples=2, tokens_per_second=0.0)
        assert len(read_swarm_state(boot, run_id=run, target_batch_size=4).peers) == 2
        time.sleep(2.0)
        state = read_swarm_state(boot, run_id=run, target_batch_size=4)
        assert [p.peer_id for p in state.peers] == [str(dht_b.peer_id)]
        reporter_b.clear()
        assert read_swarm_state(boot, run_id=run, target_batch_size=4).peers == []
    finally:
        dht_a.shutdown()
        dht_b.shutdown()


SUBKEY = RSASignatureValidator(RSAPrivateKey()).local_public_key


@pytest.mark.parametrize(
    ("subkey", "value", "reason"),
    [
        (b"plain", _record(), "subkey"),
        (SUBKEY, None, "peer left"),
        (SUBKEY, [1, 2], "expected a dict"),
        (SUBKEY, _record(samples=-1), "schema"),
        (SUBKEY, _record(samples=True), "schema"),
        (SUBKEY, _record(epoch="1"), "schema"),
        (SUBKEY, _record(tokens_per_second=3), "schema"),
        (SUBKEY, _record(peer_id="str"), "schema"),
        (SUBKEY, _record(extra=1), "extra fields"),
        (SUBKEY, _record(time=get_dht_time() + 10**6), "future"),
    ],
)
def test_parse_progress_rejects_bad_values_with_a_reason(subkey, value, reason):
    result = parse_progress(subkey, value, now=get_dht_time())
    assert isinstance(result, str) and reason in result


def test_parse_progress_accepts_a_good_record():
    record = parse_progress(SUBKEY, _record(epoch=4, samples=9), now=get_dht_time())
    assert not isinstance(record, str) and (record.epoch, record.samples) == (4, 9)
