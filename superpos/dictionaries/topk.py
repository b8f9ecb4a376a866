"""TopK (Gao et al. 2024) and BatchTopK (Bussmann et al. 2024) SAEs: sparse codes by selection, trained with
sparse kernels and the AuxK loss for dead latents."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from superpos.dictionaries.params import Int, InvalidParameterError, Param, Params
from superpos.dictionaries.sparse_ops import (
    encoder_pre,
    select_batch_topk,
    select_topk,
    sparse_decode,
    sparse_encode,
    topk_cols,
)
from superpos.dictionaries.trainer import SparseAutoencoder, _reconstruction_terms

#: TopK's decoder steps at this × lr (its rows are unit-norm: a step is an angle); why this value, and why
#: BatchTopK keeps lr: docs/dictionaries.md ("The SAE trainer")
TOPK_DECODER_LR_MULT = 1.5
#: while training, no row takes more than this × k of a BatchTopK batch's k × batch codes (why: a few huge rows,
#: later attention sinks, would otherwise take most of them; docs/dictionaries.md)
BATCH_TOPK_ROW_CAP = 4


class _SparseSelectSAE(SparseAutoencoder):
    """The sparse-select SAEs (TopK, BatchTopK): codes chosen by selection among the encoder's pre-activations,
    trained with sparse kernels and the AuxK loss for dead latents. ``precision="bfloat16"`` takes only the encoder
    product in bfloat16 (the selection and the codes' values come from it); the codes, decoder, loss and backward
    stay float32, where their sparse kernels cost little.

    A kind implements two hooks, one for training and one for inference:

    * ``_select(pre)``: from the (batch × latents) pre-activations, the selected entries as ``(rows, cols,
      values)``, sorted by row (``sparse_ops.select_topk`` / ``select_batch_topk``);
    * ``_encode(x)``: the codes of raw rows at inference (``_pre(x)`` gives the pre-activations).

    and may set ``_decoder_lr_mult`` (default 1: the decoder steps at lr), add fitted state with
    ``_finish_extra`` and ``_state_names`` (BatchTopK's threshold), and extend ``_check_params``.
    """

    _autocast = False
    _params = Params(k=Param(32, "Active latents per token.", Int(1)))

    def __init__(self, *, n_components=..., expansion=..., k=..., batch_size=..., n_tokens=..., lr=...,
                 max_epochs=..., tol=..., n_iter_no_change=..., validation_fraction=..., warmup_steps=...,
                 decay_frac=..., aux_k=..., aux_coeff=..., dead_after_tokens=..., b_dec_init=..., normalize=...,
                 min_pos=..., seed=..., precision=..., save_at=..., device=..., progress=...):
        self._set_params(locals())

    def _check_params(self, d_model: int) -> None:
        super()._check_params(d_model)
        n = self._n_latents(d_model)
        if self.k > n:
            raise InvalidParameterError(f"k={self.k} must be between 1 and the number of latents ({n})")

    def _select(self, pre_BF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def _encode(self, x_BD: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _train_forward(self, s: dict, x: torch.Tensor, dead: torch.Tensor) -> dict:
        with torch.no_grad():
            x_c = x - s["b_dec"]  # b_dec's gradient through the encoder comes from sparse_encode
            buf = getattr(self, "_pre_buffer", None)
            dtype = torch.bfloat16 if self.precision == "bfloat16" else x.dtype  # the product's only: codes stay fp32
            if buf is None or buf.shape != (x.shape[0], s["W_enc"].shape[0]) or buf.device != x.device \
                    or buf.dtype != dtype:
                buf = self._pre_buffer = torch.empty(x.shape[0], s["W_enc"].shape[0], dtype=dtype, device=x.device)
            pre = encoder_pre(x_c, s["W_enc"], s["b_enc"], buf)  # read only within this step
        rows, cols, pre_nnz = self._select(pre)
        codes = sparse_encode(x_c, s["W_enc"], s["b_enc"], pre, rows, cols, pre_nnz, s["b_dec"])
        x_hat = sparse_decode(codes, s["W_dec"]) + s["b_dec"]
        loss = _reconstruction_terms(x, x_hat)
        loss = self._with_aux(loss, x, x_hat, pre, dead, s["W_dec"],
                              lambda r, c: sparse_encode(x_c, s["W_enc"], s["b_enc"], pre, r, c, b_dec_D=s["b_dec"]))
        fired = cols[codes.vals.detach() > 0]
        counts = torch.bincount(fired, minlength=s["W_dec"].shape[0])
        return {"loss": loss, "x_hat": x_hat.detach(), "l0": fired.numel() / x.shape[0], "counts": counts}


class TopKSAE(_SparseSelectSAE):
    """TopK SAE (Gao et al. 2024): exactly ``k`` active latents per token, in training and at inference. Its
    decoder steps at ``TOPK_DECODER_LR_MULT`` × ``lr``."""

    kind = "topk"
    _decoder_lr_mult = TOPK_DECODER_LR_MULT

    def _select(self, pre_BF):
        return select_topk(pre_BF, self.k)

    def _encode(self, x_BD):
        pre = self._pre(x_BD)
        idx = topk_cols(pre, self.k)
        return torch.zeros_like(pre).scatter_(1, idx, F.relu(pre.gather(1, idx)))


class BatchTopKSAE(_SparseSelectSAE):
    """BatchTopK SAE (Bussmann et al. 2024): the top ``k × batch`` activations over a batch while training, at
    most ``BATCH_TOPK_ROW_CAP`` × k of them in one row; at inference a single threshold ``threshold_`` (estimated
    after training so the mean L0 on training rows is ``k``) makes it a per-token JumpReLU. Its decoder steps at
    ``lr``."""

    kind = "batchtopk"
    _state_names = SparseAutoencoder._state_names + ("threshold_",)

    def _select(self, pre_BF):
        return select_batch_topk(pre_BF, self.k, row_cap=BATCH_TOPK_ROW_CAP * self.k)

    def _finish_extra(self, state, src, scale) -> None:
        # threshold: the (k·N)-th largest positive pre-activation over a sample → mean L0 = k there
        sample = src.sample(16384, seed=self.seed + 1, min_pos=self.min_pos).to(self.components_.device)
        pre = F.relu(self._pre(sample)).reshape(-1)
        kth = min(self.k * sample.shape[0], pre.numel())
        self.threshold_ = pre.topk(kth, sorted=False).values.min().clamp_min(0.0).reshape(1)

    def _encode(self, x_BD):
        pre = self._pre(x_BD)
        return pre * (pre > self.threshold_)
