"""The typed result of ``superpos run probes`` (read back from results.json with ``read``)."""
from __future__ import annotations

from dataclasses import dataclass

from superpos.experiment.result import Result, Verdict
from superpos.hypotheses.probes.config import ProbeConfig
from superpos.stats import Band, Interval


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
class PredictionTest:
    """Is x_i held through the prediction made at i? Accuracy of a ridge probe reading x_i from the lens
    distribution at i, and from the one at i − 1 (the model's guess for x_i), per layer and lens (test contexts).
    The last layer is the model's own prediction."""

    layers: list[int]
    n_classes: int
    train_positions: int
    test_positions: int
    at_i: dict[str, Band]  # lens ("logit lens", "tuned lens") -> per layer, accuracy from the distribution at i
    at_previous: dict[str, Band]  # ... from the distribution at i − 1
    difference: dict[str, Band]  # at i minus at i − 1, paired per position
    # (None in results from before the bigram null)
    bigram: Interval | None = None  # accuracy from a bigram table p(·|x_i) counted on the training contexts
    vs_bigram: dict[str, Band] | None = None  # at i minus from the bigram table, paired per position
    test_contexts: int | None = None  # the clusters of the intervals


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
    via_guess: bool  # the i − 1 right-vs-wrong gap, beyond layer 0's, above 0
    # x_i read from the model's prediction at i better than from a bigram table p(·|x_i) and from its guess at i−1;
    # None: not tested, or not judged (too few test contexts, or a run that could not have seen the needed difference)
    via_prediction: bool | None = None


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
    prediction: PredictionTest | None = None  # not run in older results
