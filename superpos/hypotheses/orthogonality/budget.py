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


def budget_layers(cfg: OrthogonalityConfig, layers: list[int]) -> list[int]:
    """The layers of the budget sweep: ``budget_layers``, or the middle of the sweep's layers."""
    return sorted(set(cfg.budget_layers)) if cfg.budget_layers else [layers[len(layers) // 2]]


def dictionary_folder(folder: Path, cfg: OrthogonalityConfig, seed: int, tokens: int | None = None) -> Path:
    """Where the budget sweep keeps seed ``seed``'s dictionary at ``tokens`` (the run's own folder for the largest
    budget, its nested-budget branch ``tokens_B`` below it otherwise)."""
    run = folder / f"topk_x{max(cfg.expansions)}_seed{seed}"
    return run if tokens is None or tokens == max(cfg.budgets) else run / f"tokens_{tokens}"


def fit_once(store, layer: int, where: Path, cfg: OrthogonalityConfig, params: dict, progress: bool = True) -> dict:
    """The saved config of the TopK SAE in ``where``, fitted there first (with ``params`` and the run's k, batch size
    and precision) if the folder holds none; a folder holding one fitted with other settings is refused
    (ConfigError), never silently reused."""
    from superpos.dictionaries.fitting import fit_dictionary
    from superpos.dictionaries.io import CONFIG
    from superpos.errors import ConfigError

    params = {**params, "k": cfg.k, "batch_size": cfg.batch_size, "precision": cfg.precision}
    if not (where / CONFIG).exists():
        fit_dictionary(store.path, layer, "topk", where, params, device=cfg.device, progress=progress)
    saved = json.loads((where / CONFIG).read_text())

    def same(a, b) -> bool:
        if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
            return sorted(a or []) == sorted(b or [])
        return a == b

    differ = {name: saved["params"].get(name) for name, value in params.items() if not same(saved["params"].get(name),
                                                                                             value)}
    if differ:
        raise ConfigError("out", f"{where} holds a dictionary fitted with other settings "
                                 f"({', '.join(f'{k} {v}' for k, v in differ.items())}): give another {{field}}, "
                                 "or the same settings")
    return saved


def budget_sweep(store, layer: int, folder: Path, cfg: OrthogonalityConfig,
                 truth: np.ndarray | None = None) -> BudgetCurve:
    """Fit (or reuse) one nested-budget TopK run per seed on the first 90 % of contexts and take the census at every
    budget on the held-out rest; ``truth`` (a plant's atoms) adds how many of them each budget recovers."""
    from superpos.dictionaries import load_dictionary
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
        saved = fit_once(store, layer, where, cfg, {"expansion": float(expansion), "n_tokens": budgets[-1],
                                                    "seed": seed, "save_at": budgets[:-1], "lr": cfg.budget_lr},
                         progress=False)
        meta = saved["meta"]
        seconds += float(meta.get("train_seconds", 0.0))
        trained += budgets[-1]
        say(f"layer {layer}, seed {seed}: {budgets[-1]:,} tokens with branches at "
            f"{', '.join(f'{b:,}' for b in budgets[:-1]) or 'none'}")
    points, n_atoms = [], 0
    for tokens in budgets:
        t0 = time.perf_counter()
        atoms, fvus, typical = [], [], []
        for seed in seeds:
            D = load_dictionary(dictionary_folder(folder, cfg, seed, tokens), device=cfg.device)
            n_atoms = D.n_components_
            ev = reconstruction_metrics(D, holdout, layer, progress=False)
            fvus.append(ev.fvu)
            typical.append(ev.fvu_typical)
            atoms.append(D.components_.detach().cpu().numpy()[live_atoms(D, holdout, layer)])
        census, grid = atom_census(atoms, expansion, n_atoms, store.d_model, cfg)
        points.append(BudgetPoint(tokens=tokens, epochs=tokens / max(1, train_rows), fvu=seed_values(fvus),
                                  fvu_typical=None if None in typical else seed_values(typical),
                                  atoms=census, grid=grid,
                                  recovered=None if truth is None else recovered(truth, atoms)))
        say(f"layer {layer}, {tokens:,} tokens: stable nearly orthogonal atoms "
            f"{', '.join(str(int(v)) for v in census.stable_orthogonal.values)} (d = {store.d_model}); "
            f"{time.perf_counter() - t0:.0f} s")
    curve = BudgetCurve(layer=layer, expansion=expansion, n_atoms=n_atoms, rows=train_rows,
                        tokens_per_s=trained / seconds if seconds else 0.0, points=points,
                        planted_atoms=None if truth is None else len(truth))
    curve.fit = saturation(curve, store.d_model)
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


def _fit_curve(T: np.ndarray, S: np.ndarray):
    """Least squares S = s_max·T/(T + t_half) on T in units of its largest value: (popt, pcov), or None."""
    from scipy.optimize import curve_fit

    try:
        popt, pcov = curve_fit(lambda t, a, b: a * t / (t + b), T, S, p0=[2 * max(S.max(), 1), 0.5],
                               bounds=([0, 1e-6], [np.inf, 1e6]), maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    return popt, pcov


def saturation(curve: BudgetCurve, d: int) -> Saturation | None:
    """S(T) = s_max · T / (T + t_half) through the stable nearly orthogonal counts; None with fewer than three
    budgets (two parameters need a third point to be tested).

    The budgets of one seed are one nested run, so seeds are the unit that varies: "still rising" is a paired
    test — the per-seed increase from the second-to-last to the last budget, its 95 % t-interval above 0 — and
    s_max's and t_half's intervals are t-intervals over per-seed refits, their point estimates the fit through every
    (budget, seed) count. The crossing of d is taken per seed (``crossing``: observed where the seed's counts pass
    d, its own fit's extrapolation otherwise), and given as the geometric mean with a t-interval in log tokens over
    seeds; where some seed never reaches d, the pooled fit's crossing with no upper bound. ``identified`` is False where any fit fails or is singular, or the half-way point
    lies beyond ten times the largest budget (the counts still grow about linearly)."""
    from superpos.stats import t_interval

    pts = curve.points
    if len(pts) < 3:
        return None
    by_seed = np.array([p.atoms.stable_orthogonal.values for p in pts], float)  # (budgets, seeds)
    budgets = np.array([p.tokens for p in pts], float)
    scale = budgets.max()
    step = by_seed[-1] - by_seed[-2]
    rising = bool(t_interval(step)[1] > 0) if len(step) > 1 and np.ptp(step) > 0 else bool(step.min() > 0)
    if by_seed.max() <= 0:
        return Saturation(s_max=0.0, s_max_ci=[0.0, 0.0], t_half=0.0, t_half_ci=[0.0, 0.0], crosses_d_at=None,
                          crosses_d_ci=None, still_rising=False, identified=False)
    pooled = _fit_curve(np.repeat(budgets / scale, by_seed.shape[1]), by_seed.reshape(-1))
    if pooled is None:
        return None
    popt, pcov = pooled
    per_seed = [_fit_curve(budgets / scale, by_seed[:, j]) for j in range(by_seed.shape[1])]
    finite = np.isfinite(pcov).all() and all(f is not None and np.isfinite(f[1]).all() for f in per_seed)
    s_seeds = [f[0][0] if f is not None else np.inf for f in per_seed]
    t_seeds = [f[0][1] * scale if f is not None else np.inf for f in per_seed]
    s_max, t_half = float(popt[0]), float(popt[1] * scale)
    identified = bool(finite and popt[1] <= 10 and max(t_seeds) <= 10 * scale)
    _, s_lo, s_hi = t_interval(s_seeds) if len(s_seeds) > 1 and np.isfinite(s_seeds).all() else (0, 0.0, np.inf)
    _, t_lo, t_hi = t_interval(t_seeds) if len(t_seeds) > 1 and np.isfinite(t_seeds).all() else (0, 0.0, np.inf)
    cross = np.array([crossing(budgets, by_seed[:, j], per_seed[j], scale, d) for j in range(by_seed.shape[1])])
    observed = bool((by_seed.max(0) > d).all())
    at, ci = None, None
    if np.isfinite(cross).all():  # a geometric mean and a t-interval in log tokens (crossings are positive)
        log_at, lo, hi = t_interval(np.log(cross)) if len(cross) > 1 and np.ptp(cross) > 0 else (
            (np.log(cross[0]),) * 3)
        at, ci = float(np.exp(log_at)), [float(np.exp(lo)), float(np.exp(hi))]
    elif s_max > d:  # some seed never reaches d: the pooled fit's crossing, with no finite upper bound
        at = t_half * d / (s_max - d)
        ci = [float(cross[np.isfinite(cross)].min()) if np.isfinite(cross).any() else at, float("inf")]
    return Saturation(s_max=s_max, s_max_ci=[max(0.0, float(s_lo)), float(s_hi)], t_half=t_half,
                      t_half_ci=[max(0.0, float(t_lo)), float(t_hi)], crosses_d_at=None if at is None else float(at),
                      crosses_d_ci=ci, still_rising=rising, identified=identified,
                      crosses_observed=observed)


def crossing(budgets: np.ndarray, counts: np.ndarray, fit, scale: float, d: int) -> float:
    """One seed's budget at which its count reaches d: where it is observed, interpolated linearly in log tokens
    between the last budget below d and the first above (the first budget itself when that is already above);
    otherwise its own saturating fit's t_half·d/(s_max − d); inf where that fit never reaches d (or failed)."""
    above = np.flatnonzero(counts > d)
    if len(above):
        i = above[0]
        if i == 0:
            return float(budgets[0])
        w = (d - counts[i - 1]) / (counts[i] - counts[i - 1])
        return float(np.exp(np.log(budgets[i - 1]) + w * (np.log(budgets[i]) - np.log(budgets[i - 1]))))
    if fit is None or not fit[0][0] > d:
        return float("inf")
    return float(fit[0][1] * scale * d / (fit[0][0] - d))
