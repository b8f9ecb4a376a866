"""Hypothesis 1: exp(N_emb) near-orthogonality.

Does a d-dimensional residual stream hold far more than d nearly orthogonal directions, and does the
model use that regime? Three measurements (method and reading in docs/orthogonality.md):

(a) token embedding (and unembedding, if untied), raw and mean-centred: each vector's max |cos| to the
    others vs a Gaussian null of equal count and dimension and the exact random-vector median; greedy
    capacity curves (pairwise |cos| ≤ ε) vs exp(d ε²/4).
(b) TopK SAEs of growing size (1× … 32× d) on one layer: held-out FVU vs size, and the atoms' max |cos|
    vs the same null.
(c) do learned atoms line up with token embeddings more than random directions with the layer's
    covariance do?
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from .. import geometry as g
from ..errors import ConfigError, SuperposError
from ..stats import bootstrap_ci
from .configs import OrthogonalityConfig
from .results import (Alignment, Capacity, OrthogonalityResult, StoreInfo, Summary, SweepPoint,
                      TokenSet)



def _say(msg: str) -> None:
    print(f"[orthogonality] {msg}", file=sys.stderr, flush=True)


def _summary(values: np.ndarray, n_boot: int, seed: int) -> Summary:
    med, lo, hi = bootstrap_ci(np.median, values, n_boot=n_boot, seed=seed)
    return Summary(median=med, ci=[lo, hi], p10=float(np.quantile(values, 0.1)), p90=float(np.quantile(values, 0.9)),
                   mean=float(values.mean()))


def run(cfg: OrthogonalityConfig) -> OrthogonalityResult:
    """``superpos run orthogonality``: embedding geometry, the dictionary-size sweep, the verdict and report."""
    from ..harvest import HarvestConfig, harvest
    from ..models import load_model
    from ..store import ActivationStore
    from .reports.orthogonality import write_report
    from .verdicts import orthogonality as verdict

    if not cfg.expansions or min(cfg.expansions) <= 0:
        raise ConfigError("expansions", "{field} must be positive numbers")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    lm = load_model(cfg.model, device=cfg.device)
    d = lm.d_model
    layer = cfg.layer if cfg.layer is not None else lm.n_layers // 2
    lm.check_layers([layer])
    if cfg.store:  # fail before the long token-geometry part, not after it
        with ActivationStore(cfg.store) as st:
            st.check_layer(layer)
            if st.d_model != d:
                raise SuperposError(f"store {cfg.store} has d_model {st.d_model}, model {lm.name} has {d}")
    W_E = lm.W_E_VD.detach().float().cpu().numpy()
    W_U = lm.W_U_VD.detach().float().cpu().numpy()
    tied = W_E.shape == W_U.shape and np.array_equal(W_E, W_U)
    tokens, capacity, maxcos = token_geometry(W_E, None if tied else W_U, cfg)

    if cfg.store:
        store_path = Path(cfg.store)
    else:
        store_path = out / "acts.h5"
        harvest(HarvestConfig(model=cfg.model, layers=str(layer), tokens=cfg.harvest_tokens, device=cfg.device),
                store_path, lm=lm)
    if cfg.control != "none":  # a calibration run: the identical sweep on a surrogate of the layer
        from ..surrogates import surrogate_of_store

        surrogate = out / "surrogate.h5"
        if not surrogate.exists():
            with ActivationStore(store_path) as store:
                surrogate_of_store(store, layer, cfg.control, surrogate, seed=cfg.seed)
        store_path = surrogate
    with ActivationStore(store_path) as store:  # a given --store was checked on entry; harvest checks its own
        store_info, pca_fvu, sweep, atoms = dictionary_sweep(store, layer, out / "dicts", cfg)
        split = store.split_row(0.9)
        alignment = atom_alignment(atoms, W_E, store.restrict(0, split), layer, max(cfg.expansions), cfg)
    res = OrthogonalityResult(config=cfg, model=lm.name, d_model=d, layer=layer, tied_embeddings=tied, tokens=tokens,
                              tokens_theory_median=g.expected_max_abs_cos(len(W_E), d), capacity=capacity,
                              store=store_info, pca_fvu=pca_fvu, sweep=sweep, alignment=alignment)
    res.verdict = verdict(res)
    res.timings["total_s"] = time.perf_counter() - t_start
    res.save(out)
    write_report(res, maxcos, out)
    return res


def token_geometry(W_E: np.ndarray, W_U: np.ndarray | None,
                   cfg: OrthogonalityConfig) -> tuple[dict[str, TokenSet], Capacity, dict[str, np.ndarray]]:
    """(a) Each token vector's max |cos| to the others (embedding, unembedding when untied, each raw and
    mean-centred, and a Gaussian null of the same size) and greedy ε-packings of a subsample; also returns the
    raw max |cos| values per set (for the report's histogram)."""
    n_vocab, d = W_E.shape
    sets = {"embedding": W_E, "embedding (centred)": W_E - W_E.mean(0)}
    if W_U is not None:
        sets.update({"unembedding": W_U, "unembedding (centred)": W_U - W_U.mean(0)})
    sets["random null"] = g.gaussian_null(n_vocab, d, seed=cfg.seed)
    tokens, maxcos = {}, {}
    for name, V in sets.items():
        t0 = time.perf_counter()
        mc = g.max_abs_cos(V).value
        secs = time.perf_counter() - t0
        maxcos[name] = mc
        tokens[name] = TokenSet(n=len(V), max_abs_cos=_summary(mc, cfg.n_boot, cfg.seed), seconds=secs)
        _say(f"{name}: median max|cos| {np.median(mc):.3f} ({secs:.1f} s for {len(V):,} × {d})")
    sub = np.random.default_rng(cfg.seed).choice(n_vocab, size=min(cfg.capacity_sample, n_vocab), replace=False)
    capacity = Capacity(eps=list(cfg.eps_grid), n_candidates=len(sub),
                        random_code_bound=g.random_code_size(d, cfg.eps_grid).tolist(), kept={})
    for name, V in sets.items():
        caps = g.greedy_capacity(V[sub], cfg.eps_grid, seed=cfg.seed)
        capacity.kept[name] = caps.tolist()
        _say(f"capacity {name}: {dict(zip(cfg.eps_grid, caps.tolist()))}")
    return tokens, capacity, maxcos


def dictionary_sweep(store, layer: int, folder: Path,
                     cfg: OrthogonalityConfig) -> tuple[StoreInfo, float, list[SweepPoint], np.ndarray]:
    """(b) TopK SAEs of growing size on the first 90% of contexts (fitted once into ``folder``, reused after),
    scored on the rest, with their atoms' max |cos| against a Gaussian null; PCA at equal L0 as the baseline.
    Returns the store info, PCA's FVU, the sweep and the largest dictionary's atoms."""
    from ..dictionaries import PCA, load_dictionary
    from ..dictionaries.fitting import fit_dictionary
    from ..dictionaries.io import CONFIG
    from ..metrics import reconstruction_metrics

    split = store.split_row(0.9)
    holdout = store.restrict(split, store.n_rows)
    info = StoreInfo(path=str(store.path), rows=store.n_rows, holdout_rows=store.n_rows - split)
    pca = PCA(n_components=cfg.k).fit(store.restrict(0, split), layer=layer)
    pca_fvu = reconstruction_metrics(pca, holdout, layer, progress=False).fvu
    sweep, atoms = [], None
    for e in sorted(cfg.expansions):
        where = folder / f"topk_x{e}"
        if not (where / CONFIG).exists():
            fit_dictionary(store.path, layer, "topk", where, {"expansion": float(e), "k": cfg.k,
                           "n_tokens": cfg.fit_tokens, "seed": cfg.seed}, device=cfg.device)
        sae = load_dictionary(where, device=cfg.device)
        ev = reconstruction_metrics(sae, holdout, layer, progress=False)
        atoms = sae.components_.detach().cpu().numpy()
        mc = g.max_abs_cos(atoms).value
        null_mc = g.max_abs_cos(g.gaussian_null(len(atoms), store.d_model, seed=cfg.seed + e)).value
        row = SweepPoint(expansion=e, n_atoms=len(atoms), fvu=ev.fvu, l0=ev.l0, dead=ev.dead_fraction,
                         max_abs_cos=_summary(mc, cfg.n_boot, cfg.seed), null_median=float(np.median(null_mc)),
                         theory_median=g.expected_max_abs_cos(len(atoms), store.d_model),
                         frac_above_0_9=float((mc > 0.9).mean()))
        sweep.append(row)
        _say(f"{e}×: FVU {ev.fvu:.4f}, median max|cos| {row.max_abs_cos.median:.3f} (null {row.null_median:.3f})")
    return info, pca_fvu, sweep, atoms


def atom_alignment(atoms: np.ndarray, W_E: np.ndarray, train, layer: int, expansion: int,
                   cfg: OrthogonalityConfig) -> Alignment:
    """(c) Each atom's best |cos| to any token embedding, against random directions drawn with the layer's
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
