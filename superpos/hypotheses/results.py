"""Every experiment's typed result, in one light module (no torch), beside ``configs.py``.

A result holds the experiment's config, the model, the numbers its verdict and report are made from, and the
verdict itself. ``Result.save`` writes results.json; ``XResult.read(folder)`` reads one back, typed. Field names
are the results.json keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from superpos.experiment.result import Result, Verdict
from superpos.stats import Band, Interval
from superpos.hypotheses.configs import LensesConfig, OrthogonalityConfig, RepurposingConfig


# ------------------------------------------------------------------ lenses (also part of repurposing)
@dataclass(kw_only=True)
class LensScores:
    """One lens, per layer on held-out positions: KL to the final output, top-1 agreement, CE on the next token."""

    kl: Band
    top1: Band
    ce: Band


@dataclass(kw_only=True)
class LensComparison:
    """Logit lens vs tuned lens (``lenses.compare_lenses``); CIs over held-out contexts."""

    held_out_positions: int
    train_positions: int
    history: list[float]  # tuned-lens training loss per step (empty when a saved lens was given)
    logit_lens: LensScores = field(metadata={"json": "logit lens"})
    tuned_lens: LensScores = field(metadata={"json": "tuned lens"})
    training: dict = field(default_factory=dict)  # the tuned lens's meta: steps run, held-out KL, whether it converged


@dataclass(kw_only=True)
class LensesResult(Result):
    """``run lenses``."""

    config: LensesConfig
    n_positions: int
    n_contexts: int
    layers: list[int]
    lenses: LensComparison
    summary: list[str]


# ------------------------------------------------------------------ orthogonality
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
    gain: SeedValues  # 1 − FVU(largest) / FVU(smallest), per seed
    atoms: AtomCensus
    alignment: Alignment | None = None


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
    """The orthogonality verdict, with its context line and each layer's pass/fail."""

    context: str
    layers_passed: dict[int, bool]


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



# ------------------------------------------------------------------ repurposing
@dataclass(kw_only=True)
class GroupSizes:
    """Tokens per position in each group (near-impossible, likely) and the vocabulary size."""

    near_impossible_mean: float
    likely_mean: float
    vocab: int


@dataclass(kw_only=True)
class PairedTokens:
    """Per layer: the mean z of the same tokens where near-impossible vs where likely."""

    n_tokens: list[int]
    unlikely: list[Interval]
    likely: list[Interval]


@dataclass(kw_only=True)
class DictionaryView:
    """Shares of active token-aligned atoms whose token is near-impossible / likely here vs in another context."""

    layer: int
    n_atoms: int
    token_aligned_atoms: int
    min_cos: float
    positions_with_active_aligned: int
    mean_active_aligned: float
    near_impossible: Band | None = None
    near_impossible_shuffled: Band | None = None
    likely: Band | None = None
    likely_shuffled: Band | None = None
    near_impossible_minus_shuffled: Band | None = None


@dataclass(kw_only=True)
class PowerView:
    """Detection rate of criterion (i) against a planted push toward each position's own near-impossible token
    (``power.power_curve``), on the held-out contexts at the chosen layer."""

    layer: int
    alphas: list[float]
    rate: list[float]
    draws: int
    power: float
    min_detectable: float | None  # the smallest planted size detected at ``power`` (None: none of those run reach it)
    positions: int


@dataclass(kw_only=True)
class AblationView:
    """Loss change of projecting rank-``rank`` subspaces out at ``layer`` (``ablation.subspace_ablation``), per
    subspace, with CIs over contexts; ``top_minus`` pairs the near-impossible-top change with each other's."""

    layer: int
    rank: int
    basis: str
    n_contexts: int
    clean_nll: float
    delta: dict[str, Interval]
    top_minus: dict[str, Interval]
    skipped_positions: int = 0  # with fewer than ``rank`` near-impossible tokens: left alone by every subspace


