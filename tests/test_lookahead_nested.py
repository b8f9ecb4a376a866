"""Lookahead's nested comparison, its n-gram tables, and the via-the-guess decoding from the prediction at i."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from superpos.hypotheses.lookahead.logistic import Features, ngram_features
from superpos.hypotheses.lookahead.ngrams import NgramCounts
from superpos.hypotheses.lookahead.run import nested_gain, ngram_table
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
    g = nested_gain(f.rows(tr), news[tr], y[tr], f.rows(te), news[te], y[te], ctx, **args)
    assert g["gain"].lo > 0.1 and g["acc_gain"].lo > 0, g  # a second independent read of y: clearly more likely
    assert g["base_acc"].mean > 1.5 / K  # the base (tied n-gram counts + the base block) is itself informative
    g = nested_gain(f.rows(tr), copy[tr], y[tr], f.rows(te), copy[te], y[te], ctx, **args)
    assert g["gain"].lo < 0 < g["gain"].hi + 1e-3 and abs(g["gain"].mean) < 0.02, g
    assert abs(g["acc_gain"].mean) < 0.02


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
    out = {}
    for name, tokens in (("random", random_tokens), ("chain", chain)):
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


def _nested_result(gain_half_width: float, plus_one_full_acc: float, gain_mean: float = 0.0):
    """A lookahead result built by hand: +1 and +2, the +2 nested gain centred on ``gain_mean`` with the given
    interval half-width, and +1's probe-with-residual accuracy against an n-gram at 0.30 [0.28, 0.32]."""
    from superpos.hypotheses.lookahead.config import LookaheadConfig
    from superpos.hypotheses.lookahead.result import LookaheadResult, LookaheadTarget, NestedGain
    from superpos.stats import Band, Interval

    def iv(m, h=0.02):
        return Interval(m, m - h, m + h)

    def target(gain, full_acc):
        nested = NestedGain(layer=3, layer_screen=[0.1], l2_base=1e-3, l2_full=1e-3, base_loglik=iv(-3.0),
                            full_loglik=iv(-3.0 + gain.mean), gain=gain, base_acc=iv(0.3), full_acc=iv(full_acc),
                            acc_gain=iv(0.0), floor=iv(0.3), floor_name="the back-off n-gram", train_positions=100,
                            test_positions=100)
        return LookaheadTarget(offset=1, n_classes=8, coverage=0.9, layers=[3], acc=Band([0.5], [0.4], [0.6]),
                               majority=0.1, ngram={2: iv(0.3)}, ngram_order=2, nested=nested)

    return LookaheadResult(config=LookaheadConfig(), model="m", layers=[3], n_positions=100,
                           offsets={"+1": target(iv(0.2), plus_one_full_acc),
                                    "+2": target(Interval(gain_mean, gain_mean - gain_half_width,
                                                          gain_mean + gain_half_width), 0.3)})


def test_a_no_from_a_run_that_could_not_see_the_needed_gain_reads_insufficient_power():
    """NO needs power: the +2 gain's own minimum detectable effect, (1.96 + 0.84) standard errors from its interval,
    must be at most --needed-gain (0.01 nats), and the +1 control (known to be there) must be shown. A found effect
    is found whatever the power."""
    from superpos.hypotheses.lookahead.verdict import min_detectable, verdict
    from superpos.stats import Interval

    assert min_detectable(Interval(0.0, -0.0196, 0.0196)) == pytest.approx(0.028)
    narrow, wide = _nested_result(0.005, 0.40), _nested_result(0.05, 0.40)
    assert "NO" in verdict(narrow).headline and not verdict(narrow).insufficient_power  # MDE 0.007 ≤ 0.01
    v = verdict(wide)  # MDE 0.071 > 0.01
    assert v.insufficient_power and "INSUFFICIENT POWER (minimum detectable gain above 0.01" in v.headline
    v = verdict(_nested_result(0.005, 0.31))  # +1's probe does not beat the n-gram: the run cannot see +1
    assert v.insufficient_power and "the +1 control is not shown" in v.headline
    found = verdict(_nested_result(0.05, 0.31, gain_mean=0.2))
    assert not found.insufficient_power and "YES" in found.headline
