"""The pure analysis of ``superpos run reinject`` (docs/probes.md): which positions are scored and in which
surprisal fifth and frequency band, the temperature that matches a null's output entropy to a setting's, the true
token against its matched nulls, and the choice and judging of the setting on separate halves — functions of
per-position numbers only (no model), each tested by hand."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from superpos.hypotheses.reinject.result import AlphaEffect, NullComparison
from superpos.hypotheses.token_table import TokenTable
from superpos.stats import Band, Interval, cluster_interval, per_context_difference

# the temperatures the entropy match scans: log-spaced over 1/8 .. 8 with 1 exactly at the centre; the matched T is
# interpolated in log T between the two that bracket the target (mean entropy rises with T)
TEMPERATURE_GRID = np.exp(np.linspace(np.log(1 / 8), np.log(8), 49))
TEMPERATURE_GRID[24] = 1.0

def interval(values_P, ctx_P, cfg) -> Interval:
    """Every interval of this experiment: the mean over positions, resampling contexts, never narrower than the
    cluster t-interval (the judging half can be a dozen contexts)."""
    return cluster_interval(values_P, ctx_P, n_boot=cfg.n_boot, seed=cfg.seed, t_floor=True)

def matched_temperature(temperatures_K, mean_entropy_K, target: float, clean: float) -> float:
    """The temperature whose mean output entropy is ``target``: interpolated in log T between the two scanned
    temperatures that bracket it (clipped to the scan); exactly 1 when ``target`` is the clean model's ``clean``."""
    if target == clean:
        return 1.0
    h = np.maximum.accumulate(np.asarray(mean_entropy_K, dtype=np.float64))  # rises with T; ties kept monotone
    return float(np.exp(np.interp(target, h, np.log(np.asarray(temperatures_K, dtype=np.float64)))))

@dataclass
class Positions:
    """The scored positions of the evaluation contexts: positions 1..T-2 (token p has a surprisal, the clean loss at
    p-1, and a following token) whose input token has a representation; every array is over them. ``scored`` marks
    them among all positions 1..T-2, context-major."""

    scored: np.ndarray  # (all positions,) bool
    ctx: np.ndarray  # context index
    bins: np.ndarray  # surprisal fifth of token p, 0 (least) .. n_bins-1 (most), equal shares of the scored positions
    bands: np.ndarray  # token-frequency band, 0 (rarest) .. n_bands-1
    select: np.ndarray  # bool: in the half of the contexts that chooses the setting (the rest judge it)
    edges: list[float]  # surprisal fifths' edges [nats]

    def flat(self, a_NC: np.ndarray) -> np.ndarray:
        """An (N, C-1) per-position array (column p: predicting token p+1) at the scored positions."""
        return a_NC[:, 1:].reshape(-1)[self.scored]

    def selection_mean(self, a_NC: np.ndarray) -> float:
        """The mean of an (N, C-1) per-position array over the choosing half's scored positions."""
        return float(self.flat(a_NC)[self.select].mean())

    def judging_fifths(self, a_NC: np.ndarray, n_bins: int) -> list[float]:
        """The mean of an (N, C-1) per-position array in each surprisal fifth of the judging half."""
        a = self.flat(a_NC)
        return [float(a[~self.select & (self.bins == b)].mean()) for b in range(n_bins)]

