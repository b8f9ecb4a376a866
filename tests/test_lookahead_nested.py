"""Lookahead's nested comparison, its n-gram tables, and the via-the-guess decoding from the prediction at i."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from superpos.hypotheses.lookahead.logistic import Features, fit_logistic, ngram_features
from superpos.hypotheses.lookahead.ngrams import NgramCounts
from superpos.hypotheses.lookahead.run import (
    L2_EXTENSIONS,
    brier,
    choose_l2,
    nested_gain,
    ngram_table,
    planted_amplitude,
    planted_block,
    split_units,
)
from superpos.model.residuals import ResidualSample


def _planted(n: int, K: int, seed: int):
    """Targets y, n-gram-like counts that know y half the time, and a noisy one-hot of y (the base block)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    counts = rng.poisson(1.0, (n, 2, K)).astype(np.float32)
    knows = rng.random(n) < 0.5
    counts[knows, 1, y[knows]] += 6
    base_X = np.eye(K)[y] + 1.2 * rng.standard_normal((n, K))
    return y, counts, torch.tensor(base_X, dtype=torch.float32), rng


def test_nested_gain_detects_a_block_with_new_signal_and_not_a_noisy_copy_of_the_base():
    K, n_tr, n_te = 6, 3000, 1500
    y, counts, base_X, rng = _planted(n_tr + n_te, K, 0)
    f = Features(*ngram_features(counts), base_X)
    tr, te = np.arange(n_tr), np.arange(n_tr, n_tr + n_te)
    ctx = te // 25  # 60 test contexts of 25 positions
    news = torch.tensor(np.eye(K)[y] + 1.2 * rng.standard_normal((len(y), K)), dtype=torch.float32)  # fresh noise
    copy = base_X + 0.05 * torch.randn(len(y), K, generator=torch.Generator().manual_seed(1))  # no new information
    args = dict(n_classes=K, l2_base=1e-3, l2_full=1e-3, n_boot=200, seed=0)
    g, _, _ = nested_gain(f.rows(tr), news[tr], y[tr], f.rows(te), news[te], y[te], ctx, **args)
    assert g["gain"].lo > 0.1 and g["acc_gain"].lo > 0, g  # a second independent read of y: clearly more likely
    assert g["base_acc"].mean > 1.5 / K  # the base (tied n-gram counts + the base block) is itself informative
    assert g["converged"] == {"base": True, "full": True}
    g, _, _ = nested_gain(f.rows(tr), copy[tr], y[tr], f.rows(te), copy[te], y[te], ctx, **args)
    assert g["gain"].lo < 0 < g["gain"].hi + 1e-3 and abs(g["gain"].mean) < 0.02, g
    assert abs(g["acc_gain"].mean) < 0.02


