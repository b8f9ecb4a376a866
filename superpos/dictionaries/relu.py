"""ReLU SAE with an L1 penalty (the original dictionary-learning SAE)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from superpos.dictionaries.params import Param, Params, Real
from superpos.dictionaries.sae_params import TARGET_L0
from superpos.dictionaries.sparse_ops import firing_quantile
from superpos.dictionaries.trainer import SparseAutoencoder, _reconstruction_terms


class ReLUSAE(SparseAutoencoder):
    """ReLU SAE with an L1 penalty weighted by decoder norms (Σ_i f_i‖d_i‖), trained densely."""

    kind = "relu"
    _sparsity_param = "l1_coeff"
    _params = Params(
        l1_coeff=Param(2.0, "Weight of the L1 penalty, in units of the normalised input (E‖x‖² = d_model).",
                       Real(0)),
        target_l0=TARGET_L0,
    )

    def __init__(self, *, n_components=..., expansion=..., l1_coeff=..., target_l0=..., batch_size=...,
                 n_tokens=..., lr=..., max_epochs=..., tol=..., n_iter_no_change=..., validation_fraction=...,
                 warmup_steps=..., decay_frac=..., aux_k=..., aux_coeff=..., dead_after_tokens=...,
                 b_dec_init=..., normalize=..., min_pos=..., seed=..., precision=..., save_at=..., device=..., progress=...):
        self._set_params(locals())

    def _init_params(self, sample_ND, d_model, dev):
        """With ``target_l0``, the encoder bias starts at minus the quantile of each latent's pre-activation above which
        it fires on a share ``target_l0 / n_latents`` of the init sample: the run starts at the target L0
        (``sparse_ops.firing_quantile``)."""
        state = super()._init_params(sample_ND, d_model, dev)
        if self.target_l0 is not None:
            xs = sample_ND.to(state["W_enc"].device) * float(state["scale"])
            state["b_enc"].data.copy_(-firing_quantile(xs, state["W_enc"], state["b_enc"], state["b_dec"],
                                                       self.target_l0))
        return state

    def _train_forward(self, s, x, dead):
        pre = torch.addmm(s["b_enc"], x - s["b_dec"], s["W_enc"].T)
        f = F.relu(pre)
        x_hat = f @ s["W_dec"] + s["b_dec"]
        l1 = (f * s["W_dec"].norm(dim=1)).sum(-1).mean()
        counts = (f.detach() > 0).sum(0)
        loss = self._with_aux(_reconstruction_terms(x, x_hat) + self._coeff(s) * l1, x, x_hat, pre, dead, s["W_dec"])
        return {"loss": loss, "x_hat": x_hat.detach(),
                "l0": counts.sum().item() / x.shape[0], "counts": counts}

    def _encode(self, x_BD):
        return F.relu(self._pre(x_BD))
