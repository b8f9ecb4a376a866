"""The seed experiments' typed results (probes, lookahead, gradient donation, re-injection); re-exported by
``results.py``, where the hypotheses' results live."""
from __future__ import annotations

from dataclasses import dataclass

from superpos.experiment.result import Result, Verdict
from superpos.stats import Band, Interval
from superpos.hypotheses.configs import DonationConfig, LookaheadConfig, ProbeConfig, ReinjectConfig


# ------------------------------------------------------------------ probes and lookahead
@dataclass(kw_only=True)
class ProbeTarget:
    """Held-out accuracy per layer of probes for the token at position + ``offset``."""

    offset: int
    n_classes: int
    coverage: float  # share of held-out positions whose target is one of the probed classes
    layers: list[int]
    acc: Band
    majority: float
    pooled_acc: Band | None = None  # one probe trained on all layers together


@dataclass(kw_only=True)
class ProcrustesTest:
    """Class means vs embedding rows of the same tokens: the best rotation's residual against shuffled pairings."""

    residual: float
    null_mean: float
    null_p05: float
    p_value: float
    shuffles: int


@dataclass(kw_only=True)
class ProbeGeometry:
    """Probe-free geometry (``probe_geometry``): class means against the embedding, calibrated at layer 0 (where
    the residual is the embedding) and against a random basis."""

    layers: list[int]
    classes: int  # tokens with a class mean
    tail_components: int  # PCA components holding the embedding's last 50 % of variance
    random_share: float  # what a random basis of that dimension holds: tail_components / d
    tail: Band  # per layer: share of class-mean energy on those components (CIs over contexts)
    tail_vs_layer0: Band  # per layer: minus layer 0's, the same resamples
    embedding: dict[str, list[float]]  # basis -> the embedding rows' own energy profile
    profiles: dict[str, list[list[float]]]  # basis -> per layer, the class means' energy profile
    procrustes: dict[int, ProcrustesTest]  # layer -> test


@dataclass(kw_only=True)
class GuessTest:
    """Is the input token held via the model's guess for it (made at the position before)?"""

    guess_accuracy: Interval  # share of positions whose input the model had guessed (top-1)
    right_minus_wrong: Band  # per layer: probe accuracy where the guess was right minus where it was wrong
    vs_layer0: Band  # per layer: that gap minus layer 0's, paired by context
    errors_to_guess: list[float]  # per layer: share of wrong read-outs (guess wrong) that name the guess


@dataclass(kw_only=True)
class FullVocab:
    """The nearest-token-representation read-out over every token seen in training (no fitting)."""

    tokens: int
    coverage: float  # share of test positions whose token was seen in training
    acc: Band


@dataclass(kw_only=True)
class ProbesVerdict(Verdict):
    """The probes verdict's three answers."""

    decodable_mid: float
    off_to_the_side: bool
    via_guess: bool


@dataclass(kw_only=True)
class ProbesResult(Result):
    """``run probes``."""

    config: ProbeConfig
    verdict: ProbesVerdict | None = None
    n_positions: int
    layers: list[int]
    targets: dict[str, ProbeTarget]  # "current token", "previous token", ...
    nearest_embedding_acc: list[float]
    geometry: ProbeGeometry
    guess: GuessTest
    vocabulary: FullVocab


@dataclass(kw_only=True)
class LookaheadTarget(ProbeTarget):
    """Probes for token i + k against baselines that see the context (test contexts; choices on validation)."""

    ngram: dict[int, Interval]  # n -> accuracy of the back-off n-gram over the tokens up to i
    ngram_order: int  # the n chosen on validation
    model_guess: Interval  # a probe on the model's own next-token log-probabilities at i
    best_layer: int  # chosen on validation
    best_layer_acc: Interval
    gain_over_ngram: Interval  # the chosen layer's probe minus the chosen n-gram, paired per position
    gain_over_guess: Interval  # ... minus the probe on the model's own next-token distribution

    @property
    def gain(self) -> Interval:
        """The smaller of the two gains (by its lower bound): lookahead must beat both baselines."""
        return min(self.gain_over_ngram, self.gain_over_guess, key=lambda g: g.lo)


