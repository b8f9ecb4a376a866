"""Lenses, the repurposing experiment and its controls, on tiny models."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from superpos.hypotheses.lenses.lens import TunedLens, compare_lenses, lens_logits, unembed
from superpos.hypotheses.repurposing import EXPERIMENT
from superpos.hypotheses.repurposing.config import RepurposingConfig
from superpos.hypotheses.repurposing.token_stats import off_output_part, shuffle_contexts
from superpos.model.load import load_model
from superpos.model.residuals import sample_residuals
from superpos.settings import CONTROL_KINDS as CONTROLS
from superpos.stats import cluster_bootstrap_mean


def _tokens(lm, n=12, c=48, seed=0):
    return np.random.default_rng(seed).integers(2, lm.model.config.vocab_size, size=(n, c))


@pytest.mark.parametrize("kind", ["gpt2", "llama", "neox", "gemma3"])
def test_logit_lens_on_last_layer_is_the_model_output(tiny_models, kind):
    lm = load_model(str(tiny_models[kind]), device="cpu")
    tok = _tokens(lm)
    sample = sample_residuals(lm, tok, per_context=10, progress=False)
    with torch.no_grad():
        logits = lm.model(torch.from_numpy(tok)).logits
        ours = unembed(lm, sample.at(lm.n_layers))
    want = logits[torch.from_numpy(sample.ctx_P), torch.from_numpy(sample.pos_P)]
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-5)


def test_tuned_lens_beats_logit_lens_and_round_trips(peaked_llama, tmp_path):
    lm = load_model(str(peaked_llama), device="cpu")
    sample = sample_residuals(lm, _tokens(lm, n=32, c=64), per_context=32, progress=False)
    lens, res = compare_lenses(lm, sample, steps=150, lr=1e-2, n_boot=100, save_to=tmp_path / "lens", progress=False)
    kl_logit, kl_tuned = np.array(res.logit_lens.kl.mean), np.array(res.tuned_lens.kl.mean)
    assert np.all(kl_tuned[:-1] < kl_logit[:-1]), (kl_logit, kl_tuned)  # held-out contexts, every layer
    assert kl_tuned[-1] == pytest.approx(0, abs=1e-6) and kl_logit[-1] == pytest.approx(0, abs=1e-6)
    loaded = TunedLens.load(tmp_path / "lens")
    h = sample.at(2)[:16]
    with torch.no_grad():
        torch.testing.assert_close(lens_logits(lm, h, 2, loaded), lens_logits(lm, h, 2, lens))
    meta = json.loads((tmp_path / "lens" / "lens.json").read_text())
    assert meta["n_layers"] == lm.n_layers
    v = meta["meta"]["validation_kl"]  # the held-out stopping rule: measured from the start, the best kept
    assert v[0]["step"] == 0 and meta["meta"]["best_validation_kl"] == min(r["kl"] for r in v)
    assert meta["meta"]["steps_run"] <= 150 and res.training["steps_run"] == meta["meta"]["steps_run"]


def test_least_squares_start_solves_the_normal_equations():
    """With a negligible ridge, what the start leaves of ĥ_L − ĥ_l is orthogonal to [ĥ_l, 1] at every layer."""
    from superpos.hypotheses.lenses.lens import least_squares_init_
    from superpos.model.residuals import ResidualSample

    g = torch.Generator().manual_seed(0)
    n, P, D = 3, 400, 6
    resid = torch.randn(n + 1, P, D, generator=g) * torch.tensor([1.0, 10, 1, 1, 0.1, 3])
    sample = ResidualSample(resid, list(range(n + 1)), np.zeros((P, 1), np.int64), np.arange(P), np.zeros(P, np.int64))
    lens = least_squares_init_(TunedLens(D, n), sample, ridge=1e-10)

    def unit(h):
        return h / h.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    for layer in range(n):
        h = unit(resid[layer])
        X = torch.cat([h, torch.ones(P, 1)], 1)
        with torch.no_grad():
            left = unit(resid[n]) - lens.translate(resid[layer], layer)
        y = unit(resid[n]) - h
        assert (X.T @ left).norm() < 1e-4 * (X.T @ y).norm()


def test_calibrated_run_flags_the_planted_control_and_not_the_nulls(peaked_llama, tmp_path):
    """The protocol's calibrated runner: the identical analysis on the (unhooked) model, a null (random
    directions written and removed) and a planted effect (token directions): only the planted one is flagged."""
    from superpos.protocol.calibration import run_calibrated

    cfg = RepurposingConfig(model=str(peaked_llama), contexts=16, context_length=64, per_context=24, unlikely=1e-4,
                            likely=0.05, exclude_recent=4, lens_steps=20, n_boot=200, device="cpu",
                            out=str(tmp_path / "rep"))
    cal = run_calibrated("repurposing", cfg)
    pos = cal.controls["planted token directions"]
    assert pos.verdict.supported, pos.verdict.headline
    assert pos.verdict.peak_layer in range(*pos.control_layers)  # where the control writes
    for res in (cal.real, cal.controls["random directions"]):
        assert not res.verdict.supported, res.verdict.headline
        assert not res.verdict.present, res.verdict.criteria
    assert cal.calibrated
    table = (tmp_path / "rep" / "calibration.md").read_text()
    assert table.count("| yes |") == 2 and "every control came out as it must" in table
    assert (tmp_path / "rep" / "controls" / "planted_token_directions" / "report.md").exists()
    assert pos.config.lens == str(tmp_path / "rep" / "tuned_lens")  # the real run's lens, reused
    mech = {(r.control, r.alpha): r.detected for r in cal.real.mechanisms.rows}  # every planted control, side by side
    assert {k for k, _ in mech} == set(CONTROLS) and len(mech) == 1 + (len(CONTROLS) - 1) * len(cfg.mechanism_alphas)
    assert not mech[("none", 0.0)] and not any(mech[("negative", a)] for a in cfg.mechanism_alphas)
    assert mech[("positive", 0.5)]  # on the held-out 8 contexts at the chosen layer
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "Planted mechanisms and negative controls" in report and "Who writes it" in report
    assert "Consistent channels" in report and "detected by (iii)" in report
    assert any(c.startswith("(iii) Consistent channels") for c in cal.real.verdict.criteria)
    assert cal.real.verdict.channel_layer in cal.real.off_layers and len(cal.real.verdict.channel) == 3
    wv = cal.real.writes
    assert len(wv.attn.mean) == len(wv.mlp.mean) == 6 and wv.n_contexts == min(cfg.write_contexts, 8)


def test_off_output_part_removes_exactly_what_the_output_predicts():
    rng = np.random.default_rng(0)
    final = torch.from_numpy(rng.standard_normal((500, 8)))
    other = torch.from_numpy(rng.standard_normal((500, 3)))
    A = torch.from_numpy(rng.standard_normal((8, 5)))
    R = torch.cat([final @ A + 2.0, other], 1)
    off = off_output_part(R, final, ridge=1e-9)
    assert off[:, :5].abs().max() < 1e-5  # predicted part is gone
    kept = other - other.mean(0)  # the rest stays, up to a chance fit on 9 regressors (~ sqrt(9/500) = 0.13)
    assert (off[:, 5:] - kept).norm() / kept.norm() < 0.25


def test_off_output_part_does_not_fit_noise_when_positions_are_few():
    """256 positions in 96 dimensions, the layer unrelated to the output: all 96 components would remove about
    96/256 of its variance by chance; at most 25 (a tenth of the positions) remove about a tenth."""
    rng = np.random.default_rng(1)
    final = torch.from_numpy(rng.standard_normal((256, 96)) * np.linspace(3, 0.1, 96))
    R = torch.from_numpy(rng.standard_normal((256, 40)))
    Rc = R - R.mean(0)
    kept = float(off_output_part(R, final).pow(2).sum() / Rc.pow(2).sum())
    assert 0.85 < kept < 0.95
    assert float(off_output_part(R, final, fit_share=1.0).pow(2).sum() / Rc.pow(2).sum()) < 0.7  # the old fit


def test_cluster_bootstrap_and_shuffle():
    values = np.array([1.0, 1.0, 3.0, 3.0, 3.0, 8.0])
    groups = np.array([0, 0, 1, 1, 1, 2])
    m, lo, hi = cluster_bootstrap_mean(values, groups, n_boot=2000, seed=7)
    assert m == pytest.approx(values.mean())
    # reference: a plain loop over the same resamples of whole clusters (sums 2, 9, 8; sizes 2, 3, 1)
    sums, sizes = np.array([2.0, 9.0, 8.0]), np.array([2.0, 3.0, 1.0])
    idx = np.random.default_rng(7).integers(0, 3, size=(2000, 3))
    boots = [sums[i].sum() / sizes[i].sum() for i in idx]
    assert lo == pytest.approx(np.quantile(boots, 0.025)) and hi == pytest.approx(np.quantile(boots, 0.975))
    assert lo < m < hi
    ctx = np.repeat(np.arange(4), 3)
    perm = shuffle_contexts(ctx)
    assert sorted(perm) == list(range(12)) and np.all(ctx[perm] != ctx)


def test_dictionary_view_runs_on_a_saved_sae(peaked_llama, tmp_path):
    from superpos.dictionaries import TopKSAE, save_dictionary

    lm = load_model(str(peaked_llama), device="cpu")
    x = sample_residuals(lm, _tokens(lm, n=16, c=64), per_context=48, layers=[3], progress=False).at(3).numpy()
    save_dictionary(TopKSAE(expansion=2, k=4, n_tokens=20_000, device="cpu", progress=False).fit(x), tmp_path / "sae",
                    meta={"layer": 3})
    cfg = RepurposingConfig(model=str(peaked_llama), contexts=8, context_length=64, per_context=16, unlikely=1e-4,
                            likely=0.05, exclude_recent=4, lens_steps=5, dictionary=str(tmp_path / "sae"), n_boot=50,
                            device="cpu", out=str(tmp_path / "run"))
    d = EXPERIMENT.run(cfg).dictionary
    assert d.layer == 3 and d.n_atoms == 128 and 0 <= d.token_aligned_atoms <= 128
    if d.positions_with_active_aligned:
        for key in ("near_impossible", "near_impossible_shuffled", "likely", "likely_shuffled"):
            assert 0 <= getattr(d, key).mean[0] <= 1
    assert "Dictionary view" in (tmp_path / "run" / "report.md").read_text()


def test_criterion_ii_null_reads_the_random_argmax_like_the_token_one():
    """Without an output to regress on, the off-output part is the raw residual: the raw z of each argmax (token or
    random direction) is then exactly its peak, which is what (ii) and its random-direction null compare."""
    from superpos.hypotheses.repurposing.token_stats import layer_stats

    g = torch.Generator().manual_seed(0)
    R = torch.randn(60, 8, generator=g)
    tok = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=1)
    rand = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=1)
    U = torch.rand(60, 40, generator=g) < 0.5
    U[:, 0] = True  # every position has a group
    st = layer_stats(R, None, U, U, tok, rand, np.roll(np.arange(60), 6), 5.0, seed=0)
    np.testing.assert_allclose(st["raw_z"], st["peak"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(st["raw_z_Q"], st["peak_Q"], rtol=1e-4, atol=1e-5)
    assert all(U[p, st["top_rand"][p]] for p in range(60))
