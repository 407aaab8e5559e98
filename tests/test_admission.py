"""Only records signed by keys bound on chain steer the swarm; claims are bounded.

Forged records are validly signed (by a key the forger made), so the DHT's own signature check
lets them through: the reader's admission is what must refuse them.
"""

from __future__ import annotations

import random

import pytest

from hivemind_utils.dht import start_dht, visible_maddrs
from hivemind_utils.records import record_key_id
from hivemind_utils.swarm_state import (
    Admission,
    AdmissionCache,
    ProgressReporter,
    read_swarm_state,
)
from template.chain.base import Commitment
from template.chain.identity import (
    decode_binding,
    decode_record_key,
    encode_binding,
    resolve_record_keys,
)
from template.config import DHTConfig

pytestmark = pytest.mark.multiprocess

RUN = "test-admission"
PEER = "12D3KooWKzGC1CRXAGhYQDXK8f1Y8DfQyK2jS295nt5adDvBwx1K"
HONEST = "5" + "H" * 47
FORGER = "5" + "F" * 47
KEY = "0123456789abcdef" * 2


def test_binding_names_the_record_key_and_old_bindings_still_read():
    data = encode_binding(PEER, KEY)
    assert decode_binding(data) == PEER and decode_record_key(data) == KEY
    assert decode_binding(encode_binding(PEER)) == PEER and decode_record_key(f"dt1:{PEER}") is None
    for bad in (f"dt2:{PEER}", f"dt2:{PEER}:{KEY[:-1]}", f"dt2:{PEER}:{KEY.upper()}",
                f"dt2::{KEY}", f"dt3:{PEER}:{KEY}"):
        assert decode_binding(bad) is None and decode_record_key(bad) is None, bad
    with pytest.raises(ValueError, match="record key id"):
        encode_binding(PEER, "xyz")


def test_a_record_key_claimed_twice_belongs_to_the_earliest_claim():
    late = Commitment(uid=1, hotkey=FORGER, data=encode_binding(PEER, KEY), block=9)
    early = Commitment(uid=2, hotkey=HONEST, data=encode_binding(PEER, KEY), block=3)
    assert resolve_record_keys([late, early]) == {KEY: HONEST}


@pytest.fixture(scope="module")
def swarm():
    """A bootstrap node, an honest bound peer, and a forger with two signing keys of its own."""
    boot = start_dht(DHTConfig(), run_id=RUN)
    nodes = [boot]
    try:
        for _ in range(3):
            nodes.append(start_dht(DHTConfig(), run_id=RUN, initial_peers=visible_maddrs(boot)))
        yield nodes
    finally:
        for node in reversed(nodes):
            node.shutdown()


def _admission(honest, **bounds) -> Admission:
    return Admission(keys={record_key_id(honest.record_subkey): HONEST}, **bounds)


def test_forged_signed_records_of_any_epoch_and_size_do_not_count(swarm):
    boot, honest, *forgers = swarm
    assert ProgressReporter(dht=honest, hotkey=HONEST).report(epoch=2, samples=40,
                                                               tokens_per_second=1.0)
    rng = random.Random(7)
    for forger in forgers:  # varied claims: far future, next epoch, same epoch with huge samples
        epoch = rng.choice([10**9, 3, 2])
        assert ProgressReporter(dht=forger, hotkey=rng.choice([FORGER, HONEST])).report(
            epoch=epoch, samples=rng.choice([10**12, 41]), tokens_per_second=1e9, finished=True)

    naive = read_swarm_state(boot, run_id=RUN, target_batch_size=64)
    assert len(naive.peers) == 3  # what the first wave's reader believed
    state = read_swarm_state(boot, run_id=RUN, target_batch_size=64,
                             admission=_admission(honest, max_epoch=3, max_samples=64))
    assert (state.global_epoch, state.samples_accumulated) == (2, 40)
    assert [p.hotkey for p in state.peers] == [HONEST]
    assert len(state.unbound) == 2  # shown to inspectors, counted nowhere


def test_bound_claims_beyond_the_bounds_are_ignored_or_capped(swarm):
    boot, honest, *_ = swarm
    reporter = ProgressReporter(dht=honest, hotkey=HONEST)
    assert reporter.report(epoch=7, samples=10**12, tokens_per_second=1.0)
    state = read_swarm_state(boot, run_id=RUN, target_batch_size=64,
                             admission=_admission(honest, max_epoch=3, max_samples=64))
    assert state.implausible == 1 and not state.peers
    state = read_swarm_state(boot, run_id=RUN, target_batch_size=64,
                             admission=_admission(honest, max_epoch=7, max_samples=64))
    assert state.global_epoch == 7 and state.samples_accumulated == 64


def test_cache_reloads_sooner_when_a_bound_record_is_beyond_its_bound(swarm):
    boot, honest, *_ = swarm
    assert ProgressReporter(dht=honest, hotkey=HONEST).report(epoch=5, samples=8,
                                                               tokens_per_second=1.0)
    latest = [3]  # the store's last canonical epoch; the swarm pushes epoch 4 meanwhile
    loads = []

    def load() -> Admission:
        loads.append(latest[0])
        return _admission(honest, max_epoch=latest[0] + 1)

    cache = AdmissionCache(load, refresh_interval=3600.0, min_interval=0.0)
    assert read_swarm_state(boot, run_id=RUN, target_batch_size=64,
                            admission=cache).global_epoch == 0
    latest[0] = 4
    assert read_swarm_state(boot, run_id=RUN, target_batch_size=64,
                            admission=cache).global_epoch == 5
    assert loads == [3, 3, 4]
