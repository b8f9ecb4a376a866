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
    """Codes of a batch in coordinate form: row and latent indices with their values."""
    rows: torch.Tensor  # (nnz,) int64, sorted
    cols: torch.Tensor  # (nnz,) int64 latent ids
    vals: torch.Tensor  # (nnz,) activations (differentiable)
    offsets: torch.Tensor  # (B,) int64 start of each row's run
    n_rows: int

    def to_dense(self, n_latents: int) -> torch.Tensor:
        """The (rows × latents) dense code matrix."""
        out = torch.zeros(self.n_rows, n_latents, dtype=self.vals.dtype, device=self.vals.device)
        out[self.rows, self.cols] = self.vals
        return out


def _offsets(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    counts = torch.bincount(rows, minlength=n_rows)
    return torch.cumsum(counts, 0) - counts


_INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def topk_cols(pre_BF: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the latents of the ``k`` largest pre-activations, (B, k) unsorted — exactly those of
    ``pre_BF.topk(k)`` among the positive values, the only ones a ReLU lets through (a row with fewer than k
    positives is filled with other non-positive entries). On CPU, faster than ``torch.topk`` at the sizes SAEs
    train with (the timings: docs/dictionaries.md, "The SAE trainer"):

    * the columns fall into ``G = F / g`` strided groups (j, j + G, j + 2G, …); the k groups with the largest
      maxima hold every top-k entry (an entry outside them is below k group maxima, hence below k entries), so
      the top k is taken over those ``g × k`` candidates only, after one vectorised max over g slices;
    * both top-k calls compare the floats' bit patterns as integers, which orders every non-negative float as
      the float does (negatives all sort below them) and is faster than a float comparison.
    """
    B, Fn = pre_BF.shape
    g = next((g for g in (16, 8) if Fn % g == 0 and Fn // g >= 2 * k), None)
    if pre_BF.device.type != "cpu" or pre_BF.dtype not in _INT_VIEW or not pre_BF.is_contiguous() or g is None:
        return pre_BF.topk(k, dim=1, sorted=False).indices
    G = Fn // g
    bits = pre_BF.view(_INT_VIEW[pre_BF.dtype]).view(B, g, G)
    groups = bits.amax(1).topk(k, dim=1, sorted=False).indices  # (B, k)
    cand = bits.gather(2, groups.unsqueeze(1).expand(B, g, k)).reshape(B, g * k)
    loc = cand.topk(k, dim=1, sorted=False).indices  # candidate (i, j) is column groups[j] + i·G
    return groups.gather(1, loc % k) + (loc // k) * G


def select_topk(pre_BF: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row top k (see :func:`topk_cols`): (rows, cols, pre-activation values) sorted by row."""
    B = pre_BF.shape[0]
    cols = topk_cols(pre_BF, k)
    rows = torch.arange(B, device=pre_BF.device).repeat_interleave(k)
    return rows, cols.reshape(-1), pre_BF.gather(1, cols).reshape(-1)


def select_batch_topk(pre_BF: torch.Tensor, k: int, row_cap: int | None = None) -> tuple[torch.Tensor, torch.Tensor,
                                                                                         torch.Tensor]:
    """Top ``k × B`` over the whole batch (BatchTopK): (rows, cols, pre-activation values) sorted by row. With
    ``row_cap``, no row takes more than ``row_cap`` of them (the top ``k × B`` among each row's top ``row_cap``)."""
    B, Fn = pre_BF.shape
    if row_cap is None or row_cap >= Fn:
        flat = pre_BF.reshape(-1).topk(min(k * B, B * Fn), sorted=False).indices.sort().values
        return flat // Fn, flat % Fn, pre_BF.reshape(-1)[flat]
    idx = topk_cols(pre_BF, row_cap)
    vals = pre_BF.gather(1, idx)
    pick = vals.reshape(-1).topk(min(k * B, B * row_cap), sorted=False).indices
    rows, cols = pick // row_cap, idx.reshape(-1)[pick]
    order = torch.argsort(rows * Fn + cols)
    rows, cols = rows[order], cols[order]
    return rows, cols, pre_BF[rows, cols]


def encoder_pre(x_BD: torch.Tensor, W_enc_FD: torch.Tensor, b_enc_F: torch.Tensor,
                out_BF: torch.Tensor | None = None) -> torch.Tensor:
    """x @ W_encᵀ + b_enc (no grad). With ``out_BF`` (a buffer reused across steps) the product lands in memory
    that is already mapped, and the bias is added in place: faster than ``addmm`` into a fresh tensor, which
    broadcasts the bias into new memory before the GEMM (docs/dictionaries.md). A bfloat16 ``out_BF`` takes the
    product in bfloat16 (inputs rounded, sums accumulated in float32 by the GEMM, the result rounded to 8 bits of
    mantissa), which a CPU with AVX512-BF16 runs natively (both GEMMs' timings: benchmarks/RESULTS.md)."""
    if out_BF is None or out_BF.shape != (x_BD.shape[0], W_enc_FD.shape[0]):
        return torch.addmm(b_enc_F, x_BD, W_enc_FD.T)
    dt = out_BF.dtype
    return torch.mm(x_BD.to(dt), W_enc_FD.to(dt).T, out=out_BF).add_(b_enc_F.to(dt))


@torch.no_grad()
def firing_quantile(x_BD: torch.Tensor, W_enc_FD: torch.Tensor, b_enc_F: torch.Tensor, b_dec_D: torch.Tensor,
                    l0: float) -> torch.Tensor:
    """Per latent, the pre-activation it exceeds on a share ``l0 / latents`` of the rows of ``x_BD``: thresholds
    there (or an encoder bias of minus it) give a mean L0 of ``l0`` on those rows. A penalised SAE started there
    starts at its target L0; started dense, the penalty that thins it overshoots far below the target and most
    latents never fire again (docs/dictionaries.md, "A target L0")."""
    pre_BF = encoder_pre(x_BD - b_dec_D, W_enc_FD, b_enc_F)
    return torch.quantile(pre_BF, 1 - min(1.0, l0 / pre_BF.shape[1]), dim=0)


class _SparseEncode(torch.autograd.Function):
    """vals = ((x − b_dec) @ W_encᵀ + b_enc)[rows, cols], with a backward that touches only the selected pairs.
    ``x_c_BD`` is the centred input x − b_dec; ``b_dec_D`` (or None) gets the gradient the centring passes on:
    −Σ_rows ∂/∂x_c = −(∂/∂b_enc) @ W_enc, one (latents × d) GEMV instead of a per-row gather."""

    @staticmethod
    def forward(ctx, x_c_BD, W_enc_FD, b_enc_F, rows, cols, pre_nnz, b_dec_D):
        """Autograd forward (see the class docstring)."""
        ctx.save_for_backward(x_c_BD, W_enc_FD, rows, cols)
        return pre_nnz.clone()

    @staticmethod
    def backward(ctx, g_nnz):
        """Autograd backward: the straight-through gradient (see the class docstring)."""
        x_BD, W_enc_FD, rows, cols = ctx.saved_tensors
        B, Fn = x_BD.shape[0], W_enc_FD.shape[0]
        grad_x = grad_W = grad_b = grad_b_dec = None
        # under autocast the codes (and g) may be bf16 while weights are fp32: compute in the weights' dtype
        g_nnz = g_nnz.contiguous().to(W_enc_FD.dtype)
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(cols, W_enc_FD, _offsets(rows, B), mode="sum", per_sample_weights=g_nnz)
        if ctx.needs_input_grad[1]:
            order = torch.argsort(cols, stable=True)
            grad_W = F.embedding_bag(rows[order], x_BD.to(W_enc_FD.dtype), _offsets(cols[order], Fn), mode="sum",
                                     per_sample_weights=g_nnz[order])
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[6]:
            grad_b = torch.zeros(Fn, dtype=g_nnz.dtype, device=g_nnz.device).index_add_(0, cols, g_nnz)
            if ctx.needs_input_grad[6]:
                grad_b_dec = -(grad_b @ W_enc_FD)
        return grad_x, grad_W, grad_b, None, None, None, grad_b_dec


def sparse_encode(x_BD, W_enc_FD, b_enc_F, pre_BF, rows, cols, pre_nnz=None, b_dec_D=None) -> SparseCodes:
    """Pre-activations at the selected pairs (``pre_nnz``, or read off ``pre_BF``), ReLU'd, in ``x_BD``'s dtype, as
    :class:`SparseCodes` (differentiable with respect to x, W_enc and b_enc). With ``b_dec_D``, ``x_BD`` is the
    input already centred by it (x − b_dec) and b_dec receives the centring's gradient: pass the centred input
    without grad then, so no (batch × d) gradient is formed for it."""
    pre_nnz = (pre_BF.detach()[rows, cols] if pre_nnz is None else pre_nnz.detach()).to(x_BD.dtype)
    vals = _SparseEncode.apply(x_BD, W_enc_FD, b_enc_F, rows, cols, pre_nnz, b_dec_D)
    return SparseCodes(rows, cols, F.relu(vals), _offsets(rows, x_BD.shape[0]), x_BD.shape[0])


def sparse_decode(codes: SparseCodes, W_dec_FD: torch.Tensor) -> torch.Tensor:
    """Σ_j vals_j · W_dec[cols_j] per row (no bias), via one embedding_bag."""
    W = W_dec_FD.to(codes.vals.dtype)  # bf16 under autocast, like the matmul it replaces
    return F.embedding_bag(codes.cols, W, codes.offsets, mode="sum", per_sample_weights=codes.vals)


def dense_pairs(pre_BF: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> SparseCodes:
    """The ReLU'd entries of a dense (differentiable) pre-activation matrix at the given pairs, as codes."""
    return SparseCodes(rows, cols, F.relu(pre_BF[rows, cols]), _offsets(rows, pre_BF.shape[0]), pre_BF.shape[0])


def aux_k_loss(x_BD: torch.Tensor, x_hat_BD: torch.Tensor, pre_BF: torch.Tensor, dead_F: torch.Tensor, k_aux: int,
               W_dec_FD: torch.Tensor, codes_at) -> torch.Tensor:
    """AuxK (Gao et al. 2024): the ``k_aux`` most active dead latents of each row reconstruct the main
    reconstruction's error, normalised by the error's variance. ``codes_at(rows, cols)`` returns the
    (differentiable) :class:`SparseCodes` at the selected pairs."""
    dead_idx = dead_F.nonzero()[:, 0]  # select among the dead columns only: no (batch × latents) copy
    rows, sub_cols, _ = select_topk(pre_BF.detach().index_select(1, dead_idx), min(k_aux, len(dead_idx)))
    cols = dead_idx[sub_cols]
    e = (x_BD - x_hat_BD).detach()
    e_hat = sparse_decode(codes_at(rows, cols), W_dec_FD)
    return (e_hat - e).pow(2).sum(-1).mean() / (e - e.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