def test_a_layer_that_repeats_the_embedding_adds_nothing_once_the_embedding_is_in_the_base():
    """Layer 0's calibration: an "embedding" block that reads the target (a noisy one-hot) adds log-likelihood to
    the n-gram base, and so does a later layer that only repeats it; with the embedding in the base (the chain
    base → + embedding → + layer, each fit from the last with its penalties kept) that layer adds nothing, while a
    layer with a fresh read of the target still does."""
    K, n_tr, n_te = 6, 3000, 1500
    y, counts, base_X, rng = _planted(n_tr + n_te, K, 7)
    f = Features(*ngram_features(counts), base_X)
    tr, te = np.arange(n_tr), np.arange(n_tr, n_tr + n_te)
    ctx = te // 25

    def read() -> torch.Tensor:
        return torch.tensor(np.eye(K)[y] + 1.2 * rng.standard_normal((len(y), K)), dtype=torch.float32)

    emb, fresh = read(), read()
    repeat = emb + 0.05 * torch.randn(len(y), K, generator=torch.Generator().manual_seed(8))
    args = dict(n_classes=K, l2_base=1e-3, n_boot=200, seed=0)
    g_emb, _, with_emb = nested_gain(f.rows(tr), emb[tr], y[tr], f.rows(te), emb[te], y[te], ctx, l2_full=1e-2,
                                     **args)
    g_alone, _, _ = nested_gain(f.rows(tr), repeat[tr], y[tr], f.rows(te), repeat[te], y[te], ctx, l2_full=1e-3,
                                **args)
    assert g_emb["gain"].lo > 0.1 and g_alone["gain"].lo > 0.1  # against the n-grams alone both read the target
    fe = f.with_block(emb)
    g_rep, _, full = nested_gain(fe.rows(tr), repeat[tr], y[tr], fe.rows(te), repeat[te], y[te], ctx, l2_full=1e-3,
                                 base=with_emb, **args)
    assert abs(g_rep["gain"].mean) < 0.02 and g_rep["gain"].lo < 0.01, g_rep  # nothing beyond the embedding
    F0 = base_X.shape[1]
    torch.testing.assert_close(full.pen_F, torch.tensor([1e-3] * F0 + [1e-2] * K + [1e-3] * K))  # penalties kept
    g_new, _, _ = nested_gain(fe.rows(tr), fresh[tr], y[tr], fe.rows(te), fresh[te], y[te], ctx, l2_full=1e-3,
                              base=with_emb, **args)
    assert g_new["gain"].lo > 0.05, g_new  # a fresh read of the target still adds


def test_the_l2_grid_goes_on_upward_while_its_largest_strength_wins():
    """A pure-noise added block on few rows: validation prefers the strongest L2, so a grid that stops at 1e-4
    would choose its edge; choose_l2 goes on by ×10 until a strength beats the next one up (or the limit), and a
    grid whose best lies inside it is left as it is."""
    K, n = 6, 600
    y, counts, base_X, rng = _planted(2 * n, K, 5)
    f = Features(*ngram_features(counts), base_X)
    noise = torch.randn(2 * n, 200, generator=torch.Generator().manual_seed(6))
    tr, va = np.arange(n), np.arange(n, 2 * n)
    l2_base, base = choose_l2(f.rows(tr), y[tr], f.rows(va), y[va], K, [1e-4, 1e-3, 1e-2, 1e-1, 1.0], "cpu")
    assert 1e-4 < l2_base < 1.0  # the base's best lies inside this grid: no extension
    grown = f.with_block(noise)
    best, _ = choose_l2(grown.rows(tr), y[tr], grown.rows(va), y[va], K, [1e-5, 1e-4], "cpu", base=base,
                        l2_base=l2_base)
    assert 1e-4 < best <= 1e-4 * 10 ** L2_EXTENSIONS  # went past the grid's edge


def test_the_full_fit_starts_at_the_base_solution_so_the_pair_is_nested():
    """Warm start: with the added block's weights at 0 the full probe is the base probe (same logits), and the fit
    only lowers the training objective from there, the base's L2 kept on the shared block."""
    K, n = 6, 2000
    y, counts, base_X, rng = _planted(n, K, 2)
    f = Features(*ngram_features(counts), base_X)
    noise = torch.randn(n, 8, generator=torch.Generator().manual_seed(4))
    base = fit_logistic(f, y, K, 1e-3)
    start = fit_logistic(f.with_block(noise), y, K, 1e-3, init=base, l2_extra=1e-2, max_iter=0)
    torch.testing.assert_close(start.logits(f.with_block(noise)), base.logits(f))
    full = fit_logistic(f.with_block(noise), y, K, 1e-3, init=base, l2_extra=1e-2)
    assert base.converged and full.converged and 0 < full.iterations
    assert full.objective <= base.objective + 1e-6
    cold = fit_logistic(f.with_block(noise), y, K, 1e-3, max_iter=2)  # cut short: recorded, not hidden
    assert not cold.converged and cold.iterations <= 2


