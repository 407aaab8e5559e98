"""Robust reduction: honest rounds give the exact mean; one poisoner moves it a bounded amount.

Attacks are varied on purpose (sign, scale, noise, a slice of coordinates, a lying weight): the
bound must hold for the class, not for one signature of it.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hivemind_utils.averaging import SwarmAverager
from hivemind_utils.robust import WEIGHT_CAP, centered_clip
from tests.test_averaging import FAST, PART, SHAPES, _run_round, _shutdown, dhts  # noqa: F401

pytestmark = pytest.mark.multiprocess

FACTOR = 4.0


def _honest(n: int, dim: int = 4096, seed: int = 0) -> list[torch.Tensor]:
    """Gradients of one epoch: a shared direction plus per-miner noise of the same size."""
    gen = torch.Generator().manual_seed(seed)
    shared = torch.randn(dim, generator=gen)
    return [shared + torch.randn(dim, generator=gen) for _ in range(n)]


def _poisons(honest: torch.Tensor, seed: int) -> dict[str, tuple[torch.Tensor, float]]:
    gen = torch.Generator().manual_seed(seed)
    partial = honest.clone()
    partial[: honest.numel() // 5] *= -30.0
    return {
        "sign-flip x10": (-10.0 * honest, 1.0),
        "scale x100": (100.0 * honest, 1.0),
        "noise x20": (honest + 20.0 * torch.randn(honest.shape, generator=gen), 1.0),
        "partial coordinates": (partial, 1.0),
        "lying weight": (-3.0 * honest, 1e9),
    }


def test_honest_parts_give_the_exact_weighted_mean():
    parts = _honest(4)
    weights = [1.0, 2.0, 3.0, 4.0]
    mean = sum(w * p for w, p in zip(weights, parts, strict=True)) / sum(weights)
    got = centered_clip(parts, weights, clip_factor=FACTOR)
    assert torch.allclose(got, mean, atol=1e-5)
    assert torch.equal(centered_clip(parts[:2], [1.0, 1.0], clip_factor=FACTOR),
                       (parts[0] + parts[1]) / 2)  # two senders: no majority, plain mean


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_poisoner_moves_the_result_a_bounded_amount(seed):
    honest = _honest(3, seed=seed)
    mean = sum(honest) / 3
    spread = max(float((p - mean).norm()) for p in honest)
    for name, (poison, weight) in _poisons(honest[0], seed).items():
        plain_w = [1.0, 1.0, 1.0, weight]
        plain = sum(w * p for w, p in zip(plain_w, [*honest, poison], strict=True)) / sum(plain_w)
        got = centered_clip([*honest, poison], plain_w, clip_factor=FACTOR)
        moved = float((got - mean).norm())
        # documented bound: the poisoner's capped weight share x the clip radius, on top of
        # the honest spread (the centre starts at the coordinate median of all four)
        tau = FACTOR * float(torch.stack([*honest, poison]).norm(dim=1).median())
        bound = WEIGHT_CAP / (WEIGHT_CAP + 3) * tau + spread
        assert float((plain - mean).norm()) > bound, name  # the plain mean escapes the bound
        assert moved <= bound, (name, moved, bound)


def test_weights_are_capped_and_weight_zero_senders_ignored():
    parts = [torch.ones(8), torch.ones(8) * 2, torch.ones(8) * 3, torch.full((8,), 1e6)]
    got = centered_clip(parts, [1.0, 1.0, 1.0, 0.0], clip_factor=0.0)  # aux: weight 0
    assert torch.allclose(got, torch.full((8,), 2.0))
    got = centered_clip(parts[:3], [1.0, 1.0, 1e9], clip_factor=0.0)
    cap = WEIGHT_CAP
    assert torch.allclose(got, torch.full((8,), (1 + 2 + 3 * cap) / (2 + cap)))
    with pytest.raises(ValueError, match="positive weight"):
        centered_clip(parts[:1], [0.0], clip_factor=FACTOR)


def test_live_round_with_a_poisoner_stays_near_the_honest_mean(dhts):  # noqa: F811
    """Three honest averagers and one that sends -20x with a 10^6 weight, on loopback."""
    torch.manual_seed(3)
    shared = [torch.randn(s) for s in SHAPES]
    honest = [[t + 0.5 * torch.randn(t.shape) for t in shared] for _ in range(3)]
    poison = [-20.0 * t for t in honest[0]]
    clipped = dataclasses.replace(FAST, clip_factor=FACTOR)
    peers = [SwarmAverager(dht=d, run_id="clip", cfg=clipped, part_size_bytes=PART,
                           tensors=[t.clone() for t in vals])
             for d, vals in zip(dhts, [*honest, poison], strict=True)]
    try:
        results = _run_round(peers, [1.0, 1.0, 1.0, 1e6])
        assert all(r.ok for r in results), [r.error for r in results]
        mean = [sum(h[i] for h in honest) / 3 for i in range(len(SHAPES))]
        flat_mean = torch.cat([m.flatten() for m in mean])
        flats = [torch.cat([t.flatten() for t in h]) for h in honest]
        spread = max(float((f - flat_mean).norm()) for f in flats)
        # per part: capped share x FACTOR x median part norm; summed over parts, about that
        # times the largest honest norm (the plain mean lands ~20 norms away)
        bound = WEIGHT_CAP / (WEIGHT_CAP + 3) * FACTOR * max(float(f.norm()) for f in flats)
        for peer in peers[:3]:
            with peer.get_tensors() as got:
                flat = torch.cat([g.flatten() for g in got])
            assert float((flat - flat_mean).norm()) <= bound + spread
    finally:
        _shutdown(peers)
