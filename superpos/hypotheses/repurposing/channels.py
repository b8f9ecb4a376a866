"""Consistent channels: hypothesis 2 when the same token directions are borrowed in every context.

The max-z scan (``token_stats``) standardises each token's projection by the layer's own covariance. A direction
that the stream uses the same way in every context raises that covariance and so hides itself: writing one of 8
fixed tokens' rows at every position gives z ≈ 2.6 along the token written, below the scan's extreme-value
ceiling (≈ 4.6). Here a direction is read against each position's own energy instead:

    w_pt = D (x_p · d_t)² / ‖x_p‖²,

the share of position p's off-output energy along the unit direction d_t, in units of an average direction's
share (1 in an isotropic stream). The scan then looks for directions with a large mean w, as follows.

* **Candidates.** The tokens near-impossible at ≥ ``min_member`` of the selection positions. A consistent channel
  must borrow a token the model rarely needs.
* **Selection on one split.** The ``top`` candidates with the largest mean w are chosen on the selection contexts,
  using only the positions where each token is near-impossible. The same is done over as many random unit
  directions.
* **Reading on the other split.** On the other contexts, ``channel_tokens`` at a position is the mean w over the
  chosen tokens that are near-impossible there. ``channel_random`` is the mean w over the chosen random
  directions. Their difference is the channel excess. Because the directions are read on contexts that did not
  choose them, picking the largest does not inflate them.
* **What the excess can and cannot say.** Token directions line up with the stream's principal directions more
  than random ones do, so the excess is not 0 without any channel: at the embedding layer (layer 0, no
  computation yet) it is the embedding's own token structure, and on SmolLM2 it is far larger there than
  mid-stack. There is no layer where a real model's answer is known to be 0, so on a real model the excess is
  descriptive. A planted channel is read against the same model unhooked, at the same positions
  (``mechanisms.detect``): that paired difference is 0 without the plant, and its size at each α is the scan's
  power.

What it cannot see: a channel carried by tokens that are plausible in many contexts (they are not candidates),
and one spread so thinly over many tokens that none of the ``top`` stands out.
"""
from __future__ import annotations

import numpy as np
import torch

from superpos.hypotheses.repurposing.config import CHANNEL_MIN_MEMBER, CHANNEL_TOP


def _shares(X_PD: torch.Tensor, energy_P: torch.Tensor, dirs_KD: torch.Tensor) -> torch.Tensor:
    """(P, K) w: each position's share of its energy along each unit direction, × D."""
    return X_PD.shape[1] * (X_PD @ dirs_KD.T).pow(2) / energy_P[:, None]


def _mean_share(X_PD, energy_P, dirs_KD, mask_PK=None, chunk: int = 512) -> torch.Tensor:
    """(K,) mean w per direction over the rows (over the rows where ``mask_PK`` holds, when given)."""
    num = torch.zeros(len(dirs_KD), dtype=torch.float64, device=X_PD.device)
    den = torch.zeros_like(num)
    for i in range(0, len(X_PD), chunk):
        w = _shares(X_PD[i:i + chunk], energy_P[i:i + chunk], dirs_KD)
        m = torch.ones_like(w) if mask_PK is None else mask_PK[i:i + chunk].to(w.device, w.dtype)
        num += (w * m).sum(0).double()
        den += m.sum(0).double()
    return torch.where(den > 0, num / den.clamp_min(1), torch.nan)


def channel_scan(X_PD: torch.Tensor, U_PV: torch.Tensor, tok_VD: torch.Tensor, rand_VD: torch.Tensor,
                 sel_P: np.ndarray, top: int = CHANNEL_TOP, min_member: float = CHANNEL_MIN_MEMBER) -> dict[str, np.ndarray]:
    """Per position: ``channel_tokens`` and ``channel_random`` (module docstring) on the off-output rows ``X_PD``,
    the directions chosen on the positions ``sel_P`` (all positions when none is selected). A position where none
    of the chosen tokens is near-impossible reads the random side's value (excess 0)."""
    dev = tok_VD.device
    X = X_PD.to(dev, torch.float32)
    energy = X.pow(2).sum(1).clamp_min(1e-30)
    sel = torch.from_numpy(np.asarray(sel_P, dtype=bool))
    if not sel.any():
        sel = torch.ones(len(X), dtype=torch.bool)
    cand = torch.nonzero(U_PV[sel].float().mean(0) >= min_member).squeeze(1)
    nan = np.full(len(X), np.nan)
    if len(cand) == 0:
        return {"channel_tokens": nan, "channel_random": nan}
    k = min(top, len(cand))
    X_sel, e_sel = X[sel.to(dev)], energy[sel.to(dev)]
    tok_mean = _mean_share(X_sel, e_sel, tok_VD[cand.to(dev)], U_PV[sel][:, cand])
    chosen_tok = cand[torch.topk(tok_mean.nan_to_num(float("-inf")), k).indices.cpu()]
    rand_mean = _mean_share(X_sel, e_sel, rand_VD[:len(cand)])
    chosen_rand = torch.topk(rand_mean, k).indices
    w_rand = _shares(X, energy, rand_VD[chosen_rand.to(dev)]).mean(1)
    w_tok = _shares(X, energy, tok_VD[chosen_tok.to(dev)])
    m = U_PV[:, chosen_tok].to(dev, w_tok.dtype)
    n = m.sum(1)
    w_tok = torch.where(n > 0, (w_tok * m).sum(1) / n.clamp_min(1), w_rand)
    return {"channel_tokens": w_tok.cpu().numpy(), "channel_random": w_rand.cpu().numpy()}