@dataclass(kw_only=True)
class MechanismRow:
    """Criterion (i) at ``MechanismsView.layer`` on the model hooked with one control at one size, and the
    consistent-channel scan there (``mechanisms.detect``)."""

    control: str
    alpha: float
    detected: bool  # by criterion (i)
    excess: Interval
    effect: Interval
    channel: Interval | None = None  # channel excess minus the unhooked model's, on the contexts that did not choose
    channel_detected: bool | None = None  # its CI above 0


@dataclass(kw_only=True)
class MechanismsView:
    """Every planted control (``mechanisms.CONTROLS``) at several sizes, read by the verdict's criterion (i) at the
    chosen layer (or the control's write layer when the chosen one lies outside the span it writes)."""

    layer: int
    n_contexts: int
    rows: list[MechanismRow]


@dataclass(kw_only=True)
class WritesView:
    """Writes of every block's attention and MLP along the favoured near-impossible token t* minus along the same
    argmax over random directions q* (``writes.write_profile``; shares of ‖r_L − μ‖, CIs over contexts), and their
    sums before and after the layer L they were selected at."""

    layer: int
    n_contexts: int
    attn: Band  # per block
    mlp: Band
    before: Interval  # blocks 0 .. L-1 (they make residual layers 1 .. L)
    after: Interval  # blocks L .. n-1
    before_token: Interval  # the same sums along t* alone, and along q* alone, for scale
    after_token: Interval
    before_random: Interval
    after_random: Interval
    # against u, a random near-impossible token of the same position (runs before it existed: None)
    attn_vs_near_impossible: Band | None = None  # per block, t* minus u
    mlp_vs_near_impossible: Band | None = None
    before_vs_near_impossible: Interval | None = None
    after_vs_near_impossible: Interval | None = None
    before_near_impossible: Interval | None = None  # along u alone
    after_near_impossible: Interval | None = None


@dataclass(kw_only=True)
class RepurposingVerdict(Verdict):
    """The repurposing verdict and the numbers it rests on (at the peak mid-stack layer)."""

    present: bool
    removed: bool
    peak_layer: int
    peak: list[float]  # effect [mean, lo, hi]
    raw_z: float
    final_z: float
    drop: list[float]  # [mean, lo, hi]
    held_out: bool = False  # layer chosen on one half of the contexts, tested on the other
    min_detectable: float | None = None  # from the power curve, when one was run
    drop_vs_null: list[float] | None = None  # (ii)'s drop minus the random-direction argmax's, [mean, lo, hi]
    channel_layer: int | None = None  # (iii) consistent channels: the layer read, chosen on the selection contexts
    channel: list[float] | None = None  # (iii): the channel excess there (tokens minus random directions), [mean, lo, hi]


@dataclass(kw_only=True)
class RepurposingResult(Result):
    """``run repurposing``. ``curves`` are per off-output layer (``off_layers``) except ``lens_hits*`` (per
    ``layers``)."""

    config: RepurposingConfig
    verdict: RepurposingVerdict | None = None
    n_layers: int
    d_model: int
    n_positions: int
    n_contexts: int
    control_layers: list[int]
    lenses: LensComparison
    group_sizes: GroupSizes
    layers: list[int]
    off_layers: list[int]
    curves: dict[str, Band]
    null_peak_sd: list[float]
    paired_tokens: PairedTokens
    dictionary: DictionaryView | None = None
    selection_contexts: int = 0  # contexts that chose the layer (``curves`` are then on the others)
    selection_curves: dict[str, Band] | None = None  # effect and token excess on those contexts
    power: PowerView | None = None
    ablation: AblationView | None = None
    mechanisms: MechanismsView | None = None
    writes: WritesView | None = None


# the seed experiments' results, re-exported
from superpos.hypotheses.seed_results import (  # noqa: E402,F401
    ProbeTarget, ProcrustesTest, ProbeGeometry, GuessTest, FullVocab, ProbesVerdict, ProbesResult,
    LookaheadTarget, LookaheadResult, PowerLaw, SinkDonation, DonationResult, AlphaEffect, Premise,
    CachedCheck, ReinjectSample, ReinjectVerdict, ReinjectResult)
