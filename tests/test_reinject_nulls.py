"""Re-injection's matched nulls (a temperature that flattens the output as much, within each surprisal fifth; the
same move toward the layer's mean residual, tempered as much), the comparisons within frequency bands, the power rule
and the verdict that needs the true token to beat both: on a tiny model where the answer is known, and by hand at
the level of per-position logits and losses, through run()'s own analysis (``split_positions``, ``fifth_temperatures``,
``judge``)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from superpos.hypotheses.reinject.analysis import (
    TEMPERATURE_GRID,
    choose,
    effect,
    fifth_temperatures,
    frequency_bands,
    judge,
    late_minus_early,
    matched_temperature,
    split_positions,
    within_bands,
)
from superpos.hypotheses.reinject.config import ReinjectConfig
from superpos.hypotheses.reinject.result import CachedCheck, MatchedNull, NullComparison, Premise, ReinjectResult
from superpos.hypotheses.reinject.run import interpolation, next_token_stats, teacher_forced, temperature_sweep
from superpos.hypotheses.reinject.verdict import verdict
from superpos.hypotheses.token_table import token_means
from superpos.model.load import load_model
from superpos.protocol.registry import EXPERIMENTS
from superpos.stats import Band, Interval, cluster_interval, cluster_t_interval, min_detectable

LAYERS = [3, 5]


def _setup(peaked_llama):
    lm = load_model(str(peaked_llama), device="cpu")  # peaked outputs, as a trained model's are
    rng = np.random.default_rng(1)
    ref, ev = rng.integers(2, 60, size=(8, 32)), rng.integers(2, 60, size=(6, 32))
    return lm, token_means(lm, ref, [1, *LAYERS], min_count=2), ev


def test_temperature_null_matches_the_interventions_output_entropy_within_each_fifth(peaked_llama):
    lm, table, ev = _setup(peaked_llama)
    cfg = ReinjectConfig(contexts=len(ev))
    clean, clean_H = teacher_forced(lm, ev)
    bands, _ = frequency_bands(table, ev[:, 1:-1].reshape(-1), cfg.n_bands)
    pos = split_positions(clean, bands, cfg)
    assert 0 < pos.scored.mean() < 1  # some input tokens have no representation: those positions are not scored
    moved = interpolation(lm, LAYERS, 0.3, table.targets(lm, "embedding", LAYERS), table.index_V)
    _, moved_H = teacher_forced(lm, ev, moved)
    assert abs(pos.selection_mean(moved_H) - pos.selection_mean(clean_H)) > 0.5  # the intervention moves it
    _, grid_H = temperature_sweep(lm, ev, TEMPERATURE_GRID)
    t_NC, t_table = fifth_temperatures(TEMPERATURE_GRID, grid_H, moved_H, pos, cfg)
    assert len({round(t, 6) for row in t_table for t in row}) > 1  # one T per fifth and half, not one for all
    loss_T, H_T = temperature_sweep(lm, ev, [t_NC])
    inside = 0
    for h, half in enumerate((pos.select, ~pos.select)):  # matched within every fifth of both halves ...
        for b in range(cfg.n_bins):
            m = half & (pos.bins == b)
            gap = abs(pos.flat(H_T[0])[m].mean() - pos.flat(moved_H)[m].mean())
            if TEMPERATURE_GRID[0] < t_table[h][b] < TEMPERATURE_GRID[-1]:
                inside += 1
                assert gap < 2e-3
            else:  # ... unless the setting's entropy is beyond the scan: then the gap shows (and the verdict checks it)
                assert gap > 1e-2
    assert inside >= 5
    # the positions that are not scored (and position 0) keep T = 1: their loss is the clean one, bit for bit
    untouched = t_NC == 1.0
    assert untouched.any() and np.array_equal(loss_T[0][untouched], clean[untouched])


def test_weight_zero_and_temperature_one_leave_everything_bit_identical(peaked_llama):
    lm, table, ev = _setup(peaked_llama)
    cfg = ReinjectConfig(contexts=len(ev))
    clean, clean_H = teacher_forced(lm, ev)
    averaged = table.targets(lm, "mean", LAYERS, averaged=True)
    # the layer-mean null's target: every row is the occurrence-weighted mean of the token means (the layer mean)
    w = torch.from_numpy(table.counts_R / table.counts_R.sum()).float()
    torch.testing.assert_close(averaged[0], (w @ table.means_LRD[1])[None].expand_as(averaged[0]))
    loss0, H0 = teacher_forced(lm, ev, interpolation(lm, LAYERS, 0.0, averaged, table.index_V))
    assert np.array_equal(loss0, clean) and np.array_equal(H0, clean_H)
    # w = 0 gives the clean entropy, whose matched temperature is exactly 1 in every fifth, which changes nothing;
    # the same holds for the layer-mean null's own tempering
    pos = split_positions(clean, frequency_bands(table, ev[:, 1:-1].reshape(-1), cfg.n_bands)[0], cfg)
    _, m_grid = temperature_sweep(lm, ev, TEMPERATURE_GRID, interpolation(lm, LAYERS, 0.0, averaged, table.index_V))
    t_NC, _ = fifth_temperatures(TEMPERATURE_GRID, m_grid, H0, pos, cfg)
    assert (t_NC == 1.0).all()
    loss1, H1 = temperature_sweep(lm, ev, [t_NC, 1.0])
    assert np.array_equal(loss1[0], clean) and np.array_equal(H1[1], clean_H)
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


def test_cluster_t_interval_and_min_detectable_by_hand():
    # equal clusters: the ratio estimator's interval is the t-interval of the cluster means
    v, g = np.array([1.0, 3.0, 2.0, 6.0, 0.0, 2.0]), np.array([0, 0, 1, 1, 2, 2])
    iv = cluster_t_interval(v, g)
    means = np.array([2.0, 4.0, 1.0])
    half = 4.302652729911275 * means.std(ddof=1) / np.sqrt(3)  # t(0.975, 2 df)
    assert np.isclose(iv.mean, 7 / 3) and np.isclose(iv.lo, 7 / 3 - half) and np.isclose(iv.hi, 7 / 3 + half)
    # few clusters: the percentile bootstrap is narrower than t; with t_floor it is not
    rng = np.random.default_rng(0)
    v, g = rng.standard_normal(6 * 50) + np.repeat(rng.standard_normal(6), 50), np.repeat(np.arange(6), 50)
    boot, floored, t = (cluster_interval(v, g, n_boot=500), cluster_interval(v, g, n_boot=500, t_floor=True),
                        cluster_t_interval(v, g))
    assert boot.hi - boot.lo < 0.8 * (t.hi - t.lo) and floored.lo <= t.lo and floored.hi >= t.hi
    assert np.isclose(min_detectable(Interval(0.0, -0.1, 0.1)), 2.8 * 0.1 / 1.96)


# ---- by hand: per-position logits → losses → run()'s analysis → the verdict -----------------------------------

N, T, V = 48, 60, 40
CFG = ReinjectConfig(n_boot=200, contexts=N)


def _stats(z, y, temp=None):
    """(N, T) losses and entropies of logits ``z`` at temperature ``temp`` (a number or an (N, T) array)."""
    t = None if temp is None else torch.from_numpy(np.broadcast_to(np.asarray(temp, np.float32), y.shape).copy())
    loss, ent = next_token_stats(torch.from_numpy(z), torch.from_numpy(y), t)
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


def _positions(clean, unscored=None):
    """run()'s scored positions, fifths and halves (every input token represented unless ``unscored``)."""
    bands = np.zeros(N * (T - 1), dtype=int)
    if unscored is not None:
        bands[unscored] = -1
    return split_positions(clean, bands, CFG)


