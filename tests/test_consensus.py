"""Checkpoint pusher rule and resync rule."""

from __future__ import annotations

from collections import Counter

from template.consensus import checkpoint_pusher, needs_resync, pusher_order


def test_pusher_is_one_participant_and_independent_of_order():
    peers = ["QmA", "QmB", "QmC"]
    first = checkpoint_pusher("run", 3, peers)
    assert first in peers
    assert checkpoint_pusher("run", 3, list(reversed(peers))) == first
    assert checkpoint_pusher("run", 3, peers + ["QmA"]) == first


def test_pusher_rotates_between_epochs():
    peers = [f"Qm{i}" for i in range(4)]
    counts = Counter(checkpoint_pusher("run", e, peers) for e in range(400))
    assert set(counts) == set(peers)
    assert min(counts.values()) > 50


def test_no_participants_no_pusher():
    assert checkpoint_pusher("run", 1, []) is None


def test_resync_on_drift_or_schedule():
    assert needs_resync(epoch=3, drift=1e-2, drift_threshold=1e-3, resync_every=0)
    assert not needs_resync(epoch=3, drift=1e-5, drift_threshold=1e-3, resync_every=0)
    assert not needs_resync(epoch=3, drift=None, drift_threshold=1e-3, resync_every=0)
    assert needs_resync(epoch=10, drift=None, drift_threshold=1e-3, resync_every=5)
    assert not needs_resync(epoch=0, drift=None, drift_threshold=1e-3, resync_every=5)


def test_pusher_order_ranks_every_participant_once_the_pusher_first():
    peers = [f"Qm{i}" for i in range(6)]
    order = pusher_order("run", 3, peers + peers[:2])
    assert sorted(order) == sorted(peers) and order[0] == checkpoint_pusher("run", 3, peers)
    assert pusher_order("run", 3, list(reversed(peers))) == order
