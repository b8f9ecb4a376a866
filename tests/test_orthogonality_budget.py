"""Hypothesis 1 at scale: the budget sweep's census, its saturating fit, criterion (i) per size ratio, the realistic
plant and the three-way verdict — each against a case whose answer is known."""
import numpy as np
import pytest

from superpos.hypotheses.orthogonality.budget import saturation
from superpos.hypotheses.orthogonality.census import atom_census, seed_values
from superpos.hypotheses.orthogonality.config import OrthogonalityConfig
from superpos.hypotheses.orthogonality.result import AtomCensus, BudgetCurve, BudgetPoint, StableGrid
from superpos.hypotheses.orthogonality.verdict import flattened_below, gain_needed


def test_gain_threshold_is_the_same_gain_per_doubling():
    assert gain_needed(16, 0.2) == pytest.approx(0.2)
    assert gain_needed(4, 0.2) == pytest.approx(1 - 0.8 ** 0.5)  # 10.6 %: half the doublings of 16×
    assert gain_needed(2, 0.2) == pytest.approx(1 - 0.8 ** 0.25)
    assert gain_needed(256, 0.2) == pytest.approx(1 - 0.8 ** 2)


def _curve(counts_by_budget: dict[int, list[float]]) -> BudgetCurve:
    """A budget curve whose censuses hold only the stable nearly orthogonal counts per seed."""
    empty = seed_values([0, 0])

    def census(values):
        return AtomCensus(expansion=16, n_atoms=9216, live=empty, stable=empty, stable_orthogonal=seed_values(values),
                          matched_cos_hist=[0] * 20, interference=empty, interference_null=0.0, dimensionality=empty,
                          dimensionality_null=0.0)

    grid = StableGrid(stable_cos=[0.7], min_seeds=[2], stable=[[empty]], stable_orthogonal=[[empty]])
    return BudgetCurve(layer=15, expansion=16, n_atoms=9216, rows=10**6, tokens_per_s=10_000.0,
                       points=[BudgetPoint(tokens=t, epochs=t / 1e6, fvu=empty, atoms=census(v), grid=grid)
                               for t, v in counts_by_budget.items()])


def test_saturating_fit_recovers_a_known_curve_and_where_it_crosses_d():
    """Counts drawn from S(T) = 1000·T/(T + 1M) with ±2 % seed noise: s_max and t_half come back, and d = 576 is
    crossed at t_half·d/(s_max − d) = 1.358M tokens, inside the interval."""
    rng = np.random.default_rng(0)
    budgets = [200_000, 400_000, 1_200_000, 4_000_000]
    curve = _curve({t: list(1000 * t / (t + 1e6) * (1 + 0.02 * rng.standard_normal(3))) for t in budgets})
    f = saturation(curve, 576)
    assert f.s_max == pytest.approx(1000, rel=0.05) and f.t_half == pytest.approx(1e6, rel=0.1)
    assert f.s_max_ci[0] < 1000 < f.s_max_ci[1] and f.identified and f.still_rising
    # every seed passes d between 1.2M and 4M: the crossing is interpolated there (log-linear: 1.389M on the
    # noiseless curve), its interval over seeds inside that bracket
    assert f.crosses_observed and f.crosses_d_at == pytest.approx(1e6 * 576 / 424, rel=0.05)
    assert 1.2e6 < f.crosses_d_ci[0] <= f.crosses_d_at <= f.crosses_d_ci[1] < 4e6
    curve.fit = f
    assert not flattened_below(curve, 576)
    # the same shape with t_half 4M never reaches d within 4M: each seed's own fit extrapolates to 5.43M
    far = _curve({t: list(1000 * t / (t + 4e6) * (1 + 0.02 * rng.standard_normal(3)))
                  for t in [400_000, 1_200_000, 4_000_000]})
    f = saturation(far, 576)
    assert not f.crosses_observed and f.crosses_d_ci[0] < 4e6 * 576 / 424 < f.crosses_d_ci[1]
    assert f.crosses_d_at == pytest.approx(4e6 * 576 / 424, rel=0.1)


