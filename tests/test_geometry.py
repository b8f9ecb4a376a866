import numpy as np
import pytest

from superpos import geometry as g
from superpos.errors import SuperposError
from superpos.stats import bootstrap_ci


def test_max_abs_cos_equals_brute_force():
    rng = np.random.default_rng(0)
    V = rng.standard_normal((300, 12)).astype(np.float32)
    V[7] = -2.5 * V[3]  # an exact antipode: |cos| = 1 must be found through the −q search
    res = g.max_abs_cos(V, batch=64)
    U = V / np.linalg.norm(V, axis=1, keepdims=True)
    C = np.abs(U @ U.T)
    np.fill_diagonal(C, -1)
    np.testing.assert_allclose(res.value, C.max(1), atol=1e-5)
    assert res.value[3] == pytest.approx(1.0, abs=1e-5) and res.neighbour[3] == 7
    np.testing.assert_allclose(C[np.arange(300), res.neighbour], C.max(1), atol=1e-5)
    # every pair once (the whole set) and each row against all (a subset of rows) agree
    some = g.max_abs_cos(V, batch=64, rows=np.arange(0, 300, 7))
    np.testing.assert_allclose(some.value, res.value[::7], atol=1e-6)
    for block, col_block in ((64, 48), (48, 64), (300, 300)):  # tiles that cut the diagonal anywhere
        value, neighbour = g._symmetric_abs_max(U.astype(np.float32), block=block, col_block=col_block)
        np.testing.assert_allclose(value, C.max(1), atol=1e-5)
        np.testing.assert_allclose(C[np.arange(300), neighbour], C.max(1), atol=1e-5)


def test_random_vectors_match_theory():
    m, d = 4000, 64
    res = g.max_abs_cos(g.gaussian_null(m, d, seed=1))
    expected = g.expected_max_abs_cos(m, d)
    # the sample median of 4000 per-vector maxima has a standard error well under 1 %
    assert np.median(res.value) == pytest.approx(expected, rel=0.03)
    assert g.max_abs_cos_asymptotic(m, d) == pytest.approx(expected, rel=0.2)  # leading order only
    # the exact |cos| tail matches Monte Carlo
    pairs = g.sampled_abs_cos(g.gaussian_null(m, d, seed=2), 100_000)
    for t in (0.1, 0.2, 0.3):
        assert (pairs > t).mean() == pytest.approx(g.abs_cos_tail(t, d), abs=0.01)


def test_ivf_recall_is_measured():
    V = g.gaussian_null(5000, 32, seed=3)
    assert g.max_abs_cos_recall(V, sample=500, nlist=32, nprobe=32) == 1.0  # probing every list is exact
    partial = g.max_abs_cos_recall(V, sample=500, nlist=64, nprobe=1)
    assert 0.0 < partial < 1.0


def test_greedy_capacity_on_known_sets():
    d = 16
    V = np.concatenate([np.eye(d), np.eye(d), -np.eye(d)]).astype(np.float32)
    assert g.greedy_capacity(V, [0.0, 0.5, 0.99]).tolist() == [d, d, d]
    assert g.greedy_capacity(V, [1.0])[0] == 3 * d
    rnd = g.gaussian_null(3000, 32, seed=4)
    caps = g.greedy_capacity(rnd, [0.2, 0.4, 0.6])
    assert caps[0] < caps[1] < caps[2] <= 3000
    assert caps[1] > 4 * 32  # at ε = 0.4, many more than d nearly orthogonal directions


def test_matching_recovers_permutation():
    rng = np.random.default_rng(5)
    A = rng.standard_normal((60, 24)).astype(np.float32)
    perm = rng.permutation(60)
    B = A[perm] * rng.choice([-1, 1], (60, 1)) + 0.05 * rng.standard_normal((60, 24)).astype(np.float32)
    m = g.match_dictionaries(A, B)
    assert np.array_equal(perm[m.cols], m.rows)
    assert m.abs_cos.min() > 0.95 and m.mean_max_cos_ab > 0.95 and m.mean_max_cos_ba > 0.95
    with pytest.raises(SuperposError, match="different widths"):
        g.match_dictionaries(A, B[:, :10])