def test_the_planted_control_is_detected_with_enough_data_and_not_with_little():
    """The positive control: a noisy one-hot of the target, its amplitude set from the base's Brier score to add
    about the needed gain (here 0.05 nats), appended to an uninformative residual and run through the same nested
    comparison. 3000 training / 1500 test positions (60 contexts) see it; 200 / 100 (20 contexts) do not."""
    K = 6
    for n_tr, n_te, per, seen in ((3000, 1500, 25, True), (200, 100, 5, False)):
        y, counts, base_X, rng = _planted(n_tr + n_te, K, 0)
        f = Features(*ngram_features(counts), base_X)
        tr, te = np.arange(n_tr), np.arange(n_tr, n_tr + n_te)
        ctx = te // per
        resid = torch.randn(len(y), 8, generator=torch.Generator().manual_seed(3))  # carries nothing
        args = dict(n_classes=K, l2_base=1e-3, l2_full=1e-3, n_boot=200, seed=0)
        g, base, _ = nested_gain(f.rows(tr), resid[tr], y[tr], f.rows(te), resid[te], y[te], ctx, **args)
        a = planted_amplitude(0.05, brier(base, f.rows(tr), y[tr]))
        assert 0.4 < a < 0.5  # Brier ≈ 0.5: a = √(2 · 0.05 / 0.5)
        planted = torch.cat([resid, planted_block(y, K, a, seed=5)], 1)
        p, _, _ = nested_gain(f.rows(tr), planted[tr], y[tr], f.rows(te), planted[te], y[te], ctx, **args, base=base)
        assert g["gain"].lo < 0.01  # the residual itself adds nothing
        if seen:
            assert p["gain"].lo > 0 and 0.02 < p["gain"].mean < 0.06, p  # about the planted 0.05, a little less
        else:
            assert p["gain"].lo < 0, p


def test_ngram_tables_leave_out_tokens_written_minus_1_and_the_own_document():
    """A table that must not see some documents is counted on rows where their tokens are -1: no target and no
    history holding one is counted; a training position's features leave out every target of its own document, in
    any row, and nothing else."""
    rows = np.array([[1, 2, 3, 1, 2, 3], [1, 2, 4, 1, 2, 4]])
    doc = np.array([[0, 0, 0, 1, 1, 1], [1, 1, 1, 2, 2, 2]])
    classes = np.array([1, 2, 3, 4])
    masked = np.where(doc == 2, -1, rows)  # document 2 held out
    t = NgramCounts(3, 1, classes).fit(masked)
    assert t.n_tokens_ == 9
    q = t.counts(rows, np.array([1]), np.array([4]))  # after (1, 2) in row 1's document 2 part: only counted text
    np.testing.assert_array_equal(q[0, 2], [0, 0, 2, 1])  # 3 (row 0 twice), 4 (row 1, document 1); none from doc 2
    np.testing.assert_array_equal(q[0, 0], [1, 3, 2, 1])  # unigram: every counted target (none of doc 2)
    # training position in document 1 (row 0, position 4): leave document 1 out (row 0's second half, row 1's first)
    own = t.counts(rows, np.array([0]), np.array([4]), exclude_own=True, counted_NC=masked, unit_NC=doc)
    np.testing.assert_array_equal(own[0, 2], [0, 0, 1, 0])  # only document 0's (1, 2) -> 3 is left
    np.testing.assert_array_equal(own[0, 0], [0, 1, 1, 0])  # document 0's targets 2, 3 (position 0 is no target)


def test_the_split_keeps_each_document_on_one_side_and_falls_back_to_contexts():
    tokens = np.arange(40 * 8).reshape(40, 8) % 50
    doc = np.repeat(np.arange(20), 16).reshape(40, 8)  # 20 documents of two contexts each
    s = ResidualSample(torch.zeros(1, 40 * 6, 2), [0], tokens, np.repeat(np.arange(40), 6), np.tile(np.arange(1, 7), 40))
    split = split_units(tokens, doc, s, seed=0)
    part = split.part(s)
    assert split.by == "documents" and set(part) == {"fit", "val", "test"}
    for d in range(20):  # whole documents: both contexts of a document on one side
        assert len(set(part[doc[s.ctx_P, s.pos_P] == d])) == 1
    assert 0.2 <= (part == "test").mean() <= 0.35 and 0.1 <= (part == "val").mean() <= 0.25
    few = split_units(tokens, np.zeros_like(doc), s, seed=0)  # one document: split by context
    assert few.by == "contexts" and len(few.test) >= 1 and set(few.part(s)) == {"fit", "val", "test"}


