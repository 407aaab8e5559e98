"""The miner's round trigger and desk: pure decisions on literal swarm states."""

from __future__ import annotations

import threading

from hivemind_utils.swarm_state import PeerProgress, SwarmState
from template.miner.rounds import (
    RoundDesk,
    RoundReport,
    RoundRequest,
    swarm_ready,
    wait_for_round,
)


def _peer(name: str, epoch: int, samples: int, finished: bool) -> PeerProgress:
    return PeerProgress(peer_id=name, hotkey="hk", epoch=epoch, samples=samples,
                        tokens_per_second=1.0, age_seconds=0.0, finished=finished)


def _state(*peers: PeerProgress, target: int = 1000) -> SwarmState:
    epoch = max(p.epoch for p in peers)
    samples = sum(p.samples for p in peers if p.epoch == epoch)
    return SwarmState(global_epoch=epoch, target_batch_size=target, samples_accumulated=samples,
                      peers=list(peers))


def test_ready_when_every_live_peer_is_done_or_the_target_batch_is_reached():
    done = _state(_peer("a", 4, 16, True), _peer("b", 4, 16, True))
    assert swarm_ready(done, epoch=4, min_peers=2)
    assert not swarm_ready(done, epoch=3, min_peers=2)  # the swarm is past us: catch up instead
    assert not swarm_ready(done, epoch=4, min_peers=3)  # too few peers for a group
    busy = _state(_peer("a", 4, 16, True), _peer("b", 4, 8, False))
    assert not swarm_ready(busy, epoch=4, min_peers=2)
    assert swarm_ready(_state(*busy.peers, target=24), epoch=4, min_peers=2)


def test_a_peer_still_at_the_previous_epoch_is_waited_for_but_not_forever():
    """The checkpoint pusher steps last: a round started without it makes it miss the epoch."""
    pusher_behind = _state(_peer("a", 4, 16, True), _peer("b", 4, 16, True),
                           _peer("c", 3, 16, True))
    assert not swarm_ready(pusher_behind, epoch=4, min_peers=2, waited=1.0, straggler_wait=30)
    assert swarm_ready(pusher_behind, epoch=4, min_peers=2, waited=31.0, straggler_wait=30)


def test_wait_for_round_honours_requests_and_refuses_other_epochs():
    desk, stop = RoundDesk(), threading.Event()
    wrong = RoundRequest(epoch=2, round_id="r-old")
    right = RoundRequest(epoch=5, round_id="r")
    desk.submit(wrong)
    desk.submit(right)
    beats: list[int] = []
    got = wait_for_round(desk=desk, epoch=5, read_state=lambda: _state(_peer("a", 5, 1, False)),
                         heartbeat=lambda: beats.append(1), self_trigger=False, min_peers=2,
                         poll_interval=0.01, timeout=2.0, stop=stop)
    assert got is right
    report = wrong.done.result(timeout=1)
    assert not report.success and "wrong epoch" in report.error


def test_wait_for_round_returns_none_once_the_swarm_moved_on():
    desk, stop = RoundDesk(), threading.Event()
    ahead = _state(_peer("a", 6, 1, False))
    got = wait_for_round(desk=desk, epoch=5, read_state=lambda: ahead, heartbeat=lambda: None,
                         self_trigger=True, min_peers=2, poll_interval=0.01, timeout=2.0,
                         stop=stop)
    assert got is None
    ready = _state(_peer("a", 5, 16, True), _peer("b", 5, 16, True))
    got = wait_for_round(desk=desk, epoch=5, read_state=lambda: ready, heartbeat=lambda: None,
                         self_trigger=True, min_peers=2, poll_interval=0.01, timeout=2.0,
                         stop=stop)
    assert got is not None and got.epoch == 5


def test_every_validator_asking_for_one_epoch_gets_the_report_of_its_one_round():
    desk = RoundDesk()
    first, second = RoundRequest(epoch=3, round_id="v1"), RoundRequest(epoch=3, round_id="v2")
    later_epoch = RoundRequest(epoch=4, round_id="v1-next")
    for request in (first, second, later_epoch):
        desk.submit(request)
    taken = desk.take(timeout=1)
    assert taken is first
    ok = RoundReport(success=True, participants=("a", "b"), fingerprint=(1.0,))
    desk.finish(taken, ok)
    assert first.done.result(timeout=1) is ok and second.done.result(timeout=1) is ok
    assert not later_epoch.done.done() and desk.take(timeout=1) is later_epoch
    late = RoundRequest(epoch=3, round_id="v3")  # a slower validator, after the round
    assert desk.submit(late).result(timeout=1) is ok
    assert not desk.pending()


def test_a_failed_round_is_not_shared_so_a_retry_runs_a_new_one():
    desk = RoundDesk()
    first, retry = RoundRequest(epoch=3, round_id="v1"), RoundRequest(epoch=3, round_id="v1-r1")
    desk.submit(first)
    desk.submit(retry)
    desk.finish(desk.take(timeout=1), RoundReport(success=False, error="no group"))
    assert not first.done.result(timeout=1).success
    assert not retry.done.done() and desk.take(timeout=1) is retry