def test_the_crossing_of_d_is_per_seed():
    """Seeds whose counts pass d at different budgets: each seed's crossing by hand (log-linear between the
    bracketing budgets), the point their geometric mean, the interval a t-interval over seeds in log tokens."""
    from scipy import stats

    curve = _curve({1_000_000: [100, 100, 100], 2_000_000: [476, 376, 276], 4_000_000: [676, 776, 876]})
    f = saturation(curve, 576)
    by_hand = np.array([2e6 * 2 ** ((576 - a) / (b - a)) for a, b in ((476, 676), (376, 776), (276, 876))])
    logs = np.log(by_hand)
    half = stats.t.ppf(0.975, 2) * logs.std(ddof=1) / np.sqrt(3)
    assert f.crosses_observed and f.crosses_d_at == pytest.approx(np.exp(logs.mean()))
    assert f.crosses_d_ci == pytest.approx([np.exp(logs.mean() - half), np.exp(logs.mean() + half)])
    one_short = _curve({1_000_000: [100, 100, 100], 2_000_000: [476, 376, 100], 4_000_000: [676, 776, 110]})
    f = saturation(one_short, 576)  # a seed that levels off far below d: no finite upper bound
    assert not f.crosses_observed and f.crosses_d_ci[1] == np.inf


def test_a_flattened_curve_below_d_and_one_still_rising():
    flat = _curve({400_000: [290, 300, 310], 1_200_000: [296, 305, 300], 4_000_000: [301, 299, 303]})
    f = saturation(flat, 576)
    flat.fit = f
    assert f.crosses_d_at is None and not f.still_rising and f.s_max_ci[1] < 576 and flattened_below(flat, 576)
    rising = _curve({400_000: [20, 22, 25], 1_200_000: [60, 66, 63], 4_000_000: [170, 180, 175]})
    rising.fit = f = saturation(rising, 576)
    assert f.still_rising and not flattened_below(rising, 576)
    linear = _curve({400_000: [40, 41, 39], 1_200_000: [120, 119, 121], 4_000_000: [400, 398, 402]})
    f = saturation(linear, 576)  # a straight line: no level, and d is crossed where the line crosses it
    assert not f.identified and f.crosses_d_at == pytest.approx(576 / 1e-4, rel=0.05)
    assert saturation(_curve({400_000: [1, 2], 1_200_000: [3, 4]}), 576) is None  # two budgets: no fit
    zero = saturation(_curve({1: [0, 0], 2: [0, 0], 3: [0, 0]}), 576)
    assert zero.s_max == 0 and zero.crosses_d_at is None and not zero.still_rising


def test_census_counts_stable_atoms_by_threshold_and_by_seeds_by_hand():
    """Three seeds of 6 atoms in 12 dimensions. Atoms 0–1 recur in every seed at |cos| 0.95; atom 2 only in seeds
    A and B at 0.95; atom 3 in every seed but at 0.75 to A (0.75² + 0.66² = 1); atoms 4–5 are distinct in each
    seed (orthogonal across seeds). Seed A is stable at (0.8, all three seeds): 0, 1; at (0.8, two): 0, 1, 2; at
    (0.7, all): 0, 1, 3; at (0.7, two): 0, 1, 2, 3."""
    e = np.eye(12)
    c, s = 0.95, np.sqrt(1 - 0.95 ** 2)
    a3, b3 = 0.75, np.sqrt(1 - 0.75 ** 2)
    A = np.stack([e[0], e[1], e[2], e[3], e[4], e[5]])
    B = np.stack([c * e[0] + s * e[6], c * e[1] + s * e[7], c * e[2] + s * e[8], a3 * e[3] + b3 * e[9], e[10], e[11]])
    C = np.stack([c * e[0] - s * e[6], c * e[1] - s * e[7], (e[8] - e[10]) / np.sqrt(2), a3 * e[3] - b3 * e[9],
                  (e[6] + e[7]) / np.sqrt(2), (e[8] + e[10] + e[11]) / np.sqrt(3)])
    cfg = OrthogonalityConfig(stable_cos=0.7, stable_seeds=2, orth_eps=0.3, seed=0)
    census, grid = atom_census([A, B, C], 16, 6, 12, cfg)
    counts = {(t, m): grid.stable[i][j].values[0] for i, t in enumerate(grid.stable_cos)
              for j, m in enumerate(grid.min_seeds)}
    assert grid.stable_cos == [0.6, 0.7, 0.8] and grid.min_seeds == [2, 3]
    assert counts[0.8, 3] == 2 and counts[0.8, 2] == 3 and counts[0.7, 3] == 3 and counts[0.7, 2] == 4
    assert census.stable.values[0] == 4 and census.stable_orthogonal.values[0] == 4  # the pre-registered (0.7, 2)
    assert census.live.values == [6, 6, 6]


