"""The typed result of ``superpos run orthogonality`` (read back from results.json with ``read``)."""
from __future__ import annotations

from dataclasses import dataclass

from superpos.experiment.result import Result, Verdict
from superpos.hypotheses.orthogonality.config import OrthogonalityConfig

MAXCOS = "maxcos.npz"  # beside an orthogonality result: each token set's max |cos| values, for the report's histogram


@dataclass(kw_only=True)
class Summary:
    """A distribution's median with its 95% CI, deciles and mean."""

    median: float
    ci: list[float]
    p10: float
    p90: float
    mean: float


@dataclass(kw_only=True)
class TokenSet:
    """Max |cos| of each vector of one set (embedding, centred embedding, random null …) to the others."""

    n: int
    max_abs_cos: Summary
    seconds: float


@dataclass(kw_only=True)
class SeedValues:
    """One quantity measured once per seed: the values, their mean and a 95% t-interval over seeds."""

    values: list[float]
    mean: float
    lo: float
    hi: float


@dataclass(kw_only=True)
class SizeFit:
    """One dictionary size at one layer, over seeds: held-out FVU, L0, dead share, and (on a real store) CE-loss
    recovered and KL when the reconstruction is spliced into the model."""

    expansion: int
    n_atoms: int
    fvu: SeedValues
    l0: SeedValues
    dead: SeedValues
    ce_recovered: SeedValues | None = None
    kl: SeedValues | None = None
    fvu_typical: SeedValues | None = None  # held-out FVU on the typical rows (no attention-sink outliers)


@dataclass(kw_only=True)
class AtomCensus:
    """The largest dictionary's atoms at one layer, per seed: live (fired on held-out rows), seed-stable (the
    Hungarian partner in every other seed has |cos| ≥ the threshold), and how many of the stable ones a greedy
    packing keeps pairwise nearly orthogonal; their interference against random directions of the same count;
    and the summed per-feature dimensionality against d."""

    expansion: int
    n_atoms: int
    live: SeedValues
    stable: SeedValues
    stable_orthogonal: SeedValues  # greedy packing of the stable atoms at |cos| ≤ orth_eps
    matched_cos_hist: list[int]  # Hungarian partners' |cos| (all seed pairs, live atoms), 20 bins over [0, 1]
    interference: SeedValues  # median max |cos| among live atoms
    interference_null: float  # the same for random unit vectors of the mean live count
    dimensionality: SeedValues  # Σ over live atoms of D_i (Elhage et al. 2022)
    dimensionality_null: float  # the same for random unit vectors of the mean live count


@dataclass(kw_only=True)
class StableGrid:
    """Criterion (ii)'s sensitivity: seed-stable atoms per seed at each partner threshold (rows) when an atom must be
    found in at least m of the seeds, itself included (columns: m = 2 … all seeds)."""

    stable_cos: list[float]
    min_seeds: list[int]
    stable: list[list[SeedValues]]  # [threshold][m]
    stable_orthogonal: list[list[SeedValues]]  # the same after the greedy packing at |cos| ≤ orth_eps


@dataclass(kw_only=True)
class BudgetPoint:
    """The largest dictionary's census at one training budget (a nested-budget branch of one run per seed)."""

    tokens: int
    epochs: float  # passes over the store's training rows
    fvu: SeedValues  # held-out FVU
    atoms: AtomCensus  # at the pre-registered stable_cos / stable_seeds
    fvu_typical: SeedValues | None = None  # held-out FVU on the typical rows
    grid: StableGrid
    recovered: SeedValues | None = None  # planted atoms with a live atom at |cos| ≥ RECOVERED_COS (plants only)


