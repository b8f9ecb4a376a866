"""TopK (Gao et al. 2024) and BatchTopK (Bussmann et al. 2024) SAEs: sparse codes by selection, trained with
sparse kernels and the AuxK loss for dead latents."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from superpos.dictionaries.sparse_ops import (
    encoder_pre,
    select_batch_topk,
    select_topk,
    sparse_decode,
    sparse_encode,
    topk_cols,
)
from superpos.dictionaries.train_run import TOPK_DECODER_LR_MULT
from superpos.dictionaries.trainer import (
    _COMMON_DOC,
    SparseAutoencoder,
    _reconstruction_terms,
)


class _SparseSelectSAE(SparseAutoencoder):
    """TopK-style SAEs trained with sparse codes and the AuxK loss for dead latents. ``precision="bfloat16"``
    takes only the encoder product in bfloat16 (the selection and the codes' values come from it); the codes,
    decoder, loss and backward stay float32, where their sparse kernels cost little."""

    _autocast = False

    def _select(self, pre_BF: torch.Tensor):  # pragma: no cover
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
    __doc__ = "TopK SAE (Gao et al. 2024): exactly ``k`` active latents per token.\n" + _COMMON_DOC
    kind = "topk"
    _decoder_lr_mult = TOPK_DECODER_LR_MULT

    def __init__(self, n_components=None, expansion=16.0, k=32, batch_size=1024, n_tokens=None, lr=None,
                 max_epochs=50, tol=1e-2, n_iter_no_change=2, validation_fraction=0.1, warmup_steps=None,
                 decay_frac=0.2, aux_k=None, aux_coeff=1 / 32, dead_after_tokens=250_000,
                 b_dec_init="median", normalize=True, min_pos=1, seed=0, precision="float32", device="auto",
                 progress=True):
        self._set_params(locals())

    def _select(self, pre_BF):
        return select_topk(pre_BF, self.k)

    def _encode(self, x_BD):
        pre = self._pre(x_BD)
        idx = topk_cols(pre, self.k)
        return torch.zeros_like(pre).scatter_(1, idx, F.relu(pre.gather(1, idx)))


BATCH_TOPK_ROW_CAP = 4  # while training, no row takes more than this × k of a BatchTopK batch's k × batch codes


class BatchTopKSAE(TopKSAE):  # same parameters as TopK
    __doc__ = ("BatchTopK SAE (Bussmann et al. 2024): the top ``k × batch`` activations over a batch while "
               "training, at most ``BATCH_TOPK_ROW_CAP`` × k of them in one row; at inference a single threshold "
               "``threshold_`` (estimated after training so the mean L0 on training rows is ``k``) makes it a "
               "per-token JumpReLU. The cap matters on real residuals: on SmolLM2 layer 15, 5 rows in 65,280 (later "
               "attention sinks, ~100× the typical norm) carry 27 % of the variance, and without it each takes "
               "thousands of its batch's codes (held-out FVU 0.36 at k 16 against TopK's 0.215; capped: 0.214).\n"
               + _COMMON_DOC)
    kind = "batchtopk"
    _state_names = SparseAutoencoder._state_names + ("threshold_",)
    # Its decoder keeps lr: on SmolLM2 layer 15 (8×, batch 1,024, 10 passes over 57k rows; seeds 0/1/2) ×1.5 gave
    # held-out FVU 0.237/0.193/0.225 against 0.192/0.172/0.205 at k 64, 0.182/0.179/0.191 against 0.178/0.180/0.182
    # at k 32 and 0.186/0.191/0.190 against 0.191/0.191/0.194 at k 16; on the planted frontier neither was better.
    _decoder_lr_mult = 1.0

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