def test_realistic_plant_keeps_the_layers_scale_and_records_its_truth(tmp_path):
    """The plant of a layer is its trained dictionary's reconstruction plus noise of the residual's covariance: its
    truth is the dictionary's atoms that fire, its rows have the real rows' covariance, and its noise alone (plant
    minus reconstruction) has the residual's."""
    from superpos.dictionaries import TopKSAE, load_dictionary, save_dictionary
    from superpos.hypotheses.orthogonality.plant import realistic_plant
    from superpos.store import ActivationStore
    from superpos.store.surrogates import load_truth, planted_superposition, write_store

    x, _ = planted_superposition(12_000, 16, 48, 2, noise=0.05, seed=3)
    real = write_store({4: x}, tmp_path / "real.h5", description="planted rows", context_length=100)
    sae = TopKSAE(expansion=4, k=3, n_tokens=60_000, batch_size=256, device="cpu", progress=False).fit(x)
    save_dictionary(sae, tmp_path / "d")
    with ActivationStore(real) as st:
        plant = realistic_plant(st, [4], {4: str(tmp_path / "d")}, tmp_path / "plant.h5", seed=1)
        keep = st.row_mask(1)
        rows = st.to_numpy(4)[keep]
    truth = load_truth(plant)[4]
    D = load_dictionary(tmp_path / "d", device="cpu")
    fired = (D.transform(rows) != 0).any(0)
    np.testing.assert_array_equal(truth, D.components_.numpy()[fired])
    with ActivationStore(plant) as p:
        y = p.to_numpy(4, np.arange(p.n_rows))
    assert len(y) == len(rows)
    cov_y, cov_x = np.cov(y, rowvar=False), np.cov(rows, rowvar=False)
    assert np.linalg.norm(cov_y - cov_x) / np.linalg.norm(cov_x) < 0.05
    noise, resid = y - D.reconstruct(rows), rows - D.reconstruct(rows)
    assert np.linalg.norm(np.cov(noise, rowvar=False) - np.cov(resid, rowvar=False)) < 0.1 * np.linalg.norm(
        np.cov(resid, rowvar=False))
    assert abs(np.corrcoef(noise[:, 0], resid[:, 0])[0, 1]) < 0.05  # fresh noise, not the residual itself


