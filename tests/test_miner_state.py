"""Training state exchanged between peers: round trip, and typed rejection of bad input."""

from __future__ import annotations

import pytest
import torch

from template.config import ModelConfig, OptimConfig
from template.miner.state import StateRejected, apply_training_state, training_state
from template.model import build_model, parameter_hash
from template.training import apply_gradients, build_optimizer


def _trained():
    model = build_model(ModelConfig(preset="tiny"), seed=0)
    opt = build_optimizer(model, OptimConfig())
    batch = torch.randint(0, 50257, (2, 16))
    model(input_ids=batch, labels=batch).loss.backward()
    apply_gradients(model, opt, lr=1e-3, max_grad_norm=1.0)
    return model, opt


def test_state_round_trip_restores_weights_moments_and_epoch():
    model, opt = _trained()
    metadata, tensors = training_state(model, opt, epoch=7, run_id="run")
    fresh = build_model(ModelConfig(preset="tiny"), seed=1)
    fresh_opt = build_optimizer(fresh, OptimConfig())
    assert apply_training_state(fresh, fresh_opt, metadata, tensors, run_id="run") == 7
    assert parameter_hash(fresh) == parameter_hash(model)
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][key], fresh_opt.state[q][key])
        assert float(fresh_opt.state[q]["step"]) == 1.0


def test_fresh_optimizer_state_travels_without_moments():
    model = build_model(ModelConfig(preset="tiny"), seed=0)
    metadata, tensors = training_state(model, build_optimizer(model, OptimConfig()), epoch=0,
                                       run_id="run")
    assert metadata["moments"] is False and len(tensors) == len(list(model.parameters()))


@pytest.mark.parametrize("tamper", ["run", "epoch", "count", "shape", "nan", "format"])
def test_bad_state_is_rejected_before_anything_changes(tamper):
    model, opt = _trained()
    metadata, tensors = training_state(model, opt, epoch=3, run_id="run")
    if tamper == "run":
        metadata["run_id"] = "other"
    elif tamper == "epoch":
        metadata["epoch"] = -1
    elif tamper == "count":
        tensors = tensors[:-1]
    elif tamper == "shape":
        tensors[0] = torch.zeros(3)
    elif tamper == "nan":
        tensors[-1] = torch.full_like(tensors[-1], float("nan"))
    else:
        metadata = "not a dict"
    victim = build_model(ModelConfig(preset="tiny"), seed=1)
    before = parameter_hash(victim)
    with pytest.raises(StateRejected):
        apply_training_state(victim, build_optimizer(victim, OptimConfig()), metadata, tensors,
                             run_id="run")
    assert parameter_hash(victim) == before
