"""Planted mechanisms of hypothesis 2: each is seen by the repurposing statistic at its stated size on a tiny
model, the negative controls are not, and the hooks write and remove what they say."""
import numpy as np
import pytest
import torch

from superpos.hypotheses.repurposing.config import RepurposingConfig
from superpos.hypotheses.repurposing.mechanisms import control_layers, detect, gated_removal, planted_control
from superpos.model.load import load_model
from superpos.settings import CONTROL_KINDS as CONTROLS

STATED_ALPHA = 0.5  # every planted mechanism is detected at this size on the peaked 6-layer model (3 seeds of 3)


@pytest.fixture(scope="module")
def lm(peaked_llama):
    lm = load_model(str(peaked_llama), device="cpu")
    with torch.no_grad():  # a non-uniform final gain, so that γ ⊙ W_U differs from W_U
        lm.final_norm.weight.copy_(torch.rand(lm.d_model, generator=torch.Generator().manual_seed(5)) * 1.9 + 0.1)
    return lm


def _detect(lm, kind: str, alpha: float, seed: int):
    """Criterion (i) and the consistent-channel scan (iii) at the layer the control writes (a), on the hooked model."""
    tokens = np.random.default_rng(0).integers(2, lm.model.config.vocab_size, size=(16, 48))
    d = detect(lm, tokens, kind, alpha, control_layers(lm.n_layers)[0], per_context=24, unlikely=1e-4, likely=1e-2,
               seed=seed)
    assert d.detected == (d.excess.lo > 0 and d.effect.lo > 0) and d.channel_detected == (d.channel.lo > 0)
    return d


def _detected(lm, kind: str, alpha: float, seed: int) -> bool:
    d = _detect(lm, kind, alpha, seed)
    return d.detected or d.channel_detected


@pytest.mark.parametrize("kind", [k for k in CONTROLS if k not in ("none", "negative")])
def test_each_planted_mechanism_is_detected_at_its_stated_size(lm, kind):
    assert all(_detected(lm, kind, STATED_ALPHA, seed) for seed in range(3))


@pytest.mark.parametrize("kind", ["none", "negative"])
def test_negative_controls_are_not_detected_even_at_twice_that_size(lm, kind):
    assert not any(_detected(lm, kind, 2 * STATED_ALPHA, seed) for seed in range(3))


def test_a_consistent_channel_is_seen_by_the_channel_scan_and_not_by_the_max_z_scan(lm):
    """The reason for (iii): the same 8 tokens in every context hide in the covariance that (i) divides by."""
    rows = [_detect(lm, "consistent", STATED_ALPHA, seed) for seed in range(3)]
    assert all(r.channel_detected and not r.detected for r in rows), rows
    assert _detect(lm, "none", 0.0, 0).channel.mean == 0  # read against itself