def test_the_census_takes_dictionaries_trained_elsewhere(tmp_path):
    """Two seeds trained "elsewhere", saved as EleutherAI sparsify hookpoint folders: the census reads them in place
    of fitting its own, and counts what the census of the same atoms counts."""
    import json

    from safetensors.torch import save_file

    from superpos.dictionaries import TopKSAE
    from superpos.hypotheses.orthogonality.budget import external_census
    from superpos.hypotheses.orthogonality.census import live_atoms
    from superpos.store import ActivationStore
    from superpos.store.surrogates import planted_superposition, write_store

    x, _ = planted_superposition(10_000, 16, 32, 2, noise=0.02, seed=5)
    path = write_store({3: x}, tmp_path / "s.h5", description="planted rows", context_length=100)
    folders, saes = [], []
    for seed in (0, 1):
        sae = TopKSAE(expansion=4, k=2, n_tokens=40_000, batch_size=256, seed=seed, device="cpu", progress=False).fit(x)
        s = sae.state_dict()
        folder = tmp_path / f"run{seed}" / "layers.3"
        folder.mkdir(parents=True)
        save_file({"encoder.weight": s["W_enc_"].contiguous(), "encoder.bias": s["b_enc_"], "W_dec": s["components_"],
                   "b_dec": s["b_dec_"]}, str(folder / "sae.safetensors"))
        (folder / "cfg.json").write_text(json.dumps({"activation": "topk", "num_latents": 64, "k": 2, "d_in": 16}))
        folders.append(str(folder))
        saes.append(sae)
    cfg = OrthogonalityConfig(external=folders, orth_eps=0.5, device="cpu")
    with ActivationStore(path) as st:
        curve = external_census(st, 3, cfg)
        holdout = st.restrict(st.split_row(0.9), st.n_rows)
        atoms = [s.components_.numpy()[live_atoms(s, holdout, 3)] for s in saes]
    census, _ = atom_census(atoms, 4, 64, 16, cfg)
    (point,) = curve.points
    assert point.atoms.stable_orthogonal.values == census.stable_orthogonal.values
    assert point.atoms.live.values == census.live.values and curve.n_atoms == 64
    assert census.stable.values[0] > 16  # two seeds of a 2x-overcomplete planted set agree on most of it


def test_a_rise_every_seed_shares_is_rising_however_small_the_spread():
    """The budgets of one seed are one nested run: 50 → 150 → 210 in every seed is still rising (a paired test),
    and such a curve is never read as flattened."""
    curve = _curve({400_000: [48, 50, 52], 1_200_000: [148, 150, 152], 4_000_000: [208, 210, 212]})
    curve.fit = f = saturation(curve, 576)
    assert f.still_rising and not flattened_below(curve, 576)


def _run(control: str, curve: BudgetCurve | None, gain: float = 0.3, supported=None):
    """The parts of an orthogonality result the calibrated verdict reads."""
    from types import SimpleNamespace

    from superpos.hypotheses.orthogonality.result import OrthogonalityVerdict

    atoms = SimpleNamespace(stable_orthogonal=seed_values([10, 12, 11]))
    layer = SimpleNamespace(layer=15, gain=seed_values([gain - 0.01, gain, gain + 0.01]), atoms=atoms)
    verdict = OrthogonalityVerdict(headline="NOT SHOWN AT THIS BUDGET at layer(s) 15: …" if not supported else
                                   "SUPPORTED: …", criteria=[], context="", layers_passed={15: bool(supported)},
                                   supported=supported)
    return SimpleNamespace(config=SimpleNamespace(control=control), layers=[layer], budget=[curve] if curve else None,
                           verdict=verdict, d_model=576, model="m")


