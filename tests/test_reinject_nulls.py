"""Re-injection's matched nulls (a temperature that flattens the output as much; the same move toward the layer's
mean residual), the comparisons within frequency bands, and the verdict that needs the true token to beat both:
on a tiny model where the answer is known, and by hand at the level of per-position logits and losses."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from superpos.hypotheses.reinject.config import ReinjectConfig
from superpos.hypotheses.reinject.result import CachedCheck, MatchedNull, Premise, ReinjectResult
from superpos.hypotheses.reinject.run import (
    TEMPERATURE_GRID,
    _effect,
    _late_minus_early,
    choose,
    compare,
    frequency_bands,
    interpolation,
    matched_temperature,
    next_token_stats,
    teacher_forced,
    temperature_sweep,
)
from superpos.hypotheses.reinject.verdict import verdict
from superpos.hypotheses.token_table import token_means
from superpos.model.load import load_model
from superpos.protocol.registry import EXPERIMENTS
from superpos.stats import Band, Interval, cluster_interval

LAYERS = [3, 5]


def _setup(peaked_llama):
    lm = load_model(str(peaked_llama), device="cpu")  # peaked outputs, as a trained model's are
    rng = np.random.default_rng(1)
    ref, ev = rng.integers(2, 60, size=(8, 32)), rng.integers(2, 60, size=(6, 32))
    return lm, token_means(lm, ref, [1, *LAYERS], min_count=2), ev


def test_temperature_null_matches_the_interventions_output_entropy(peaked_llama):
    lm, table, ev = _setup(peaked_llama)
    clean, clean_H = teacher_forced(lm, ev)
    moved = interpolation(lm, LAYERS, 0.3, table.targets(lm, "embedding", LAYERS), table.index_V)
    _, moved_H = teacher_forced(lm, ev, moved)
    target, base = float(moved_H[:, 1:].mean()), float(clean_H[:, 1:].mean())
    assert abs(target - base) > 0.5  # the intervention does move the output entropy (it sharpens it)
    scaled = table.index_V >= 0
    _, grid_H = temperature_sweep(lm, ev, TEMPERATURE_GRID, scaled)
    T = matched_temperature(TEMPERATURE_GRID, grid_H[:, :, 1:].reshape(len(TEMPERATURE_GRID), -1).mean(1), target,
                            base)
    assert T != 1.0
    loss_T, H_T = temperature_sweep(lm, ev, [T], scaled)
    assert abs(float(H_T[0][:, 1:].mean()) - target) < 2e-3  # matched to the intervention's entropy
    # it acts only where the interpolation acts: positions whose input token has no representation keep their loss
    untouched = ~scaled[torch.from_numpy(ev[:, :-1])].numpy()
    assert untouched.any() and np.array_equal(loss_T[0][untouched], clean[untouched])


def test_weight_zero_and_temperature_one_leave_everything_bit_identical(peaked_llama):
    lm, table, ev = _setup(peaked_llama)
    clean, clean_H = teacher_forced(lm, ev)
    averaged = table.targets(lm, "mean", LAYERS, averaged=True)
    # the layer-mean null's target: every row is the occurrence-weighted mean of the token means (the layer mean)
    w = torch.from_numpy(table.counts_R / table.counts_R.sum()).float()
    torch.testing.assert_close(averaged[0], (w @ table.means_LRD[1])[None].expand_as(averaged[0]))
    loss0, H0 = teacher_forced(lm, ev, interpolation(lm, LAYERS, 0.0, averaged, table.index_V))
    assert np.array_equal(loss0, clean) and np.array_equal(H0, clean_H)
    # w = 0 gives the clean entropy, whose matched temperature is exactly 1, which changes nothing
    T = matched_temperature(TEMPERATURE_GRID, np.linspace(0, 1, len(TEMPERATURE_GRID)), float(H0.mean()),
                            float(clean_H.mean()))
    assert T == 1.0
    loss1, H1 = temperature_sweep(lm, ev, [T], table.index_V >= 0)
    assert np.array_equal(loss1[0], clean) and np.array_equal(H1[0], clean_H)
    moved = teacher_forced(lm, ev, interpolation(lm, LAYERS, 0.5, averaged, table.index_V))[0]
    assert not np.allclose(moved, clean)  # at w > 0 the layer-mean null does move the output


def test_matched_temperature_interpolates_and_clips():
    temps = np.array([0.5, 1.0, 2.0, 4.0])
    h = np.array([1.0, 2.0, 3.0, 4.0])
    assert np.isclose(matched_temperature(temps, h, 2.5, 2.0), np.sqrt(2.0))  # halfway in log T
    assert matched_temperature(temps, h, 9.0, 2.0) == 4.0 and matched_temperature(temps, h, 0.0, 2.0) == 0.5


def test_the_setting_judged_is_the_one_furthest_below_its_better_matched_null():
    select, top = np.array([True, True, False]), np.array([True, True, True])
    deltas = {"a": np.array([-0.5, -0.5, 0.0]), "b": np.array([-0.2, -0.2, 0.0]), "c": np.array([1.0, 1.0, 0.0])}
    nulls = {"a": {"temperature": np.full(3, -0.6), "layer mean": np.zeros(3)},  # flattening does better than a
             "b": {"temperature": np.full(3, 0.1), "layer mean": np.full(3, 0.2)},
             "c": {"temperature": np.full(3, 9.0), "layer mean": np.full(3, 9.0)}}  # far below its nulls, but hurts
    assert choose(deltas, nulls, select, top) == "b"
    assert choose(deltas, {}, select, top) == "a"  # without matched nulls: the lowest Δ, as before
    assert choose({"c": deltas["c"]}, {"c": nulls["c"]}, select, top) == "c"  # none helps: the lowest Δ


def test_frequency_bands_split_positions_by_reference_count(peaked_llama):
    lm, table, ev = _setup(peaked_llama)
    tokens = ev.reshape(-1)
    bands, edges = frequency_bands(table, tokens, 3)
    rows = table.index_V[torch.from_numpy(tokens)].numpy()
    assert ((bands == -1) == (rows < 0)).all() and len(edges) == 2
    counts = table.counts_R[rows[rows >= 0]]
    b = bands[rows >= 0]
    assert counts[b == 0].max() <= edges[0] <= counts[b == 1].min() and counts[b == 2].min() >= edges[1]


# ---- by hand: per-position logits → losses → the verdict -------------------------------------------------------

N, T, V = 48, 60, 40
CFG = ReinjectConfig(n_boot=200, contexts=N)


def _stats(z, y, temp=None):
    loss, ent = next_token_stats(torch.from_numpy(z), torch.from_numpy(y),
                                 None if temp is None else torch.full(y.shape, float(temp)))
    return loss.numpy().astype(np.float64), ent.numpy().astype(np.float64)


def _text(seed=0):
    """Clean logits whose difficulty drifts slowly along each context, so a surprising token tends to be followed
    by a hard one (what makes any flattening look like help after surprising tokens)."""
    rng = np.random.default_rng(seed)
    d = np.zeros((N, T))
    for t in range(1, T):
        d[:, t] = 0.9 * d[:, t - 1] + np.sqrt(1 - 0.81) * rng.standard_normal(N)
    z = rng.standard_normal((N, T, V)).astype(np.float32)
    y = rng.integers(0, V, size=(N, T))
    np.put_along_axis(z, y[..., None], np.take_along_axis(z, y[..., None], -1) + (3.0 - 2.5 * d)[..., None], -1)
    return rng, z, y


def _judge(clean, true, temp_null, mean_null, deranged, bands=None) -> ReinjectResult:
    """run()'s analysis on per-position (N, T) losses: surprisal fifths of token p (the clean loss at p-1), Δ on
    the following token, half the contexts to choose and half to judge."""
    def flat(a):
        return a[:, 1:].reshape(-1)

    surprisal = clean[:, :-1].reshape(-1)
    ctx = np.repeat(np.arange(N), T - 1)
    edges = np.quantile(surprisal, np.linspace(0, 1, CFG.n_bins + 1))
    bins = np.clip(np.searchsorted(edges, surprisal, side="right") - 1, 0, CFG.n_bins - 1)
    bands = np.zeros_like(bins) if bands is None else bands
    select = np.isin(ctx, np.random.default_rng(0).permutation(N)[:N // 2])
    d, tn, mn, dn = (flat(x - clean) for x in (true, temp_null, mean_null, deranged))
    top = ~select & (bins == CFG.n_bins - 1)
    iv, band = Interval(0.0, -0.1, 0.1), Band([1.0] * 5, [1.0] * 5, [1.0] * 5)
    premise = Premise(layers=[0, 1, 2], coverage=1.0, decodable={0: band, 1: band, 2: band},
                      gap=Band([0.0] * 3, [-0.1] * 3, [0.1] * 3), late_minus_early=iv)
    res = ReinjectResult(
        config=CFG, model="by hand", layers=[2], clean_loss=float(clean.mean()), bin_edges=edges.tolist(),
        premise=premise, effects={"mean w=0.1": _effect(d, ctx, bins, CFG)}, chosen="mean w=0.1",
        judged=_effect(d[~select], ctx[~select], bins[~select], CFG),
        vs_null=cluster_interval((d - dn)[top], ctx[top], n_boot=CFG.n_boot), cached=CachedCheck(
            contexts=1, tokens=2, max_abs_diff=0.0, delta=0.0), samples=[], entropy={"clean": 0.0, "mean w=0.1": 0.0},
        matched={"mean w=0.1": {"temperature": MatchedNull(parameter=1.0, entropy=0.0, effect=_effect(tn, ctx, bins, CFG)),
                                "layer mean": MatchedNull(parameter=0.1, entropy=0.0, effect=_effect(mn, ctx, bins, CFG))}},
        vs_matched={"temperature": compare(d, tn, ctx, bins, bands, ~select, CFG),
                    "layer mean": compare(d, mn, ctx, bins, bands, ~select, CFG)}, band_edges=[])
    res.verdict = verdict(res)
    return res


def _matched_temperature_null(z, y, intervened_H):
    """The temperature null as run() builds it: T matched on mean output entropy, then the clean logits at T."""
    clean_H = _stats(z, y)[1]
    grid = [_stats(z, y, t)[1].mean() for t in TEMPERATURE_GRID]
    t = matched_temperature(TEMPERATURE_GRID, grid, float(intervened_H.mean()), float(clean_H.mean()))
    loss, H = _stats(z, y, t)
    assert abs(H.mean() - intervened_H.mean()) < 5e-3  # the null flattens the output as much
    return t, loss


def test_flattening_alone_shows_the_old_pattern_and_is_not_supported_against_the_temperature_null():
    rng, z, y = _text()
    clean = _stats(z, y)[0]
    noise = rng.standard_normal(z.shape).astype(np.float32)
    true, true_H = _stats(z / 1.6 + 0.3 * noise, y)  # flattening, plus the jitter any intervention brings
    t, temp_null = _matched_temperature_null(z, y, true_H)
    assert 1.3 < t < 2.0
    mean_null = _stats(z / 1.3 + 0.3 * rng.standard_normal(z.shape).astype(np.float32), y)[0]
    deranged = _stats(z + 1.0 * rng.standard_normal(z.shape).astype(np.float32), y)[0]
    res = _judge(clean, true, temp_null, mean_null, deranged)
    j = res.judged
    # the signature the committed SUPPORTED rested on: better after surprising tokens, worse after predictable
    # ones, better than the deranged null — the old rule would have said SUPPORTED
    assert j.bins[-1].hi < 0 < j.bins[0].lo and j.top_minus_bottom.hi < 0 and res.vs_null.hi < 0
    assert res.vs_matched["temperature"].by_fifth.at(-1).lo <= 0
    assert res.verdict.supported is False and "Re-injection NOT SUPPORTED" in res.verdict.headline
    assert "the temperature null" in res.verdict.headline and "as well" in res.verdict.headline


def test_a_true_token_effect_beyond_flattening_is_supported():
    rng, z, y = _text(seed=1)
    clean = _stats(z, y)[0]
    # after a surprising input token (top fifth of the clean loss at p-1), the true next token gains 1.5 nats of
    # logit: information the flattening nulls do not carry
    surprising = np.zeros((N, T), dtype=bool)
    surprising[:, 1:] = clean[:, :-1] > np.quantile(clean[:, :-1], 0.8)
    boost = np.zeros_like(z)
    np.put_along_axis(boost, y[..., None], (1.5 * surprising)[..., None].astype(np.float32), -1)
    noise = rng.standard_normal(z.shape).astype(np.float32)
    true, true_H = _stats(z / 1.6 + 0.3 * noise + boost, y)
    _, temp_null = _matched_temperature_null(z, y, true_H)
    mean_null = _stats(z / 1.6 + 0.3 * rng.standard_normal(z.shape).astype(np.float32), y)[0]
    deranged = _stats(z + 1.0 * rng.standard_normal(z.shape).astype(np.float32), y)[0]
    res = _judge(clean, true, temp_null, mean_null, deranged)
    assert res.vs_matched["temperature"].by_fifth.at(-1).lo > 0 and res.vs_matched["layer mean"].by_fifth.at(-1).lo > 0
    assert res.verdict.supported is True and "Re-injection SUPPORTED" in res.verdict.headline
    assert "as well" not in res.verdict.headline
    # the comparison within frequency bands splits the same positions (one band here: the whole fifth)
    c = res.vs_matched["temperature"]
    assert np.isclose(c.top_by_band.mean[0], c.by_fifth.mean[-1]) and np.isnan(c.by_band.mean[1])


def test_premise_within_bands_removes_a_mix_of_token_types():
    """Rare tokens are both the surprising ones and the ones late layers lose, at the same rate at every
    surprisal: across bands the late gap looks like 'losing surprising tokens', within each band there is none."""
    rng = np.random.default_rng(0)
    n_ctx, per = 60, 200
    ctx = np.repeat(np.arange(n_ctx), per)
    rare = rng.random(len(ctx)) < 0.5
    surprisal = np.where(rare, rng.normal(3, 1.5, len(ctx)), rng.normal(1, 1.5, len(ctx)))
    edges = np.quantile(surprisal, np.linspace(0, 1, 6))
    bins = np.clip(np.searchsorted(edges, surprisal, side="right") - 1, 0, 4)
    right = {1: np.ones(len(ctx)), 3: (rng.random(len(ctx)) < np.where(rare, 0.5, 0.9)).astype(float)}
    top, bottom = bins == 4, bins == 0
    cfg = ReinjectConfig(n_boot=200)
    assert _late_minus_early(right, ctx, top, bottom, [3], cfg).hi < 0  # across bands: looks MET
    for band in (rare, ~rare):
        within = _late_minus_early(right, ctx, top & band, bottom & band, [3], cfg)
        assert within.lo < 0 < within.hi  # within a band: nothing


def test_a_result_from_before_the_matched_nulls_says_so_and_is_not_supported():
    res = EXPERIMENTS["reinject"].read(Path(__file__).resolve().parents[1] / "docs" / "results" / "reinject")
    assert res.matched is None and res.premise.within_bands is None
    v = verdict(res)
    assert v.supported is False and "not judged against the matched nulls" in v.headline
    assert any("Matched nulls not run" in line for line in v.criteria)
    assert EXPERIMENTS["reinject"].numbers(res)["advantage over the temperature null, most surprising fifth"] == \
        "not run"
