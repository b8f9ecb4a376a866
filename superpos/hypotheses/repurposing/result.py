"""The typed result of ``superpos run repurposing`` (read back from results.json with ``read``)."""
from __future__ import annotations

from dataclasses import dataclass

from superpos.experiment.result import Result, Verdict
from superpos.hypotheses.lenses.result import LensComparison
from superpos.hypotheses.repurposing.config import RepurposingConfig
from superpos.stats import Band, Interval


@dataclass(kw_only=True)
class GroupSizes:
    """Tokens per position in each group (near-impossible, likely) and the vocabulary size."""

    near_impossible_mean: float
    likely_mean: float
    vocab: int


@dataclass(kw_only=True)
class ScanView:
    """What criterion (i) scans (runs before it existed: None, i.e. raw W_U rows, nothing projected out, only the
    context tokens themselves left out of the near-impossible groups)."""

    basis: str  # "output" (γ ⊙ W_U) or "unembedding" (raw W_U)
    shared_removed: bool  # the shared direction (unit mean row) projected out of token and random directions
    shared_row_cos: float  # mean cos of the unit rows with the shared direction, before it was projected out
    shared_top_cos: float  # |cos| of the shared direction with the rows' top uncentred singular vector
    context_cos: float  # near-duplicates of a context token (|cos| ≥ this) left out of the near-impossible groups
    near_context_mean: float  # tokens per position that this took out


@dataclass(kw_only=True)
class RareDirectionView:
    """Criterion (i) at the chosen layer on the held-out positions with the rare-token direction (the unit mean of
    the scanned directions of tokens near-impossible at ≥ ``config.RARE_MIN_MEMBER`` of the selection positions)
    projected out of every token and random direction (``token_stats.rare_direction``)."""

    layer: int
    n_tokens: int  # rare tokens the direction is the mean of
    positions: int
    excess: Interval  # token excess over the Gaussian null, with the direction projected out
    effect: Interval  # that beyond random directions
    detected: bool  # both CIs above 0
    # the power curve in these directions, run when this reading decides the verdict (``verdict.rare_decides``);
    # None otherwise and for runs before it existed
    power: PowerView | None = None


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
    rate_vs_clean: list[float] | None = None  # the same draws read against the unplanted residuals (runs before: None)
    min_detectable_vs_clean: float | None = None


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
    shared_removed: bool | None = None  # token sets without the shared direction of all rows (runs before: None)
    context_cos: float | None = None  # near-duplicates of context tokens left out as in (i) (runs before: None)


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
    # criterion (i) against the unhooked model at the same positions: each half's excess over the Gaussian minus the
    # unhooked model's (``power.criterion_i`` with a baseline; runs before: None)
    excess_vs_unhooked: Interval | None = None
    effect_vs_unhooked: Interval | None = None
    detected_vs_unhooked: bool | None = None


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
    rare_effect: list[float] | None = None  # (i)'s effect with the rare-token direction projected out, [mean, lo, hi]


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
    scan: ScanView | None = None
    rare: RareDirectionView | None = None
    selection_contexts: int = 0  # contexts that chose the layer (``curves`` are then on the others)
    selection_curves: dict[str, Band] | None = None  # effect and token excess on those contexts
    power: PowerView | None = None
    ablation: AblationView | None = None
    mechanisms: MechanismsView | None = None
    writes: WritesView | None = None
