"""The budget sweep: the largest dictionary's atom census as a function of training tokens.

One TopK run per seed trains for the largest budget and saves a dictionary at each smaller one after its own
decay branch (nested budgets, ``save_at``: warm-up and constant phase do not depend on the total), so every budget
costs one run. At each budget the census counts live, seed-stable and stable nearly orthogonal atoms (and, on a
plant, the planted atoms recovered); a saturating curve S(T) = s_max · T / (T + t_half) through the stable nearly
orthogonal counts says whether the count has flattened, and at what budget it would reach d.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from superpos.hypotheses.orthogonality.census import atom_census, live_atoms, recovered, say, seed_values
from superpos.hypotheses.orthogonality.config import OrthogonalityConfig
from superpos.hypotheses.orthogonality.result import BudgetCurve, BudgetPoint, Saturation
from superpos.stats import welch_difference

FIT_DRAWS = 4000  # parametric-bootstrap draws for the crossing budget's interval


def budget_layers(cfg: OrthogonalityConfig, layers: list[int]) -> list[int]:
    """The layers of the budget sweep: ``budget_layers``, or the middle of the sweep's layers."""
    return sorted(set(cfg.budget_layers)) if cfg.budget_layers else [layers[len(layers) // 2]]


def dictionary_folder(folder: Path, cfg: OrthogonalityConfig, seed: int, tokens: int | None = None) -> Path:
    """Where the budget sweep keeps seed ``seed``'s dictionary at ``tokens`` (the run's own folder for the largest
    budget, its nested-budget branch ``tokens_B`` below it otherwise)."""
    run = folder / f"topk_x{max(cfg.expansions)}_seed{seed}"
    return run if tokens is None or tokens == max(cfg.budgets) else run / f"tokens_{tokens}"


def budget_sweep(store, layer: int, folder: Path, cfg: OrthogonalityConfig,
                 truth: np.ndarray | None = None) -> BudgetCurve:
    """Fit (or reuse) one nested-budget TopK run per seed on the first 90 % of contexts and take the census at every
    budget on the held-out rest; ``truth`` (a plant's atoms) adds how many of them each budget recovers."""
    from superpos.dictionaries import load_dictionary
    from superpos.dictionaries.fitting import fit_dictionary
    from superpos.dictionaries.io import CONFIG
    from superpos.dictionaries.metrics import reconstruction_metrics

    budgets = sorted(set(cfg.budgets))
    split = store.split_row(0.9)
    holdout = store.restrict(split, store.n_rows)
    train_rows = int(store.restrict(0, split).n_train_rows())
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    expansion = max(cfg.expansions)
    seconds, trained = 0.0, 0
    for seed in seeds:
        where = dictionary_folder(folder, cfg, seed)
        if not (where / CONFIG).exists():
            fit_dictionary(store.path, layer, "topk", where,
                           {"expansion": float(expansion), "k": cfg.k, "n_tokens": budgets[-1],
                            "batch_size": cfg.batch_size, "seed": seed, "save_at": budgets[:-1]},
                           device=cfg.device, progress=False)
        meta = json.loads((where / CONFIG).read_text())["meta"]
        seconds += float(meta.get("train_seconds", 0.0))
        trained += budgets[-1]
        say(f"layer {layer}, seed {seed}: {budgets[-1]:,} tokens with branches at "
            f"{', '.join(f'{b:,}' for b in budgets[:-1]) or 'none'}")
    points, n_atoms = [], 0
    for tokens in budgets:
        t0 = time.perf_counter()
        atoms, fvus = [], []
        for seed in seeds:
            D = load_dictionary(dictionary_folder(folder, cfg, seed, tokens), device=cfg.device)
            n_atoms = D.n_components_
            fvus.append(reconstruction_metrics(D, holdout, layer, progress=False).fvu)
            atoms.append(D.components_.detach().cpu().numpy()[live_atoms(D, holdout, layer)])
        census, grid = atom_census(atoms, expansion, n_atoms, store.d_model, cfg)
        points.append(BudgetPoint(tokens=tokens, epochs=tokens / max(1, train_rows), fvu=seed_values(fvus),
                                  atoms=census, grid=grid,
                                  recovered=None if truth is None else recovered(truth, atoms)))
        say(f"layer {layer}, {tokens:,} tokens: stable nearly orthogonal atoms "
            f"{', '.join(str(int(v)) for v in census.stable_orthogonal.values)} (d = {store.d_model}); "
            f"{time.perf_counter() - t0:.0f} s")
    curve = BudgetCurve(layer=layer, expansion=expansion, n_atoms=n_atoms, rows=train_rows,
                        tokens_per_s=trained / seconds if seconds else 0.0, points=points,
                        planted_atoms=None if truth is None else len(truth))
    curve.fit = saturation(curve, store.d_model, seed=cfg.seed)
    return curve


def external_census(store, layer: int, cfg: OrthogonalityConfig, truth: np.ndarray | None = None) -> BudgetCurve:
    """The census of dictionaries trained elsewhere (``cfg.external``, one per seed) on ``store``'s held-out
    contexts, as a budget curve of one point (their training tokens are not known here: 0)."""
    from superpos.dictionaries import load_dictionary
    from superpos.dictionaries.metrics import reconstruction_metrics
    from superpos.errors import ConfigError

    if len(cfg.external) < 2:
        raise ConfigError("external", "{field} needs at least two dictionaries (one per seed) to match atoms")
    holdout = store.restrict(store.split_row(0.9), store.n_rows)
    atoms, fvus, sizes = [], [], set()
    for path in cfg.external:
        D = load_dictionary(path, device=cfg.device)
        if D.d_model_ != store.d_model:
            raise ConfigError("external", f"{{field}}: {path} has d_model {D.d_model_}, the store {store.d_model}")
        sizes.add(D.n_components_)
        fvus.append(reconstruction_metrics(D, holdout, layer, progress=False).fvu)
        atoms.append(D.components_.detach().cpu().numpy()[live_atoms(D, holdout, layer)])
    n_atoms = max(sizes)
    census, grid = atom_census(atoms, round(n_atoms / store.d_model), n_atoms, store.d_model, cfg)
    say(f"layer {layer}, {len(atoms)} external dictionaries: stable nearly orthogonal atoms "
        f"{', '.join(str(int(v)) for v in census.stable_orthogonal.values)} (d = {store.d_model})")
    return BudgetCurve(layer=layer, expansion=round(n_atoms / store.d_model), n_atoms=n_atoms,
                       rows=int(store.n_train_rows()), tokens_per_s=0.0,
                       points=[BudgetPoint(tokens=0, epochs=0.0, fvu=seed_values(fvus), atoms=census, grid=grid,
                                           recovered=None if truth is None else recovered(truth, atoms))],
                       planted_atoms=None if truth is None else len(truth))


def saturation(curve: BudgetCurve, d: int, seed: int = 0) -> Saturation | None:
    """S(T) = s_max · T / (T + t_half) by least squares through every (budget, seed) count of stable nearly
    orthogonal atoms; None with fewer than three budgets (two parameters need a third point to be tested)."""
    from scipy import stats
    from scipy.optimize import curve_fit

    pts = curve.points
    if len(pts) < 3:
        return None
    T = np.array([p.tokens for p in pts for _ in p.atoms.stable_orthogonal.values], float)
    S = np.array([v for p in pts for v in p.atoms.stable_orthogonal.values], float)
    last, prev = pts[-1].atoms.stable_orthogonal.values, pts[-2].atoms.stable_orthogonal.values
    rising = bool(welch_difference(last, prev)[1] > 0) if len(last) > 1 else last[0] > prev[0]
    if S.max() <= 0:
        return Saturation(s_max=0.0, s_max_ci=[0.0, 0.0], t_half=0.0, t_half_ci=[0.0, 0.0], crosses_d_at=None,
                          crosses_d_ci=None, still_rising=False)

    def f(t, s_max, t_half):
        return s_max * t / (t + t_half)

    scale = T.max()
    try:
        popt, pcov = curve_fit(f, T / scale, S, p0=[2 * S.max(), 0.5], bounds=([0, 1e-6], [np.inf, 1e6]),
                               maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    pcov = np.nan_to_num(pcov, nan=0.0, posinf=1e30)
    half = stats.t.ppf(0.975, max(1, len(S) - 2)) * np.sqrt(np.clip(np.diag(pcov), 0, None))
    s_max, t_half = float(popt[0]), float(popt[1] * scale)
    draws = np.random.default_rng(seed).multivariate_normal(popt, pcov, size=FIT_DRAWS, check_valid="ignore")
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = np.where(draws[:, 0] > d, np.clip(draws[:, 1], 0, None) * scale * d / (draws[:, 0] - d), np.inf)
    at = t_half * d / (s_max - d) if s_max > d else None
    cross = np.sort(cross)  # order statistics: the draws that never reach d (inf) stay at the top
    ci = [float(cross[int(0.025 * FIT_DRAWS)]), float(cross[int(0.975 * FIT_DRAWS) - 1])] if at is not None else None
    return Saturation(s_max=s_max, s_max_ci=[max(0.0, s_max - float(half[0])), s_max + float(half[0])],
                      t_half=t_half, t_half_ci=[max(0.0, float(popt[1] - half[1]) * scale),
                                                float(popt[1] + half[1]) * scale],
                      crosses_d_at=None if at is None else float(at), crosses_d_ci=ci, still_rising=rising,
                      identified=bool(t_half <= 10 * scale and np.isfinite(half).all()))
