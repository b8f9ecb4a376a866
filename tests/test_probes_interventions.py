"""Probes, lookahead, gradient donation and re-injection on tiny models."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_model

from superpos.experiment.result import to_jsonable
from superpos.hypotheses.donation.config import DonationConfig
from superpos.hypotheses.donation.run import _kv_leaves, donation_from_grads, pairwise_kv_grads
from superpos.hypotheses.lookahead.config import LookaheadConfig
from superpos.hypotheses.probes.config import ProbeConfig
from superpos.hypotheses.probes.geometry import frequency_basis, procrustes_test
from superpos.hypotheses.probes.probe import (
    embedding_geometry,
    guess_test,
    model_guesses,
    nearest_embedding_accuracy,
    probe_by_depth,
)
from superpos.hypotheses.reinject.config import ReinjectConfig
from superpos.hypotheses.reinject.run import cached_losses, generate, interpolation, teacher_forced_losses
from superpos.hypotheses.token_table import token_means
from superpos.model.load import load_model
from superpos.model.residuals import sample_residuals
from superpos.protocol.registry import EXPERIMENTS

run_donation, run_lookahead = EXPERIMENTS["donation"].run, EXPERIMENTS["lookahead"].run
run_probes, run_reinject = EXPERIMENTS["probes"].run, EXPERIMENTS["reinject"].run


def test_probe_reads_the_input_token_perfectly_from_the_embedding_layer(peaked_llama):
    lm = load_model(str(peaked_llama), device="cpu")  # Llama: residual layer 0 is the token embedding
    tokens = np.random.default_rng(0).integers(2, 50, size=(40, 64))  # 48 distinct tokens < d_model = 64
    sample = sample_residuals(lm, tokens, per_context=48, layers=[0, 3, 6], progress=False)
    r, probes = probe_by_depth(sample, 0, n_classes=48, ridge=1e-6, seed=0, n_boot=100)
    assert r.coverage == 1.0
    assert r.acc.mean[0] > 0.99, r.acc
    W_E = lm.W_E_VD.detach().float().numpy()
    assert nearest_embedding_accuracy(sample, W_E, probes[0].classes)[0] == 1.0


def test_procrustes_test_finds_a_planted_relation_and_rejects_a_random_one():
    rng = np.random.default_rng(0)
    E = rng.standard_normal((300, 24))
    R, _ = np.linalg.qr(rng.standard_normal((24, 24)))
    fit, null_mean, _, p = procrustes_test(E @ R + 0.3 * rng.standard_normal(E.shape), E, n_shuffle=50)
    assert p < 0.05 and fit < 0.5 * null_mean
    fit, null_mean, _, p = procrustes_test(rng.standard_normal(E.shape), E, n_shuffle=50)
    assert p > 0.05 and abs(fit - null_mean) < 0.05
    assert procrustes_test(E @ R, E, n_shuffle=5)[0] < 1e-6  # a pure rotation: residual 0


def test_frequency_basis_starts_at_the_most_frequent_tokens():
    E = np.random.default_rng(0).standard_normal((50, 8))
    B = frequency_basis(E, np.array([7, 3, 7, 11]))
    Ec = E - E.mean(0)
    np.testing.assert_allclose(B @ B.T, np.eye(8), atol=1e-10)
    np.testing.assert_allclose(abs(B[0] @ Ec[7]), np.linalg.norm(Ec[7]), rtol=1e-10)  # token 7 first
    assert abs(B[2] @ Ec[7]) < 1e-10 and abs(B[2] @ Ec[3]) < 1e-10  # the repeat skipped; 11 comes third


def test_geometry_and_guess_test_report_no_difference_where_a_layer_copies_layer_0(tiny_models):
    """Blocks 0 and 1 write nothing, so residual layers 1 and 2 are exact copies of layer 0: every calibrated
    metric must read 0 there; layer 3 (block 2 writes) must not."""
    lm = load_model(str(tiny_models["llama"]), device="cpu")
    with torch.no_grad():
        for block in lm.blocks[:2]:
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
    tokens = np.random.default_rng(0).integers(2, 120, size=(16, 48))
    sample = sample_residuals(lm, tokens, per_context=46, progress=False)
    torch.testing.assert_close(sample.resid_LPD[2], sample.resid_LPD[0], rtol=0, atol=0)
    cfg = ProbeConfig(n_classes=64, n_shuffle=40, n_boot=200)
    r, probes = probe_by_depth(sample, 0, cfg.n_classes, cfg.ridge, 0, cfg.n_boot)
    W_E = lm.W_E_VD.detach().float().numpy()
    geo = embedding_geometry(sample, W_E, probes[0].classes, cfg)
    for i in (1, 2):
        assert geo.tail_vs_layer0.mean[i] == 0 and geo.tail_vs_layer0.lo[i] == 0 == geo.tail_vs_layer0.hi[i]
        assert geo.profiles["frequency"][i] == geo.profiles["frequency"][0]
    assert geo.tail_vs_layer0.mean[3] != 0
    assert geo.procrustes[0].residual < 1e-4 and geo.procrustes[0].p_value < 0.05  # layer 0: class means = embedding
    _, test = sample.split_contexts(0.75, seed=0)
    guesses = model_guesses(lm, tokens)
    assert guesses.shape == tokens.shape and (guesses < lm.W_E_VD.shape[0]).all()
    guesses[:, :-1:2] = tokens[:, 1::2]  # a model that had guessed every odd position's input
    g = guess_test(probes, test, guesses, n_boot=100, seed=0)
    assert 0.4 < g.guess_accuracy.mean < 0.6
    assert g.vs_layer0.mean[1] == 0 == g.vs_layer0.mean[2] and g.right_minus_wrong.mean[2] == g.right_minus_wrong.mean[0]
    assert not np.isnan(g.vs_layer0.mean[3])


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_donation_matches_one_backward_per_loss(tmp_path, kind):
    lm = load_model(str(make_tiny_model(kind, tmp_path / kind, n_layers=1)), device="cpu")
    tok = torch.randint(2, 300, (10,), generator=torch.Generator().manual_seed(0))
    g = pairwise_kv_grads(lm, tok)
    for j in range(len(tok) - 1):  # reference: a separate backward for each position's loss
        with torch.enable_grad(), _kv_leaves(lm) as leaves:
            loss = F.cross_entropy(lm.model(tok[None]).logits[0, j:j + 1].float(), tok[j + 1:j + 2])
            grads = torch.autograd.grad(loss, [z for _, _, z in leaves])
        ref = torch.cat([gg[0][..., s] for (_, slices, _), gg in zip(leaves, grads) for s in slices], -1)
        torch.testing.assert_close(g[0, j], ref, atol=1e-6, rtol=1e-5)
        assert ref[j + 1:].abs().max() == 0  # causal: no gradient on later keys/values
    d = donation_from_grads(g, [10])
    own = g[0, torch.arange(9), torch.arange(9)].norm(dim=-1)
    later = torch.stack([g[0, i + 1:9, i].sum(0).norm() for i in range(8)])  # hand sum over later losses
    share = (later / (later + own[:8])).numpy()
    np.testing.assert_allclose(d["share"][10][0], share[1:], rtol=1e-5)  # the sink (position 0) left out ...
    np.testing.assert_allclose(d["sink_share"][10][0], share[0], rtol=1e-5)  # ... and reported apart
    np.testing.assert_allclose(d["ratio"][0], (later / own[:8]).numpy()[1:], rtol=1e-5)
    np.testing.assert_allclose(d["later_count"], np.arange(7, 0, -1))
    pair = [g[0, i + 2, i].norm() / own[i] for i in range(1, 7)]  # one later loss at distance 2, positions ≥ 1
    np.testing.assert_allclose(d["decay"][1], np.median(pair), rtol=1e-5)


def test_interpolation_at_weight_zero_is_bit_identical_and_the_cached_loop_matches(tiny_models):
    lm = load_model(str(tiny_models["llama"]), device="cpu")
    ref = np.random.default_rng(1).integers(2, 300, size=(6, 32))
    table = token_means(lm, ref, [1, 2, 3], min_count=2)
    # the table holds each kept token's mean residual (hand check for one token at layer 2)
    tok = int(np.unique(ref, return_counts=True)[0][np.unique(ref, return_counts=True)[1] >= 2][0])
    with torch.inference_mode(), lm.capture([2]) as acts:
        lm.model(torch.from_numpy(ref))
    torch.testing.assert_close(table.means_LRD[1, table.index_V[tok]], acts[2][torch.from_numpy(ref == tok)].mean(0))
    assert (table.counts_R >= 2).all() and table.index_V[1] == -1  # token 1 never occurs
    null = table.targets(lm, "mean", [2], shuffled=True)[0]  # the null moves toward another token's mean, never its own
    same = (null[:, None] == table.means_LRD[1][None]).all(-1)
    assert same.sum(1).eq(1).all() and not same.diagonal().any()

    def interp(w, target="mean"):
        return interpolation(lm, [2, 3], w, table.targets(lm, target, [2, 3]), table.index_V)

    prompt = ref[0, :8]
    plain = generate(lm, prompt, max_new_tokens=12)
    assert generate(lm, prompt, max_new_tokens=12, intervention=interp(0.0)) == plain
    tokens = np.random.default_rng(0).integers(2, 300, size=(3, 16))
    clean = teacher_forced_losses(lm, tokens)
    assert np.array_equal(teacher_forced_losses(lm, tokens, interp(0.0)), clean)
    moved = teacher_forced_losses(lm, tokens, interp(0.5, "embedding"))
    assert not np.allclose(moved, clean)
    # the sampler's loop (one token at a time, KV cache) applies the same intervention as whole windows
    np.testing.assert_allclose(cached_losses(lm, tokens[0], interp(0.5, "embedding")), moved[0], atol=1e-4)
    # w = 1 replaces: the residual at the layer becomes the target direction at the residual's norm
    with torch.inference_mode(), interp(1.0), lm.capture([2]) as acts:
        lm.model(torch.from_numpy(ref[:1]))
    r, rows = acts[2][0], table.index_V[torch.from_numpy(ref[0])]
    t = table.means_LRD[1][rows.clamp_min(0)]
    cos = F.cosine_similarity(r, t, dim=-1)[rows >= 0]
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)
    with pytest.raises(Exception, match="start at 1"), interpolation(lm, [0], 1.0, table.means_LRD, table.index_V):
        pass


def test_experiment_commands_write_reports(peaked_llama, tmp_path):
    """Each run returns its typed result, and results.json reads back as the same typed object."""
    from superpos.protocol.registry import EXPERIMENTS

    m = str(peaked_llama)
    small = dict(model=m, contexts=12, context_length=48, device="cpu", n_boot=100)
    r = run_probes(ProbeConfig(**small, per_context=32, n_classes=64, n_shuffle=10, lens_steps=5, guess_positions=200,
                               out=str(tmp_path / "p")))
    assert r.prediction.test_positions > 0 and r.prediction.layers[-1] == r.layers[-1]
    assert r.prediction.vs_bigram is not None and (tmp_path / "p" / "prediction.png").exists()
    assert r.verdict.via_prediction is None  # 3 test contexts: fewer than MIN_CLUSTERS, not judged
    assert r.geometry.tail_vs_layer0.mean[0] == 0 and r.vocabulary.coverage > 0.5 and 0 <= r.guess.guess_accuracy.mean
    assert len(r.targets["current token"].acc.mean) == 7 and (tmp_path / "p" / "probe_basis.png").exists()
    same = json.dumps(to_jsonable(EXPERIMENTS["probes"].read(tmp_path / "p"))) == json.dumps(to_jsonable(r))
    assert same  # (as JSON: a random tiny model never guesses the input, so the guess gaps are NaN)
    r = run_lookahead(LookaheadConfig(**small, per_context=32, n_classes=64, out=str(tmp_path / "l")))
    assert set(r.offsets) == {"+1", "+2", "+3"} and (tmp_path / "l" / "report.md").exists()
    scope = f"Scope: {r.model} over pydoc_data.topics (the default corpus). Every number below was measured on this"
    assert scope in (tmp_path / "l" / "report.md").read_text()  # the headline says which model and corpus it holds for
    n = r.offsets["+2"].nested
    assert n.layer in r.layers and len(n.layer_screen) == len(r.layers) and n.floor_name.startswith("the back-off")
    assert n.layer != 0 and n.embedding_gain is not None and n.converged["n-grams"] in (True, False)  # calibrated
    assert n.null_gain is not None and n.beyond_null is not None and n.planted_beyond is not None  # the controls
    assert len(n.null_draws) == LookaheadConfig().null_draws and n.converged["null"] in (True, False)
    assert "Calibration at layer 0, the embedding of token i" in " ".join(r.verdict.criteria)
    assert r.offsets["+1"].nested.floor_name == "the model's own top guess" and r.model_top1 is not None
    assert r.ngram_tokens > 0 and r.verdict.headline.startswith("Lookahead beyond n-grams")
    assert EXPERIMENTS["lookahead"].read(tmp_path / "l") == r
    r = run_donation(DonationConfig(model=m, contexts=2, context_length=16, device="cpu", n_boot=50,
                                    out=str(tmp_path / "d")))
    assert 0 < r.share[16].mean[0] < 1 and (tmp_path / "d" / "donation.png").exists()
    assert EXPERIMENTS["donation"].read(tmp_path / "d") == r
    r = run_reinject(ReinjectConfig(**small, reference_contexts=12, weights=[0.5, 1.0], samples=1,
                                    out=str(tmp_path / "r")))
    assert set(r.effects) == {"mean w=0.5", "mean w=1", "embedding w=0.5", "embedding w=1", f"null: {r.chosen}"}
    assert r.chosen in r.effects and r.cached.max_abs_diff < 1e-3 and (tmp_path / "r" / "reinject.png").exists()
    assert min(r.premise.decodable[0].mean) > 0.99  # layer 0: the representation is the embedding itself
    # every setting has both matched nulls; each null's entropy matches the setting's in the judging half's most
    # surprising fifth wherever its T there is inside the scan
    assert set(r.matched) == set(r.effects) - {f"null: {r.chosen}"} and set(r.vs_matched) == {"temperature", "layer mean"}
    pairs = [(k, m) for k, ms in r.matched.items() for m in ms.values() if 0.13 < m.temperatures[1][-1] < 7.9]
    assert pairs and all(abs(m.entropy_fifths[-1] - r.entropy_fifths[k][-1]) < 0.01 for k, m in pairs)
    assert r.verdict.insufficient_power  # 6 judging contexts: fewer than --min-contexts
    assert len(r.premise.within_bands.mean) == 3 and len(r.vs_matched["temperature"].top_by_band.mean) == 3
    steps = list(r.reconcile.steps.values())  # the cached loop's Δ is the teacher-forced Δ on the same windows
    assert steps[0].mean == r.cached.delta and abs(steps[1].mean - steps[0].mean) < 1e-3
    assert EXPERIMENTS["reinject"].read(tmp_path / "r") == r