def _tempered(z, y, target_H, pos):
    """A null as run() builds it: logits ``z`` divided, within each surprisal fifth of each half, by the temperature
    whose mean output entropy there is ``target_H``'s: (loss, entropy)."""
    grid = np.stack([_stats(z, y, t)[1] for t in TEMPERATURE_GRID])
    t_NC, _ = fifth_temperatures(TEMPERATURE_GRID, grid, target_H, pos, CFG)
    return _stats(z, y, t_NC)


def _judge(pos, clean, setting, temp_null, mean_null, deranged, cfg=CFG) -> ReinjectResult:
    """run()'s analysis and result on per-position (loss, entropy) pairs, the chosen setting fixed."""
    (true, true_H), (tn, tn_H), (mn, mn_H) = setting, temp_null, mean_null
    d, dn = pos.flat(true - clean), pos.flat(deranged - clean)
    nulls = {"temperature": pos.flat(tn - clean), "layer mean": pos.flat(mn - clean)}
    judged, vs_null, vs_matched = judge(pos, d, nulls, dn, cfg)
    iv, band = Interval(0.0, -0.1, 0.1), Band([1.0] * 5, [1.0] * 5, [1.0] * 5)
    premise = Premise(layers=[0, 1, 2], coverage=1.0, decodable={0: band, 1: band, 2: band},
                      gap=Band([0.0] * 3, [-0.1] * 3, [0.1] * 3), late_minus_early=iv)
    fifths = [[1.0] * cfg.n_bins] * 2

    def null(h, delta):
        return MatchedNull(parameter=1.0, entropy=pos.selection_mean(h), effect=effect(delta, pos.ctx, pos.bins, cfg),
                           temperatures=fifths, entropy_fifths=pos.judging_fifths(h, cfg.n_bins))

    res = ReinjectResult(
        config=cfg, model="by hand", layers=[2], clean_loss=float(clean.mean()), bin_edges=pos.edges,
        premise=premise, effects={"mean w=0.1": effect(d, pos.ctx, pos.bins, cfg)}, chosen="mean w=0.1",
        judged=judged, vs_null=vs_null, cached=CachedCheck(contexts=1, tokens=2, max_abs_diff=0.0, delta=0.0),
        samples=[], entropy={"clean": 0.0, "mean w=0.1": pos.selection_mean(true_H)},
        entropy_fifths={"mean w=0.1": pos.judging_fifths(true_H, cfg.n_bins)},
        matched={"mean w=0.1": {"temperature": null(tn_H, nulls["temperature"]),
                                "layer mean": null(mn_H, nulls["layer mean"])}},
        vs_matched=vs_matched, band_edges=[], shared_documents=0)
    res.verdict = verdict(res)
    return res


