"""Hypothesis 1: exp(N_emb) near-orthogonality.

Does a d-dimensional residual stream hold far more than d nearly orthogonal directions, and does the model use
that regime? Measured at several layers, each with several SAE seeds (method and reading in
docs/orthogonality.md):

(a) the dictionary sweep: TopK SAEs of growing size per layer and seed, held-out FVU (and, on a model's own
    store, CE-loss recovered and KL when spliced in); the gain from the smallest to the largest size, with a
    t-interval over seeds;
(b) the atom census of the largest dictionary: live atoms, seed-stable atoms (Hungarian matching across seeds),
    how many of those stay pairwise nearly orthogonal, their interference and summed per-feature dimensionality
    against random directions of the same count;
(c) capacity against d: greedy ε-packings of the token embedding, of learned atoms and of random directions,
    projected to several d, against spherical-code bounds;
(d) token geometry and atom–token alignment as context.

The same run on a surrogate of the layers (``control``: Gaussian and PC-shuffle nulls, planted superposition)
is the calibration; ``run orthogonality --calibrate`` runs all three and judges the real run against them.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from superpos import geometry as g
from superpos.errors import ConfigError, SuperposError
from superpos.files import write_json_atomic
from superpos.hypotheses.orthogonality.budget import (
    budget_layers,
    budget_sweep,
    dictionary_folder,
    external_census,
    fit_once,
)
from superpos.hypotheses.orthogonality.census import atom_census, live_atoms, say, seed_values
from superpos.hypotheses.orthogonality.config import OrthogonalityConfig
from superpos.hypotheses.orthogonality.result import (
    MAXCOS,
    Alignment,
    CapacityCurves,
    LayerSweep,
    LineFit,
    OrthogonalityResult,
    SizeFit,
    Summary,
    TokenSet,
)
from superpos.stats import bootstrap_ci

PLANT = "plant.json"  # the real run's record of the dictionary per layer that the realistic plant is made of
PLANT_SEED_OFFSET = 100  # the realistic plant's fits start from other seeds than its generator's (seed 0 of the real run)


def _summary(values: np.ndarray, n_boot: int, seed: int) -> Summary:
    med, lo, hi = bootstrap_ci(np.median, values, n_boot=n_boot, seed=seed)
    return Summary(median=med, ci=[lo, hi], p10=float(np.quantile(values, 0.1)), p90=float(np.quantile(values, 0.9)),
                   mean=float(values.mean()))


def default_layers(n_layers: int) -> list[int]:
    """An early, the middle and a late layer: n/6, n/2, 5n/6 (rounded)."""
    return sorted({round(n_layers / 6), n_layers // 2, round(5 * n_layers / 6)})


def run(cfg: OrthogonalityConfig) -> OrthogonalityResult:
    """``superpos run orthogonality``: the dictionary sweep per layer and seed, the atom census, capacity against d,
    token geometry, the verdict and the report."""
    from superpos.model.harvest import HarvestConfig, harvest
    from superpos.model.load import load_model
    from superpos.store import ActivationStore

    if not cfg.expansions or min(cfg.expansions) <= 0 or len(set(cfg.expansions)) < 2:
        raise ConfigError("expansions", "{field} needs at least two different positive sizes")
    if cfg.seeds < 2:
        raise ConfigError("seeds", "{field} must be at least 2: atoms are matched across seeds")
    n_seeds = len(cfg.external) if cfg.external else cfg.seeds
    if not 2 <= cfg.stable_seeds <= n_seeds:
        raise ConfigError("stable_seeds", f"{{field}} ({cfg.stable_seeds}) must be at least 2 (a stable atom recurs) "
                                          f"and at most the {n_seeds} seeds")
    if cfg.external and cfg.control != "none":
        raise ConfigError("external", "{field} is the real layer's own dictionaries: a control fits its own")
    if cfg.control == "realistic" and not cfg.plant_from:
        raise ConfigError("plant_from", "control realistic needs {field}: the real run's OUT/plant.json")
    if cfg.control == "realistic":  # seeds other than the one whose dictionary generated the plant
        cfg = replace(cfg, seed=cfg.seed + PLANT_SEED_OFFSET)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(cfg.model, device=cfg.device)
    d = lm.d_model
    layers = sorted(set(cfg.layers)) if cfg.layers else default_layers(lm.n_layers)
    lm.check_layers(layers)
    if cfg.external and (not cfg.budget or len(budget_layers(cfg, layers)) != 1):
        raise ConfigError("external", "{field} needs the budget sweep at exactly one layer (--budget-layers L)")
    if cfg.budget and not set(budget_layers(cfg, layers)) <= set(layers):
        raise ConfigError("budget_layers", f"{{field}} must be among the sweep's layers ({', '.join(map(str, layers))})")
    if cfg.store:  # fail before the long part, not after it
        with ActivationStore(cfg.store) as st:
            for layer in layers:
                st.check_layer(layer)
            if st.d_model != d:
                raise SuperposError(f"store {cfg.store} has d_model {st.d_model}, model {lm.name} has {d}")
    W_E = lm.W_E_VD.detach().float().cpu().numpy()
    W_U = lm.W_U_VD.detach().float().cpu().numpy()
    tied = W_E.shape == W_U.shape and np.array_equal(W_E, W_U)

    if cfg.store:
        store_path = Path(cfg.store)
    else:
        store_path = out / "acts.h5"
        harvest(HarvestConfig(model=cfg.model, corpus=cfg.corpus, layers=",".join(map(str, layers)),
                              tokens=cfg.harvest_tokens, device=cfg.device), store_path, lm=lm)
    truth = None
    if cfg.control != "none":  # a calibration run: the identical sweep on a surrogate of the layers
        from superpos.hypotheses.orthogonality.plant import realistic_plant
        from superpos.store.surrogates import load_truth, surrogate_of_store

        surrogate = out / "surrogate.h5"
        if not surrogate.exists():
            with ActivationStore(store_path) as store:
                if cfg.control == "realistic":
                    realistic_plant(store, layers, plant_dictionaries(cfg.plant_from, layers), surrogate,
                                    seed=cfg.seed, device=cfg.device)
                else:
                    surrogate_of_store(store, layers, cfg.control, surrogate, seed=cfg.seed)
        store_path, truth = surrogate, load_truth(surrogate)
    sweeps, atoms_by_layer = [], {}
    with ActivationStore(store_path) as store:
        own_text = cfg.control == "none" and store.attrs.get("model") == lm.name  # CE needs the model's own tokens
        for layer in layers:
            t0 = time.perf_counter()
            sweep, atoms = layer_sweep(store, layer, out / "dicts" / f"layer{layer}", cfg, lm if own_text else None,
                                       W_E)
            sweeps.append(sweep)
            atoms_by_layer[layer] = atoms
            say(f"layer {layer}: {time.perf_counter() - t0:.0f} s")
        budget = []
        for layer in budget_layers(cfg, layers) if cfg.budget else []:
            t0 = time.perf_counter()
            planted = None if truth is None else truth[layer]
            budget.append(external_census(store, layer, cfg, planted) if cfg.external else
                          budget_sweep(store, layer, out / "budget" / f"layer{layer}", cfg, planted))
            say(f"budget sweep, layer {layer}: {time.perf_counter() - t0:.0f} s")
    if cfg.control == "none":  # what the realistic plant of each layer is made of: its largest dictionary, seed 0
        big = budget_layers(cfg, layers) if cfg.budget else []

        def largest(layer: int) -> Path:
            if layer in big:
                return Path(cfg.external[0]) if cfg.external else \
                    dictionary_folder(out / "budget" / f"layer{layer}", cfg, cfg.seed)
            return out / "dicts" / f"layer{layer}" / f"topk_x{max(cfg.expansions)}_seed{cfg.seed}"
        write_json_atomic(out / PLANT, {str(layer): str(largest(layer).resolve()) for layer in layers})
    res = OrthogonalityResult(config=cfg, model=lm.name, d_model=d, tied_embeddings=tied, store=str(store_path),
                              layers=sweeps, budget=budget or None)
    if cfg.capacity:
        t0 = time.perf_counter()
        res.tokens, maxcos = token_geometry(W_E, None if tied else W_U, cfg)
        res.tokens_theory_median = g.expected_max_abs_cos(len(W_E), d)
        np.savez_compressed(out / MAXCOS, **maxcos)
        mid = layers[len(layers) // 2]
        sets = {"embedding (centred)": W_E - W_E.mean(0),
                f"atoms (layer {mid}, {max(cfg.expansions)}×)": atoms_by_layer[mid],
                "random directions": g.gaussian_null(cfg.capacity_sample, d, seed=cfg.seed + 1)}
        res.capacity = capacity_curves(sets, d, cfg)
        res.timings["capacity_s"] = time.perf_counter() - t0
    return res


# ------------------------------------------------------------------ (a, b) the sweep and the atom census per layer
def layer_sweep(store, layer: int, folder: Path, cfg: OrthogonalityConfig, lm,
                W_E: np.ndarray) -> tuple[LayerSweep, np.ndarray]:
    """TopK SAEs of every size and seed on the first 90% of contexts (fitted once into ``folder``, reused after),
    scored on the rest; the gain over seeds; the largest size's atom census. Also returns the first seed's live
    atoms of the largest size."""
    from superpos.dictionaries import PCA, load_dictionary
    from superpos.dictionaries.metrics import evaluate_dictionaries, reconstruction_metrics

    split = store.split_row(0.9)
    train, holdout = store.restrict(0, split), store.restrict(split, store.n_rows)
    pca_fvu = reconstruction_metrics(PCA(n_components=cfg.k).fit(train, layer=layer), holdout, layer,
                                     progress=False).fvu
    sizes = sorted(cfg.expansions)
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    evals, largest = {}, []  # evals[(size, seed)]
    for seed in seeds:
        saes = {}
        for e in sizes:
            where = folder / f"topk_x{e}_seed{seed}"
            fit_once(store, layer, where, cfg, {"expansion": float(e), "n_tokens": cfg.fit_tokens, "seed": seed})
            saes[e] = load_dictionary(where, device=cfg.device)
        for e, ev in zip(sizes, evaluate_dictionaries({f"{e}x": saes[e] for e in sizes}, holdout, layer, lm=lm,
                                                      ce_contexts=cfg.ce_contexts if lm is not None else 0,
                                                      progress=False)):
            evals[e, seed] = ev
        big = saes[sizes[-1]]
        largest.append(big.components_.detach().cpu().numpy()[live_atoms(big, holdout, layer)])
        say(f"layer {layer}, seed {seed}: FVU " + ", ".join(f"{e}× {evals[e, seed].fvu:.4f}" for e in sizes)
            + "; on typical rows " + ", ".join(f"{e}× {evals[e, seed].fvu_typical or float('nan'):.4f}" for e in sizes))

    def overseed_values(e, name):
        vals = [getattr(evals[e, s], name) for s in seeds]
        return None if vals[0] is None else seed_values(vals)

    fits = [SizeFit(expansion=e, n_atoms=evals[e, seeds[0]].n_components, fvu=overseed_values(e, "fvu"),
                    l0=overseed_values(e, "l0"), dead=overseed_values(e, "dead_fraction"),
                    ce_recovered=overseed_values(e, "ce_loss_recovered"), kl=overseed_values(e, "kl_spliced"),
                    fvu_typical=overseed_values(e, "fvu_typical")) for e in sizes]

    def gain_of(name: str):
        return seed_values([1 - getattr(evals[sizes[-1], s], name) / getattr(evals[sizes[0], s], name) for s in seeds])
    typical = all(evals[e, s].fvu_typical is not None for e in sizes for s in seeds)
    gain, gain_typical = gain_of("fvu"), gain_of("fvu_typical") if typical else None
    census, grid = atom_census(largest, sizes[-1], evals[sizes[-1], seeds[0]].n_components, store.d_model, cfg)
    alignment = atom_alignment(largest[0], W_E, train, layer, sizes[-1], cfg) if lm is not None else None
    sweep = LayerSweep(layer=layer, rows=store.n_rows, holdout_rows=store.n_rows - split, pca_fvu=pca_fvu,
                       sizes=fits, gain=gain, atoms=census, grid=grid, alignment=alignment, gain_typical=gain_typical,
                       outlier_rows=evals[sizes[0], seeds[0]].n_outliers)
    return sweep, largest[0]


def plant_dictionaries(path: str, layers: list[int]) -> dict[int, str]:
    """The dictionary folder per layer recorded in a real run's plant.json, checked to cover ``layers``."""
    from superpos.readers import read_json_object

    record = read_json_object(Path(path))
    missing = [layer for layer in layers if str(layer) not in record]
    if missing:
        raise SuperposError(f"{path} names no dictionary for layer {missing[0]} (it covers "
                            f"{', '.join(sorted(record)) or 'none'})")
    return {layer: str(record[str(layer)]) for layer in layers}


