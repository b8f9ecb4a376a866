"""Gradient donation: how much of the gradient on a position's keys and values comes from the losses of
later positions, against its own loss.

For a context of N tokens, the loss at position j (predicting token j+1) reaches the keys and values
of every position i ≤ j through attention. With g_l[j, i] = ∂loss_j / ∂(k, v)_l[i] at layer l:

* own(i)        = ‖g[i, i]‖
* later_n(i)    = ‖Σ_{i<j≤n-2} g[j, i]‖      (the losses of later positions in a context of n tokens)
* donation_n    = mean_i later_n(i) / (later_n(i) + own(i))      (share from later positions)
* ratio(i)      = later_N(i) / own(i), against k = N-2-i, the number of later losses
* decay(δ)      = ‖g[i+δ, i]‖ / ‖g[i, i]‖: one later loss's push against the own loss, by distance

If every later loss pushed as hard as the own loss and in the same direction, ratio = k (exponent 1); if the
pushes were equal and independent, ratio = √k (exponent ½). Position 0 is the attention sink, whose keys every
later query reads: it is left out of every statistic and reported apart. Medians over positions and layers per
context, then the median over contexts with a bootstrap over contexts. All g[j, i] come from one backward pass over N-1 copies of the
context, copy j carrying only loss j. Keys and values are read at the k/v projections (Llama-style
``k_proj``/``v_proj``) or split from a fused GPT-2 ``c_attn``; a zero tensor added there makes the
gradient the total derivative (every downstream path kept). Reading in docs/probes.md.
"""
from __future__ import annotations

import contextlib
import sys

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from superpos.errors import ConfigError, SuperposError
from superpos.hypotheses.donation.config import DonationConfig
from superpos.hypotheses.donation.result import DonationResult, PowerLaw, SinkDonation
from superpos.stats import Band, Interval, bootstrap_ci, cluster_band, cluster_interval


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