def _noise(rng, z, scale):
    return z + scale * rng.standard_normal(z.shape).astype(np.float32)


def test_flattening_alone_shows_the_old_pattern_and_is_not_supported_against_the_temperature_null():
    rng, z, y = _text()
    clean = _stats(z, y)[0]
    pos = _positions(clean)
    setting = _stats(_noise(rng, z / 1.6, 0.3), y)  # flattening, plus the jitter any intervention brings
    res = _judge(pos, clean, setting, _tempered(z, y, setting[1], pos),
                 _tempered(_noise(rng, z, 0.3), y, setting[1], pos), _stats(_noise(rng, z, 1.0), y)[0])
    j = res.judged
    # the signature the committed SUPPORTED rested on: better after surprising tokens, worse after predictable
    # ones, better than the deranged null — the old rule would have said SUPPORTED
    assert j.bins[-1].hi < 0 < j.bins[0].lo and j.top_minus_bottom.hi < 0 and res.vs_null.hi < 0
    adv = res.vs_matched["temperature"].by_fifth.at(-1)
    assert adv.lo <= 0 and res.verdict.supported is False
    assert "does not beat the temperature" in res.verdict.headline
    # 24 judging contexts of 59 positions cannot rule out 0.02 nats here (the interval reaches above it, the minimum
    # detectable advantage is larger): the honest answer is INSUFFICIENT POWER, not NOT SUPPORTED
    assert adv.hi > CFG.needed_advantage and min_detectable(adv) > CFG.needed_advantage
    assert res.verdict.insufficient_power and "Re-injection INSUFFICIENT POWER" in res.verdict.headline


