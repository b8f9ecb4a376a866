"""The atom census of one dictionary size over seeds: live atoms, seed-stable ones, how many of those stay pairwise
nearly orthogonal, and how those counts move with the stability rule (criterion (ii)'s sensitivity)."""
from __future__ import annotations

import sys

import numpy as np

from superpos import geometry as g
from superpos.hypotheses.orthogonality.config import OrthogonalityConfig
from superpos.hypotheses.orthogonality.result import AtomCensus, SeedValues, StableGrid
from superpos.stats import t_interval

STABLE_GRID = (0.6, 0.7, 0.8)  # partner thresholds of the sensitivity table (the pre-registered one is added)
RECOVERED_COS = 0.9  # a planted atom is recovered by a live atom this close to it


def say(msg: str) -> None:
    """A progress line of the orthogonality run (stderr)."""
    print(f"[orthogonality] {msg}", file=sys.stderr, flush=True)


def seed_values(values) -> SeedValues:
    """One quantity per seed: the values, their mean and a 95% t-interval over seeds."""
    mean, lo, hi = t_interval(values)
    return SeedValues(values=[float(v) for v in values], mean=mean, lo=lo, hi=hi)


def live_atoms(dictionary, store, layer: int) -> np.ndarray:
    """Boolean mask of the atoms that fire at least once on ``store``'s rows of ``layer``."""
    import torch

    fired = torch.zeros(dictionary.n_components_, dtype=torch.bool)
    with torch.no_grad():
        for _, x in store.iter_rows(layer, 4096):
            fired |= (dictionary.encode(torch.from_numpy(x).to(dictionary.device_)) != 0).any(0).cpu()
    return fired.numpy()


def atom_census(atoms_by_seed: list[np.ndarray], expansion: int, n_atoms: int, d: int,
                cfg: OrthogonalityConfig) -> tuple[AtomCensus, StableGrid]:
    """Live atoms per seed; seed-stable ones (the Hungarian partner has |cos| ≥ ``stable_cos`` in enough other seeds
    that the atom is found in ``stable_seeds`` seeds, itself included); a greedy packing of the stable ones at
    |cos| ≤ ``orth_eps``; interference (median max |cos| of live atoms) and Σ feature dimensionality against random
    unit vectors of the mean live count. The grid repeats the stable and packed counts at every threshold of
    ``STABLE_GRID`` and every number of seeds from 2 to all. Each seed pair is matched once."""
    n_seeds = len(atoms_by_seed)
    cosines = sorted(set(STABLE_GRID) | {cfg.stable_cos})
    found = {t: [np.zeros(len(a), int) for a in atoms_by_seed] for t in cosines}  # other seeds agreeing
    matched = []
    for i in range(n_seeds):
        for j in range(i + 1, n_seeds):
            m = g.match_dictionaries(atoms_by_seed[i], atoms_by_seed[j])
            matched.append(m.abs_cos)
            for side, index in ((i, m.rows), (j, m.cols)):
                for t in cosines:  # an atom left unmatched (more atoms than its partner) does not agree
                    ok = np.zeros(len(atoms_by_seed[side]), bool)
                    ok[index] = m.abs_cos >= t
                    found[t][side] += ok

    def counts(t: float, m: int) -> tuple[list[int], list[int]]:
        stable = [f >= m - 1 for f in found[t]]
        packed = [int(g.greedy_packing(a[s], [cfg.orth_eps], seed=cfg.seed).kept[0]) if s.sum() >= 2
                  else int(s.sum()) for a, s in zip(atoms_by_seed, stable)]
        return [int(s.sum()) for s in stable], packed

    grid_m = list(range(2, n_seeds + 1))
    table = {(t, m): counts(t, m) for t in cosines for m in grid_m}
    pre = (cfg.stable_cos, min(cfg.stable_seeds, n_seeds))
    stable, packed = table[pre] if pre in table else counts(*pre)
    grid = StableGrid(stable_cos=cosines, min_seeds=grid_m,
                      stable=[[seed_values(table[t, m][0]) for m in grid_m] for t in cosines],
                      stable_orthogonal=[[seed_values(table[t, m][1]) for m in grid_m] for t in cosines])
    n_null = max(2, round(np.mean([len(a) for a in atoms_by_seed])))
    null = g.gaussian_null(n_null, d, seed=cfg.seed + 7)
    hist = np.histogram(np.concatenate(matched), bins=20, range=(0, 1))[0] if matched else np.zeros(20, int)
    census = AtomCensus(expansion=expansion, n_atoms=n_atoms, live=seed_values([len(a) for a in atoms_by_seed]),
                        stable=seed_values(stable), stable_orthogonal=seed_values(packed),
                        matched_cos_hist=hist.tolist(),
                        interference=seed_values([float(np.median(g.max_abs_cos(a).value)) for a in atoms_by_seed]),
                        interference_null=float(np.median(g.max_abs_cos(null).value)),
                        dimensionality=seed_values([float(g.feature_dimensionality(a).sum()) for a in atoms_by_seed]),
                        dimensionality_null=float(g.feature_dimensionality(g.unit_rows(null)).sum()))
    return census, grid


def recovered(truth: np.ndarray, atoms_by_seed: list[np.ndarray]) -> SeedValues:
    """Per seed, how many planted atoms (rows of ``truth``) have a live atom with |cos| ≥ ``RECOVERED_COS``."""
    return seed_values([int((g.best_abs_cos(truth, a) >= RECOVERED_COS).sum()) if len(a) else 0
                        for a in atoms_by_seed])
