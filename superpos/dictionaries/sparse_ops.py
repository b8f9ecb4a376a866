"""Sparse TopK / BatchTopK encoding and decoding without dense (batch × n_latents) matrices of zeros.

Active latents are kept as COO triplets sorted by row: ``rows`` (nnz,), ``cols`` (nnz,), ``vals`` (nnz,),
plus ``offsets`` (B,) where each row's run starts. Decoding is one ``embedding_bag`` (a gather +
weighted sum); the encoder's backward touches only the selected (row, latent) pairs: the input
gradient is an ``embedding_bag`` over encoder rows and the weight gradient another, grouped by latent.
The one dense operation left is the encoder matmul that selecting the top k needs.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class SparseCodes(NamedTuple):
    rows: torch.Tensor  # (nnz,) int64, sorted
    cols: torch.Tensor  # (nnz,) int64 latent ids
    vals: torch.Tensor  # (nnz,) activations (differentiable)
    offsets: torch.Tensor  # (B,) int64 start of each row's run
    n_rows: int

    def to_dense(self, n_latents: int) -> torch.Tensor:
        out = torch.zeros(self.n_rows, n_latents, dtype=self.vals.dtype, device=self.vals.device)
        out[self.rows, self.cols] = self.vals
        return out


def _offsets(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    counts = torch.bincount(rows, minlength=n_rows)
    return torch.cumsum(counts, 0) - counts


def select_topk(pre_BF: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row top k: (rows, cols) sorted by row."""
    B = pre_BF.shape[0]
    cols = pre_BF.topk(k, dim=1, sorted=False).indices.reshape(-1)
    rows = torch.arange(B, device=pre_BF.device).repeat_interleave(k)
    return rows, cols


def select_batch_topk(pre_BF: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k × B`` over the whole batch (BatchTopK): (rows, cols) sorted by row."""
    B, Fn = pre_BF.shape
    flat = pre_BF.reshape(-1).topk(min(k * B, B * Fn), sorted=False).indices.sort().values
    return flat // Fn, flat % Fn


class _SparseEncode(torch.autograd.Function):
    """vals = (x @ W_encᵀ + b_enc)[rows, cols], with a backward that touches only the selected pairs."""

    @staticmethod
    def forward(ctx, x_BD, W_enc_FD, b_enc_F, rows, cols, pre_BF):
        ctx.save_for_backward(x_BD, W_enc_FD, rows, cols)
        return pre_BF[rows, cols]

    @staticmethod
    def backward(ctx, g_nnz):
        x_BD, W_enc_FD, rows, cols = ctx.saved_tensors
        B, Fn = x_BD.shape[0], W_enc_FD.shape[0]
        g_nnz = g_nnz.contiguous()
        grad_x = grad_W = grad_b = None
        # under autocast the codes (and g) may be bf16 while weights are fp32: compute in the weights' dtype
        g_nnz = g_nnz.to(W_enc_FD.dtype)
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(cols, W_enc_FD, _offsets(rows, B), mode="sum", per_sample_weights=g_nnz)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            order = torch.argsort(cols, stable=True)
            c_sorted = cols[order]
            grad_W = F.embedding_bag(rows[order], x_BD.to(W_enc_FD.dtype), _offsets(c_sorted, Fn), mode="sum",
                                     per_sample_weights=g_nnz[order])
            grad_b = torch.zeros(Fn, dtype=g_nnz.dtype, device=g_nnz.device).index_add_(0, cols, g_nnz)
        return grad_x, grad_W, grad_b, None, None, None


def sparse_encode(x_BD, W_enc_FD, b_enc_F, pre_BF, rows, cols) -> SparseCodes:
    """Pre-activations at the selected pairs, ReLU'd, as :class:`SparseCodes` (differentiable)."""
    vals = _SparseEncode.apply(x_BD, W_enc_FD, b_enc_F, rows, cols, pre_BF.detach())
    return SparseCodes(rows, cols, F.relu(vals), _offsets(rows, x_BD.shape[0]), x_BD.shape[0])


def sparse_decode(codes: SparseCodes, W_dec_FD: torch.Tensor) -> torch.Tensor:
    """Σ_j vals_j · W_dec[cols_j] per row (no bias), via one embedding_bag."""
    W = W_dec_FD.to(codes.vals.dtype)  # bf16 under autocast, like the matmul it replaces
    return F.embedding_bag(codes.cols, W, codes.offsets, mode="sum", per_sample_weights=codes.vals)
