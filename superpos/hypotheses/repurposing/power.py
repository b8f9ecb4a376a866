"""What the repurposing statistic can see: detection rate against the size of a planted effect, and the minimum
detectable effect.

The planted control of ``repurposing`` runs the whole model once per setting, which is too slow to repeat over
many sizes and draws. The statistic, though, only reads the sampled residuals, so its power can be measured on
them: at one layer, every position ≥ 1 gets ``alpha × ‖r − μ‖`` along the unit direction of one of *its own*
near-impossible tokens (drawn anew per position and per draw); the output is untouched (the planted vector is
removed before it, as the hypothesis says). ``layer_stats`` then runs exactly as in the experiment, and a draw
counts as detected when the experiment's criterion (i) holds: the per-context bootstrap CIs of both the token
excess over the Gaussian null and the effect beyond random directions are above 0.

Each draw is also read against the unplanted residuals at the same positions (``criterion_i`` with a baseline),
which has no offset from a real stream's non-Gaussian tails. Repeated draws give the detection rate per alpha; the minimum detectable alpha is where the rate first reaches
the target power (linear interpolation between the sizes run). A verdict of "not found" then reads "no
effect of this kind larger than alpha_min".
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from superpos.hypotheses.repurposing.ablation import random_members
from superpos.hypotheses.repurposing.token_stats import layer_stats
from superpos.stats import Interval, cluster_interval


class PowerCurve(NamedTuple):
    """Detection rate per planted size at one layer."""

    layer: int
    alphas: list[float]
    rate: list[float]  # share of draws detected
    draws: int
    power: float  # the target rate
    min_detectable: float | None  # the smallest alpha reaching ``power`` (interpolated); None: none of them
    rate_vs_clean: list[float] | None = None  # the same draws read against the unplanted residuals
    min_detectable_vs_clean: float | None = None


def plant_token_push(R_PD: torch.Tensor, U_PV: torch.Tensor, tok_VD: torch.Tensor, alpha: float,
                     gen: torch.Generator, pos_P: np.ndarray | None = None) -> torch.Tensor:
    """R + alpha·‖r − μ‖·û_t per position, t one of that position's near-impossible tokens at random (positions with
    ``pos_P`` 0, the attention sink, and positions without any near-impossible token are left alone)."""
    if alpha == 0:
        return R_PD
    t = random_members(U_PV, 1, gen)[:, 0]
    ok = U_PV.any(1)
    if pos_P is not None:
        ok &= torch.from_numpy(np.asarray(pos_P) > 0)
    R = R_PD.float()
    norm = (R - R.mean(0)).norm(dim=1, keepdim=True)
    return R + ok[:, None] * alpha * norm * tok_VD[t].to(R.device)


def criterion_i(st: dict, ctx_P: np.ndarray, n_boot: int, seed: int,
                baseline: dict | None = None) -> tuple[Interval, Interval]:
    """The two intervals of the repurposing verdict's criterion (i) on one layer's statistics (bootstrap over
    contexts): the token excess over the Gaussian null, and that excess beyond random directions (the effect).
    With ``baseline`` (the same statistics at the same positions of the unplanted residuals or of the unhooked model)
    each half is read as a difference in differences: the excess over the Gaussian minus the baseline's own excess
    over its Gaussian, position by position. A real stream's tails differ from a Gaussian's (on a real model the
    unhooked excess itself can sit below 0), which biases the Gaussian reading of a planted push by that offset;
    the baseline's is subtracted. (A plain peak − baseline peak would not do: a planted push raises the layer's
    variance, so every standardised z falls, and the Gaussian redrawn from the planted covariance is what accounts
    for that.)"""
    excess = st["peak"] - st["peak_G"]
    rand = st["peak_Q"] - st["peak_GQ"]
    if baseline is not None:
        excess = excess - (baseline["peak"] - baseline["peak_G"])
        rand = rand - (baseline["peak_Q"] - baseline["peak_GQ"])
    return (cluster_interval(excess, ctx_P, n_boot=n_boot, seed=seed),
            cluster_interval(excess - rand, ctx_P, n_boot=n_boot, seed=seed))


def detected(st: dict, ctx_P: np.ndarray, n_boot: int, seed: int, baseline: dict | None = None) -> bool:
    """Criterion (i) holds: both intervals of ``criterion_i`` are above 0."""
    excess, effect = criterion_i(st, ctx_P, n_boot, seed, baseline)
    return excess.lo > 0 and effect.lo > 0


def minimum_detectable(alphas: list[float], rate: list[float], power: float) -> float | None:
    """The smallest alpha at which the detection rate reaches ``power``, interpolated linearly between the sizes
    run (alphas ascending); None when no size reaches it."""
    for i, (a, r) in enumerate(zip(alphas, rate)):
        if r >= power:
            if i == 0:
                return float(a)
            a0, r0 = alphas[i - 1], rate[i - 1]
            return float(a0 + (power - r0) / (r - r0) * (a - a0))
    return None


def power_curve(R_PD: torch.Tensor, final_PD: torch.Tensor, U_PV: torch.Tensor, L_PV: torch.Tensor,
                tok_VD: torch.Tensor, rand_VD: torch.Tensor, shuffle: np.ndarray, ctx_P: np.ndarray,
                pos_P: np.ndarray, alphas: list[float], *, layer: int, draws: int = 20, power: float = 0.8,
                z_high: float = 5.0, n_boot: int = 200, seed: int = 0, progress=None) -> PowerCurve:
    """Detection rate of the planted token push (module docstring) at each alpha over ``draws`` draws, read as the
    verdict reads it (against the Gaussian null) and against the unplanted residuals at the same positions."""
    alphas = sorted(float(a) for a in alphas)
    rate, rate_clean, clean = [], [], {}
    for a in alphas:
        hits = hits_clean = 0
        for k in range(draws):
            gen = torch.Generator().manual_seed(seed * 7919 + k)
            R = plant_token_push(R_PD, U_PV, tok_VD, a, gen, pos_P)
            st = layer_stats(R, final_PD, U_PV, L_PV, tok_VD, rand_VD, shuffle, z_high, seed + 1000 + k)
            if k not in clean:  # the unplanted residuals with the same Gaussian draw
                clean[k] = layer_stats(R_PD, final_PD, U_PV, L_PV, tok_VD, rand_VD, shuffle, z_high, seed + 1000 + k)
            hits += detected(st, ctx_P, n_boot, seed + k)
            hits_clean += detected(st, ctx_P, n_boot, seed + k, baseline=clean[k])
            if progress is not None:
                progress.update(1)
        rate.append(hits / draws)
        rate_clean.append(hits_clean / draws)
    return PowerCurve(layer, alphas, rate, draws, power, minimum_detectable(alphas, rate, power), rate_clean,
                      minimum_detectable(alphas, rate_clean, power))
