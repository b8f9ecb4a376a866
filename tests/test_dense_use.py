"""The dense-use statistics of hypothesis 2: push and energy along a group of token directions, against matched
groups."""
import numpy as np
import torch

from superpos.hypotheses.repurposing.dense_use import GROUPS, group_use, matched_groups
from superpos.hypotheses.repurposing.token_stats import shuffle_contexts
from superpos.stats import cluster_interval


def test_group_use_hand_case():
    # covariance x.T x / 3 = diag(16/3, 4/3): σ = (4, 2)/√3, so every |z| is √3/2
    x = torch.tensor([[2.0, 1.0], [-2.0, -1.0], [2.0, -1.0], [-2.0, 1.0]])
    dirs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    groups = {"a": torch.tensor([[True, False], [True, True], [False, True], [False, False]])}
    out = group_use(x, dirs, groups)
    h = np.sqrt(3) / 2
    np.testing.assert_allclose(out["push"]["a"][:3], [h, -h, -h], rtol=1e-6)
    np.testing.assert_allclose(out["energy"]["a"][:3], [0.75, 0.75, 0.75], rtol=1e-6)
    assert np.isnan(out["push"]["a"][3]) and np.isnan(out["energy"]["a"][3])  # an empty group


def _world(alpha: float, seed: int = 0, n_ctx: int = 48, per: int = 16, D: int = 48, V: int = 600, spread: int = 48):
    """Anisotropic residuals and token directions; with ``alpha`` > 0 each position leans, by alpha·‖x‖, into a
    sum of ``spread`` of its own near-impossible tokens' directions (dense, small, superposed use)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(D, D, generator=g) * torch.linspace(0.2, 2.0, D)
    dirs = torch.randn(V, D, generator=g) @ A
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    P = n_ctx * per
    X = torch.randn(P, D, generator=g) @ A.T
    U = torch.rand(P, V, generator=g) < 0.6
    L = ~U & (torch.rand(P, V, generator=g) < 0.02)
    if alpha:
        pick = torch.rand(P, V, generator=g).masked_fill(~U, -1).topk(spread, 1).indices
        v = dirs[pick].sum(1)
        X = X + alpha * X.norm(dim=1, keepdim=True) * v / v.norm(dim=1, keepdim=True)
    ctx = np.repeat(np.arange(n_ctx), per)
    return X, dirs, U, L, ctx


def _effect(alpha: float, seed: int = 0) -> dict:
    X, dirs, U, L, ctx = _world(alpha, seed)
    groups = matched_groups(U, L, shuffle_contexts(ctx), seed=seed)
    assert list(groups) == list(GROUPS)
    use = group_use(X - X.mean(0), dirs, groups, chunk=100)
    return {(stat, name): cluster_interval(use[stat]["near_impossible"] - use[stat][name], ctx, n_boot=500, seed=seed)
            for stat in ("push", "energy") for name in ("other_context", "random_same_size")}


def test_dense_push_is_seen_and_the_null_is_not():
    """Measured on this synthetic world: with no planted use the push contrast stays within ±0.006 over seeds;
    30 % of the residual's norm spread over 48 of each position's near-impossible tokens gives ≈ 0.018 with
    a CI clear of 0.01. (The energy contrast does not see this size: it is diluted over the whole group.)"""
    for seed in (0, 1, 2):
        null = _effect(0.0, seed)
        assert all(abs(null["push", name].mean) < 0.006 for name in ("other_context", "random_same_size")), null
    planted = _effect(0.3)
    assert all(planted["push", name].lo > 0.01 for name in ("other_context", "random_same_size")), planted


def test_matched_groups_keep_sizes_and_pair_other_contexts():
    X, dirs, U, L, ctx = _world(0.0, n_ctx=4, per=8)
    shuffle = shuffle_contexts(ctx)
    groups = matched_groups(U, L, shuffle)
    inv = np.argsort(shuffle)
    assert torch.equal(groups["other_context"], U[torch.from_numpy(inv)]) and not np.any(ctx[inv] == ctx)
    sizes = groups["random_same_size"].sum(1).float()
    assert abs(float(sizes.mean() / U.sum(1).float().mean()) - 1) < 0.05