def test_bootstrap_ci_brackets_statistic():
    v = np.random.default_rng(6).standard_normal(2000)
    est, lo, hi = bootstrap_ci(np.mean, v, n_boot=400)
    assert lo < est < hi and hi - lo == pytest.approx(2 * 1.96 / np.sqrt(2000), rel=0.25)
    a, b = v + 1.0, np.random.default_rng(7).standard_normal(3000)  # two independent samples: median difference
    est, lo, hi = bootstrap_ci(lambda x, y: np.median(x) - np.median(y), a, b, n_boot=400)
    assert est == pytest.approx(np.median(a) - np.median(b)) and lo < est < hi and lo > 0.8 and hi < 1.2


def test_orthogonality_experiment_on_tiny_model(tiny_models, tmp_path):
    from superpos.hypotheses.orthogonality import EXPERIMENT
    from superpos.hypotheses.orthogonality.config import OrthogonalityConfig
    run = EXPERIMENT.run
    from superpos.hypotheses.orthogonality.result import OrthogonalityResult

    out = tmp_path / "orth"
    res = run(OrthogonalityConfig(model=str(tiny_models["llama"]), layers=[1, 2], harvest_tokens=4096,
                                  expansions=[1, 4], seeds=2, k=4, fit_tokens=20_000, eps_grid=[0.3, 0.6],
                                  capacity_dims=[8, 16], capacity_sample=384, ce_contexts=2, n_boot=100, device="cpu",
                                  budgets=[8_000, 16_000, 32_000], out=str(out)))
    for name in ("report.md", "report.html", "results.json", "maxcos_tokens.png", "capacity_vs_d.png",
                 "fvu_vs_size.png", "matched_cos.png", "budget.png", "plant.json"):
        assert (out / name).exists(), name
    assert res.tied_embeddings is True
    # the Gaussian null sits on the theoretical median for its size
    assert res.tokens["random null"].max_abs_cos.median == pytest.approx(res.tokens_theory_median, rel=0.1)
    assert [x.layer for x in res.layers] == [1, 2]
    for lay in res.layers:
        assert [s.n_atoms for s in lay.sizes] == [32, 128] and len(lay.gain.values) == 2
        assert lay.gain.values == pytest.approx([1 - b / a for a, b in zip(lay.sizes[0].fvu.values,
                                                                          lay.sizes[1].fvu.values)])
        assert lay.sizes[1].ce_recovered is not None and lay.alignment is not None  # the model's own store
        assert lay.atoms.stable.mean <= lay.atoms.live.mean <= 128
    assert res.capacity.dims == [8, 16, 32] and set(res.capacity.kept) == {
        "embedding (centred)", "atoms (layer 2, 4×)", "random directions"}
    assert res.verdict.supported in (True, None) and len(res.verdict.criteria) == 3  # 2 layers + the budget sweep
    assert res.verdict.answer in ("SUPPORTED", "NOT SHOWN AT THIS BUDGET")  # on its own a run never rules out
    (curve,) = res.budget  # the middle of the sweep's layers, at every budget, each a nested branch of one run
    assert curve.layer == 2 and [p.tokens for p in curve.points] == [8_000, 16_000, 32_000]
    assert all(len(p.fvu.values) == 2 and p.grid.min_seeds == [2] for p in curve.points)
    assert (out / "budget" / "layer2" / "topk_x4_seed0" / "tokens_8000" / "config.json").exists()
    assert OrthogonalityResult.read(out) == res
    assert "Verdict" in (out / "report.md").read_text()


def _judge_store(path, layer, cfg, tmp_path):
    """The orthogonality verdict on one store layer, without a model (no CE, no token geometry)."""
    from superpos.hypotheses.orthogonality.result import OrthogonalityResult
    from superpos.hypotheses.orthogonality.run import layer_sweep
    from superpos.hypotheses.orthogonality.verdict import verdict
    from superpos.store import ActivationStore

    with ActivationStore(path) as st:
        sweep, _ = layer_sweep(st, layer, tmp_path / f"dicts_{path.stem}", cfg, None, None)
        res = OrthogonalityResult(config=cfg, model="test rows", d_model=st.d_model, tied_embeddings=True,
                                  store=str(path), layers=[sweep])
    return res, verdict(res)


