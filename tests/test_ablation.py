"""The causal subspace ablation of hypothesis 2 and the output directions it projects on."""
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from superpos.hypotheses.repurposing.ablation import (
    SETS,
    choose_subspaces,
    context_tokens_mask,
    orthonormal_rows,
    project_out,
    subspace_ablation,
    token_directions,
)
from superpos.model.load import LoadedModel, load_model


def _tokens(n: int, T: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(2, 384, size=(n, T))


def _nll(lm, tok, splice=None, layer=None):
    def run():
        logits = lm.model(tok).logits[:, 1:-1].float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tok[:, 2:].reshape(-1),
                               reduction="none").reshape(len(tok), -1).mean(1)
    with torch.no_grad():
        if splice is None:
            return run()
        with lm.splice(layer, splice):
            return run()


def test_project_out_hand_case():
    resid = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]])
    Q = orthonormal_rows(torch.tensor([[[[2.0, 0.0, 0.0]], [[1.0, 1.0, 0.0]]]]))
    out = project_out(resid, Q)
    torch.testing.assert_close(out, torch.tensor([[[0.0, 2.0, 3.0], [-0.5, 0.5, 6.0]]]))
    assert torch.equal(project_out(resid, torch.zeros(1, 2, 0, 3)), resid)


def test_context_tokens_mask_marks_every_earlier_token():
    seen = context_tokens_mask(torch.tensor([[3, 1, 3, 0]]), 5)
    assert seen[0].int().tolist() == [[0, 0, 0, 1, 0], [0, 1, 0, 1, 0], [0, 1, 0, 1, 0], [1, 1, 0, 1, 0]]


def test_empty_subspace_changes_nothing_and_full_rank_equals_zeroing(peaked_llama):
    lm = load_model(str(peaked_llama), device="cpu")
    tokens = _tokens(4)
    tok = torch.as_tensor(tokens)
    empty = subspace_ablation(lm, tokens, 3, 0, unlikely=1e-4, batch_size=2, progress=False)
    assert empty.sets == SETS and empty.delta_nll_CS.shape == (4, len(SETS))
    assert np.all(empty.delta_nll_CS == 0)
    np.testing.assert_allclose(empty.clean_nll_C, _nll(lm, tok).numpy(), rtol=1e-5)
    # rank = d removes the whole residual at positions ≥ 1, whichever directions span it: a hand-made zeroing
    full = subspace_ablation(lm, tokens, 3, lm.d_model, unlikely=1e-4, batch_size=2, progress=False)

    def zero(resid):
        new = torch.zeros_like(resid)
        new[:, :1] = resid[:, :1]
        return new
    want = (_nll(lm, tok, zero, 3) - _nll(lm, tok)).numpy()
    for j in range(len(SETS)):
        np.testing.assert_allclose(full.delta_nll_CS[:, j], want, atol=2e-4)
    assert want.mean() > 0.1  # zeroing the stream mid-way costs loss: the comparison above is not vacuous


def test_subspaces_follow_their_definitions(peaked_llama):
    lm = load_model(str(peaked_llama), device="cpu")
    tok = torch.as_tensor(_tokens(3, T=16))
    with torch.no_grad(), lm.capture([2]) as cap:
        logp = F.log_softmax(lm.model(tok).logits.float(), -1)
    dirs = token_directions(lm)
    subs, ok = choose_subspaces(cap[2], logp, tok, dirs, 4, 1e-4, torch.Generator().manual_seed(0))
    assert bool(ok[:, 1:].all())
    assert list(subs) == list(SETS) and all(v.shape == (3, 16, 4, lm.d_model) for v in subs.values())
    as_token = {name: (subs[name] @ dirs.T).argmax(-1) for name in SETS if name != "random_directions"}
    seen = context_tokens_mask(tok, logp.shape[-1])
    for name in ("near_impossible_top", "near_impossible_random"):
        picked = as_token[name]
        assert bool((logp.gather(-1, picked) < np.log(1e-4)).all())  # near-impossible at the output ...
        assert not bool(seen.gather(-1, picked).any())  # ... and never a token of the context so far
    assert torch.equal(as_token["other_context"], as_token["near_impossible_top"].roll(1, 0))
    assert torch.equal(as_token["likely"].sort(-1).values, logp.topk(4, -1).indices.sort(-1).values)
    norms = subs["random_directions"].norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_output_directions_read_the_norm_gain(tiny_models):
    for kind, gain in (("gpt2", lambda w: w), ("llama", lambda w: w), ("gemma3", lambda w: 1 + w)):
        lm = load_model(str(tiny_models[kind]), device="cpu")
        w = lm.final_norm.weight
        with torch.no_grad():
            old = w.clone()
            w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(1)))
            try:
                torch.testing.assert_close(lm.output_gain_D(), gain(w.detach()), atol=1e-4, rtol=1e-4)
            finally:
                w.copy_(old)
    ln = torch.nn.LayerNorm(33)  # an odd width: one probe entry is 0, read from the second probe
    with torch.no_grad():
        ln.weight.copy_(torch.linspace(-2, 2, 33))
    fake = types.SimpleNamespace(d_model=33, final_norm=ln, device=torch.device("cpu"))
    torch.testing.assert_close(LoadedModel.output_gain_D(fake), ln.weight.detach(), atol=1e-4, rtol=1e-4)


