"""Gradient donation: how much of the gradient on a position's keys and values comes from the losses of
later positions, against its own loss.

For a context of N tokens, the loss at position j (predicting token j+1) reaches the keys and values
of every position i ≤ j through attention. With g_l[j, i] = ∂loss_j / ∂(k, v)_l[i] at layer l:

* own(i)        = ‖g[i, i]‖
* later_n(i)    = ‖Σ_{i<j≤n-2} g[j, i]‖      (the losses of later positions in a context of n tokens)
* donation_n    = mean_i later_n(i) / (later_n(i) + own(i))      (share from later positions)
* ratio(i)      = later_N(i) / own(i), against k = N-2-i, the number of later losses

If every later loss pushed as hard as the own loss and in the same direction, ratio = k; averaged over
positions that is (N-2)/2 against 1. All g[j, i] come from one backward pass over N-1 copies of the
context, copy j carrying only loss j. Keys and values are read at the k/v projections (Llama-style
``k_proj``/``v_proj``) or split from a fused GPT-2 ``c_attn``; a zero tensor added there makes the
gradient the total derivative (every downstream path kept). Reading in docs/probes.md.
"""
from __future__ import annotations

import contextlib
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import ConfigError, SuperposError
from ..stats import cluster_band
from .configs import DonationConfig
from .results import DonationRatio, DonationResult, PowerLaw


def _kv_points(lm) -> list[tuple[torch.nn.Module, list[slice]]]:
    """Per block: the module whose output holds keys and values, and the slices of k and v in it."""
    points = []
    for block in lm.blocks:
        attn = getattr(block, "self_attn", None) or getattr(block, "attn", None) or getattr(block, "attention", None)
        if attn is not None and hasattr(attn, "k_proj") and hasattr(attn, "v_proj"):
            points.append((attn.k_proj, [slice(None)]))
            points.append((attn.v_proj, [slice(None)]))
        elif attn is not None and hasattr(attn, "c_attn"):  # GPT-2: [q | k | v]
            D = lm.d_model
            points.append((attn.c_attn, [slice(D, 2 * D), slice(2 * D, 3 * D)]))
        else:
            raise SuperposError(f"gradient donation supports attention with k_proj/v_proj or a GPT-2 c_attn, not "
                                f"{type(attn).__name__ if attn is not None else type(block).__name__}")
    return points