@pytest.fixture(scope="module")
def small_stores(tmp_path_factory):
    """Planted superposition (4×d unit atoms, 2 per row, d = 32), and its Gaussian and PC-shuffle nulls."""
    from superpos.store.surrogates import gaussian_like, pc_shuffle, planted_superposition, write_store

    folder = tmp_path_factory.mktemp("stores")
    x, _ = planted_superposition(8_000, 32, 128, 2, noise=0.02, seed=0)
    return {name: write_store({1: rows}, folder / f"{name}.h5", description=name, context_length=100)
            for name, rows in (("planted", x), ("gaussian", gaussian_like(x, seed=1)), ("pc-shuffle", pc_shuffle(x, 2)))}


def test_orthogonality_verdict_on_planted_and_null_stores(small_stores, tmp_path):
    """SUPPORTED on planted superposition, NOT SUPPORTED on the covariance-matched Gaussian null of the same rows
    (its gain's whole interval below the threshold), and not SUPPORTED on the PC-shuffle null."""
    from superpos.hypotheses.orthogonality.config import OrthogonalityConfig

    # at d = 32 and k = 4 a dictionary 8× larger reconstructs even Gaussian rows ~16 % better (more codewords for the
    # same k), so the gain threshold is set for this d and k (30 % at 16×, 23.5 % at 8×), as --min-gain is for a
    # real layer's (20 % at d = 576, k = 32, where a Gaussian null gains 0.6–3.8 %)
    cfg = OrthogonalityConfig(expansions=[1, 8], seeds=2, k=4, fit_tokens=120_000, batch_size=256, orth_eps=0.5,
                              min_gain=0.3, device="cpu")
    judged = {name: _judge_store(path, 1, cfg, tmp_path) for name, path in small_stores.items()}
    planted, v = judged["planted"]
    assert v.supported, v.criteria
    assert min(planted.layers[0].atoms.stable_orthogonal.values) > 32 and planted.layers[0].gain.mean > 0.3
    res, v = judged["gaussian"]  # more atoms do not pay off beyond the seeds' spread: ruled out on its own
    assert v.supported is False and v.answer == "NOT SUPPORTED" and not v.insufficient_power, v.criteria
    for name in ("gaussian", "pc-shuffle"):
        res, v = judged[name]
        assert not v.supported, (name, v.criteria)
        assert res.layers[0].atoms.stable.mean < 8, name  # nothing recurs across seeds without sparse features
    # the census by hand: the Hungarian partners' |cos| histogram holds every live atom of every seed pair
    a = planted.layers[0].atoms
    assert sum(a.matched_cos_hist) == pytest.approx(sum(min(x, y) for i, x in enumerate(a.live.values)
                                                        for y in a.live.values[i + 1:]))


@pytest.mark.parametrize("index", ["exact", "ivf", "pq"])
def test_max_abs_cos_of_some_rows_against_brute_force(index):
    V = g.gaussian_null(3000, 36, seed=5)
    V[1] = V[0] + 0.1 * V[1]  # a clear nearest pair, with a sign flip on another
    V[7] = -(V[5] + 0.1 * V[7])
    U = g.unit_rows(V)
    C = np.abs(U @ U.T)
    np.fill_diagonal(C, -1)
    rows = np.array([0, 1, 5, 7, 100, 2999])
    mc = g.max_abs_cos(V, index=index, rows=rows, nlist=8, nprobe=8, refine=3000)
    assert mc.neighbour[:4].tolist() == [1, 0, 7, 5]
    if index != "ivf":  # exact, and PQ with every candidate re-ranked, equal the brute force
        np.testing.assert_array_equal(mc.neighbour, C[rows].argmax(1))
        np.testing.assert_allclose(mc.value, C[rows].max(1), atol=1e-5)
    assert g.max_abs_cos_recall(V, sample=300, index="pq", refine=3000) == 1.0


