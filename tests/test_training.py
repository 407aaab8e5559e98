"""Learning-rate schedule and the guarded optimizer step."""

from __future__ import annotations

import math

import pytest
import torch

from template.config import OptimConfig
from template.training import (
    accumulate,
    apply_gradients,
    build_optimizer,
    learning_rate,
    mean_gradient,
)


def test_schedule_warms_up_then_decays_to_min():
    cfg = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_epochs=4, total_epochs=104)
    rates = [learning_rate(e, cfg) for e in range(110)]
    assert rates[0] < rates[1] < rates[3] < rates[4] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates[4:104], rates[5:105], strict=False))
    assert rates[54] == pytest.approx(0.5 * (1e-3 + 1e-4))
    assert rates[104] == rates[109] == pytest.approx(1e-4)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))


def test_weight_decay_only_on_matrices():
    opt = build_optimizer(_model(), OptimConfig(weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert all(p.dim() == 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0


def test_step_applies_finite_gradient_and_clears_it():
    model = _model()
    opt = build_optimizer(model, OptimConfig())
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(2, 4)).sum().backward()
    out = apply_gradients(model, opt, lr=1e-2, max_grad_norm=1.0)
    assert out.applied and out.lr == 1e-2 and out.grad_norm > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradient_is_never_applied(bad):
    model = _model()
    opt = build_optimizer(model, OptimConfig())
    model(torch.randn(2, 4)).sum().backward()
    apply_gradients(model, opt, lr=1e-2, max_grad_norm=1.0)  # builds optimizer state
    params = [p.detach().clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in opt.state[next(model.parameters())].items()}
    model(torch.randn(2, 4)).sum().backward()
    next(model.parameters()).grad[0, 0] = bad
    out = apply_gradients(model, opt, lr=1e-2, max_grad_norm=1.0)
    assert not out.applied and "non-finite" in out.reason and not math.isfinite(out.grad_norm)
    assert all(torch.equal(a, p) for a, p in zip(params, model.parameters(), strict=True))
    after = opt.state[next(model.parameters())]
    assert all(torch.equal(state[k], after[k]) for k in state)


def test_accumulate_then_mean_equals_gradient_of_mean_loss():
    class LM(torch.nn.Module):  # the labels= interface of a Hugging Face causal LM
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 10)

        def forward(self, input_ids, labels):
            logits = self.emb(input_ids)
            loss = torch.nn.functional.cross_entropy(logits.view(-1, 10), labels.view(-1))
            return type("Out", (), {"loss": loss})()

    torch.manual_seed(0)
    model = LM()
    a, b = torch.randint(0, 10, (2, 3)), torch.randint(0, 10, (2, 3))
    accumulate(model, a)
    accumulate(model, b)
    mean_gradient(model, 2)
    acc = model.emb.weight.grad.clone()
    model.zero_grad()
    (0.5 * (model(a, a).loss + model(b, b).loss)).backward()
    torch.testing.assert_close(acc, model.emb.weight.grad)
