"""Each token's representation at a layer: its mean residual over the positions where it is the input, and the
nearest-representation read-out of a position's input token (no training: it covers every token seen often
enough). Used by the probes (full-vocabulary read-out) and re-injection (premise test and targets)."""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm


@dataclass
class TokenTable:
    """Each token's mean residual at ``layers``: ``means_LRD[j, index_V[t]]`` for token t (row -1: too rare)."""

    layers: list[int]
    index_V: torch.Tensor  # (V,) long
    means_LRD: torch.Tensor  # float32
    counts_R: np.ndarray

    def targets(self, lm, kind: str, layers: list[int], shuffled: bool = False, averaged: bool = False) -> torch.Tensor:
        """(len(layers), R, D): what each row's token moves toward at ``layers`` ("mean" or "embedding").
        ``shuffled``: the null — each row gets another token's target (a fixed random derangement of the rows).
        ``averaged``: the null without token identity — every row gets the occurrence-weighted average of the
        targets (for "mean", the layer's mean residual over the reference positions)."""
        if kind == "embedding":
            rows = torch.full((len(self.counts_R),), -1, dtype=torch.long)
            seen = torch.nonzero(self.index_V >= 0).squeeze(1)
            rows[self.index_V[seen]] = seen
            out = lm.W_E_VD.detach().float().cpu()[rows][None].expand(len(layers), -1, -1)
        else:
            out = self.means_LRD[[self.layers.index(layer) for layer in layers]]
        if shuffled:
            R = out.shape[1]
            shift = torch.randperm(R, generator=torch.Generator().manual_seed(0))
            out = out[:, shift[(torch.argsort(shift) + 1) % R]]  # a cyclic shift along a random order: no fixed point
        if averaged:
            out = (self.weights_R() @ out)[:, None].expand_as(out)
        return out

    def weights_R(self) -> torch.Tensor:
        """(R,) each row's share of the reference occurrences (the weights of a layer's mean residual)."""
        return torch.from_numpy(self.counts_R / self.counts_R.sum()).float()


def table_from_sample(sample, vocab: int, min_count: int = 1) -> TokenTable:
    """Each token's mean residual over the sampled positions where it is the input, at the sample's layers."""
    ids, inv = np.unique(sample.token_P, return_inverse=True)
    L, _, D = sample.resid_LPD.shape
    sums = torch.zeros(L, len(ids), D, dtype=torch.float64)
    for j in range(L):
        sums[j].index_add_(0, torch.from_numpy(inv), sample.resid_LPD[j].double())
    return _table(ids, np.bincount(inv, minlength=len(ids)), sums, min_count, vocab, sample.layers)


def _table(ids, counts, sums, min_count, vocab, layers) -> TokenTable:
    keep = np.flatnonzero(counts >= min_count)
    index = torch.full((vocab,), -1, dtype=torch.long)
    index[torch.from_numpy(ids[keep])] = torch.arange(len(keep))
    means = (sums[:, keep] / torch.from_numpy(counts[keep])[None, :, None]).float()
    return TokenTable(list(layers), index, means, counts[keep])


def token_means(lm, tokens_NC: np.ndarray, layers: list[int], min_count: int = 2, batch_size: int = 8) -> TokenTable:
    """Mean residual of every token with at least ``min_count`` occurrences in ``tokens_NC``, at ``layers``."""
    ids, inv = np.unique(tokens_NC, return_inverse=True)
    inv = torch.from_numpy(inv.reshape(tokens_NC.shape))
    sums = torch.zeros(len(layers), len(ids), lm.d_model, dtype=torch.float64)
    with torch.inference_mode(), lm.capture(layers) as acts:
        for i in tqdm(range(0, len(tokens_NC), batch_size), desc="token means", file=sys.stderr):
            lm.model(torch.from_numpy(tokens_NC[i:i + batch_size].astype(np.int64)).to(lm.device))
            rows = inv[i:i + batch_size].reshape(-1)
            for j, layer in enumerate(layers):
                sums[j].index_add_(0, rows, acts[layer].reshape(-1, lm.d_model).double().cpu())
    counts = np.bincount(inv.reshape(-1).numpy(), minlength=len(ids))
    return _table(ids, counts, sums, min_count, lm.W_E_VD.shape[0], layers)


def decodable(table: TokenTable, resid_PD: torch.Tensor, tokens_P: torch.Tensor, layer: int) -> np.ndarray:
    """1 where the nearest token representation at ``layer`` (cosine after removing the mean over tokens'
    occurrences) is the position's own token, 0 where another; NaN where the token has no representation."""
    j = table.layers.index(layer)
    centre = table.weights_R() @ table.means_LRD[j]
    M = F.normalize(table.means_LRD[j] - centre, dim=1)
    rows = table.index_V[tokens_P]
    out = np.full(len(tokens_P), np.nan)
    for s in range(0, len(resid_PD), 4096):
        pred = (F.normalize(resid_PD[s:s + 4096].float() - centre, dim=1) @ M.T).argmax(1)
        r = rows[s:s + 4096]
        out[s:s + 4096] = np.where(r.numpy() >= 0, (pred == r).numpy(), np.nan)
    return out