def test_best_abs_cos_against_brute_force():
    Q, V = g.gaussian_null(300, 24, seed=6), g.gaussian_null(700, 24, seed=7)
    V[3] = -Q[5]  # an exact anti-parallel pair counts as |cos| 1
    want = np.abs(g.unit_rows(Q) @ g.unit_rows(V).T).max(1)
    np.testing.assert_allclose(g.best_abs_cos(Q, V), want, atol=1e-6)
    assert g.best_abs_cos(Q, V)[5] == pytest.approx(1.0, abs=1e-6)


def test_feature_dimensionality_by_hand():
    from superpos.geometry import feature_dimensionality

    np.testing.assert_allclose(feature_dimensionality(3 * np.eye(4)), 1.0)  # orthogonal: 1 each, whatever the norm
    two = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 2.0, 0]])
    np.testing.assert_allclose(feature_dimensionality(two), [0.5, 0.5, 1.0])  # sharing one direction: ½ each
    ang = np.array([[1.0, 0], [np.cos(0.3), np.sin(0.3)]])  # hand case: 1 / (1 + cos²θ)
    np.testing.assert_allclose(feature_dimensionality(ang), 1 / (1 + np.cos(0.3) ** 2))
    assert feature_dimensionality(np.array([[0.0, 0], [1, 0]]))[0] == 0  # a dead feature


def test_spherical_code_bounds_bracket_what_exists():
    d, eps = 16, np.array([0.05, 0.2, 0.4, 0.6])
    lo, hi = g.random_code_size(d, eps), g.code_upper_bound(d, eps)
    assert (lo >= d).all() and (hi >= lo).all()  # an orthonormal basis always fits; the bounds never cross
    # the relative bound by hand where dε² < 1: d(1 − ε²)/(1 − dε²)
    assert hi[0] == pytest.approx(min(d * (1 - 0.05**2) / (1 - d * 0.05**2), hi[0]))
    assert g.code_upper_bound(2, [0.0])[0] == pytest.approx(2.0)  # at ε = 0 only an orthonormal basis: N ≤ d
    # the alteration bound by hand: with p = P(|cos| > ε), N = round(1/p) random vectors keep N − C(N,2)p
    p = g.abs_cos_tail(0.6, d)
    n = np.floor(1 / p + 0.5)
    assert lo[3] == pytest.approx(max(n - n * (n - 1) * p / 2, d))
    packed = g.greedy_packing(g.gaussian_null(4000, d, seed=1), [0.4, 0.6])
    assert not packed.capped[0] and packed.capped[1]  # 4,000 candidates saturate at ε = 0.4, not at 0.6
    assert lo[2] <= packed.kept[0] <= hi[2]  # an uncapped greedy packing lands between the bounds
    assert g.kl_rate([0.3])[0] > g.kl_rate([0.1])[0] > 0


def test_capacity_line_fit_and_projection():
    from superpos.hypotheses.orthogonality.run import line_fit

    dims, eps = [8, 16], [0.2, 0.4]
    kept = [[int(round(np.exp(3 + 0.5 * x * e * e))) for e in eps] for x in dims]
    fit = line_fit(dims, eps, kept, [[False, False], [False, True]])  # the capped point is left out
    assert fit.points == 3 and fit.dims == 2 and fit.slope == pytest.approx(0.5, rel=0.1) and fit.r2 > 0.99
    assert line_fit(dims, eps, kept, [[True, True], [False, True]]).slope is None  # too few uncapped points
    V = g.gaussian_null(50, 40, seed=3)
    assert g.random_projection(V, 40) is not None and g.random_projection(V, 10).shape == (50, 10)
    np.testing.assert_array_equal(g.random_projection(V, 40), V)