@dataclass(kw_only=True)
class Saturation:
    """Stable nearly-orthogonal atoms against training tokens T: S(T) = s_max · T / (T + t_half) by least squares
    on every (budget, seed) count; 95 % t-intervals over per-seed refits (the seeds are the unit that varies: one
    nested run each); the budget at which the count reaches d with its interval (t-interval in log tokens over the
    per-seed crossings; None where S never reaches d, inf as an upper bound when some seed never does)."""

    s_max: float
    s_max_ci: list[float]
    t_half: float
    t_half_ci: list[float]
    crosses_d_at: float | None
    crosses_d_ci: list[float] | None
    still_rising: bool  # the per-seed increase to the last budget has its 95 % t-interval above 0 (paired)
    identified: bool = True  # False: a fit failed or is singular, or t_half lies beyond 10 × the largest budget
    # (the counts still grow about linearly: no level is identified, and the crossing is the line's)
    crosses_observed: bool = False  # every seed's count passes d within the budgets: the crossing is interpolated


@dataclass(kw_only=True)
class BudgetCurve:
    """The budget sweep at one layer: the census at each nested budget, and the saturating fit of the stable
    nearly-orthogonal count."""

    layer: int
    expansion: int
    n_atoms: int
    rows: int  # training rows of the store (an epoch)
    tokens_per_s: float  # training throughput of the sweep's fits (for the extrapolated time)
    points: list[BudgetPoint]
    fit: Saturation | None = None
    planted_atoms: int | None = None  # plants: the live planted atoms, the truth the census can recover


@dataclass(kw_only=True)
class Alignment:
    """Best |cos| of the largest SAE's atoms (first seed) to token embeddings vs covariance-matched random
    directions."""

    expansion: int
    atoms: Summary
    null: Summary
    median_diff: list[float]  # [estimate, lo, hi]
    frac_atoms_above_null_p99: float


@dataclass(kw_only=True)
class LayerSweep:
    """The dictionary sweep at one layer: every size over seeds, the gain from the smallest to the largest, the
    largest dictionary's atom census, PCA at equal L0, and atom–token alignment."""

    layer: int
    rows: int
    holdout_rows: int
    pca_fvu: float
    sizes: list[SizeFit]
    gain: SeedValues  # 1 − FVU(largest) / FVU(smallest), per seed, on every held-out row (criterion (i))
    atoms: AtomCensus
    grid: StableGrid | None = None  # criterion (ii)'s sensitivity (results before it was measured have none)
    alignment: Alignment | None = None
    gain_typical: SeedValues | None = None  # the same gain on the typical held-out rows (attention sinks left out)
    outlier_rows: int = 0  # held-out rows above OUTLIER_NORM × the median norm, left out of gain_typical


@dataclass(kw_only=True)
class LineFit:
    """ln N = intercept + slope · d ε² by least squares over the uncapped points of one set (None with fewer than
    3 points)."""

    slope: float | None
    intercept: float | None
    r2: float | None
    points: int
    dims: int  # distinct d among them


@dataclass(kw_only=True)
class CapacityCurves:
    """Greedy ε-packings of each direction set projected to each d (rows: dims, columns: ε), whether each count is
    capped by its candidates, and the spherical-code references at the same (d, ε)."""

    dims: list[int]
    eps: list[float]
    n_candidates: dict[str, int]
    kept: dict[str, list[list[int]]]
    capped: dict[str, list[list[bool]]]
    lower_bound: list[list[float]]  # random-code existence bound (geometry.random_code_size)
    upper_bound: list[list[float]]  # relative / cap-packing bound (geometry.code_upper_bound)
    kl_rate: list[float]  # Kabatiansky–Levenshtein asymptotic nats per dimension at each ε
    fits: dict[str, LineFit]


@dataclass(kw_only=True)
class OrthogonalityVerdict(Verdict):
    """The orthogonality verdict (``answer``: SUPPORTED, NOT SUPPORTED or NOT SHOWN AT THIS BUDGET; ``supported``
    True, False or None), with its context line and each layer's pass/fail."""

    context: str
    layers_passed: dict[int, bool]
    answer: str = ""


@dataclass(kw_only=True)
class OrthogonalityResult(Result):
    """``run orthogonality``."""

    config: OrthogonalityConfig
    verdict: OrthogonalityVerdict | None = None
    d_model: int
    tied_embeddings: bool
    store: str
    layers: list[LayerSweep]
    tokens: dict[str, TokenSet] | None = None
    tokens_theory_median: float | None = None
    capacity: CapacityCurves | None = None
    budget: list[BudgetCurve] | None = None