def _loss_logits(lm, batch_BT: torch.Tensor, pos_B: torch.Tensor) -> torch.Tensor:
    """Logits of copy b at position pos_B[b] only (the unembedding of the other positions is never needed)."""
    h = lm.model.base_model(batch_BT).last_hidden_state  # after the final norm
    logits = lm.model.get_output_embeddings()(h[torch.arange(len(pos_B), device=h.device), pos_B]).float()
    cap = getattr(lm.model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def pairwise_kv_grads(lm, tokens_T: torch.Tensor, buckets: int = 4) -> torch.Tensor:
    """(n_layers, J, T) norms are not enough (sums need vectors): returns g as (n_layers, J, T, width) with
    J = T-1 loss positions; g[l, j, i] = ∂loss_j/∂(k,v)_l[i] (k and v concatenated).

    Copy j of the context carries only loss j, which reads tokens 0..j: copies are grouped into ``buckets``
    prefix lengths so no copy runs past the longest prefix of its group (about 5/8 of the full cost)."""
    T = len(tokens_T)
    J = T - 1
    tokens_T = tokens_T.to(lm.device)
    bounds = sorted({max(1, -(-J * q // buckets)) for q in range(1, buckets + 1)})
    out, start = None, 0
    for end in bounds:  # copies j in [start, end) need prefixes of length ≤ end
        j = torch.arange(start, end, device=lm.device)
        batch = tokens_T[None, :end].expand(len(j), end)
        with torch.enable_grad(), _kv_leaves(lm) as leaves:
            loss = F.cross_entropy(_loss_logits(lm, batch, j), tokens_T[j + 1], reduction="sum")
            grads = torch.autograd.grad(loss, [z for _, _, z in leaves])
        per_layer: dict[int, list[torch.Tensor]] = {}
        for (layer, slices, _), g in zip(leaves, grads):
            per_layer.setdefault(layer, []).extend(g[..., s] for s in slices)
        g = torch.stack([torch.cat(per_layer[layer], -1) for layer in range(lm.n_layers)]).detach().cpu()
        if out is None:
            out = torch.zeros(lm.n_layers, J, T, g.shape[-1])
        out[:, start:end, :end] = g
        start = end
    return out


def donation_from_grads(g_LJTW: torch.Tensor, lengths: list[int]) -> dict:
    """Own / later gradient norms per layer and position, the donation share per context length, the ratio
    against the number of later losses, and how one later loss's push decays with distance (see the module
    docstring). Position 0 (the attention sink) is left out of every statistic and returned apart."""
    Lyr, J, T, _ = g_LJTW.shape
    i = torch.arange(J)
    own = g_LJTW[:, i, i].norm(dim=-1)  # (L, J)
    # later_n(i) = ‖Σ_{i<j≤n-2} g[j, i]‖ via prefix sums over j
    csum = torch.cumsum(g_LJTW[:, :, :J], dim=1)  # (L, J, J, W): sum over j' ≤ j
    out = {"own": own.numpy(), "share": {}, "sink_share": {}}
    for n in lengths:
        last = n - 2  # the last loss position inside a context of n tokens
        if last < 2 or n > T:
            continue
        later = (csum[:, last, :last] - csum[:, i[:last], i[:last]]).norm(dim=-1)  # (L, last) for i < last
        share = (later / (later + own[:, :last]).clamp_min(1e-30)).numpy()
        out["share"][n], out["sink_share"][n] = share[:, 1:], share[:, 0]  # (L, positions 1..last-1), (L,)
        if n == T:
            ratio = (later / own[:, :last].clamp_min(1e-30)).numpy()
            out["ratio"], out["sink_ratio"] = ratio[:, 1:], ratio[:, 0]
            out["later_count"] = (last - np.arange(1, last)).astype(np.float64)
    # one later loss against the own loss, by distance δ = j - i (positions i ≥ 1)
    pair = (g_LJTW[:, :, :J].norm(dim=-1) / own[:, None, :].clamp_min(1e-30)).numpy()  # (L, j, i)
    out["decay"] = np.array([np.median(np.stack([pair[:, i0 + d, i0] for i0 in range(1, J - d)]))
                             for d in range(1, J - 1)])
    return out


def _median_band(v_CK: np.ndarray, n_boot: int, seed: int) -> tuple[Band, np.ndarray]:
    """Median over contexts per column with a percentile bootstrap over contexts; also the resampled medians."""
    v = np.asarray(v_CK, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(v), size=(n_boot, len(v)))
    boots = np.median(v[idx], axis=1)  # (n_boot, K)
    lo, hi = np.quantile(boots, [0.025, 0.975], axis=0)
    return Band(np.median(v, 0).tolist(), lo.tolist(), hi.tolist()), boots


def _power_fit(x: np.ndarray, band: Band, boots: np.ndarray) -> PowerLaw:
    """log y = log c + b log x on the medians; b's interval from refitting every bootstrap resample."""
    med = np.asarray(band.mean)
    ok = (x > 0) & (med > 0) & (boots > 0).all(0)
    b, a = np.polyfit(np.log(x[ok]), np.log(med[ok]), 1)
    bb = [np.polyfit(np.log(x[ok]), np.log(r[ok]), 1)[0] for r in boots]
    return PowerLaw(exponent=Interval(float(b), *map(float, np.quantile(bb, [0.025, 0.975]))),
                    prefactor=float(np.exp(a)))


def run(cfg: DonationConfig) -> DonationResult:
    """``superpos run donation``: the gradient that later positions donate to keys/values."""
    from superpos.hypotheses.common import open_experiment

    if cfg.context_length < 6:
        raise ConfigError("context_length", "{field} must be at least 6")
    out, lm, tokens = open_experiment(cfg)
    N = cfg.context_length
    lengths = sorted({n for n in (8, 16, 32, 64, 128, 256, 512) if n <= N} | {N})
    per = []
    for c in tqdm(range(len(tokens)), desc="donation", unit="ctx", file=sys.stderr):
        per.append(donation_from_grads(pairwise_kv_grads(lm, torch.from_numpy(tokens[c].astype(np.int64))), lengths))
    ctx = np.arange(len(per))
    share = {n: cluster_band(np.stack([d["share"][n].mean(1) for d in per]), ctx, n_boot=cfg.n_boot, seed=cfg.seed)
             for n in lengths}
    share_median = {n: Interval(*bootstrap_ci(np.median, [np.median(d["share"][n]) for d in per],
                                              n_boot=cfg.n_boot, seed=cfg.seed)) for n in lengths}
    k = per[0]["later_count"]
    ratio, ratio_boots = _median_band(np.stack([np.median(d["ratio"], 0) for d in per]), cfg.n_boot, cfg.seed)
    decay, decay_boots = _median_band(np.stack([d["decay"] for d in per]), cfg.n_boot, cfg.seed)
    distance = np.arange(1, len(decay.mean) + 1)
    sink = SinkDonation(
        share=Interval(*bootstrap_ci(np.median, [np.median(d["sink_share"][N]) for d in per], n_boot=cfg.n_boot,
                                     seed=cfg.seed)),
        ratio=Interval(*bootstrap_ci(np.median, [np.median(d["sink_ratio"]) for d in per], n_boot=cfg.n_boot,
                                     seed=cfg.seed)))
    res = DonationResult(config=cfg, model=lm.name, layers=list(range(lm.n_layers)), lengths=lengths, share=share,
                         share_median=share_median, later_count=k.tolist(), ratio_by_later=ratio,
                         ratio_fit=_power_fit(k, ratio, ratio_boots),
                         mean_ratio=cluster_interval(np.array([d["ratio"].mean() for d in per]), ctx,
                                                     n_boot=cfg.n_boot, seed=cfg.seed),
                         distance=distance.tolist(), decay=decay, decay_fit=_power_fit(distance, decay, decay_boots),
                         sink=sink)
    return res