def test_ngram_features_leave_the_own_context_out_for_training_positions():
    rows = np.array([[5, 1, 2, 3, 1, 2, 4], [5, 1, 2, 3, 3, 3, 3]])
    table = NgramCounts(3, 1, np.array([1, 2, 3, 4])).fit(rows)
    n = table.counts(rows, np.array([0, 0]), np.array([2, 5]))
    own = table.counts(rows, np.array([0, 0]), np.array([2, 5]), exclude_own=True)
    # after (1, 2): 3 (row 0, row 1) and 4 (row 0); leaving row 0 out leaves row 1's 3 only
    np.testing.assert_array_equal(n[0, 2], [0, 0, 2, 1])
    np.testing.assert_array_equal(own[0, 2], [0, 0, 1, 0])
    np.testing.assert_array_equal(own[1, 2], own[0, 2])  # the same history at another position of the row
    logp, bucket = ngram_features(own)
    assert bucket[0, 2] == 1 and torch.all(logp[:, 0] == logp[0, 0])  # seen once; unigram features alike


def test_ngram_tables_count_the_extra_tokens_and_never_the_test_contexts():
    """The table behind the test scores is counted on every token read except the test contexts."""
    tokens = np.array([[1, 7, 8, 9], [1, 7, 9, 9], [1, 7, 8, 8], [1, 3, 3, 3]])
    sample = ResidualSample(torch.zeros(1, 8, 2), [0], tokens, np.repeat(np.arange(4), 2), np.tile([1, 2], 4))
    train, test = sample.split_contexts(0.5, seed=0)
    test_rows = tokens[np.unique(test.ctx_P)]
    classes = np.array([3, 7, 8, 9])
    extra = np.array([[1, 3, 9, 9], [1, 3, 9, 8]])  # rows read after the probed contexts
    train_rows = tokens[np.unique(train.ctx_P)]
    with_extra = ngram_table(1, classes, [extra, train_rows])
    alone = ngram_table(1, classes, [train_rows])
    q = np.array([[1, 3, 9, 9]])
    assert with_extra.counts(q, [0], [1])[0, 1, classes == 9] == 2 > alone.counts(q, [0], [1])[0, 1, classes == 9]
    assert with_extra.n_tokens_ == extra.size + train_rows.size
    # the same table whatever the test contexts hold
    scrambled = tokens.copy()
    scrambled[np.unique(test.ctx_P)] = 3
    other = ngram_table(1, classes, [extra, scrambled[np.unique(train.ctx_P)]])
    for a, b in zip(with_extra.tables_, other.tables_):
        for x, z in zip(a, b):
            np.testing.assert_array_equal(x, z)
    assert not np.array_equal(test_rows, scrambled[np.unique(test.ctx_P)])


def test_backoff_ngram_matches_a_hand_count():
    train = np.array([[1, 2, 3, 1, 2, 4, 1, 2, 3]])
    classes = np.unique(train)
    test = np.array([[1, 2, 9, 5, 2, 7, 7]])
    # (1, 2) -> 3 twice, 4 once; (5, 2) unseen -> back off to (2,) -> 3; (2, 9) and (9,) unseen -> the most
    # frequent target overall (2: three times); (7, 7) -> (7,) unseen -> 2
    trigram = NgramCounts(3, 1, classes).fit(train)
    assert trigram.predict(test, [0, 0, 0, 0], [1, 4, 2, 6]).tolist() == [3, 3, 2, 2]
    assert trigram.predict(test, [0], [1], order=1).tolist() == [2]  # order 1: the most frequent target only
    skip = NgramCounts(2, 2, classes).fit(train)  # two tokens on: after 1 come 3, 4, 3; after 2 always 1
    assert skip.predict(np.array([[1, 2, 3, 4]]), [0, 0, 0, 0], [0, 1, 2, 3]).tolist() == [3, 1, 2, 2]
    only = NgramCounts(2, 1, np.array([4])).fit(train)  # targets outside the classes not counted
    assert only.predict(test, [0], [1]).tolist() == [4]