def atom_alignment(atoms: np.ndarray, W_E: np.ndarray, train, layer: int, expansion: int,
                   cfg: OrthogonalityConfig) -> Alignment:
    """Each atom's best |cos| to any token embedding, against random directions drawn with the layer's
    covariance (from 20,000 training rows)."""
    best = g.best_abs_cos(atoms, W_E)
    cov = np.cov(train.sample(layer, 20000, seed=cfg.seed), rowvar=False)
    rng = np.random.default_rng(cfg.seed)
    null_dirs = rng.multivariate_normal(np.zeros(len(cov)), cov, size=len(atoms)).astype(np.float32)
    best_null = g.best_abs_cos(null_dirs, W_E)
    diff = bootstrap_ci(lambda a, b: np.median(a) - np.median(b), best, best_null, n_boot=cfg.n_boot, seed=cfg.seed)
    return Alignment(expansion=expansion, atoms=_summary(best, cfg.n_boot, cfg.seed),
                     null=_summary(best_null, cfg.n_boot, cfg.seed), median_diff=list(diff),
                     frac_atoms_above_null_p99=float((best > np.quantile(best_null, 0.99)).mean()))


# ------------------------------------------------------------------ (c, d) capacity against d, token geometry
def capacity_curves(sets: dict[str, np.ndarray], d: int, cfg: OrthogonalityConfig) -> CapacityCurves:
    """Greedy ε-packings of up to ``capacity_sample`` vectors of each set, projected to each d' ≤ d (Gaussian
    random projection; d itself unprojected), flagged where capped by the candidates; the random-code and
    relative/cap-packing bounds at each (d', ε); and per set a line ln N = a + b·d'ε² through the uncapped
    points."""
    dims = sorted({x for x in cfg.capacity_dims if x < d} | {d})
    eps = list(cfg.eps_grid)
    curves = CapacityCurves(dims=dims, eps=eps, n_candidates={}, kept={}, capped={},
                            lower_bound=[g.random_code_size(x, eps).tolist() for x in dims],
                            upper_bound=[g.code_upper_bound(x, eps).tolist() for x in dims],
                            kl_rate=g.kl_rate(eps).tolist(), fits={})
    rng = np.random.default_rng(cfg.seed)
    for name, V in sets.items():
        V = V[rng.choice(len(V), size=min(cfg.capacity_sample, len(V)), replace=False)]
        curves.n_candidates[name] = len(V)
        kept, capped = [], []
        for x in dims:
            pk = g.greedy_packing(g.random_projection(V, x, seed=cfg.seed + x), eps, seed=cfg.seed)
            kept.append(pk.kept.tolist())
            capped.append(pk.capped.tolist())
        curves.kept[name], curves.capped[name] = kept, capped
        curves.fits[name] = line_fit(dims, eps, kept, capped)
        say(f"capacity {name}: " + "; ".join(f"d={x}: {k}" for x, k in zip(dims, kept)))
    return curves


