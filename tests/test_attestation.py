"""Signed pushes and the reader's choice of an epoch's canonical checkpoint, on a real local
chain (SQLite), real wallets and a directory store."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from template.attestation import (
    PUSHER,
    SIGNATURE,
    NoCanonicalCheckpoint,
    PushRejected,
    attest,
    hotkey_peers,
    resolve,
    sign_push,
    within,
)
from template.chain.local import LocalChain
from template.chain.wallets import create_wallet
from template.checkpoints import LocalStore, MissingCheckpointError
from template.model import fingerprint, parameter_hash

RUN = "run-a"


def peer(name: str) -> str:
    """A base58 PeerID-shaped name (the chain checks the alphabet and length)."""
    return f"12D3KooW{name}{'Z' * 12}"


def _model(seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=96,
                                      n_positions=32))


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    """Three registered miners with bound PeerIDs and one registered hotkey without a binding."""
    root = tmp_path_factory.mktemp("attest")
    wallets = {n: create_wallet(root / "wallets", n) for n in ("honest", "forger", "other", "x")}
    chain = LocalChain(root / "chain.sqlite")
    for name, wallet in wallets.items():
        chain.register(wallet)
        if name != "x":
            assert chain.bind_peer_id(wallet, peer(name)).success
    yield wallets, hotkey_peers(chain)
    chain.close()


def _push(store, epoch, model, wallet, *, pusher=None, candidate=False, **extra):
    meta = {"participants": [peer("honest"), peer("forger"), peer("other")], **extra}
    if wallet is not None:
        meta.update(sign_push(wallet.hotkey, run_id=RUN, epoch=epoch,
                              parameter_hash=parameter_hash(model),
                              pusher=pusher or peer(wallet.name)))
    return store.push(epoch, model, None, meta, candidate=candidate)


def test_hotkey_peers_maps_each_bound_hotkey_to_its_peer(swarm):
    wallets, peers = swarm
    assert peers == {wallets[n].hotkey.ss58_address: peer(n)
                     for n in ("honest", "forger", "other")}


def test_a_signed_push_by_a_bound_member_is_attested(swarm, tmp_path):
    wallets, peers = swarm
    store = LocalStore(tmp_path)
    model = _model(0)
    _push(store, 2, model, wallets["honest"])
    found = attest(store.pull(2), run_id=RUN, tag="epoch-2", peers=peers,
                   agrees=within(fingerprint(model), 1e-4))
    assert found.hotkey == wallets["honest"].hotkey.ss58_address and found.pusher == peer("honest")


@pytest.mark.parametrize("lie", ["unsigned", "other-run", "other-weights", "bad-hex",
                                 "names-another-peer", "unbound-hotkey", "garbage-fields"])
def test_pushes_that_cannot_be_attributed_or_lie_about_the_pusher_are_rejected(
        swarm, tmp_path, lie):
    wallets, peers = swarm
    store = LocalStore(tmp_path)
    model, forger = _model(1), wallets["forger"]
    meta: dict = {}
    if lie != "unsigned":
        run = "run-b" if lie == "other-run" else RUN
        phash = parameter_hash(_model(2)) if lie == "other-weights" else parameter_hash(model)
        signer = wallets["x"] if lie == "unbound-hotkey" else forger
        pusher = peer("honest") if lie == "names-another-peer" else peer("forger")
        meta = sign_push(signer.hotkey, run_id=run, epoch=4, parameter_hash=phash,
                         pusher=pusher)
        if lie == "bad-hex":
            meta[SIGNATURE] = "zz" + meta[SIGNATURE][2:]
        if lie == "garbage-fields":
            meta[PUSHER] = 7
    store.push(4, model, None, meta)
    with pytest.raises(PushRejected) as err:
        attest(store.pull(4), run_id=RUN, tag="epoch-4", peers=peers)
    attributable = lie in ("names-another-peer", "unbound-hotkey")
    assert (err.value.signer is not None) == attributable, err.value


def test_resolve_skips_a_forged_tag_for_the_candidate_that_agrees_and_names_the_forger(
        swarm, tmp_path):
    wallets, peers = swarm
    store = LocalStore(tmp_path)
    honest, forged = _model(3), _model(4)
    _push(store, 5, forged, wallets["forger"])  # won the race for epoch-5
    _push(store, 5, honest, wallets["honest"], candidate=True)
    blamed: list[str | None] = []
    found = resolve(store, 5, run_id=RUN, peers=peers,
                    agrees=within(fingerprint(honest), 1e-4),
                    on_reject=lambda err: blamed.append(err.signer))
    assert found.tag.startswith("epoch-5-") and found.pusher == peer("honest")
    assert parameter_hash(found.checkpoint.state_dict) == parameter_hash(honest)
    assert blamed == [wallets["forger"].hotkey.ss58_address]
    # A reader that knows nothing of the round takes the first signed push: epoch-5 itself.
    assert resolve(store, 5, run_id=RUN, peers=peers).tag == "epoch-5"


def test_resolve_without_an_acceptable_checkpoint_says_why(swarm, tmp_path):
    wallets, peers = swarm
    store = LocalStore(tmp_path)
    with pytest.raises(MissingCheckpointError):
        resolve(store, 1, run_id=RUN, peers=peers)
    _push(store, 1, _model(5), None)  # unsigned
    _push(store, 1, _model(6), wallets["forger"], candidate=True)
    with pytest.raises(NoCanonicalCheckpoint, match="unsigned push") as err:
        resolve(store, 1, run_id=RUN, peers=peers, agrees=within(fingerprint(_model(7)), 1e-4))
    assert len(err.value.rejected) == 2