@dataclass(kw_only=True)
class LookaheadResult(Result):
    """``run lookahead``."""

    config: LookaheadConfig
    layers: list[int]
    n_positions: int
    offsets: dict[str, LookaheadTarget]  # "+1", "+2", ...


# ------------------------------------------------------------------ donation and re-injection
@dataclass(kw_only=True)
class PowerLaw:
    """y ≈ prefactor · x^exponent, fitted on log–log medians; the exponent's interval resamples contexts."""

    exponent: Interval
    prefactor: float


@dataclass(kw_only=True)
class SinkDonation:
    """Position 0 (the attention sink), reported apart: its share from later losses and its later/own ratio at the
    longest N (medians over layers per context; median over contexts with a bootstrap CI)."""

    share: Interval
    ratio: Interval


@dataclass(kw_only=True)
class DonationResult(Result):
    """``run donation``. Every statistic leaves position 0 (the sink) out; ``sink`` reports it."""

    config: DonationConfig
    layers: list[int]
    lengths: list[int]
    share: dict[int, Band]  # context length -> per-layer mean share from later losses (CIs over contexts)
    share_median: dict[int, Interval]  # context length -> median over contexts of the per-context median share
    later_count: list[float]  # k = number of later losses, for positions 1 .. N-3 at the longest N
    ratio_by_later: Band  # per k: median over contexts (and layers) of ‖later‖ / ‖own‖
    ratio_fit: PowerLaw  # ratio ≈ c · k^b
    mean_ratio: Interval  # mean over positions and layers of ‖later‖ / ‖own‖ (against (N−2)/2 for the linear picture)
    distance: list[int]  # j − i
    decay: Band  # per distance: median ‖∂loss_{i+δ}/∂kv_i‖ / ‖∂loss_i/∂kv_i‖
    decay_fit: PowerLaw
    sink: SinkDonation


@dataclass(kw_only=True)
class AlphaEffect:
    """Δ loss on the following token at one re-injection setting: overall, per surprisal bin, top − bottom."""

    overall: Interval
    bins: list[Interval]
    top_minus_bottom: Interval


@dataclass(kw_only=True)
class Premise:
    """Is the input token still decodable late, by how surprising it was? (nearest token representation)"""

    layers: list[int]
    coverage: float  # share of evaluation positions whose token has a representation (min_count)
    decodable: dict[int, Band]  # layer -> decodability per surprisal fifth (CIs over contexts)
    gap: Band  # per layer: most- minus least-surprising fifth, paired by context
    late_minus_early: Interval  # the gap at the re-injection layers minus the gap at layer 1, paired by context


@dataclass(kw_only=True)
class CachedCheck:
    """The interpolation fed one token at a time with a KV cache (the sampler's loop) against whole windows."""

    contexts: int
    tokens: int
    max_abs_diff: float  # per-position loss, cached loop vs teacher-forced, same intervention
    delta: float  # mean Δ loss of the chosen setting in the cached loop


@dataclass(kw_only=True)
class ReinjectSample:
    """A greedy continuation of a real prompt, clean and with the chosen interpolation (KV-cached)."""

    prompt: str
    clean: str
    intervened: str


@dataclass(kw_only=True)
class ReinjectVerdict(Verdict):
    """The re-injection verdict: the premise and the judged setting."""

    premise_met: bool
    chosen: str


@dataclass(kw_only=True)
class ReinjectResult(Result):
    """``run reinject``."""

    config: ReinjectConfig
    verdict: ReinjectVerdict | None = None
    layers: list[int]
    clean_loss: float
    bin_edges: list[float]
    premise: Premise
    effects: dict[str, AlphaEffect]  # "mean w=0.5" -> Δ loss on the following token, every evaluation context
    chosen: str  # the setting with the lowest most-surprising-fifth Δ on the selection half
    judged: AlphaEffect  # that setting on the other half
    vs_null: Interval  # on the other half, most-surprising fifth: Δ toward the true token minus toward another token
    cached: CachedCheck
    samples: list[ReinjectSample]
