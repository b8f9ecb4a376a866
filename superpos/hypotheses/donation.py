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
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import SuperposError
from .configs import DonationConfig
from ..stats import cluster_bootstrap_mean


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


def run_donation(cfg: DonationConfig) -> dict:
    """``superpos run donation``: the gradient that later positions donate to keys/values."""
    from ..dictionaries.io import write_json_atomic
    from ..models import load_model
    from ..residuals import contexts_from_corpus

    if cfg.context_length < 4:
        raise SuperposError("--context-length must be at least 4")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lm = load_model(cfg.model, device=cfg.device)
    tokens = contexts_from_corpus(lm, cfg.corpus, cfg.contexts, cfg.context_length)
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
    layers = list(range(lm.n_layers))
    res: dict = {"config": asdict(cfg), "model": lm.name, "layers": layers, "lengths": lengths, "share": {},
                 "ratio_vs_later": {}, "later_count": later_count.tolist()}
    for n in lengths:
        if not shares[n]:
            continue
        v = np.stack([s.mean(1) for s in shares[n]])  # (contexts, layers): mean over positions
        m, lo, hi = cluster_bootstrap_mean(v, np.arange(len(v)), n_boot=cfg.n_boot, seed=cfg.seed)
        res["share"][n] = {"mean": m.tolist(), "lo": lo.tolist(), "hi": hi.tolist()}
    R = np.stack(ratios)  # (contexts, layers, positions)
    res["ratio_vs_later"] = {"median_over_layers_and_contexts": np.median(R, axis=(0, 1)).tolist(),
                             "per_layer_mean_ratio": R.mean(axis=(0, 2)).tolist()}
    # scaling exponent: ratio ~ k^b, fitted on medians over contexts and layers (k ≥ 1)
    k = later_count
    med = np.median(R, axis=(0, 1))
    ok = (k >= 1) & (med > 0)
    b, a = np.polyfit(np.log(k[ok]), np.log(med[ok]), 1)
    res["ratio_fit"] = {"exponent": float(b), "prefactor": float(np.exp(a))}
    mean_share = {n: float(np.mean(v["mean"])) for n, v in res["share"].items()}
    nN = max(res["share"])
    expected = (nN - 2) / 2
    mean_ratio = float(np.mean(R))
    res["verdict"] = {
        "headline": (f"Later positions donate {100 * mean_share[nN]:.0f}% of the gradient on a position's keys and "
                     f"values at N = {nN} (mean over layers); the ratio later/own grows like k^{b:.2f} with the "
                     f"number k of later losses ({'close to' if abs(b - 1) < 0.25 else 'unlike'} the linear "
                     f"(N−1)/2-against-1 picture)."),
        "criteria": [f"N = {n}: share from later losses {100 * mean_share[n]:.1f}% "
                     f"(layer range {100 * min(res['share'][n]['mean']):.1f}–{100 * max(res['share'][n]['mean']):.1f}%)"
                     for n in res["share"]] +
                    [f"Mean ratio later/own at N = {nN}: {mean_ratio:.2f}, against (N−2)/2 = {expected:.1f} if every "
                     f"later loss pushed like the own loss, in the same direction."],
    }
    res["timings"] = {"total_s": time.perf_counter() - t0}
    write_json_atomic(out / "results.json", res)
    _write_report(res, out)
    return res


def _write_report(res: dict, out: Path) -> Path:
    import matplotlib.pyplot as plt

    from ..report import Report, band

    cfg = res["config"]
    rep = Report(f"Gradient donation to keys and values — {res['model']}")
    rep.heading("Verdict")
    rep.text(res["verdict"]["headline"])
    for line in res["verdict"]["criteria"]:
        rep.text(line)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for n, s in res["share"].items():
        band(axes[0], res["layers"], s, f"N = {n}")
    axes[0].set(xlabel="layer (block)", ylabel="share of the k/v gradient from later losses", ylim=(0, 1))
    axes[0].legend(fontsize=8)
    k = np.asarray(res["later_count"])
    axes[1].loglog(k, res["ratio_vs_later"]["median_over_layers_and_contexts"], "o-", ms=3, label="measured (median)")
    axes[1].loglog(k, k, "k--", label="ratio = k (aligned, equal pushes)")
    axes[1].loglog(k, np.sqrt(k), "k:", label="ratio = √k (independent pushes)")
    axes[1].set(xlabel="k = number of later losses", ylabel="‖later gradient‖ / ‖own gradient‖")
    axes[1].legend(fontsize=8)
    rep.figure(fig, "donation.png", "Left: share of the gradient on keys/values that comes from later positions, per "
               "layer and context length (95% CIs over contexts). Right: the ratio against the number of later losses")
    rep.reproduce("donation", cfg)
    return rep.save(out)
