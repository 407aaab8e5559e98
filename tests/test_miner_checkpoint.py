"""Checkpoint duty after a round: the first-ranked member pushes; the others cover for it."""

from __future__ import annotations

import dataclasses
import time

import torch

from hivemind_utils.round_stats import AveragingResult
from template.checkpoints import LocalStore, tag_for
from template.config import Config, ModelConfig, OptimConfig, StoreConfig, WandbConfig
from template.consensus import pusher_order
from template.miner.miner import Miner
from template.model import build_model, parameter_hash
from template.telemetry import Telemetry
from template.training import build_optimizer

RUN = "ckpt"
PEERS = ["QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN",
         "QmbLHAnMoJPWSCR5Zhtx6BHJX9KiKNN6tpvbUcqanj75Nb",
         "QmQCU2EcMqAqQPR2i9bChDtGNJchTbq5TbXJJ16u19uLTa"]


def _miner(tmp_path, peer_id: str, *, grace: float) -> Miner:
    cfg = Config().replace(store=StoreConfig(dir=str(tmp_path / "store"), push_grace=grace),
                           wandb=WandbConfig(mode="disabled"))
    cfg = cfg.replace(neuron=dataclasses.replace(cfg.neuron, run_id=RUN))
    model = build_model(ModelConfig(preset="tiny"), seed=0)
    return Miner(cfg=cfg, uid=0, peer_id=peer_id, wallet=None, chain=None, model=model,
                 optimizer=build_optimizer(model, OptimConfig()), tokenizer=None, source=None,
                 store=LocalStore(tmp_path / "store"), averager=None, reporter=None,
                 read_state=None, device=torch.device("cpu"), precision="fp32",
                 telemetry=Telemetry(cfg, role="test", name="test"), epoch=4)


def test_a_missing_checkpoint_is_pushed_by_the_next_member_after_its_grace(tmp_path):
    order = pusher_order(RUN, 4, PEERS)
    result = AveragingResult(ok=True, participants=tuple(PEERS), group_id="g")
    second = _miner(tmp_path, order[1], grace=0.3)
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


def test_the_first_member_pushes_at_once_and_the_others_then_push_nothing(tmp_path):
    order = pusher_order(RUN, 4, PEERS)
    result = AveragingResult(ok=True, participants=tuple(PEERS), group_id="g")
    first, third = _miner(tmp_path, order[0], grace=0.0), _miner(tmp_path, order[2], grace=0.0)
    first._maybe_push(result)
    assert first.store.pull(4).manifest["metadata"]["pusher"] == order[0]
    third._maybe_push(result)
    with torch.no_grad():  # had it pushed, this would show (and conflict)
        next(third.model.parameters()).add_(1.0)
    third.push_if_missing()
    assert third.store.pull(4).manifest["metadata"]["pusher"] == order[0]
    stale = _miner(tmp_path, order[1], grace=0.0)
    stale._maybe_push(AveragingResult(ok=True, participants=tuple(PEERS), group_id="g"))
    stale.epoch = 5  # stepped (or reloaded) since: those weights are gone, nothing is pushed
    stale.store = LocalStore(tmp_path / "other")
    stale.push_if_missing()
    assert stale.store.tags() == []
