"""Validator state: atomic persistence (also under SIGKILL), restart, weights at the rate limit."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time

import pytest

from template.chain.local import LocalChain
from template.chain.wallets import create_wallet
from template.config import parse_config
from template.data import ensure_demo_shards
from template.validator.epoch import EpochRecord, TrainResult
from template.validator.scoring import PeerTransfer
from template.validator.state import ValidatorState, forget_replaced, load_state, save_state
from template.validator.validator import Validator
from template.validator.weights import weight_vector, weights_due


def _state(n: int) -> ValidatorState:
    record = EpochRecord(epoch=n, train={1: TrainResult(0.5, 16.0)}, participants=[1, 2],
                         transfers={1: PeerTransfer(100, 0.5), 2: None}, drift={1: 1e-7},
                         bandwidth_observed=True, consensus_checked=True, allreduce_done=True)
    return ValidatorState(ema={u: u / (n + 1) for u in range(n % 50)}, hotkeys={1: "hk1"},
                          last_scores={1: 0.25}, last_epoch=n, current=record,
                          last_weights_block=3 * n, rounds={"train": n},
                          references={n: [0.5, -1.25], n + 1: [0.25, 2.0]})


def test_round_trip_and_corrupt_file_is_moved_aside(tmp_path):
    path = tmp_path / "state.json"
    assert load_state(path) == ValidatorState()
    save_state(_state(7), path)
    assert load_state(path) == _state(7)
    path.write_text("{not json")
    assert load_state(path) == ValidatorState()
    assert list(tmp_path.glob("state.json.corrupt-*")) and not path.exists()


def test_replaced_hotkeys_lose_their_scores():
    state = ValidatorState(ema={1: 0.5, 2: 0.4, 3: 0.1}, hotkeys={1: "a", 2: "b", 3: "c"})
    assert forget_replaced(state, {1: "a", 2: "new"}) == [2, 3]
    assert state.ema == {1: 0.5} and state.hotkeys == {1: "a"}


def _save_forever(path: str) -> None:
    n = 0
    while True:
        save_state(_state(n), path)
        n += 1


def test_state_survives_sigkill_mid_write(tmp_path):
    path = str(tmp_path / "state.json")
    save_state(_state(0), path)
    ctx = multiprocessing.get_context("fork")
    for delay in (0.05, 0.13, 0.31):
        child = ctx.Process(target=_save_forever, args=(path,))
        child.start()
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        state = load_state(path)  # never torn: a complete old or new state
        assert state == _state(state.last_epoch)
        with open(path) as handle:
            assert json.loads(handle.read())["version"] == 1


def test_weights_rules():
    assert weights_due(block=5, last_block=-1, rate_limit=100)
    assert not weights_due(block=50, last_block=10, rate_limit=100)
    assert weights_due(block=110, last_block=10, rate_limit=100)


# ------------------------------------------------------------------ the Validator object



@pytest.fixture
def setup(tmp_path):
    ensure_demo_shards(tmp_path / "shards", max_pages=64)
    flags = ["--wallet.name", "validator", "--wallet.path", str(tmp_path / "wallets"),
             "--localchain.path", str(tmp_path / "chain.sqlite"),
             "--localchain.block_time", "0.5", "--localchain.weights_rate_limit", "60",
             "--neuron.workdir", str(tmp_path / "work"), "--neuron.device", "cpu",
             "--data.dir", str(tmp_path / "shards"), "--store.dir", str(tmp_path / "ckpt"),
             "--wandb.mode", "disabled", "--logging.dir", str(tmp_path / "logs"),
             "--validator.poll_interval", "0.1"]
    cfg = parse_config(flags)
    chain = LocalChain(cfg.localchain.path, block_time=0.5, weights_rate_limit=60)
    validator = create_wallet(tmp_path / "wallets", "validator")
    miners = [create_wallet(tmp_path / "wallets", f"miner{i}") for i in range(2)]
    chain.register(validator)
    uids = [chain.register(m) for m in miners]
    chain.add_stake(validator.hotkey.ss58_address, 100)
    return cfg, chain, uids


def test_validator_scores_sets_weights_and_restarts_without_losing_anything(setup):
    cfg, chain, (a, b) = setup
    v = Validator(cfg, chain=chain)
    try:
        v.run(max_steps=2)  # no swarm yet: nothing to score, the loop just keeps going
        assert v.state.last_epoch == -1 and not v.maybe_set_weights()  # no scores yet
        v.state.current = EpochRecord(epoch=0, train={a: TrainResult(1.0, 32.0),
                                                      b: TrainResult(0.0, 0.0)})
        scores = v.finish_epoch()
        assert scores[a] > 0 and scores[b] == 0 and v.state.last_epoch == 0
        assert v.maybe_set_weights()
        assert chain.weights()[v.uid] == {a: 1.0}
        assert not v.maybe_set_weights()  # rate limit: 60 blocks of 0.5 s
        v.state.references = {1: [0.5] * 4}  # as a judged round of epoch 0 leaves it
        v.save()
        saved = load_state(v.state_path)
        assert saved.ema == v.state.ema and saved.last_weights_block >= 0
    finally:
        v.close()
    restarted = Validator(cfg, chain=chain)  # a fresh process would read the same file
    try:
        assert restarted.state.ema == saved.ema and restarted.state.last_epoch == 0
        assert restarted.reference.expected == {1: [0.5] * 4}  # a forged epoch-1 stays unread
        assert not restarted.maybe_set_weights()  # the rate limit survived the restart
        restarted.state.current = EpochRecord(epoch=0)  # an epoch is never scored twice
        assert restarted.finish_epoch() == {}
    finally:
        restarted.close()
    assert weight_vector(saved.ema, chain.metagraph()) == ([a], [1.0])