def _eulerian_circuit(m: int, rng) -> np.ndarray:
    """A random closed walk over the complete directed graph on m tokens with loops, using every ordered pair
    (a, b) exactly once (Hierholzer): m² + 1 tokens."""
    out_edges = {a: list(rng.permutation(m)) for a in range(m)}
    stack, walk = [int(rng.integers(m))], []
    while stack:
        a = stack[-1]
        if out_edges[a]:
            stack.append(int(out_edges[a].pop()))
        else:
            walk.append(stack.pop())
    return np.array(walk[::-1])


def test_bigram_features_match_a_hand_count():
    from superpos.hypotheses.probes.prediction import bigram_features

    rows = np.array([[5, 1, 2, 1, 3], [1, 2, 2, 9, 5]])
    f = bigram_features(rows, np.array([1, 7]), np.array([1, 2, 3])).numpy()
    # after 1: 2 twice, 3 once (n = 3); K = 3 classes + "other": log((n_c + ½) / (3 + 2))
    np.testing.assert_allclose(f[0], np.log(np.array([0.5, 2.5, 1.5]) / 5), rtol=1e-6)
    np.testing.assert_allclose(f[1], np.log(np.full(3, 0.5) / 2), rtol=1e-6)  # 7 never seen: the smoothing alone


def test_the_input_is_read_from_the_prediction_at_i_and_from_the_guess_at_i_minus_1_only_when_it_follows(
        tiny_models):
    """Layer 0's lens distribution at a position is a fixed function of that position's token, so the answer is
    known there: with independent random tokens, x_i is read from the distribution at i and not from the one at
    i − 1; when x_i is a fixed function of x_{i−1} (a permutation chain), it is read from both alike."""
    from superpos.hypotheses.lenses.lens import train_tuned_lens
    from superpos.hypotheses.probes.prediction import prediction_test
    from superpos.model.load import load_model
    from superpos.model.residuals import sample_residuals

    lm = load_model(str(tiny_models["llama"]), device="cpu")
    rng = np.random.default_rng(0)
    classes = np.arange(2, 50)
    random_tokens = rng.integers(2, 50, size=(24, 40))
    perm = rng.permutation(classes)
    chain = np.empty_like(random_tokens)
    chain[:, 0] = rng.integers(2, 50, size=24)
    for t in range(1, chain.shape[1]):
        chain[:, t] = perm[chain[:, t - 1] - 2]
    circuit = np.stack([_eulerian_circuit(8, rng) for _ in range(24)]) + 2  # 8 tokens, rows of 8² + 1
    out = {}
    for name, tokens in (("random", random_tokens), ("chain", chain), ("circuit", circuit)):
        sample = sample_residuals(lm, tokens, per_context=38, progress=False)
        train, test = sample.split_contexts(0.75, seed=0)
        lens = train_tuned_lens(lm, train, steps=4, progress=False)[0] if name == "random" else None
        out[name] = prediction_test(lm, train, test, classes, lens, ridge=1e-4, n_boot=100, seed=0,
                                    max_positions=10_000)
    r, c = out["random"], out["chain"]
    assert r.layers[0] == 0 and r.layers[-1] == lm.n_layers and set(r.at_i) == {"logit lens", "tuned lens"}
    assert r.at_i["logit lens"].mean[0] > 0.95 and r.at_previous["logit lens"].mean[0] < 0.15
    assert r.difference["logit lens"].lo[0] > 0.8 and r.difference["tuned lens"].lo[0] > 0.8
    assert r.difference["logit lens"].lo[-1] > 0  # the model's own prediction at i carries x_i; its guess does not
    assert r.at_i["tuned lens"].mean[-1] == r.at_i["logit lens"].mean[-1]  # the last layer: no lens involved
    assert set(c.at_i) == {"logit lens"}
    assert c.at_i["logit lens"].mean[0] > 0.95 and c.at_previous["logit lens"].mean[0] > 0.95
    assert abs(c.difference["logit lens"].mean[0]) < 0.05
    # the bigram null: on the chain p(·|x_i) is a one-hot of perm(x_i), x_i read from it exactly, and no model's
    # prediction carries it better; on Eulerian circuits (every ordered pair once per row) every token's bigram row
    # is the same, so the table reads nothing while the model's prediction at i, computed from x_i, does
    assert c.bigram.mean > 0.95 and c.vs_bigram["logit lens"].lo[-1] <= 0
    e = out["circuit"]
    assert e.bigram.mean < 0.3 and e.vs_bigram["logit lens"].lo[-1] > 0.2 and e.vs_bigram["logit lens"].lo[0] > 0.5


