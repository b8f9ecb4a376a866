"""The parameters every sparse autoencoder takes (``SparseAutoencoder._params``), and ``target_l0`` of the penalised
kinds: each declared once, with its default, doc and check (``params.Param``)."""
from __future__ import annotations

from superpos.dictionaries.base import SEED
from superpos.dictionaries.params import Bool, Budgets, Int, OneOf, Param, Params, Real
from superpos.dictionaries.train_run import DEFAULT_LR

#: the penalised kinds' (ReLU, JumpReLU) ``target_l0``, declared here once for both
TARGET_L0 = Param(None, "Steer the penalty's coefficient toward this L0 while training, starting at it "
                        "(``sparsity_coeff_`` is where the coefficient ended); None: the coefficient stays fixed.",
                  Real(0, closed="neither", none=True))

SAE_PARAMS = Params(
    expansion=Param(16.0, "Latents per input dimension when ``n_components`` is None.",
                    Real(0, closed="neither")),
    batch_size=Param(1024, "Rows per optimizer step.", Int(1)),
    n_tokens=Param(None, "Training tokens (``n_tokens // batch_size`` steps). None: in-memory data trains until "
                         "the held-out objective stops improving (``max_epochs``, ``tol``, ``n_iter_no_change`` "
                         "and ``validation_fraction`` as in scikit-learn's early stopping), and so does a store: "
                         "read into memory when its training rows fit in ``STORE_IN_MEMORY_BYTES`` (2 GiB as "
                         "float32), else streamed epoch after epoch with whole contexts held out.", Int(1, none=True)),
    lr=Param(None, f"Adam's learning rate. None: ``DEFAULT_LR`` ({DEFAULT_LR:g}, chosen by measurement for "
                   "CPU-sized budgets: docs/dictionaries.md). A kind may step its decoder at a multiple of it "
                   "(``_decoder_lr_mult``).", Real(0, closed="neither", none=True)),
    max_epochs=Param(50, "Most passes over the training rows while converging.", Int(1)),
    tol=Param(1e-2, "Relative improvement of the held-out objective that counts as progress.", Real(0)),
    n_iter_no_change=Param(2, "Held-out measurements without progress before the final decay starts.",
                           Int(1)),
    validation_fraction=Param(0.1, "Share of the rows held out to measure convergence (at most 16,384 "
                                   "rows; from a store streamed out of core, whole contexts).", Real(0, 1, "neither")),
    warmup_steps=Param(None, "Steps of linear warm-up. None (or 0): 5 % of an epoch while converging; with a "
                             "fixed ``n_tokens``, 100 steps or a tenth of the run when that is fewer.",
                       Int(0, none=True)),
    decay_frac=Param(0.2, "Final share of the run over which the learning rate decays linearly to 0.",
                     Real(0, 1, "left")),
    aux_k=Param(None, "Dead latents the AuxK loss lets reconstruct the error; None: d_model / 2.",
                Int(1, none=True)),
    aux_coeff=Param(1 / 32, "Weight of the AuxK loss on dead latents (0 turns it off).", Real(0),
                    shown="1/32"),
    dead_after_tokens=Param(250_000, "A latent is dead after this many tokens without firing.", Int(1)),
    b_dec_init=Param("median", "Where the decoder bias starts: the geometric median, the mean or zero of a "
                               "sample of rows.", OneOf(("median", "mean", "zeros"))),
    normalize=Param(True, "Scale inputs to E‖x‖² = d_model while training (the scale is folded into the "
                          "weights at the end).", Bool()),
    seed=SEED,
    precision=Param("float32", "'bfloat16' computes in bfloat16 with float32 master weights: the TopK kinds "
                               "take only their encoder product in it, the others autocast the step.",
                    OneOf(("float32", "bfloat16"))),
    save_at=Param((), "Token budgets B < ``n_tokens`` at which the run also fits a dictionary (``branches_``"
                      "[B]), each after its own decay branch forked at (1 − ``decay_frac``)·B/batch: equal to "
                      "a separate run with ``n_tokens=B`` and the same warm-up (fixed: ``warmup_steps`` or 100 "
                      "steps), at the cost of the branch's decay steps only.", Budgets(), shown="()"),
)