@contextlib.contextmanager
def _kv_leaves(lm):
    """Within the block, every k/v projection output gets ``+ zero`` leaf tensors; yields the leaf list."""
    points = _kv_points(lm)
    leaves: list[tuple[int, list[slice], torch.Tensor]] = []
    per_block = len(points) // lm.n_layers
    handles = []
    for idx, (module, slices) in enumerate(points):
        def hook(mod, args, out, idx=idx, slices=slices):
            z = torch.zeros_like(out, requires_grad=True)
            leaves.append((idx // per_block, slices, z))
            return out + z
        handles.append(module.register_forward_hook(hook))
    try:
        yield leaves
    finally:
        for h in handles:
            h.remove()


def pairwise_kv_grads(lm, tokens_T: torch.Tensor) -> torch.Tensor:
    """(n_layers, J, T) norms are not enough (sums need vectors): returns g as (n_layers, J, T, width) with
    J = T-1 loss positions; g[l, j, i] = ∂loss_j/∂(k,v)_l[i] (k and v concatenated)."""
    T = len(tokens_T)
    J = T - 1
    batch = tokens_T[None].expand(J, T).to(lm.device)
    with torch.enable_grad(), _kv_leaves(lm) as leaves:
        logits = lm.model(batch).logits.float()
        idx = torch.arange(J, device=lm.device)
        loss = F.cross_entropy(logits[idx, idx], batch[0, 1:], reduction="sum")  # copy j: loss at position j
        zs = [z for _, _, z in leaves]
        grads = torch.autograd.grad(loss, zs)
    per_layer: dict[int, list[torch.Tensor]] = {}
    for (layer, slices, _), g in zip(leaves, grads):
        per_layer.setdefault(layer, []).extend(g[..., s] for s in slices)
    return torch.stack([torch.cat(per_layer[layer], -1) for layer in range(lm.n_layers)]).detach().cpu()


def donation_from_grads(g_LJTW: torch.Tensor, lengths: list[int]) -> dict:
    """Own / later gradient norms per layer and position, the donation share per context length, and the
    ratio against the number of later losses (see the module docstring)."""
    Lyr, J, T, _ = g_LJTW.shape
    i = torch.arange(J)
    own = g_LJTW[:, i, i].norm(dim=-1)  # (L, J)
    # later_n(i) = ‖Σ_{i<j≤n-2} g[j, i]‖ via prefix sums over j
    csum = torch.cumsum(g_LJTW[:, :, :J], dim=1)  # (L, J, J, W): sum over j' ≤ j
    out = {"own": own.numpy(), "share": {}, "ratio_full": None}
    for n in lengths:
        last = n - 2  # the last loss position inside a context of n tokens
        if last < 1 or n > T:
            continue
        later = (csum[:, last, :last] - csum[:, i[:last], i[:last]]).norm(dim=-1)  # (L, last) for i < last
        o = own[:, :last]
        out["share"][n] = (later / (later + o).clamp_min(1e-30)).numpy()  # (L, positions)
        if n == T:
            out["ratio_full"] = (later / o.clamp_min(1e-30)).numpy()
            out["later_count"] = (last - np.arange(last)).astype(np.float64)
    return out


def run_donation(cfg: DonationConfig) -> DonationResult:
    """``superpos run donation``: the gradient that later positions donate to keys/values."""
    from .opening import open_experiment
    from .reports.donation import write_report
    from .verdicts import donation as verdict

    if cfg.context_length < 4:
        raise ConfigError("context_length", "{field} must be at least 4")
    t0 = time.perf_counter()
    out, lm, tokens = open_experiment(cfg)
    N = cfg.context_length
    lengths = sorted({n for n in (4, 8, 16, 32, 64, 128, 256, 512) if n <= N} | {N})
    shares = {n: [] for n in lengths}
    ratios, owns = [], []
    for c in tqdm(range(len(tokens)), desc="donation", unit="ctx", file=sys.stderr):
        g = pairwise_kv_grads(lm, torch.from_numpy(tokens[c].astype(np.int64)))
        d = donation_from_grads(g, lengths)
        for n, v in d["share"].items():
            shares[n].append(v)
        ratios.append(d["ratio_full"])
        owns.append(d["own"])
        later_count = d["later_count"]
    share = {}
    for n in lengths:
        if shares[n]:
            v = np.stack([s.mean(1) for s in shares[n]])  # (contexts, layers): mean over positions
            share[n] = cluster_band(v, np.arange(len(v)), n_boot=cfg.n_boot, seed=cfg.seed)
    R = np.stack(ratios)  # (contexts, layers, positions)
    # scaling exponent: ratio ~ k^b, fitted on medians over contexts and layers (k ≥ 1)
    med = np.median(R, axis=(0, 1))
    ok = (later_count >= 1) & (med > 0)
    b, a = np.polyfit(np.log(later_count[ok]), np.log(med[ok]), 1)
    res = DonationResult(config=cfg, model=lm.name, layers=list(range(lm.n_layers)), lengths=lengths, share=share,
                         ratio_vs_later=DonationRatio(median_over_layers_and_contexts=med.tolist(),
                                                      per_layer_mean_ratio=R.mean(axis=(0, 2)).tolist()),
                         later_count=later_count.tolist(), ratio_fit=PowerLaw(exponent=float(b), prefactor=float(np.exp(a))))
    res.verdict = verdict(res)
    res.timings["total_s"] = time.perf_counter() - t0
    res.save(out)
    write_report(res, out)
    return res
