"""Confidence intervals, in one place: ``cluster_bootstrap_mean`` for per-position statistics (resampling whole
contexts: positions in one context are correlated, so resampling positions would give intervals that are too
narrow), ``cluster_t_interval`` (the cluster-robust standard error with Student-t quantiles, honest with few
contexts, where the percentile bootstrap is too narrow), ``bootstrap_ci`` for any statistic of independent samples
(scipy.stats.bootstrap), and ``min_detectable``, the smallest effect a run detects from its own interval."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: fewer clusters than this (contexts) and a percentile cluster bootstrap's interval is too narrow to judge by
MIN_CLUSTERS = 20


@dataclass
class Interval:
    """A point estimate with its 95% confidence interval."""

    mean: float
    lo: float
    hi: float


@dataclass
class Band:
    """Per-layer (or per-item) estimates with their 95% confidence intervals, index-aligned."""

    mean: list[float]
    lo: list[float]
    hi: list[float]

    def at(self, i: int) -> Interval:
        """The interval at index ``i``."""
        return Interval(self.mean[i], self.lo[i], self.hi[i])

    @classmethod
    def of(cls, intervals) -> "Band":
        """The band made of a sequence of intervals."""
        intervals = list(intervals)
        return cls([i.mean for i in intervals], [i.lo for i in intervals], [i.hi for i in intervals])


def _cluster_sums(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, inv = np.unique(groups, return_inverse=True)
    v = np.asarray(values, dtype=np.float64)
    sums = np.zeros((inv.max() + 1,) + v.shape[1:])
    np.add.at(sums, inv, v)
    return sums, np.bincount(inv).astype(np.float64)


def cluster_bootstrap_mean(values, groups, n_boot: int = 1000, level: float = 0.95, seed: int = 0):
    """(mean, lower, upper) of ``values`` (P,) or (P, K) with a percentile bootstrap over ``groups``.

    With (P, K) values the three results are arrays of length K, all from the same resamples.
    """
    sums, counts = _cluster_sums(values, groups)
    n = len(counts)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    w = np.zeros((n_boot, n))
    np.add.at(w, (np.arange(n_boot)[:, None], idx), 1.0)  # how often each cluster was drawn
    boots = (w @ sums.reshape(n, -1)) / (w @ counts)[:, None]
    a = (1 - level) / 2
    mean = sums.reshape(n, -1).sum(0) / counts.sum()
    lo, hi = np.quantile(boots, a, axis=0), np.quantile(boots, 1 - a, axis=0)
    if np.ndim(values) == 1:
        return float(mean[0]), float(lo[0]), float(hi[0])
    return mean, lo, hi


def cluster_band(values_PK, groups, n_boot: int = 1000, seed: int = 0) -> Band:
    """``cluster_bootstrap_mean`` of (P, K) values as a typed per-column ``Band``."""
    m, lo, hi = cluster_bootstrap_mean(values_PK, groups, n_boot=n_boot, seed=seed)
    return Band(np.atleast_1d(m).tolist(), np.atleast_1d(lo).tolist(), np.atleast_1d(hi).tolist())


def cluster_interval(values_P, groups, n_boot: int = 1000, seed: int = 0, t_floor: bool = False) -> Interval:
    """``cluster_bootstrap_mean`` of (P,) values as a typed ``Interval`` (NaNs when there are none); with
    ``t_floor`` never narrower than ``cluster_t_interval`` (each end the further of the two), which matters with few
    clusters: a percentile bootstrap over G clusters is about t(G−1)/z · √(G/(G−1)) too narrow (17 % at G = 12)."""
    if len(values_P) == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    iv = Interval(*cluster_bootstrap_mean(values_P, groups, n_boot=n_boot, seed=seed))
    if not t_floor:
        return iv
    t = cluster_t_interval(values_P, groups)
    return Interval(iv.mean, min(iv.lo, t.lo), max(iv.hi, t.hi))


def cluster_t_interval(values_P, groups, level: float = 0.95) -> Interval:
    """The mean of (P,) ``values`` (all positions weighted alike) with a cluster-robust interval: the ratio
    estimator's standard error from per-cluster residual sums, √(G/(G−1) · Σ_g (S_g − m·n_g)²) / Σ n_g, and Student-t
    quantiles with G − 1 degrees of freedom. With one cluster (or none) the interval is infinite (or NaN)."""
    from scipy import stats

    if len(values_P) == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    sums, counts = _cluster_sums(values_P, groups)
    g, n = len(counts), counts.sum()
    m = float(sums.sum() / n)
    if g < 2:
        return Interval(m, float("-inf"), float("inf"))
    se = float(np.sqrt(g / (g - 1) * ((sums - m * counts) ** 2).sum()) / n)
    half = float(stats.t.ppf((1 + level) / 2, g - 1)) * se
    return Interval(m, m - half, m + half)


def bootstrap_ci(stat, *samples, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(stat(*samples), lower, upper): a percentile bootstrap with each sample resampled independently
    (``scipy.stats.bootstrap``), e.g. ``bootstrap_ci(np.median, a)`` or the difference of two medians."""
    from scipy.stats import bootstrap

    samples = tuple(np.asarray(s) for s in samples)
    res = bootstrap(samples, stat, n_resamples=n_boot, confidence_level=level, method="percentile", paired=False,
                    vectorized=False, rng=np.random.default_rng(seed))
    return float(stat(*samples)), float(res.confidence_interval.low), float(res.confidence_interval.high)


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of a few independent replicates (seeds) and its Student-t interval (scipy); with one value the
    interval is the value itself."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if len(v) < 2 or np.ptp(v) == 0:
        return m, m, m
    lo, hi = stats.ttest_1samp(v, m).confidence_interval(level)
    return m, float(lo), float(hi)


def welch_difference(a, b, level: float = 0.95) -> tuple[float, float, float]:
    """Difference of means of two independent groups of replicates with its Welch t-interval (scipy)."""
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = float(a.mean() - b.mean())
    if min(len(a), len(b)) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return diff, diff, diff
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(level)
    return diff, float(ci.low), float(ci.high)


def per_context_difference(values, ctx, a_mask, b_mask) -> tuple[np.ndarray, np.ndarray]:
    """Per context that has both: the mean of ``values`` where ``a_mask`` minus the mean where ``b_mask`` (NaN
    values ignored); and those contexts' ids. The paired unit for a difference between two groups of positions."""
    ids = np.unique(ctx)
    va = np.array([np.nanmean(values[a_mask & (ctx == c)]) if (a_mask & (ctx == c)).any() else np.nan for c in ids])
    vb = np.array([np.nanmean(values[b_mask & (ctx == c)]) if (b_mask & (ctx == c)).any() else np.nan for c in ids])
    ok = ~np.isnan(va) & ~np.isnan(vb)
    return va[ok] - vb[ok], ids[ok]


def min_detectable(iv: Interval, z_alpha=1.96, z_power=0.84) -> float:
    """The smallest true effect a run detects with 80 % power (a two-sided 5 % test), from its own 95 % interval:
    (z_alpha + z_power) standard errors, the standard error read off the interval's half-width (``z_alpha`` of
    them)."""
    return (z_alpha + z_power) * (iv.hi - iv.lo) / (2 * z_alpha)
