"""A Train round over real Axons on 127.0.0.1 (LocalChain wallets, demo shards, tiny model).

Four miners answer: honestly (work computed like the miner computes it), lazily (one batch's
sketch repeated), too slowly (past the query timeout), and with garbage (wrong nonce, then an
oversized reply). The validator's round gives the honest miner verified samples and everyone
else a typed rejection or a failed check, and keeps running for a second round.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random

import pytest
import torch

from template.chain.local import LocalChain
from template.chain.wallets import create_wallet
from template.config import ModelConfig
from template.data import assign_pages, ensure_demo_shards, epoch_batches, load_tokenizer
from template.data.sources import local_source
from template.model import FINGERPRINT_TOLERANCE, build_model, fingerprint
from template.proof import SketchRecorder, sketch_seed
from template.protocol import Reason, Train
from template.training import accumulate
from template.transport import MetagraphCache, build_axon, build_dendrite, free_port, start_axon
from template.validator.epoch import EpochRecord, epoch_scores
from template.validator.train_round import TrainContext, sample_uids, train_round
from template.validator.verify import VerifyThresholds

RUN, EPOCH, PAGES, SEQ, BATCH, TRAINED = "round-run", 0, 2, 32, 2, 3
PEERS = ["QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
         "QmQ7TnVMMwpLuoyGMqNg8o3sKMKZt8DmTB1Eo3BtNE4W7Z",
         "QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN",
         "QmbLHAnMoJPWSCR5Zhtx6BHJX9KiKNN6tpvbUcqanj75Nb"]



def _honest_work(uid, *, model, source, tokenizer, seed, lazy=False):
    """The miner's computation: its assigned pages, the first batches, one sketch each."""
    pages = assign_pages(run_id=RUN, epoch=EPOCH, miner=uid, pages_per_miner=PAGES,
                         dataset_size=source.num_pages)
    batches = epoch_batches(source.pages(pages), tokenizer, seq_len=SEQ, batch_size=BATCH)
    recorder, sketches, losses = SketchRecorder(seed=seed), [], []
    model.zero_grad(set_to_none=True)
    for batch in batches[: 1 if lazy else TRAINED]:
        losses.append(accumulate(model, batch))
        sketches.append(recorder.record(model))
    model.zero_grad(set_to_none=True)
    if lazy:  # claims TRAINED batches, computed one
        sketches, losses = sketches * TRAINED, losses * TRAINED
    return dict(pages=pages, sketches=sketches, loss=sum(losses) / len(losses))


def _handler(uid, work, *, mode, seed, fp):
    async def handle(synapse: Train) -> Train:
        if mode == "slow":
            await asyncio.sleep(6.0)
        synapse.loss, synapse.pages = work["loss"], list(work["pages"])
        synapse.batches, synapse.samples = list(range(TRAINED)), TRAINED * BATCH
        synapse.sketches = [list(s) for s in work["sketches"]]
        synapse.sketch_seed, synapse.peer_id, synapse.model_fingerprint = seed, PEERS[uid], fp
        if mode == "garbage":
            synapse.nonce = (synapse.nonce + 1) % 2**62
        return synapse
    return handle


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("train-round")
    ensure_demo_shards(tmp / "shards", max_pages=64)
    source, tokenizer = local_source(tmp / "shards"), load_tokenizer(offline=True)
    model = build_model(ModelConfig(preset="tiny"), seed=0)
    seed, fp = sketch_seed(RUN, EPOCH), fingerprint(model)
    chain = LocalChain(tmp / "chain.sqlite", weights_rate_limit=0)
    names = ["honest", "lazy", "slow", "garbage", "validator"]
    wallets = {n: create_wallet(tmp, n) for n in names}
    uids = {n: chain.register(wallets[n]) for n in names}
    chain.add_stake(wallets["validator"].hotkey.ss58_address, 100)
    cache = MetagraphCache(chain, refresh_interval=0.5)
    honest = _honest_work(uids["honest"], model=model, source=source, tokenizer=tokenizer,
                          seed=seed)
    lazy = _honest_work(uids["lazy"], model=model, source=source, tokenizer=tokenizer,
                        seed=seed, lazy=True)
    works = {"honest": honest, "lazy": lazy, "slow": honest, "garbage": honest}
    axons = []
    for name, work in works.items():
        uid = uids[name]
        axon = start_axon(build_axon(
            wallet=wallets[name], graph=cache.get, port=free_port(),
            handlers={Train: _handler(uid, work, mode=name, seed=seed, fp=fp)}))
        chain.serve_axon(wallets[name], ip="127.0.0.1", port=axon.port)
        axons.append(axon)
    ctx = TrainContext(
        run_id=RUN, epoch=EPOCH, model=model, reference_fingerprint=tuple(fp), sketch_seed=seed,
        tokenizer=tokenizer, source=source, pages_per_epoch=PAGES, seq_len=SEQ, batch_size=BATCH,
        thresholds=VerifyThresholds(check_batches=2, fingerprint_tolerance=FINGERPRINT_TOLERANCE),
        bindings={uids[n]: PEERS[uids[n]] for n in works})
    yield dict(chain=chain, wallets=wallets, uids=uids, ctx=ctx)
    for axon in axons:
        axon.stop()


def _round(net, uids):
    async def go():
        dendrite = build_dendrite(net["wallets"]["validator"])
        try:
            return await train_round(dendrite=dendrite, graph=net["chain"].metagraph(),
                                     uids=uids, ctx=net["ctx"], rng=random.Random(5),
                                     timeout=3.0)
        finally:
            await dendrite.aclose_session()
    return asyncio.run(go())


def test_only_the_honest_miner_earns_and_the_validator_keeps_going(net):
    uids = net["uids"]
    graph = net["chain"].metagraph()
    sample = sample_uids(graph, count=10, rng=random.Random(0), exclude=[uids["validator"]])
    assert sample == sorted(uids[n] for n in ("honest", "lazy", "slow", "garbage"))
    verdicts = _round(net, sample)
    honest = verdicts[uids["honest"]]
    assert honest.ok and honest.gradient == 1.0 and honest.verified_samples == TRAINED * BATCH
    lazy = verdicts[uids["lazy"]]
    assert lazy.ok and lazy.gradient < 0.5  # well-formed; the difference check catches it
    assert verdicts[uids["slow"]].rejection.reason is Reason.TIMEOUT
    assert verdicts[uids["garbage"]].rejection.reason is Reason.WRONG_NONCE
    record = EpochRecord(epoch=EPOCH)
    for uid, verdict in verdicts.items():
        record.add_train(uid, gradient=verdict.gradient,
                         verified_samples=verdict.verified_samples)
    scores = epoch_scores(record, tolerance=FINGERPRINT_TOLERANCE)
    assert scores[uids["honest"]] > 0.6
    assert scores[uids["slow"]] == scores[uids["garbage"]] == 0.0
    assert scores[uids["lazy"]] < 0.5 * scores[uids["honest"]]
    # the validator's loop survives: a second round, including an unserving uid
    again = _round(net, [uids["honest"], uids["validator"]])
    assert again[uids["honest"]].ok
    assert again[uids["validator"]].rejection.reason is Reason.UNREACHABLE
    # honest work from a uid without a chain-bound PeerID is never paid (it cannot be tied to
    # anything the uid put into the all-reduce)
    unbound = dict(net, ctx=dataclasses.replace(net["ctx"], bindings={}))
    verdict = _round(unbound, [uids["honest"]])[uids["honest"]]
    assert verdict.rejection.reason is Reason.UNVERIFIED and "bound" in verdict.rejection.detail
