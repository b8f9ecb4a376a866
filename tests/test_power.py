"""The power curve of the repurposing statistic: planted pushes toward near-impossible tokens, detection rate,
minimum detectable size."""
import numpy as np
import pytest
import torch

from superpos.hypotheses.lenses.lens import final_logprobs
from superpos.hypotheses.repurposing.power import minimum_detectable, plant_token_push, power_curve
from superpos.hypotheses.repurposing.token_stats import shuffle_contexts, token_groups
from superpos.model.load import load_model
from superpos.model.residuals import sample_residuals


def test_minimum_detectable_interpolates_the_first_crossing():
    assert minimum_detectable([0.0, 0.1, 0.2, 0.4], [0.0, 0.5, 0.9, 1.0], 0.8) == pytest.approx(0.175)
    assert minimum_detectable([0.1, 0.2], [0.85, 1.0], 0.8) == 0.1
    assert minimum_detectable([0.1, 0.2], [0.1, 0.3], 0.8) is None


def test_plant_token_push_writes_alpha_norm_along_a_near_impossible_token():
    g = torch.Generator().manual_seed(0)
    R = torch.randn(50, 8, generator=g)
    tok = torch.nn.functional.normalize(torch.randn(30, 8, generator=g), dim=1)
    U = torch.rand(50, 30, generator=g) < 0.3
    U[3] = False  # a position without any near-impossible token is left alone, as is the sink (pos 0)
    pos = np.arange(50) % 10
    out = plant_token_push(R, U, tok, 0.5, torch.Generator().manual_seed(1), pos)
    v = out - R
    norm = (R - R.mean(0)).norm(dim=1)
    for p in range(50):
        if p == 3 or pos[p] == 0:
            assert torch.equal(v[p], torch.zeros(8))
            continue
        t = int((v[p] @ tok.T).argmax())
        assert bool(U[p, t]) and torch.allclose(v[p], 0.5 * norm[p] * tok[t], atol=1e-5)
    assert plant_token_push(R, U, tok, 0.0, g) is R


def test_power_curve_sees_a_large_push_and_not_none(peaked_llama):
    lm = load_model(str(peaked_llama), device="cpu")
    tokens = np.random.default_rng(0).integers(2, lm.model.config.vocab_size, size=(16, 48))
    sample = sample_residuals(lm, tokens, per_context=24, progress=False)
    U, L = token_groups(final_logprobs(lm, sample), 1e-4, 1e-2, sample.recent_tokens(4))
    W = lm.W_U_VD.detach().float()
    tok = W / W.norm(dim=1, keepdim=True)
    rand = torch.nn.functional.normalize(torch.randn(tok.shape, generator=torch.Generator().manual_seed(1)), dim=1)
    curve = power_curve(sample.at(3), sample.at(lm.n_layers), U, L, tok, rand, shuffle_contexts(sample.ctx_P),
                        sample.ctx_P, sample.pos_P, [0.0, 0.3, 1.0], layer=3, draws=5, n_boot=200)
    assert curve.rate[0] <= 0.2, curve  # nothing planted: criterion (i) rarely fires
    assert curve.rate[-1] == 1.0, curve  # a push as large as the residual: always seen
    assert curve.min_detectable is not None and 0 < curve.min_detectable <= 1.0