def _nested_result(gain_half_width: float, planted=(0.01, 0.004), gain_mean: float = 0.0, test_contexts=24,
                   converged=True):
    """A lookahead result built by hand: +1 and +2, the +2 nested gain centred on ``gain_mean`` with the given
    interval half-width, the planted control's gain ``planted`` (mean, half-width; None: not run)."""
    from superpos.hypotheses.lookahead.config import LookaheadConfig
    from superpos.hypotheses.lookahead.result import LookaheadResult, LookaheadTarget, NestedGain
    from superpos.stats import Band, Interval

    def iv(m, h=0.02):
        return Interval(m, m - h, m + h)

    def target(gain):
        nested = NestedGain(layer=3, layer_screen=[0.1], l2_base=1e-3, l2_full=1e-3, base_loglik=iv(-3.0),
                            full_loglik=iv(-3.0 + gain.mean), gain=gain, base_acc=iv(0.3), full_acc=iv(0.3),
                            acc_gain=iv(0.0), floor=iv(0.3), floor_name="the back-off n-gram", train_positions=100,
                            test_positions=100, converged={"base": True, "full": converged, "planted": True},
                            iterations={"base": 20, "full": 600 if not converged else 30, "planted": 30},
                            planted_gain=None if planted is None else iv(*planted), planted_amplitude=0.2,
                            split="documents", test_units=6, test_contexts=test_contexts, ngram_tokens=1000)
        return LookaheadTarget(offset=1, n_classes=8, coverage=0.9, layers=[3], acc=Band([0.5], [0.4], [0.6]),
                               majority=0.1, ngram={2: iv(0.3)}, ngram_order=2, nested=nested)

    return LookaheadResult(config=LookaheadConfig(), model="m", layers=[3], n_positions=100,
                           offsets={"+1": target(iv(0.2)),
                                    "+2": target(Interval(gain_mean, gain_mean - gain_half_width,
                                                          gain_mean + gain_half_width))})