def test_bad_ablation_inputs_are_one_line_errors(peaked_llama):
    from superpos.errors import SuperposError

    lm = load_model(str(peaked_llama), device="cpu")
    with pytest.raises(SuperposError, match="rank"):
        subspace_ablation(lm, _tokens(2), 3, lm.d_model + 1, progress=False)
    few = subspace_ablation(lm, _tokens(2), 3, 4, unlikely=1e-30, progress=False)  # no token is that unlikely
    assert np.all(few.delta_nll_CS == 0) and few.skipped_positions == 2 * 23  # every position left alone
    with pytest.raises(SuperposError, match="2 contexts"):
        subspace_ablation(lm, _tokens(1), 3, 2, unlikely=1e-4, progress=False)
    with pytest.raises(SuperposError, match="basis"):
        token_directions(lm, "nope")


def test_token_sets_can_leave_out_the_shared_direction(peaked_llama):
    """With ``remove_shared`` every token set's directions are orthogonal to the unit mean row of γ ⊙ W_U, so no token
    set removes what all rows share while the isotropic set does not."""
    from superpos.hypotheses.repurposing.ablation import shared_direction, subspace_ablation, token_directions

    lm = load_model(str(peaked_llama), device="cpu")
    m = shared_direction(lm, "output")
    assert (token_directions(lm, "output", remove_shared=True) @ m).abs().max() < 1e-5
    assert (token_directions(lm, "output") @ m).abs().max() > 0.1
    ab = subspace_ablation(lm, _tokens(4), 3, 2, unlikely=1e-4, remove_shared=True, progress=False)
    assert ab.shared_removed and ab.delta_nll_CS.shape == (4, 5)
    near = subspace_ablation(lm, _tokens(4), 3, 2, unlikely=1e-4, remove_shared=True, context_cos=0.5,
                             progress=False)  # near-duplicates of the context left out, as the run does
    assert near.context_cos == 0.5 and near.delta_nll_CS.shape == (4, 5) and np.isfinite(near.delta_nll_CS).all()


def test_context_so_far_lists_each_positions_context_up_to_itself():
    from superpos.hypotheses.repurposing.ablation import context_so_far

    assert context_so_far(np.array([[5, 6, 7], [8, 9, 8]])).tolist() == [
        [5, -1, -1], [5, 6, -1], [5, 6, 7], [8, -1, -1], [8, 9, -1], [8, 9, 8]]


def test_the_ablation_leaves_out_near_duplicates_of_the_context_as_criterion_i_does():
    """By hand: 5 tokens in 3 dimensions, every token near-impossible. Context 0 holds token 0, whose near-duplicates
    (|cos| ≥ 0.5) are tokens 1 (0.71) and 3 (0.9): without the exclusion the residual [1, 0.2, 0] picks token 1 (its
    largest projection), with it token 2. Context 1 holds token 2, near-duplicate 1: its pick, token 3, stays."""
    s = 0.5 ** 0.5
    dirs = torch.tensor([[1.0, 0, 0], [s, s, 0], [0, 1.0, 0], [-0.9, 0, (1 - 0.81) ** 0.5], [0, 0, 1.0]])
    tok = torch.tensor([[0, 0], [2, 2]])
    resid = torch.tensor([[[0.0, 0, 0], [1.0, 0.2, 0]], [[0.0, 0, 0], [-1.0, -0.2, 0]]])
    logp = torch.full((2, 2, 5), float(np.log(1e-9)))

    def top(**kw):
        subs, _ = choose_subspaces(resid, logp, tok, dirs, 1, 1e-6, torch.Generator().manual_seed(0), **kw)
        return (subs["near_impossible_top"][:, 1, 0] @ dirs.T).argmax(-1).tolist()
    assert top() == [1, 3]
    assert top(context_VD=dirs, context_cos=0.5) == [2, 3]
    assert top(context_VD=dirs, context_cos=1.0) == [1, 3]  # 1: the context tokens themselves only