def split_positions(clean_NC: np.ndarray, bands_P: np.ndarray, cfg) -> Positions:
    """The scored positions (``bands_P >= 0``: the input token has a representation, so the interpolation moves it;
    ``bands_P`` over positions 1..T-2 as ``frequency_bands`` gives them), their surprisal fifths (edges from the
    scored positions) and the halves: a seeded half of the contexts chooses, the other judges."""
    n, c = clean_NC.shape
    surprisal = clean_NC[:, :-1].reshape(-1)
    scored = np.asarray(bands_P) >= 0
    ctx = np.repeat(np.arange(n), c - 1)[scored]
    edges = np.quantile(surprisal[scored], np.linspace(0, 1, cfg.n_bins + 1))
    bins = np.clip(np.searchsorted(edges, surprisal[scored], side="right") - 1, 0, cfg.n_bins - 1)
    chosen_half = np.random.default_rng(cfg.seed).permutation(n)[:n // 2]
    return Positions(scored=scored, ctx=ctx, bins=bins, bands=np.asarray(bands_P)[scored],
                     select=np.isin(ctx, chosen_half), edges=edges.tolist())

def fifth_temperatures(temperatures_K, grid_H_KNC: np.ndarray, target_H_NC: np.ndarray, pos: Positions,
                       cfg) -> tuple[np.ndarray, list[list[float]]]:
    """The temperature that matches, within each surprisal fifth of each half, the mean output entropy of
    ``grid_H_KNC`` (a null's entropies at each scanned temperature) to the setting's ``target_H_NC``: an (N, C-1)
    array of per-position temperatures (1 at positions that are not scored) and the table [choosing half, judging
    half] × fifth. Entropies use no loss, so matching on the judged positions themselves peeks at no outcome."""
    temps = np.asarray(temperatures_K, dtype=np.float64)
    unit = np.flatnonzero(temps == 1.0)
    grid = np.stack([pos.flat(h) for h in grid_H_KNC]).astype(np.float64)
    target = pos.flat(target_H_NC).astype(np.float64)
    t_P, table = np.ones(len(target)), []
    for half in (pos.select, ~pos.select):
        row = []
        for b in range(cfg.n_bins):
            m = half & (pos.bins == b)
            t = 1.0
            if m.any():
                g = grid[:, m].mean(1)
                t = matched_temperature(temps, g, float(target[m].mean()),
                                        float(g[unit[0]]) if unit.size else float("nan"))
            t_P[m] = t
            row.append(t)
        table.append(row)
    n, c = target_H_NC.shape
    all_P = np.ones(len(pos.scored))
    all_P[pos.scored] = t_P
    t_NC = np.ones((n, c))
    t_NC[:, 1:] = all_P.reshape(n, c - 1)
    return t_NC, table

def frequency_bands(table: TokenTable, tokens_P: np.ndarray, n_bands: int) -> tuple[np.ndarray, list[float]]:
    """(P,) each position's token-frequency band (0 rarest .. n_bands-1; -1: its token has no representation) by
    the token's count in the reference contexts, with equal shares of the represented positions; and the counts
    that split the bands."""
    rows = table.index_V[torch.as_tensor(np.asarray(tokens_P, dtype=np.int64))].numpy()
    counts = np.where(rows >= 0, table.counts_R[np.maximum(rows, 0)], 0)
    if not (rows >= 0).any():
        return np.full(len(rows), -1), []
    edges = np.quantile(counts[rows >= 0], np.linspace(0, 1, n_bands + 1))[1:-1]
    return np.where(rows >= 0, np.searchsorted(edges, counts, side="right"), -1), edges.tolist()

def compare(true_P, null_P, pos: Positions, keep, cfg) -> NullComparison:
    """The true token's advantage over a null, Δ(null) − Δ(true) per scored position (> 0: the true token does
    better), on the positions ``keep``: by surprisal fifth, by frequency band, and in the most surprising fifth
    within each band. Intervals resample contexts (the pairing is per position)."""
    adv = np.asarray(null_P, dtype=np.float64) - np.asarray(true_P, dtype=np.float64)

    def ci(mask):
        return interval(adv[keep & mask], pos.ctx[keep & mask], cfg)

    top = pos.bins == cfg.n_bins - 1
    return NullComparison(by_fifth=Band.of(ci(pos.bins == b) for b in range(cfg.n_bins)),
                          by_band=Band.of(ci(pos.bands == k) for k in range(cfg.n_bands)),
                          top_by_band=Band.of(ci(top & (pos.bands == k)) for k in range(cfg.n_bands)))

def effect(delta, ctx, bins, cfg) -> AlphaEffect:
    per_bin = [interval(delta[bins == b], ctx[bins == b], cfg) for b in range(cfg.n_bins)]
    diff, ids = per_context_difference(delta, ctx, bins == cfg.n_bins - 1, bins == 0)
    return AlphaEffect(overall=interval(delta, ctx, cfg), bins=per_bin, top_minus_bottom=interval(diff, ids, cfg))

def late_minus_early(right, ctx, top, bottom, layers, cfg) -> Interval:
    """The most- minus least-surprising decodability gap at ``layers`` (their mean) minus the gap at layer 1,
    paired by context, over the positions ``top`` and ``bottom``."""
    gap = {}
    for layer in [1, *layers]:
        d, ids = per_context_difference(right[layer], ctx, top, bottom)
        gap[layer] = dict(zip(ids.tolist(), d))
    common = sorted(set.intersection(*(set(gap[layer]) for layer in [1, *layers])))
    dd = np.array([np.mean([gap[layer][c] for layer in layers]) - gap[1][c] for c in common])
    return interval(dd, np.array(common), cfg)

def within_bands(right, scored, bands, n_bands) -> dict[int, np.ndarray]:
    """Decodability (layer -> per position) with each frequency band's mean at that layer removed, at the
    ``scored`` positions: a gap between surprisal fifths read from it is one within token types, not a different
    mix of them."""
    out = {}
    for layer, v in right.items():
        c = np.array(v, dtype=np.float64)
        for k in range(n_bands):
            m = scored & (bands == k)
            if m.any():
                c[m] -= np.nanmean(c[m])
        out[layer] = c
    return out

def context_interval(d_NT: np.ndarray, cfg, keep_NT: np.ndarray | None = None) -> Interval:
    """The mean of an (N, T) array (at ``keep_NT`` only, when given) with its interval resampling the N contexts."""
    ctx = np.repeat(np.arange(len(d_NT)), d_NT.shape[1])
    keep = np.ones(d_NT.size, dtype=bool) if keep_NT is None else keep_NT.reshape(-1)
    return interval(d_NT.reshape(-1)[keep], ctx[keep], cfg)

def choose(deltas, nulls, select, top) -> str:
    """The setting judged: on the selection half's most surprising fifth (``select & top``), among the settings
    that lower the loss there, the one furthest below the better of its matched nulls (the lower null Δ); when
    none lowers it, or ``nulls`` (setting -> {null name: (P,) Δ}) is empty, the lowest Δ."""
    m = select & top
    mean = {k: float(v[m].mean()) for k, v in deltas.items()}
    helping = [k for k in deltas if mean[k] < 0]
    if not nulls or not helping:
        return min(mean, key=mean.get)
    return min(helping, key=lambda k: mean[k] - min(float(v[m].mean()) for v in nulls[k].values()))

def judge(pos: Positions, delta_P, nulls: dict[str, np.ndarray], deranged_P,
          cfg) -> tuple[AlphaEffect, Interval, dict[str, NullComparison]]:
    """The chosen setting on the judging half (per scored position, Δ loss on the following token): its effect by
    surprisal fifth; Δ toward the true token minus Δ toward another token's representation (the deranged null) in
    the most surprising fifth; its advantage over each matched null in ``nulls`` (``compare``)."""
    judging = ~pos.select
    top = judging & (pos.bins == cfg.n_bins - 1)
    return (effect(delta_P[judging], pos.ctx[judging], pos.bins[judging], cfg),
            interval((delta_P - deranged_P)[top], pos.ctx[top], cfg),
            {name: compare(delta_P, d, pos, judging, cfg) for name, d in nulls.items()})