def test_a_no_counts_only_with_power_the_planted_control_converged_fits_and_enough_test_contexts():
    """NO needs power: the +2 gain's own minimum detectable effect ((1.96 + 0.84) standard errors from its
    interval, ``superpos.stats.min_detectable``) at most --needed-gain (0.01 nats), the planted control detected,
    every fit converged; and any answer needs at least MIN_CLUSTERS (20) test contexts. A found effect is found
    whatever the power."""
    from superpos.hypotheses.lookahead.verdict import verdict
    from superpos.stats import Interval, min_detectable

    assert min_detectable(Interval(0.0, -0.0196, 0.0196)) == pytest.approx(0.028)
    v = verdict(_nested_result(0.005))  # MDE 0.007 ≤ 0.01, planted 0.010 [0.006, 0.014] detected
    assert ": NO —" in v.headline and not v.insufficient_power
    assert any("planted control" in c and "detected" in c for c in v.criteria)
    v = verdict(_nested_result(0.05))  # MDE 0.071 > 0.01
    assert v.insufficient_power and "INSUFFICIENT POWER (minimum detectable gain above 0.01" in v.headline
    v = verdict(_nested_result(0.005, planted=(0.01, 0.02)))  # the planted gain not seen
    assert v.insufficient_power and "the planted control is not detected" in v.headline
    assert "reads below 0" not in v.headline
    v = verdict(_nested_result(0.005, planted=(-0.05, 0.04)))  # [-0.09, -0.01]: the probe counts it as a loss
    assert v.insufficient_power and "it reads below 0 at +2" in v.headline and "biased low" in v.headline
    v = verdict(_nested_result(0.005, planted=None))  # an older nested result: no planted control
    assert v.insufficient_power and "the planted control is not run" in v.headline
    v = verdict(_nested_result(0.005, converged=False))
    assert v.insufficient_power and "a fit did not converge: +2 full" in v.headline
    found = verdict(_nested_result(0.05, planted=(0.01, 0.02), gain_mean=0.2))
    assert not found.insufficient_power and ": YES —" in found.headline
    few = verdict(_nested_result(0.05, gain_mean=0.2, test_contexts=8))  # 8 test contexts: not even a YES
    assert few.insufficient_power and "8 test contexts, fewer than 20" in few.headline
    assert "would read YES" in few.headline


def test_a_gain_that_the_shuffled_null_also_shows_is_no_lookahead():
    """The null control: the same residual rows shuffled across positions carry nothing about the target, so what
    their nested comparison gains is what fitting the block adds by itself; a gain found against the base alone but
    not beyond that null (paired) is not counted, and the power is that of the difference."""
    from superpos.hypotheses.lookahead.verdict import verdict
    from superpos.stats import Interval

    res = _nested_result(0.05, gain_mean=0.2, planted=(0.01, 0.005))
    n = res.offsets["+2"].nested
    n.null_gain, n.beyond_null, n.planted_beyond = Interval(0.19, 0.14, 0.24), Interval(0.01, -0.04, 0.06), \
        Interval(0.01, 0.004, 0.016)
    v = verdict(res)
    assert ": YES" not in v.headline and "no offset" in v.headline and v.insufficient_power  # MDE 0.071 > 0.01
    assert "+0.010 [-0.040, +0.060] beyond the shuffled null" in v.headline
    assert any(c.startswith("Null control") and "+0.190 [+0.140, +0.240] (+2)" in c for c in v.criteria)
    n.beyond_null = Interval(0.15, 0.10, 0.20)
    assert ": YES" in verdict(res).headline


def test_shuffled_rows_of_an_informative_block_add_nothing():
    """The null as run() builds it: a block that reads the target adds log-likelihood; the same rows shuffled
    across positions (same covariance) do not."""
    K, n_tr, n_te = 6, 3000, 1500
    y, counts, base_X, rng = _planted(n_tr + n_te, K, 11)
    f = Features(*ngram_features(counts), base_X)
    tr, te = np.arange(n_tr), np.arange(n_tr, n_tr + n_te)
    ctx = te // 25
    block = torch.tensor(np.eye(K)[y] + 1.2 * rng.standard_normal((len(y), K)), dtype=torch.float32)
    shuffled = torch.cat([block[tr][torch.from_numpy(rng.permutation(n_tr))],
                          block[te][torch.from_numpy(rng.permutation(n_te))]])
    args = dict(n_classes=K, l2_base=1e-3, l2_full=1e-3, n_boot=200, seed=0)
    g, base, _ = nested_gain(f.rows(tr), block[tr], y[tr], f.rows(te), block[te], y[te], ctx, **args)
    z, _, _ = nested_gain(f.rows(tr), shuffled[tr], y[tr], f.rows(te), shuffled[te], y[te], ctx, **args, base=base)
    assert g["gain"].lo > 0.1 and abs(z["gain"].mean) < 0.01 and z["gain"].lo < 0.005, z["gain"]
    assert len(g["ll"]["full"]) == n_te  # the per-position log-likelihoods the paired differences are taken on