def line_fit(dims: list[int], eps: list[float], kept: list[list[int]], capped: list[list[bool]]) -> LineFit:
    """Least squares ln N = a + b·dε² over the uncapped points with N > 1 (None when fewer than 3)."""
    pts = [(x * e * e, np.log(k), x) for x, ks, cs in zip(dims, kept, capped) for e, k, c in zip(eps, ks, cs)
           if not c and k > 1]
    if len(pts) < 3:
        return LineFit(slope=None, intercept=None, r2=None, points=len(pts),
                       dims=len({p[2] for p in pts}))
    X, Y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    slope, intercept = np.polyfit(X, Y, 1)
    resid = Y - (intercept + slope * X)
    r2 = 1 - (resid ** 2).sum() / max(((Y - Y.mean()) ** 2).sum(), 1e-300)
    return LineFit(slope=float(slope), intercept=float(intercept), r2=float(r2), points=len(pts),
                   dims=len({p[2] for p in pts}))


def token_geometry(W_E: np.ndarray, W_U: np.ndarray | None,
                   cfg: OrthogonalityConfig) -> tuple[dict[str, TokenSet], dict[str, np.ndarray]]:
    """Each token vector's max |cos| to the others (embedding, unembedding when untied, each raw and mean-centred,
    and a Gaussian null of the same size); also returns the raw values per set (for the report's histogram)."""
    n_vocab, d = W_E.shape
    sets = {"embedding": W_E, "embedding (centred)": W_E - W_E.mean(0)}
    if W_U is not None:
        sets.update({"unembedding": W_U, "unembedding (centred)": W_U - W_U.mean(0)})
    sets["random null"] = g.gaussian_null(n_vocab, d, seed=cfg.seed)
    cache = _geometry_cache(W_E, W_U, cfg.seed)
    done = dict(np.load(cache)) if cache.exists() else {}
    tokens, maxcos = {}, {}
    for name, V in sets.items():
        reused = name in done  # the same matrices and seed measured before (another corpus, a rerun)
        if reused:
            mc, secs = done[name], float(done[f"{name} seconds"])
        else:
            t0 = time.perf_counter()
            mc = g.max_abs_cos(V).value
            secs = time.perf_counter() - t0
            done.update({name: mc, f"{name} seconds": np.float64(secs)})
            _save_npz(cache, done)
        maxcos[name] = mc
        tokens[name] = TokenSet(n=len(V), max_abs_cos=_summary(mc, cfg.n_boot, cfg.seed), seconds=secs)
        say(f"{name}: median max|cos| {np.median(mc):.3f} ({secs:.1f} s for {len(V):,} × {d}"
             f"{'; measured before, read from ' + str(cache) if reused else ''})")
    return tokens, maxcos


def _geometry_cache(W_E: np.ndarray, W_U: np.ndarray | None, seed: int) -> Path:
    """Where the max |cos| of these matrices (and the null of this seed) is kept: $SUPERPOS_CACHE/geometry/<sha256>.npz
    (exact search on a 262k-token vocabulary takes minutes per set; every run on the same model reuses it)."""
    import hashlib

    from superpos.model.load import cache_folder

    h = hashlib.sha256(f"{W_E.shape} {W_E.dtype} seed {seed}".encode())
    for M in (W_E, W_U):
        if M is not None:
            h.update(np.ascontiguousarray(M).data)
    return cache_folder("geometry") / f"{h.hexdigest()[:32]}.npz"


def _save_npz(path: Path, arrays: dict) -> None:
    import os

    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
