"""Checkpoint duty after a round: the first-ranked member pushes, signed; the others cover for
it; a member that finds other weights under the tag stores its own as a candidate.

Real wallets, a real local chain (the PeerID bindings readers check) and a directory store.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from hivemind_utils.round_stats import AveragingResult
from template.attestation import hotkey_peers, resolve, sign_push, within
from template.chain.local import LocalChain
from template.chain.wallets import create_wallet
from template.checkpoints import LocalStore, tag_for
from template.config import Config, ModelConfig, OptimConfig, StoreConfig, WandbConfig
from template.consensus import pusher_order
from template.miner.miner import Miner
from template.model import build_model, fingerprint, parameter_hash
from template.telemetry import Telemetry
from template.training import build_optimizer

RUN = "ckpt"
PEERS = ["QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN",
         "QmbLHAnMoJPWSCR5Zhtx6BHJX9KiKNN6tpvbUcqanj75Nb",
         "QmQCU2EcMqAqQPR2i9bChDtGNJchTbq5TbXJJ16u19uLTa"]
FORGER = "QmcZf59bWwK5XFi76CZX8cbJ4BhTzzA3gU1ZjYZcYW3dwt"


@pytest.fixture
def chain(tmp_path):
    """Each of PEERS bound to a registered hotkey, plus ``forger`` bound to its own PeerID."""
    chain = LocalChain(tmp_path / "chain.sqlite")
    wallets = {}
    for i, peer in enumerate([*PEERS, FORGER]):
        wallet = create_wallet(tmp_path / "wallets", f"w{i}")
        chain.register(wallet)
        assert chain.bind_peer_id(wallet, peer).success
        wallets[peer] = wallet
    chain.wallets = wallets
    yield chain
    chain.close()


def _miner(tmp_path, peer_id: str, *, grace: float, chain: LocalChain) -> Miner:
    cfg = Config().replace(store=StoreConfig(dir=str(tmp_path / "store"), push_grace=grace),
                           wandb=WandbConfig(mode="disabled"))
    cfg = cfg.replace(neuron=dataclasses.replace(cfg.neuron, run_id=RUN))
    model = build_model(ModelConfig(preset="tiny"), seed=0)
    return Miner(cfg=cfg, uid=0, peer_id=peer_id, wallet=chain.wallets[peer_id], chain=chain,
                 model=model,
                 optimizer=build_optimizer(model, OptimConfig()), tokenizer=None, source=None,
                 store=LocalStore(tmp_path / "store"), averager=None, reporter=None,
                 read_state=None, device=torch.device("cpu"), precision="fp32",
                 telemetry=Telemetry(cfg, role="test", name="test"), epoch=4)


def test_a_missing_checkpoint_is_pushed_by_the_next_member_after_its_grace(tmp_path, chain):
    order = pusher_order(RUN, 4, PEERS)
    result = AveragingResult(ok=True, participants=tuple(PEERS), group_id="g")
    second = _miner(tmp_path, order[1], grace=0.3, chain=chain)
    second._maybe_push(result)  # rank 1: stands by
    assert second.store.tags() == [] and second.fallback_push is not None
    second.push_if_missing()  # grace not over yet
    assert second.store.tags() == []
    time.sleep(0.35)
    second.push_if_missing()
    assert second.store.tags() == [tag_for(4)]
    ckpt = second.store.pull(4)
    assert ckpt.manifest["metadata"]["pusher"] == order[1]
    assert ckpt.manifest["parameter_hash"] == parameter_hash(second.model)
    assert second.fallback_push is None
    assert second.canonical(4).pusher == order[1]  # signed by its hotkey, bound to order[1]


def test_the_first_member_pushes_at_once_and_the_others_then_push_nothing(tmp_path, chain):
    order = pusher_order(RUN, 4, PEERS)
    result = AveragingResult(ok=True, participants=tuple(PEERS), group_id="g")
    first = _miner(tmp_path, order[0], grace=0.0, chain=chain)
    third = _miner(tmp_path, order[2], grace=0.0, chain=chain)
    first._maybe_push(result)
    assert first.store.pull(4).manifest["metadata"]["pusher"] == order[0]
    third._maybe_push(result)
    third.push_if_missing()  # the tag holds the same weights: checked, nothing pushed
    assert third.store.pull(4).manifest["metadata"]["pusher"] == order[0]
    assert third.store.candidates(4) == []
    stale = _miner(tmp_path, order[1], grace=0.0, chain=chain)
    stale._maybe_push(AveragingResult(ok=True, participants=tuple(PEERS), group_id="g"))
    stale.epoch = 5  # stepped (or reloaded) since: those weights are gone, nothing is pushed
    stale.store = LocalStore(tmp_path / "other")
    stale.push_if_missing()
    assert stale.store.tags() == []


def _forge(store: LocalStore, chain: LocalChain, *, signed: bool) -> None:
    """What a forger does: push other weights under epoch-4 before the round's pusher."""
    forged = build_model(ModelConfig(preset="tiny"), seed=99)
    meta = {"pusher": PEERS[0]}  # naming an honest member does not make it theirs
    if signed:
        meta = sign_push(chain.wallets[FORGER].hotkey, run_id=RUN, epoch=4,
                         parameter_hash=parameter_hash(forged), pusher=FORGER)
    store.push(4, forged, None, meta)


@pytest.mark.parametrize("signed", [True, False])
def test_the_pusher_that_finds_forged_weights_under_the_tag_pushes_a_candidate(
        tmp_path, chain, signed):
    order = pusher_order(RUN, 4, PEERS)
    first = _miner(tmp_path, order[0], grace=0.0, chain=chain)
    _forge(first.store, chain, signed=signed)
    first._maybe_push(AveragingResult(ok=True, participants=tuple(PEERS), group_id="g"))
    [candidate] = first.store.candidates(4)
    honest = within(fingerprint(first.model), 1e-4)
    found = resolve(first.store, 4, run_id=RUN, peers=hotkey_peers(chain), agrees=honest)
    assert found.tag == candidate and found.pusher == order[0]
    assert first.canonical(4, agrees=honest).tag == candidate


def test_a_fallback_member_checks_what_the_first_pushed_and_covers_a_forgery(tmp_path, chain):
    order = pusher_order(RUN, 4, PEERS)
    second = _miner(tmp_path, order[1], grace=0.0, chain=chain)
    second._maybe_push(AveragingResult(ok=True, participants=tuple(PEERS), group_id="g"))
    _forge(second.store, chain, signed=True)  # e.g. the first-ranked member itself lied
    second.push_if_missing()
    [candidate] = second.store.candidates(4)
    assert second.canonical(4, agrees=within(fingerprint(second.model), 1e-4)).tag == candidate
    second.cfg = second.cfg.replace(
        neuron=dataclasses.replace(second.cfg.neuron, resync_every=1))
    second.after_step(4)  # resync check: in line with the candidate, so nothing is reloaded
    assert parameter_hash(second.model) == second.store.read_manifest(
        4, tag=candidate)["parameter_hash"]