def _prediction_result(vs_bigram, vs_previous=(0.3, 0.02), test_contexts=24):
    """A probes result stand-in with a hand-built decoding test at two layers (the last is the model's output)."""
    from types import SimpleNamespace

    from superpos.hypotheses.probes.config import ProbeConfig
    from superpos.hypotheses.probes.result import PredictionTest
    from superpos.stats import Band, Interval

    def band(m, h):
        return Band([m, m], [m - h, m - h], [m + h, m + h])

    pt = PredictionTest(layers=[0, 4], n_classes=64, train_positions=300, test_positions=100,
                        at_i={"logit lens": band(0.6, 0.03)}, at_previous={"logit lens": band(0.3, 0.03)},
                        difference={"logit lens": band(*vs_previous)},
                        bigram=None if vs_bigram is None else Interval(0.6 - vs_bigram[0], 0.5, 0.6),
                        vs_bigram=None if vs_bigram is None else {"logit lens": band(*vs_bigram)},
                        test_contexts=test_contexts)
    return SimpleNamespace(prediction=pt, layers=[0, 1, 2, 3, 4], config=ProbeConfig(),
                           targets={"current token": SimpleNamespace(acc=Band([1, .9, .8, .8, .75], [0] * 5, [1] * 5))})


def test_held_through_the_prediction_at_i_needs_the_bigram_null_not_the_guess_at_i_minus_1():
    """x_i read better from the prediction at i than from the guess made at i−1 holds for any model; the verdict
    says the prediction carries x_i only when it also beats a bigram table p(·|x_i), says "no better than a bigram
    table" when it does not (with power, or an interval that rules the needed difference out), and judges nothing on too few test contexts or without power."""
    from superpos.hypotheses.probes.verdict import _prediction

    held, clause, lines = _prediction(_prediction_result((0.1, 0.02)))
    assert held is True and clause.startswith("the model's prediction made at i carries x_i beyond")
    assert any("80%" in line and "residual at layer 4" in line for line in lines)  # 0.6 / 0.75 of the residual's
    held, clause, _ = _prediction(_prediction_result((0.0, 0.005)))  # i beats i−1 by +0.3, the bigram table ties
    assert held is False and "no better than from a bigram table" in clause and "only that the prediction depends" in clause
    held, clause, _ = _prediction(_prediction_result((0.0, 0.05)))  # MDE 0.071 > 0.02
    assert held is None and "INSUFFICIENT POWER: minimum detectable difference 0.071 above 0.02" in clause
    held, clause, _ = _prediction(_prediction_result((0.1, 0.02), vs_previous=(0.0, 0.02)))  # table beaten, i−1 not
    assert held is False and "better than from a bigram table but no better than from its guess made at i−1" in clause
    held, clause, _ = _prediction(_prediction_result((-0.26, 0.05)))  # MDE 0.071 > 0.02, yet [-0.31, -0.21] < 0.02
    assert held is False and "the interval rules out the 0.02" in clause
    held, clause, _ = _prediction(_prediction_result((-0.01, 0.05)))  # [-0.06, +0.04] holds 0.02: not judged
    assert held is None and "INSUFFICIENT POWER" in clause
    held, clause, _ = _prediction(_prediction_result((0.1, 0.02), test_contexts=6))
    assert held is None and "6 test contexts, fewer than 20" in clause
    held, clause, _ = _prediction(_prediction_result(None))  # before the bigram null: i vs i−1 alone judges nothing
    assert held is None and "was not tested" in clause