def test_gated_removal_takes_a_sigmoid_share_of_the_projection():
    v = torch.zeros(1, 3, 4)
    v[0, 1, 0] = 2.0  # planted |v| = 2 along e0 at position 1; positions 0 and 2 carry nothing planted
    v[0, 2] = 0.0
    resid = torch.tensor([[[1.0, 1, 0, 0], [2.0, 1, 0, 0], [3.0, 0, 1, 0]]])
    out = gated_removal(resid, v)
    c = 2.0  # the stream's projection on v̂ at position 1
    gate = torch.sigmoid(torch.tensor(4 * (c / 2.0 - 0.5)))
    torch.testing.assert_close(out[0, 1], torch.tensor([2.0 - float(gate) * c, 1, 0, 0]))
    torch.testing.assert_close(out[0, [0, 2]], resid[0, [0, 2]])


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_splice_component_adds_to_what_the_block_writes(tiny_models, arch):
    """A vector added to a block's MLP output arrives unchanged in the residual after that block (the MLP is the
    block's last write; Gemma's post-feedforward norm is the module hooked)."""
    lm = load_model(str(tiny_models[arch]), device="cpu")
    tokens = torch.arange(2, 14)[None]
    c = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), lm.capture([2]) as clean:
        lm.model(tokens)
        clean = clean[2].clone()
    with torch.no_grad(), lm.splice_component(1, "mlp", lambda out: out + c.to(out.dtype)), lm.capture([2]) as hooked:
        lm.model(tokens)
    torch.testing.assert_close(hooked[2] - clean, c.expand_as(clean), atol=1e-4, rtol=1e-4)
    assert lm.component(1, "attn") is not lm.component(1, "mlp")


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_component_writes_add_up_to_the_residual_change(tiny_models, arch):
    """The residual is the sum of what the blocks write: summed over every attention and MLP, the writes along any
    direction equal (r_n − r_0)·d at each position (Gemma: its post-norms are what is added)."""
    from superpos.hypotheses.repurposing.writes import component_writes
    from superpos.model.residuals import sample_residuals

    lm = load_model(str(tiny_models[arch]), device="cpu")
    tokens = np.random.default_rng(0).integers(2, lm.model.config.vocab_size, size=(3, 20))
    s = sample_residuals(lm, tokens, per_context=5, layers=[0, lm.n_layers], progress=False)
    dirs = torch.nn.functional.normalize(torch.randn(s.n_positions, 2, lm.d_model,
                                                     generator=torch.Generator().manual_seed(0)), dim=-1)
    w = component_writes(lm, tokens, s.ctx_P, s.pos_P, dirs, batch_size=2)
    assert w.shape == (s.n_positions, lm.n_layers, 2, 2)
    expected = torch.einsum("pd,pkd->pk", s.at(lm.n_layers) - s.at(0), dirs).numpy()
    np.testing.assert_allclose(w.sum((1, 2)), expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_write_profile_finds_the_block_that_writes_a_planted_mlp_push(lm):
    """The ``mlp`` control writes through the MLP of the block that makes layer a: read at a, that block's MLP is
    where the write along the favoured token beats the random argmax's, and no other MLP comes close."""
    from superpos.hypotheses.lenses.lens import final_logprobs
    from superpos.hypotheses.repurposing.token_stats import layer_stats, scan_directions, shuffle_contexts, token_groups
    from superpos.hypotheses.repurposing.writes import write_profile
    from superpos.model.residuals import sample_residuals

    tokens = np.random.default_rng(0).integers(2, lm.model.config.vocab_size, size=(16, 48))
    a, _ = control_layers(lm.n_layers)
    scan = RepurposingConfig()  # plant and scan in the same directions: the run's (γ ⊙ W_U, shared direction out)
    with planted_control(lm, "mlp", 1.0, 0, scan.basis, scan.remove_shared):  # same seed and batches: same draws below
        s = sample_residuals(lm, tokens, per_context=24, progress=False)
    U, L = token_groups(final_logprobs(lm, s), 1e-4, 1e-2, s.recent_tokens(48))
    tok, rand = scan_directions(lm, 0, scan.basis, scan.remove_shared)
    st = layer_stats(s.at(a), s.at(lm.n_layers), U, L, tok, rand, shuffle_contexts(s.ctx_P), 5.0, 0)
    with planted_control(lm, "mlp", 1.0, 0, scan.basis, scan.remove_shared):
        wv = write_profile(lm, s, a, st["top_token"], st["top_rand"], tok, rand, U, n_boot=200)
    for by_block in (wv.mlp, wv.mlp_vs_near_impossible):  # beyond the random argmax, and beyond a random u
        assert by_block.lo[a - 1] > 0.2, by_block
        others = [m for j, m in enumerate(by_block.mean) if j != a - 1]
        assert max(others) < 0.5 * by_block.mean[a - 1], by_block
    assert wv.before.lo > 0 and wv.before_vs_near_impossible.lo > 0
    assert abs(wv.before_near_impossible.mean) < 0.5 * wv.before_token.mean  # u was not planted: little written