def test_flattening_only_after_surprising_tokens_is_matched_within_the_fifth():
    """Finding 1: a setting that flattens only after surprising tokens beats a temperature matched on the overall
    mean entropy (it flattens everywhere a little, so too little where the verdict looks); matched within each
    fifth, the null flattens the most surprising fifth as much and does as well."""
    rng, z, y = _text(seed=2)
    clean = _stats(z, y)[0]
    pos = _positions(clean)
    surprising = np.ones((N, T))
    surprising[:, 1:] = np.where(clean[:, :-1] > pos.edges[-2], 2.0, 1.0)
    setting = _stats(z, y, surprising)  # T = 2 after the most surprising fifth, untouched elsewhere
    # the old null: one T for every position, matched on the choosing half's overall mean entropy
    grid = [pos.selection_mean(_stats(z, y, t)[1]) for t in TEMPERATURE_GRID]
    t_all = matched_temperature(TEMPERATURE_GRID, grid, pos.selection_mean(setting[1]),
                                pos.selection_mean(_stats(z, y)[1]))
    assert 1.0 < t_all < 1.5
    old = _judge(pos, clean, setting, _stats(z, y, t_all), _stats(z, y, t_all), _stats(_noise(rng, z, 1.0), y)[0])
    assert old.vs_matched["temperature"].by_fifth.at(-1).lo > 0  # the evenly flattening null is beaten in Q5
    new = _judge(pos, clean, setting, _tempered(z, y, setting[1], pos),
                 _tempered(_noise(rng, z, 0.05), y, setting[1], pos), _stats(_noise(rng, z, 1.0), y)[0])
    t_adv = new.vs_matched["temperature"].by_fifth.at(-1)
    assert abs(t_adv.mean) < 0.005 and t_adv.lo <= 0  # matched in Q5: no advantage left
    assert t_adv.hi < CFG.needed_advantage  # the run rules out the advantage the question needs: an answer
    assert new.verdict.supported is False and not new.verdict.insufficient_power
    assert "Re-injection NOT SUPPORTED" in new.verdict.headline
    # matched in entropy where the verdict looks (the judging half's most surprising fifth)
    m = new.matched["mean w=0.1"]["temperature"]
    assert abs(m.entropy_fifths[-1] - new.entropy_fifths["mean w=0.1"][-1]) < 2e-3


def _supported():
    rng, z, y = _text(seed=1)
    clean = _stats(z, y)[0]
    pos = _positions(clean)
    # after a surprising input token (top fifth of the clean loss at p-1), the true next token gains 1.5 nats of
    # logit: information the flattening nulls do not carry
    surprising = np.zeros((N, T), dtype=bool)
    surprising[:, 1:] = clean[:, :-1] > np.quantile(clean[:, :-1], 0.8)
    boost = np.zeros_like(z)
    np.put_along_axis(boost, y[..., None], (1.5 * surprising)[..., None].astype(np.float32), -1)
    setting = _stats(_noise(rng, z / 1.6, 0.3) + boost, y)
    return _judge(pos, clean, setting, _tempered(z, y, setting[1], pos),
                  _tempered(_noise(rng, z / 1.6, 0.3), y, setting[1], pos), _stats(_noise(rng, z, 1.0), y)[0])


def test_a_true_token_effect_beyond_flattening_is_supported():
    res = _supported()
    assert res.vs_matched["temperature"].by_fifth.at(-1).lo > 0 and res.vs_matched["layer mean"].by_fifth.at(-1).lo > 0
    assert res.verdict.supported is True and "Re-injection SUPPORTED" in res.verdict.headline
    assert "as well" not in res.verdict.headline and not res.verdict.insufficient_power
    # the comparison within frequency bands splits the same positions (one band here: the whole fifth)
    c = res.vs_matched["temperature"]
    assert np.isclose(c.top_by_band.mean[0], c.by_fifth.mean[-1]) and np.isnan(c.by_band.mean[1])


def test_reference_contexts_from_the_judged_documents_refuse_supported():
    """Every null beaten, but the tokens' representations came from the documents judged (or, in an older result,
    from the contexts just before them): what follows a token there may be carried in, so NOT SUPPORTED, saying why."""
    res = _supported()
    for shared, why in ((2, "read 2 of the judged contexts' documents"), (None, "read just before the judged")):
        res.shared_documents = shared
        v = verdict(res)
        assert v.supported is False and not v.insufficient_power and "Re-injection NOT SUPPORTED (it beats every" \
            in v.headline and why in v.headline, v.headline


