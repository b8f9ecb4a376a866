"""Who writes the favoured near-impossible direction, and who takes it out: every block's attention and MLP
output read along one direction per position.

At the verdict's layer L each sampled position p has a favoured near-impossible token t*(p) (the argmax of the
off-output z over its group, as in criterion (i)) and, for the null, the same argmax taken over random directions
q*(p). Every component c (the attention and the MLP of every block) adds out_c(p) to the residual; its write
along a unit direction d is w_c(p) = out_c(p)·d / ‖r_L(p) − μ_L‖, a share of the residual's size. Selecting a
maximum at L makes the writes before L lean toward it on any direction; repurposing predicts writes toward t*
beyond that (w along t* minus w along q*, before L) and writes against it after L (write → later cancel).

Every unembedding row shares a common direction, and late blocks write along it (on SmolLM2, +0.59 ‖r − μ‖
after layer 15 along any near-impossible token): q* has none of it. So the token-specific contrast is t* minus
u(p), a near-impossible token of the same position drawn at random: both are token directions, only t* was
singled out.
"""
from __future__ import annotations

from contextlib import ExitStack

import numpy as np
import torch

from superpos.hypotheses.repurposing.ablation import random_members
from superpos.hypotheses.repurposing.result import WritesView
from superpos.stats import cluster_band, cluster_interval

COMPONENTS = ("attn", "mlp")


def component_writes(lm, tokens_NC: np.ndarray, ctx_P: np.ndarray, pos_P: np.ndarray, dirs_PKD: torch.Tensor,
                     batch_size: int = 8) -> np.ndarray:
    """(P, n_blocks, 2, K): out_c(p)·d for the attention and MLP of every block at the positions (ctx_P, pos_P) of
    ``tokens_NC`` and the K directions ``dirs_PKD[p]`` of each position. Only the contexts in ``ctx_P`` are run."""
    n, K = lm.n_layers, dirs_PKD.shape[1]
    out = np.zeros((len(ctx_P), n, len(COMPONENTS), K))
    ids = np.unique(ctx_P)
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size]
        rows = np.flatnonzero(np.isin(ctx_P, batch))
        b_idx = torch.from_numpy(np.searchsorted(batch, ctx_P[rows])).to(lm.device)
        t_idx = torch.from_numpy(pos_P[rows]).to(lm.device)
        d = dirs_PKD[torch.from_numpy(rows)].float().to(lm.device)

        def reader(j, c):
            def read(o):
                out[rows, j, c] = torch.einsum("pd,pkd->pk", o[b_idx, t_idx].float(), d).cpu().numpy()
                return o
            return read
        with ExitStack() as stack, torch.inference_mode():
            for j in range(n):
                for c, name in enumerate(COMPONENTS):
                    stack.enter_context(lm.splice_component(j, name, reader(j, c)))
            lm.model(torch.from_numpy(tokens_NC[batch].astype(np.int64)).to(lm.device))
    return out


def write_profile(lm, sample, layer: int, top_token_P: np.ndarray, top_rand_P: np.ndarray, tok_VD: torch.Tensor,
                  rand_VD: torch.Tensor, U_PV: torch.Tensor | None = None, n_boot: int = 1000,
                  seed: int = 0) -> WritesView:
    """``component_writes`` along t*(p), q*(p) and (with ``U_PV``) u(p), a random near-impossible token of the
    position, at ``sample``'s positions, scaled by ‖r_L − μ_L‖ (module docstring)."""
    dirs = [tok_VD[torch.from_numpy(top_token_P)].cpu(), rand_VD[torch.from_numpy(top_rand_P)].cpu()]
    if U_PV is not None:
        u = random_members(U_PV, 1, torch.Generator().manual_seed(seed))[:, 0]
        dirs.append(tok_VD[u.to(tok_VD.device)].cpu())
    w = component_writes(lm, sample.tokens_NC, sample.ctx_P, sample.pos_P, torch.stack(dirs, 1))
    R = sample.at(layer)
    w = w / (R - R.mean(0)).norm(dim=1).clamp_min(1e-12).numpy()[:, None, None, None]
    ctx = sample.ctx_P

    def ci(v):
        return cluster_interval(v, ctx, n_boot=n_boot, seed=seed)

    def band(v):
        return cluster_band(v, ctx, n_boot=n_boot, seed=seed)

    def split(v):  # (P, blocks) -> sums over the blocks before L and from L on
        return ci(v[:, :layer].sum(1)), ci(v[:, layer:].sum(1))
    tot = w.sum(2)  # attention + MLP, (P, blocks, K)
    vs_q = w[..., 0] - w[..., 1]  # (P, blocks, components)
    (before, after), (before_t, after_t), (before_q, after_q) = split(vs_q.sum(2)), split(tot[..., 0]), split(tot[..., 1])
    view = WritesView(layer=layer, n_contexts=int(len(np.unique(ctx))), attn=band(vs_q[:, :, 0]),
                      mlp=band(vs_q[:, :, 1]), before=before, after=after, before_token=before_t, after_token=after_t,
                      before_random=before_q, after_random=after_q)
    if U_PV is not None:
        vs_u = w[..., 0] - w[..., 2]
        view.attn_vs_near_impossible, view.mlp_vs_near_impossible = band(vs_u[:, :, 0]), band(vs_u[:, :, 1])
        view.before_vs_near_impossible, view.after_vs_near_impossible = split(vs_u.sum(2))
        view.before_near_impossible, view.after_near_impossible = split(tot[..., 2])
    return view