def test_capacity_capped_by_its_candidates_warns_or_refuses():
    from superpos.errors import SuperposError
    from superpos.geometry import CappedCapacityWarning, greedy_capacity

    V = np.random.default_rng(0).standard_normal((300, 256))  # 300 random directions in 256-d: all fit at ε = 0.4
    with pytest.warns(CappedCapacityWarning, match="ε = 0.4 is capped by its 300 candidates"):
        assert greedy_capacity(V, [0.4])[0] == 300
    with pytest.raises(SuperposError, match="capped"):
        greedy_capacity(V, [0.4], strict=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a saturated packing does not warn: 2000 candidates in 8-d at ε = 0.1
        assert greedy_capacity(np.random.default_rng(1).standard_normal((2000, 8)), [0.1])[0] < 100


def test_orthogonality_calibration_runs_the_sweep_on_nulls_and_planted_superposition(tiny_models, tmp_path):
    """run orthogonality --calibrate: the identical sweep on a Gaussian and a PC-shuffle surrogate of the layer
    (no sparse features: more atoms barely help, nothing recurs across seeds) and on planted superposition; the
    calibrated verdict judges the real run against them."""
    from superpos.hypotheses.orthogonality.config import OrthogonalityConfig
    from superpos.protocol.calibration import control_folder, judge_calibration, run_calibrated
    from superpos.protocol.registry import EXPERIMENTS

    cfg = OrthogonalityConfig(model=str(tiny_models["llama"]), layers=[2], harvest_tokens=8192, expansions=[1, 8],
                              k=4, seeds=2, fit_tokens=100_000, batch_size=256, orth_eps=0.5, capacity=False,
                              budgets=[12_500, 25_000, 50_000], n_boot=50, device="cpu", out=str(tmp_path / "orth"))
    cal = run_calibrated("orthogonality", cfg)
    gain = {name: r.layers[0].gain.mean for name, r in cal.controls.items()}
    assert gain["planted superposition"] > 0.3 and gain["gaussian"] < 0.2 and gain["pc-shuffle"] < 0.2, gain
    assert not cal.controls["gaussian"].verdict.supported and not cal.controls["pc-shuffle"].verdict.supported
    assert cal.controls["planted superposition"].verdict.supported, cal.controls["planted superposition"].verdict
    assert cal.calibrated and "gaussian surrogate of" in cal.controls["gaussian"].verdict.headline
    for r in cal.controls.values():  # every control reused the real run's store instead of harvesting again
        assert r.config.store == str(tmp_path / "orth" / "acts.h5") and r.store.endswith("surrogate.h5")
    real_dict = tmp_path / "orth" / "budget" / "layer2" / "topk_x8_seed0"
    assert cal.controls["realistic plant"].config.plant_from == str(tmp_path / "orth" / "plant.json")
    for name in ("planted superposition", "realistic plant"):  # a plant's census says how much of its truth it finds
        (curve,) = cal.controls[name].budget
        assert curve.planted_atoms > 0 and all(p.recovered is not None for p in curve.points)
    from superpos.dictionaries import load_dictionary
    from superpos.store.surrogates import load_truth

    truth = load_truth(control_folder(tmp_path / "orth", next(c for c in EXPERIMENTS["orthogonality"].controls
                                                             if c.name == "realistic plant")) / "surrogate.h5")[2]
    D = load_dictionary(real_dict, device="cpu")  # the realistic plant is the real run's own largest dictionary
    assert len(truth) == cal.controls["realistic plant"].budget[0].planted_atoms
    assert (np.abs(truth @ D.components_.numpy().T).max(1) > 0.999).all()
    text = (tmp_path / "orth" / "calibration.md").read_text()
    assert text.count("| null |") == 2 and text.count("| power |") == 1 and "relative to the controls" in text
    assert cal.verdict.answer in ("SUPPORTED", "NOT SUPPORTED", "NOT SHOWN AT THIS BUDGET"), cal.verdict.headline
    assert cal.verdict.supported == {"SUPPORTED": True, "NOT SUPPORTED": False}.get(cal.verdict.answer)
    report = (tmp_path / "orth" / "report.md").read_text()
    assert "Real, nulls and planted side by side" in report and "--calibrate" in report
    assert "The census against training tokens" in report and "realistic plant: worst seed" in report
    # every verdict is a function of the stored results: judged again from disk, the same calibration
    e = EXPERIMENTS["orthogonality"]
    again = judge_calibration("orthogonality", e.read(tmp_path / "orth"),
                              {c.name: e.read(control_folder(tmp_path / "orth", c)) for c in e.controls}, tmp_path / "orth")
    assert again.verdict == cal.verdict and again.calibrated == cal.calibrated