def test_reference_contexts_read_no_document_of_the_evaluation_contexts():
    """split_reference: the evaluation contexts are the first ones; the reference ones come later and skip every
    context holding one of their documents, filling up with the nearest others only when too few lie apart."""
    from superpos.hypotheses.reinject.run import split_reference
    from superpos.model.corpus import PackedContexts

    doc = np.array([[0, 0], [0, 1], [1, 1], [1, 2], [2, 3], [3, 3], [4, 4]], dtype=np.int32)
    tok = np.arange(doc.size, dtype=np.int32).reshape(doc.shape)
    packed = PackedContexts(tok, doc, -1)
    ref, ev, shared = split_reference(packed, 2, 3)  # judged: contexts 0, 1 (documents 0, 1)
    assert (ev == tok[:2]).all() and (ref == tok[[4, 5, 6]]).all() and shared == 0  # contexts 2, 3 hold document 1
    ref, ev, shared = split_reference(packed, 2, 5)  # only 3 contexts lie apart: contexts 2 and 3 fill up
    assert (ref == tok[[2, 3, 4, 5, 6]]).all() and shared == 1


def test_the_reference_search_packs_on_until_contexts_lie_apart_and_stops_on_one_document(peaked_llama, tmp_path,
                                                                                            monkeypatch):
    """reference_and_evaluation on real packing: with a long first document, it packs on (doubling) until enough
    later contexts lie in other documents; a one-document corpus stops after one packing (shared 1)."""
    import json

    import superpos.model.corpus as corpus_mod
    from superpos.hypotheses.reinject.run import reference_and_evaluation

    lm = load_model(str(peaked_llama), device="cpu")
    words = "the quick brown fox jumps over the lazy dog and runs far away into the woods ".split()
    long_doc = " ".join(words * 60)  # many contexts of 16 tokens
    many = tmp_path / "many.jsonl"
    many.write_text("\n".join(json.dumps({"text": t}) for t in [long_doc] + [" ".join(words * 3)] * 40))
    one = tmp_path / "one.txt"
    one.write_text(long_doc)
    calls = []
    real = corpus_mod.pack_contexts
    monkeypatch.setattr(corpus_mod, "pack_contexts", lambda *a, **k: calls.append(k["max_tokens"]) or real(*a, **k))
    cfg = ReinjectConfig(contexts=4, reference_contexts=4, context_length=16)
    ref, ev, shared = reference_and_evaluation(lm, replace(cfg, corpus=str(many)))
    assert shared == 0 and len(ref) == 4 and len(ev) == 4 and len(calls) > 1  # packed on past the long document
    calls.clear()
    ref, ev, shared = reference_and_evaluation(lm, replace(cfg, corpus=str(one)))
    assert shared == 1 and len(ref) == 4 and len(calls) == 1  # nothing can lie apart: no second packing


def test_a_null_not_matched_in_entropy_refuses_supported():
    res = _supported()
    res.matched["mean w=0.1"]["layer mean"].entropy_fifths[-1] += 3 * CFG.entropy_tolerance
    v = verdict(res)
    assert v.supported is False and "layer mean null not matched in entropy" in v.headline
    assert any("The layer mean null is not matched" in line for line in v.criteria)


def _with_advantage(res, adv: Interval, contexts=N):
    """The result with the advantage over both matched nulls in the most surprising fifth set by hand."""
    vs = {}
    for name, c in res.vs_matched.items():
        f = c.by_fifth
        vs[name] = NullComparison(by_fifth=Band(f.mean[:-1] + [adv.mean], f.lo[:-1] + [adv.lo], f.hi[:-1] + [adv.hi]),
                                  by_band=c.by_band, top_by_band=c.top_by_band)
    return replace(res, vs_matched=vs, config=replace(res.config, contexts=contexts))


