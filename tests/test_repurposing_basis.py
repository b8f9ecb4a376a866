"""Criterion (i) of hypothesis 2 in the basis the output reads: γ ⊙ W_U, the shared token direction and the
rare-token direction projected out, near-duplicates of context tokens left out, the unhooked baseline, the anti
control and the INSUFFICIENT POWER outcome (docs/repurposing.md)."""
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from superpos.hypotheses.repurposing.ablation import (
    context_directions,
    exclude_near_context,
    mean_direction,
    token_directions,
    unit_rows,
    without_direction,
)
from superpos.hypotheses.repurposing.power import criterion_i, detected, plant_token_push
from superpos.hypotheses.repurposing.token_stats import (
    layer_stats,
    off_output_part,
    rare_direction,
    scan_directions,
    shuffle_contexts,
)

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def _fake_lm(W_VD, gain_D, W_E_VD=None):
    W = torch.as_tensor(W_VD, dtype=torch.float32)
    return SimpleNamespace(W_U_VD=W, W_E_VD=W if W_E_VD is None else torch.as_tensor(W_E_VD, dtype=torch.float32),
                           output_gain_D=lambda: torch.as_tensor(gain_D, dtype=torch.float32))


def test_gamma_basis_ranks_tokens_differently_from_raw_unembedding():
    """Token 0's row leans on a dimension the final norm all but switches off (γ = 0.01): raw W_U ranks it first
    for this residual, γ ⊙ W_U (what the logits read) ranks token 1 first."""
    W = [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    lm = _fake_lm(W, [1.0, 1.0, 0.01])
    x = torch.tensor([0.3, 0.8, 1.0])
    raw, out = token_directions(lm, "unembedding"), token_directions(lm, "output")
    assert torch.allclose(raw[0], torch.tensor([1.0, 0, 1.0]) / 2 ** 0.5)
    assert (raw @ x).argmax() == 0 and (out @ x).argmax() == 1
    assert torch.allclose(out[0], torch.tensor([1.0, 0, 0.01]) / (1 + 1e-4) ** 0.5)


def test_shared_direction_is_the_unit_mean_row_and_is_projected_out_of_tokens_and_random_directions():
    g = torch.Generator().manual_seed(0)
    W = 3 * torch.tensor([1.0, 0, 0, 0]) + torch.randn(50, 4, generator=g)
    lm = _fake_lm(W, torch.ones(4))
    m = mean_direction(W)
    assert torch.allclose(m, W.mean(0) / W.mean(0).norm(), atol=1e-6)
    tok, rand = scan_directions(lm, 0, "output", remove_shared=True)
    assert (tok @ m).abs().max() < 1e-5 and (rand @ m).abs().max() < 1e-5
    assert torch.allclose(tok.norm(dim=1), torch.ones(50)) and torch.allclose(rand.norm(dim=1), torch.ones(50))
    tok0, _ = scan_directions(lm, 0, "output", remove_shared=False)
    assert (tok0 @ m).mean() > 0.8  # before: every row leans on it


def test_near_duplicates_of_context_tokens_are_left_out_by_hand():
    s = 0.5 ** 0.5
    dirs = torch.tensor([[1.0, 0, 0], [s, s, 0], [0, 1.0, 0], [-0.9, 0, (1 - 0.81) ** 0.5], [0, 0, 1.0]])
    U = torch.ones(3, 5, dtype=torch.bool)
    U[2, 4] = False  # already out: not counted again
    recent = np.array([[0, -1], [2, -1], [-1, -1]])
    taken = exclude_near_context(U, recent, dirs, dirs, 0.5)  # embeddings = scanned directions (tied, γ = 1)
    # context token 0: itself, token 1 (cos 0.71) and token 3 (|cos| 0.9); context token 2: itself and token 1
    assert U.tolist() == [[False, False, True, False, True], [True, False, False, True, True],
                          [True, True, True, True, False]]
    assert taken == pytest.approx((3 + 2 + 0) / 3)
    U1 = torch.ones(3, 5, dtype=torch.bool)
    assert exclude_near_context(U1, recent, dirs, dirs, 1.0) == 0 and U1.all()  # 1: nothing taken out here
    # what a context token writes is its embedding, not its scanned direction: token 0 writes e2, whose only
    # scanned near-duplicate is token 4 (token 3's |cos| with e2 is 0.44), so 4 leaves and 1, 3 stay
    emb = dirs.clone()
    emb[0] = torch.tensor([0, 0, 1.0])
    U2 = torch.ones(1, 5, dtype=torch.bool)
    assert exclude_near_context(U2, recent[:1], dirs, emb, 0.5) == 1 and U2.tolist() == [[True] * 4 + [False]]


def test_context_directions_are_the_embedding_rows_in_the_scanned_space():
    """Unit W_E rows (no γ: the gain acts at the output) with the scanned basis's shared direction projected out."""
    g = torch.Generator().manual_seed(0)
    W = 2 * torch.tensor([1.0, 0, 0, 0]) + torch.randn(20, 4, generator=g)
    E = torch.randn(20, 4, generator=g)
    gain = torch.tensor([3.0, 1, 0.5, 1])
    lm = _fake_lm(W, gain, E)
    m = mean_direction(W * gain)
    ctx = context_directions(lm, "output", remove_shared=True)
    assert torch.allclose(ctx, unit_rows(E - (E @ m)[:, None] * m), atol=1e-6) and (ctx @ m).abs().max() < 1e-5
    assert torch.allclose(context_directions(lm, "output", remove_shared=False), unit_rows(E))


def _world(seed: int, D: int = 32, V: int = 400, n_ctx: int = 24, per: int = 32):
    """Token rows that all lean, by varying amounts, on one shared direction; the first half (near-impossible at every
    position: the rare tokens) lean on a second one too. Residuals: anisotropic Gaussian."""
    g = torch.Generator().manual_seed(1000 + seed)
    m = unit_rows(torch.randn(1, D, generator=g))[0]
    rows = (-3 + 6.5 * torch.rand(V, 1, generator=g)) * m + torch.randn(V, D, generator=g) / D ** 0.5
    r = torch.randn(D, generator=g)
    r = (r - (r @ m) * m) / (r - (r @ m) * m).norm()
    rows[: V // 2] += (-3 + 6.5 * torch.rand(V // 2, 1, generator=g)) * r
    P = n_ctx * per
    U = torch.rand(P, V, generator=g) < 0.6
    U[:, : V // 2] = True
    X = torch.randn(P, D, generator=g) * torch.linspace(0.5, 2.0, D)
    return X, U, ~U, rows, np.repeat(np.arange(n_ctx), per), g


def _stats(X, U, L, tok, ctx, seed=0):
    rand = unit_rows(torch.randn(tok.shape, generator=torch.Generator().manual_seed(seed + 1)))
    return layer_stats(X, None, U, L, tok, rand, shuffle_contexts(ctx), 5.0, seed)


@pytest.mark.parametrize("which", ["shared", "rare"])
def test_a_push_that_is_the_projected_direction_vanishes_and_a_token_push_survives(which):
    """A push along the shared (rare-token) direction changes every token's z while that direction is scanned, and
    none once it is projected out: z, σ and the argmax are blind to it (σ too: the push adds variance only along
    it). A push along each position's own near-impossible token survives the projection and (i) detects it."""
    X, U, L, rows, ctx, g = _world(0)
    shared = without_direction(rows, mean_direction(rows))
    if which == "shared":
        keep, u = unit_rows(rows), mean_direction(rows)
    else:
        u, n = rare_direction(shared, U)
        assert n == rows.shape[0] // 2  # the half near-impossible everywhere
        keep = shared
    gone = without_direction(keep, u)
    sign = torch.randint(0, 2, (len(X), 1), generator=g).float() * 2 - 1
    pushed = X + sign * 0.5 * X.norm(dim=1, keepdim=True) * (1 + torch.rand(len(X), 1, generator=g)) * u
    before, after = _stats(X, U, L, gone, ctx), _stats(pushed, U, L, gone, ctx)
    assert np.allclose(after["peak"], before["peak"], atol=1e-4)
    assert (after["top_token"] == before["top_token"]).mean() > 0.99
    kept0, kept1 = _stats(X, U, L, keep, ctx), _stats(pushed, U, L, keep, ctx)
    assert np.abs(kept1["peak"] - kept0["peak"]).mean() > 0.1 and (kept1["top_token"] != kept0["top_token"]).mean() > 0.3
    for seed in range(3):  # a push along the position's own near-impossible token (in the projected basis)
        X, U, L, rows, ctx, _ = _world(seed)
        shared = without_direction(rows, mean_direction(rows))
        gone = shared if which == "shared" else without_direction(shared, rare_direction(shared, U)[0])
        planted = plant_token_push(X, U, gone, 1.0, torch.Generator().manual_seed(3))
        assert detected(_stats(planted, U, L, gone, ctx), ctx, 200, 0)
        assert not detected(_stats(X, U, L, gone, ctx), ctx, 200, 0)


def test_the_unhooked_baseline_subtracts_the_clean_offset_and_reads_itself_as_zero():
    X, U, L, rows, ctx, _ = _world(0)
    tok = without_direction(rows, mean_direction(rows))
    clean = _stats(X, U, L, tok, ctx)
    ex, ef = criterion_i(clean, ctx, 200, 0, baseline=clean)
    assert ex.mean == ex.lo == ex.hi == 0 and ef.mean == 0
    planted = _stats(plant_token_push(X, U, tok, 0.5, torch.Generator().manual_seed(3)), U, L, tok, ctx)
    gauss = criterion_i(planted, ctx, 200, 0)
    paired = criterion_i(planted, ctx, 200, 0, baseline=clean)
    offset = float(np.mean(clean["peak"] - clean["peak_G"]))
    assert paired[0].mean == pytest.approx(gauss[0].mean - offset) and paired[0].lo > 0 and paired[1].lo > 0


def test_a_push_the_output_reverses_is_removed_in_proportion_to_its_share_of_the_output():
    """The anti control's route, by hand: +v_p mid-stack and −v_p at the output (one random direction per position,
    |v| = 3 in D = 32, so 9/32 of variance per dimension). The off-output part regresses the layer on the final
    residual, and −v_p there predicts +v_p, but only in proportion to its share of the final residual's variance
    along each direction: with other content of variance 1 beside it, the fit takes 0.28/1.28 of the push and leaves
    1/1.28 = 0.78 (less the ~k/P = 2.5 % a chance fit takes); an output that carries nothing else takes it all."""
    g = torch.Generator().manual_seed(0)
    P, D = 1280, 32
    base = torch.randn(P, D, generator=g)
    v = 3 * unit_rows(torch.randn(P, D, generator=g))
    mid = base + v

    def kept(final):  # the share of |v|² left along v in the off-output part
        return float(((off_output_part(mid.double(), final.double()) * v.double()).sum(1) / 9).mean())
    assert kept(torch.randn(P, D, generator=g) - v) == pytest.approx(0.78 * 0.975, abs=0.04)
    assert kept(-v + 1e-3 * torch.randn(P, D, generator=g)) < 0.03  # the output is the reversed push: all of it
    assert kept(torch.randn(P, D, generator=g)) == pytest.approx(0.975, abs=0.03)  # an output without it: kept


def _verdict_of(res):
    from superpos.hypotheses.repurposing.verdict import verdict

    return verdict(res)


def test_a_run_that_could_not_see_the_needed_push_reads_insufficient_power():
    from superpos.protocol.registry import EXPERIMENTS
    from superpos.protocol.replication import _said

    res = EXPERIMENTS["repurposing"].read(RESULTS / "repurposing")  # not found, with power
    assert res.power.min_detectable <= res.config.needed_push and not _verdict_of(res).insufficient_power
    weak = replace(res, power=replace(res.power, rate=[0, 0, 0, 0.5, 1, 1], min_detectable=0.35))
    v = _verdict_of(weak)
    assert v.insufficient_power and not v.supported and v.headline.startswith("INSUFFICIENT POWER for ")
    assert "0.35" in v.headline and _said(v) == "INSUFFICIENT POWER"
    assert not _verdict_of(replace(weak, config=replace(weak.config, needed_push=0.5))).insufficient_power
    never = replace(res, power=replace(res.power, rate=[0] * 6, min_detectable=None))
    assert _verdict_of(never).insufficient_power  # no size run reaches the power
    assert _said(_verdict_of(res)) == "NOT SUPPORTED"


def test_an_excess_that_is_the_rare_token_direction_is_not_present():
    from superpos.hypotheses.repurposing.result import RareDirectionView
    from superpos.protocol.registry import EXPERIMENTS
    from superpos.stats import Interval

    res = EXPERIMENTS["repurposing"].read(RESULTS / "repurposing_positive_control")  # (i) holds, SUPPORTED
    assert _verdict_of(res).supported
    gone = RareDirectionView(layer=10, n_tokens=900, positions=1536, excess=Interval(0.01, -0.05, 0.07),
                             effect=Interval(0.0, -0.06, 0.06), detected=False)
    v = _verdict_of(replace(res, rare=gone))
    assert not v.present and not v.supported and v.rare_effect == [0.0, -0.06, 0.06]
    assert v.headline.startswith("NOT SUPPORTED") and "is the rare-token direction" in v.headline
    kept = replace(gone, excess=Interval(1.0, 0.9, 1.1), effect=Interval(1.0, 0.9, 1.1), detected=True)
    assert _verdict_of(replace(res, rare=kept)).supported


def test_when_the_rare_reading_decides_so_does_its_own_power():
    """(i) holds in the scanned directions and not without the rare-token direction: the verdict never says (i) found
    nothing; it is NOT SUPPORTED ("the excess is the rare-token direction") when the power measured without that
    direction reaches the needed push, INSUFFICIENT POWER when it does not; the scanned basis's power curve does not
    decide it (it was planted where the rare direction is still scanned)."""
    from superpos.hypotheses.repurposing.result import RareDirectionView
    from superpos.hypotheses.repurposing.verdict import numbers, rare_decides
    from superpos.protocol.registry import EXPERIMENTS
    from superpos.protocol.replication import _said
    from superpos.stats import Interval

    res = EXPERIMENTS["repurposing"].read(RESULTS / "repurposing_positive_control")  # (i) holds, no power curve
    pw = EXPERIMENTS["repurposing"].read(RESULTS / "repurposing").power  # minimum detectable α 0.18
    strong = replace(pw, rate=[0, 0.2, 1, 1, 1, 1], min_detectable=0.1)
    weak = replace(pw, rate=[0, 0, 0, 0.5, 1, 1], min_detectable=0.35)
    gone = RareDirectionView(layer=10, n_tokens=900, positions=1536, excess=Interval(0.01, -0.05, 0.07),
                             effect=Interval(0.0, -0.06, 0.06), detected=False)
    for scanned in (None, weak, strong):  # whatever the scanned basis's curve says
        v = _verdict_of(replace(res, power=scanned, rare=replace(gone, power=strong)))
        assert rare_decides(replace(res, rare=gone)) and not v.insufficient_power and not v.present
        assert v.headline.startswith("NOT SUPPORTED") and "is the rare-token direction" in v.headline
        assert "α ≈ 0.1 " in v.headline and v.min_detectable == 0.1 and "finds no" not in v.headline
        v = _verdict_of(replace(res, power=scanned, rare=replace(gone, power=weak)))
        assert v.insufficient_power and _said(v) == "INSUFFICIENT POWER" and v.min_detectable == 0.35
        assert "finds a mid-stack excess" in v.headline and "none left" not in v.headline and "0.35" in v.headline
    # the contradiction this replaces: a weak scanned curve and an excess that is the rare direction
    v = _verdict_of(replace(res, power=weak, rare=gone))  # no curve without the rare direction: no power rule
    assert not v.insufficient_power and v.headline.startswith("NOT SUPPORTED") and v.min_detectable is None
    kept = replace(gone, effect=Interval(1.0, 0.9, 1.1), excess=Interval(1.0, 0.9, 1.1), detected=True)
    assert not rare_decides(replace(res, rare=kept)) and _verdict_of(replace(res, power=weak, rare=kept)).supported
    row = numbers(replace(res, power=weak, rare=replace(gone, power=strong),
                          verdict=_verdict_of(replace(res, power=weak, rare=replace(gone, power=strong)))))
    assert row["minimum detectable α (80 % power, planted push, without the rare-token direction)"] == "0.1"
    assert row["minimum detectable α (80 % power, planted push)"] == "0.35"


@pytest.fixture(scope="module")
def lm(peaked_llama):
    from superpos.model.load import load_model

    lm = load_model(str(peaked_llama), device="cpu")
    with torch.no_grad():  # a non-uniform final gain, so that γ ⊙ W_U differs from W_U (as in test_mechanisms)
        lm.final_norm.weight.copy_(torch.rand(lm.d_model, generator=torch.Generator().manual_seed(5)) * 1.9 + 0.1)
    return lm


def _detect(lm, kind, alpha, seed):
    from superpos.hypotheses.repurposing.mechanisms import control_layers, detect

    tokens = np.random.default_rng(0).integers(2, lm.model.config.vocab_size, size=(16, 48))
    return detect(lm, tokens, kind, alpha, control_layers(lm.n_layers)[0], per_context=24, unlikely=1e-4,
                  likely=1e-2, seed=seed)


def test_the_anti_control_survives_the_off_output_regression(lm):
    """A push reversed at the output rather than removed: the final residual carries −v, which predicts +v linearly,
    but only by its share of the final residual's variance along v (the hand case above), so on the peaked model
    (384 positions, 38 of 64 components fitted) most of it survives and (i) sees it at α = 0.5, against the
    Gaussian and against the unhooked model, in 3 seeds of 3."""
    for seed in range(3):
        row = _detect(lm, "anti", 0.5, seed)
        assert row.detected and row.detected_vs_unhooked, row


def test_the_unhooked_baseline_reads_the_unhooked_model_as_zero_and_a_planted_push_above_it(lm):
    none = _detect(lm, "none", 0.0, 0)
    assert none.excess.lo < 0 and not none.detected  # the unhooked model sits below its Gaussian here too
    assert none.excess_vs_unhooked.mean == 0 and not none.detected_vs_unhooked  # against itself: exactly 0
    pos = _detect(lm, "positive", 0.5, 0)
    assert pos.detected_vs_unhooked and pos.excess_vs_unhooked.mean > pos.excess.mean  # the offset is gone