def test_the_three_answers_of_the_calibrated_verdict():
    """NOT SUPPORTED needs both: the real curve flattened below d and the realistic plant resolving more than d at
    the same budget. A plant that resolves too little, or a real curve still rising, leaves NOT SHOWN AT THIS
    BUDGET; a null that comes out SUPPORTED makes it NOT CALIBRATED."""
    from superpos.hypotheses.orthogonality.verdict import calibrated_verdict

    budgets = (400_000, 1_200_000, 4_000_000)
    flat = _curve(dict(zip(budgets, ([290, 300, 310], [296, 305, 300], [301, 299, 303]))))
    flat.fit = saturation(flat, 576)
    rising = _curve(dict(zip(budgets, ([20, 22, 25], [60, 66, 63], [170, 180, 175]))))
    rising.fit = saturation(rising, 576)
    strong = _curve(dict(zip(budgets, ([300, 310, 305], [700, 710, 690], [900, 905, 910]))))
    weak = _curve(dict(zip(budgets, ([30, 31, 32], [60, 61, 62], [90, 91, 92]))))
    null = _curve(dict(zip(budgets, ([0, 1, 0], [1, 0, 2], [2, 1, 1]))))

    def controls(plant_curve, null_supported=None):
        return {"gaussian": _run("gaussian", null, 0.02, null_supported), "pc-shuffle": _run("pc-shuffle", null, 0.01),
                "planted superposition": _run("planted", strong, 0.6, True),
                "realistic plant": _run("realistic", plant_curve)}

    v = calibrated_verdict(_run("none", flat), controls(strong))
    assert v.answer == "NOT SUPPORTED" and v.supported is False and "resolves more than d" in v.headline
    v = calibrated_verdict(_run("none", flat), controls(weak))  # the plant is not resolved either: no power
    assert v.answer == "NOT SHOWN AT THIS BUDGET" and v.supported is None
    v = calibrated_verdict(_run("none", rising), controls(strong))  # the real curve may still cross d
    assert v.answer == "NOT SHOWN AT THIS BUDGET"
    unrecovered = _curve(dict(zip(budgets, ([300, 310, 305], [700, 710, 690], [900, 905, 910]))))
    unrecovered.points[-1].recovered = seed_values([900, 400, 950])  # one seed recovers fewer than d planted atoms
    unrecovered.planted_atoms = 9216
    v = calibrated_verdict(_run("none", flat), controls(unrecovered))
    assert v.answer == "NOT SHOWN AT THIS BUDGET" and any("400 of" in line for line in v.criteria)
    short = _curve(dict(zip((400_000, 1_200_000, 2_000_000), ([300, 310, 305], [700, 710, 690], [900, 905, 910]))))
    assert calibrated_verdict(_run("none", flat), controls(short)).answer == "NOT SHOWN AT THIS BUDGET"  # not the same budget
    v = calibrated_verdict(_run("none", flat), controls(strong, null_supported=True))
    assert v.headline.startswith("NOT CALIBRATED") and v.supported is None


def test_a_dictionary_folder_is_fitted_once_and_never_reused_for_other_settings(tmp_path):
    """The sweep fits into a folder once and reuses it on a rerun (the same weights, no refit); a rerun asking for
    another precision, k or budget is refused in one line instead of silently reusing what the folder holds. The
    run's precision takes the SAEs' own values."""
    from superpos.dictionaries.sae_params import SAE_PARAMS
    from superpos.errors import ConfigError
    from superpos.hypotheses.orthogonality.budget import fit_once
    from superpos.settings import settings
    from superpos.store import ActivationStore
    from superpos.store.surrogates import planted_superposition, write_store

    x, _ = planted_superposition(4096, 16, 32, 2, noise=0.05, seed=0)
    path = write_store({3: x}, tmp_path / "s.h5", description="planted rows", context_length=64)
    cfg = OrthogonalityConfig(k=2, batch_size=256, precision="bfloat16", device="cpu")
    params = {"expansion": 2.0, "n_tokens": 2048, "seed": 0}
    with ActivationStore(path) as st:
        saved = fit_once(st, 3, tmp_path / "d", cfg, params, progress=False)
        weights = (tmp_path / "d" / "weights.safetensors").read_bytes()
        assert saved["params"]["precision"] == "bfloat16" and saved["n_tokens_seen_"] == 2048
        assert fit_once(st, 3, tmp_path / "d", cfg, params, progress=False) == saved
        assert (tmp_path / "d" / "weights.safetensors").read_bytes() == weights
        for other in ({"precision": "float32"}, {"k": 3}):
            with pytest.raises(ConfigError, match="other settings"):
                fit_once(st, 3, tmp_path / "d", OrthogonalityConfig(**{**vars(cfg), **other}), params, progress=False)
        with pytest.raises(ConfigError, match="n_tokens 2048"):
            fit_once(st, 3, tmp_path / "d", cfg, {**params, "n_tokens": 4096}, progress=False)
    declared = SAE_PARAMS["precision"]
    setting = next(s for s in settings(OrthogonalityConfig) if s.name == "precision")
    assert setting.default == declared.default
    assert [v for v in declared.check.values if setting.parse(v) == v] == list(declared.check.values)
    with pytest.raises(ValueError):
        setting.parse("float16")
