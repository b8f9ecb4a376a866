"""The settings of ``superpos run orthogonality``: one documented dataclass whose fields are the flags."""
from __future__ import annotations

from dataclasses import dataclass

from superpos.hypotheses.common import (
    corpus_setting,
    device_setting,
    model_setting,
    n_boot_setting,
    out_setting,
    seed_setting,
)
from superpos.settings import choice, setting

EPS_GRID = (0.1, 0.2, 0.3, 0.4, 0.5)


@dataclass
class OrthogonalityConfig:
    """Hypothesis 1: does the residual stream hold far more than d nearly orthogonal directions?"""

    model: str | None = model_setting()
    corpus: str | None = corpus_setting()  # the text of the harvested store (not used with --store)
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
    precision: str = setting("float32", "every SAE's compute precision, sweep and budget fits alike (the SAEs' "
                                        "own precision parameter: bfloat16 takes TopK's encoder product in bfloat16 "
                                        "with float32 weights, about 2x faster where the hardware has native bfloat16)",
                             parse=choice("float32", "bfloat16"))
    min_gain: float = setting(0.2, "criterion (i): held-out FVU must fall by at least this share from the smallest to "
                                   "the largest dictionary", parse="probability")
    stable_cos: float = setting(0.7, "an atom is seed-stable when its Hungarian partner has |cos| at least this in "
                                     "enough other seeds (--stable-seeds); pre-registered in docs/orthogonality.md",
                                parse="probability")
    stable_seeds: int = setting(2, "an atom is seed-stable when it is found in at least this many seeds, itself "
                                   "included (2: in one other seed; --seeds: in every seed); pre-registered in "
                                   "docs/orthogonality.md", parse="positive_int")
    orth_eps: float = setting(0.3, "nearly orthogonal: pairwise |cos| at most this (criterion (ii))",
                              parse="probability")
    budget: bool = setting(True, "the budget sweep: the largest dictionary's census at each of --budgets training "
                                 "tokens (nested budgets of one run per seed) and the saturating fit of the stable, "
                                 "nearly orthogonal count")
    budgets: list[int] = setting(help="training tokens at which the budget sweep takes the census (the largest is "
                                      "the run's length; more tokens than the store holds are further epochs)",
                                 parse="int_list", factory=lambda: [400_000, 1_200_000, 4_000_000])
    budget_lr: float = setting(5e-4, "Adam's learning rate of the budget sweep's runs (the sweep's own fits keep the "
                                     "SAEs' default, chosen for 400k-token runs, which kills most 16x latents by 4M "
                                     "tokens: docs/orthogonality.md)", parse="positive_float")
    budget_layers: list[int] | None = setting(None, "layers of the budget sweep (comma list); empty: the middle "
                                                    "of the sweep's layers", parse="layer_list")
    external: list[str] | None = setting(None, "dictionaries trained elsewhere, one folder per seed (superpos, "
                                               "SAELens or sparsify hookpoint folders), whose census replaces the "
                                               "budget sweep's own fits at the one --budget-layers layer",
                                         parse="name_list")
    plant_from: str | None = setting(None, "control realistic: a JSON file mapping each layer to the dictionary "
                                           "whose atoms and codes make that layer's plant (the real run writes "
                                           "OUT/plant.json)")
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
                                   "instead: gaussian or pc-shuffle (nulls: same covariance, no sparse features), "
                                   "planted (sparse superposition of 4×d known atoms, d/72 per row) or realistic (the "
                                   "real dictionary's atoms with its codes on the real rows, plus Gaussian noise of "
                                   "the residual's covariance; needs --plant-from); one of none, gaussian, "
                                   "pc-shuffle, planted, realistic", parse="surrogate")
    n_boot: int = n_boot_setting()
    seed: int = seed_setting()
    device: str = device_setting()
    out: str = out_setting("runs/orthogonality")
