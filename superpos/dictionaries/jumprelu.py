"""JumpReLU SAE (Rajamanoharan et al. 2024): a learned threshold per latent, trained with straight-through
estimators of the L0 penalty's gradient."""
from __future__ import annotations

import math

import torch

from superpos.dictionaries.params import Param, Params, Real
from superpos.dictionaries.sae_params import TARGET_L0
from superpos.dictionaries.sparse_ops import firing_quantile
from superpos.dictionaries.trainer import SparseAutoencoder, _reconstruction_terms


def _rect(z: torch.Tensor) -> torch.Tensor:
    return (z.abs() < 0.5).to(z.dtype)


class _JumpReLU(torch.autograd.Function):
    """z·H(z−θ); straight-through gradient for θ with a rectangle kernel of width ``bandwidth``."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        """Autograd forward (see the class docstring)."""
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, g):
        """Autograd backward: the straight-through gradient (see the class docstring)."""
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        g_pre = g * (pre > threshold)
        g_thr = (-(threshold / bw) * _rect((pre - threshold) / bw) * g).sum(0)
        return g_pre, g_thr, None


class _Step(torch.autograd.Function):
    """H(z−θ), with the straight-through gradient −(1/ε)K((z−θ)/ε) for θ (none for z)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        """Autograd forward (see the class docstring)."""
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        """Autograd backward: the straight-through gradient (see the class docstring)."""
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        return torch.zeros_like(pre), (-(1.0 / bw) * _rect((pre - threshold) / bw) * g).sum(0), None


class JumpReLUSAE(SparseAutoencoder):
    """JumpReLU SAE (Rajamanoharan et al. 2024): per-latent thresholds learned with straight-through estimators
    (rectangle kernel of width ``bandwidth``) under an L0 penalty ``l0_coeff``. Thresholds, ``bandwidth`` and
    ``threshold_init`` are in units of the normalised input (E‖x‖² = d_model)."""

    kind = "jumprelu"
    _sparsity_param = "l0_coeff"
    _state_names = SparseAutoencoder._state_names + ("threshold_",)
    _extra_params = ("log_threshold",)
    # Adam moves a parameter by ≈ lr per step: the log-thresholds step at a multiple of it so they can still move
    # by O(1) within a run; the values tried and what they did: docs/dictionaries.md ("The SAE trainer")
    _extra_lr_mult = 5.0
    _params = Params(
        l0_coeff=Param(1.0, "Weight of the L0 penalty.", Real(0)),
        target_l0=TARGET_L0,
        bandwidth=Param(0.05, "Width of the rectangle kernel of the straight-through estimators.",
                        Real(0, closed="neither")),
        threshold_init=Param(0.1, "Where the thresholds start (without ``target_l0``).", Real(0, closed="neither")),
    )

    def __init__(self, *, n_components=..., expansion=..., l0_coeff=..., target_l0=..., bandwidth=...,
                 threshold_init=..., batch_size=..., n_tokens=..., lr=..., max_epochs=..., tol=...,
                 n_iter_no_change=..., validation_fraction=..., warmup_steps=..., decay_frac=..., aux_k=...,
                 aux_coeff=..., dead_after_tokens=..., b_dec_init=..., normalize=..., min_pos=..., seed=...,
                 precision=..., save_at=..., device=..., progress=...):
        self._set_params(locals())

    def _init_extra(self, n_latents):
        return {"log_threshold": torch.full((n_latents,), math.log(self.threshold_init))}

    def _init_params(self, sample_ND, d_model, dev):
        """With ``target_l0``, each latent's threshold starts where it fires on a share ``target_l0 / n_latents`` of
        the init sample, so the run starts at the target L0 (``sparse_ops.firing_quantile``)."""
        state = super()._init_params(sample_ND, d_model, dev)
        if self.target_l0 is not None:
            xs = sample_ND.to(state["W_enc"].device) * float(state["scale"])
            thr = firing_quantile(xs, state["W_enc"], state["b_enc"], state["b_dec"], self.target_l0)
            thr = thr.clamp_min(self.threshold_init * 1e-3)
            state["log_threshold"].data.copy_(thr.log())
        return state

    def _train_forward(self, s, x, dead):
        pre = torch.addmm(s["b_enc"], x - s["b_dec"], s["W_enc"].T)
        thr = s["log_threshold"].exp()
        f = _JumpReLU.apply(pre, thr, self.bandwidth)
        x_hat = f @ s["W_dec"] + s["b_dec"]
        l0 = _Step.apply(pre, thr, self.bandwidth).sum(-1).mean()
        counts = (f.detach() > 0).sum(0)
        loss = self._with_aux(_reconstruction_terms(x, x_hat) + self._coeff(s) * l0, x, x_hat, pre, dead, s["W_dec"])
        return {"loss": loss, "x_hat": x_hat.detach(),
                "l0": l0.item(), "counts": counts}

    def _finish_extra(self, state, src, scale) -> None:
        self.threshold_ = state["log_threshold"].detach().exp() / scale

    def _extra_from_fitted(self, scale: float) -> dict[str, torch.Tensor]:
        return {"log_threshold": (self.threshold_ * scale).clamp_min(1e-12).log()}

    def _encode(self, x_BD):
        pre = self._pre(x_BD)
        return pre * (pre > self.threshold_)
