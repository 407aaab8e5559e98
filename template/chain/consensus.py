"""Per-uid incentive from validators' weights: a stake-weighted median clip (Yuma-like).

This is what the local devnet uses to show who would earn what; it follows the idea of
Bittensor's Yuma consensus without its bonds and EMA:

1. Validators ``V``: neurons with a validator permit, positive stake and weights set. Their
   stakes are normalised to ``s_v`` (sum 1); each weight row ``W[v]`` is normalised to sum 1.
2. Consensus ``c_u`` for each uid: the stake-weighted ``kappa``-quantile of the column
   ``W[:, u]`` (kappa = 0.5: the stake-weighted median), i.e. the largest weight ``w`` such
   that validators holding at least ``kappa`` of the stake gave ``u`` a weight ``>= w``.
3. Clip: ``W'[v, u] = min(W[v, u], c_u)``, so a minority of stake cannot lift a uid above
   what the majority agrees on.
4. Rank ``r_u = sum_v s_v W'[v, u]``; incentive ``I_u = r_u / sum(r)`` (all zero when no
   validator agrees on anything).
"""

from __future__ import annotations

from collections.abc import Mapping


def stake_weighted_quantile(values: list[float], stakes: list[float], kappa: float) -> float:
    """Largest ``w`` among ``values`` with ``sum(stake[v] for values[v] >= w) >= kappa``."""
    best = 0.0
    for w in sorted(set(values)):
        support = sum(s for v, s in zip(values, stakes, strict=True) if v >= w)
        if support >= kappa - 1e-12:
            best = w
    return best


def incentive(
    weights: Mapping[int, Mapping[int, float]],
    stakes: Mapping[int, float],
    permits: Mapping[int, bool],
    uids: list[int],
    *,
    kappa: float = 0.5,
) -> dict[int, float]:
    """Incentive of every uid in ``uids`` (sums to 1, or all 0). See the module docstring."""
    validators = [
        v for v, row in weights.items()
        if permits.get(v, False) and stakes.get(v, 0.0) > 0 and sum(row.values()) > 0
    ]
    total_stake = sum(stakes[v] for v in validators)
    if not validators or total_stake <= 0:
        return {u: 0.0 for u in uids}
    s = {v: stakes[v] / total_stake for v in validators}
    rows = {}
    for v in validators:
        norm = sum(max(w, 0.0) for w in weights[v].values())
        rows[v] = {u: max(w, 0.0) / norm for u, w in weights[v].items()}
    rank: dict[int, float] = {}
    for u in uids:
        column = [rows[v].get(u, 0.0) for v in validators]
        c = stake_weighted_quantile(column, [s[v] for v in validators], kappa)
        rank[u] = sum(s[v] * min(w, c) for v, w in zip(validators, column, strict=True))
    total = sum(rank.values())
    if total <= 0:
        return {u: 0.0 for u in uids}
    return {u: r / total for u, r in rank.items()}