def test_the_power_rule():
    res = _supported()
    # a wide interval that rules nothing out: minimum detectable advantage 0.086 > 0.02 → INSUFFICIENT POWER
    v = verdict(_with_advantage(res, Interval(0.01, -0.05, 0.07)))
    assert v.insufficient_power and v.supported is False
    assert "Re-injection INSUFFICIENT POWER (minimum detectable advantage 0.0857 nats" in v.headline
    # the power that counts is against the null not yet beaten: the layer-mean null beaten by a wide margin
    both = _with_advantage(res, Interval(0.01, -0.05, 0.07))
    both.vs_matched["layer mean"] = _with_advantage(res, Interval(0.3, 0.2, 0.4)).vs_matched["layer mean"]
    v = verdict(both)
    assert v.insufficient_power and "0.0857 nats over the temperature null, above" in v.headline
    assert "does not beat the temperature null" in v.headline and "layer mean null (" not in v.headline
    # a narrow one wholly below what the question needs: an answer, NOT SUPPORTED
    v = verdict(_with_advantage(res, Interval(0.0, -0.005, 0.005)))
    assert not v.insufficient_power and "Re-injection NOT SUPPORTED" in v.headline
    # a wide one that still excludes the needed advantage (hi < 0.02) is an answer too
    assert not verdict(_with_advantage(res, Interval(-0.05, -0.1, 0.0))).insufficient_power
    # too few judging contexts: no verdict either way, however narrow the interval
    v = verdict(_with_advantage(res, Interval(0.0, -0.005, 0.005), contexts=12))
    assert v.insufficient_power and "the judging half has 6 contexts, fewer than 10" in v.headline
    # an advantage that is found is found, whatever the power
    v = verdict(_with_advantage(res, Interval(0.1, 0.01, 0.19)))
    assert v.supported is True and not v.insufficient_power


def test_only_positions_whose_token_has_a_representation_are_scored():
    rng, z, y = _text(seed=3)
    clean = _stats(z, y)[0]
    unscored = rng.random(N * (T - 1)) < 0.3
    pos = _positions(clean, unscored)
    assert pos.scored.sum() == (~unscored).sum() and len(pos.ctx) == len(pos.bins) == pos.scored.sum()
    counts = np.bincount(pos.bins, minlength=CFG.n_bins)  # fifths of the scored positions
    assert counts.min() >= 0.19 * pos.scored.sum()
    setting = _stats(z / 1.3, y)
    delta = setting[0] - clean
    d_P = delta[:, 1:].reshape(-1).copy()
    d_P[unscored] = 99.0  # whatever happens at the positions that are not scored does not count
    delta[:, 1:] = d_P.reshape(N, T - 1)
    eff = effect(pos.flat(delta), pos.ctx, pos.bins, CFG)
    assert np.isclose(eff.overall.mean, (setting[0] - clean)[:, 1:].reshape(-1)[~unscored].mean())


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
    across = late_minus_early(right, ctx, top, bottom, [3], cfg)
    assert across.hi < 0  # across bands: looks MET
    for band in (rare, ~rare):
        within = late_minus_early(right, ctx, top & band, bottom & band, [3], cfg)
        assert within.lo < 0 < within.hi  # within a band: nothing
    # the bands pooled, each band's mean removed: nothing either — and the verdict says MET across types only
    bands = np.where(rare, 0, 1)
    pooled = late_minus_early(within_bands(right, np.ones(len(ctx), bool), bands, 2), ctx, top, bottom, [3], cfg)
    assert pooled.lo < 0 < pooled.hi
    res = _supported()
    res.premise = replace(res.premise, late_minus_early=across, within=pooled)
    v = verdict(res)
    assert v.premise_met is False and v.headline.startswith("Premise MET across token types only")
    res.premise = replace(res.premise, within=Interval(-0.1, -0.15, -0.05))
    assert verdict(res).premise_met is True


def test_a_result_from_before_the_matched_nulls_says_so_and_is_not_supported():
    """A result stored before the matched nulls existed (the committed run with those fields taken out, as an older
    results.json reads back) is judged NOT SUPPORTED and says why."""
    res = EXPERIMENTS["reinject"].read(Path(__file__).resolve().parents[1] / "docs" / "results" / "reinject")
    assert res.matched is not None  # the committed run has them; take them out
    res = replace(res, matched=None, vs_matched=None, premise=replace(res.premise, within_bands=None))
    v = verdict(res)
    assert v.supported is False and "not judged against the matched nulls" in v.headline
    assert any("Matched nulls not run" in line for line in v.criteria)
    assert EXPERIMENTS["reinject"].numbers(res)["advantage over the temperature null, most surprising fifth"] == \
        "not run"
