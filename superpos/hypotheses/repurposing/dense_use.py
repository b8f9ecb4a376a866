"""A statistic of hypothesis 2 that can see dense use: how strongly a residual leans into a whole group of token
directions, against matched groups.

The max-z scan of ``token_stats`` looks at one token per position, so only sparse spikes above the extreme-value
ceiling register. Small, superposed use spread over many near-impossible tokens — what hypothesis 1 predicts —
shows instead in the group's average. For a position p, centred residual x_p and group G of unit directions,
with z_pt = x_p · d_t / σ_t the projection standardised by the layer's covariance (σ_t² = d_tᵀ Σ d_t, so every
z is N(0, 1) under a Gaussian null with that covariance):

* ``energy``: mean_{t ∈ G} z_pt² — use in either sign (1 under the null for any fixed group);
* ``push``: mean_{t ∈ G} z_pt — use toward the tokens.

The directions of a real vocabulary are not isotropic and the group means of z are correlated, so a value means
something only against groups chosen otherwise from the same directions: the near-impossible group of another
context at the same slot, a random set of tokens of the same expected size, and the likely tokens. Positions
vary within contexts: confidence intervals resample contexts (``superpos.stats``).
"""
from __future__ import annotations

import numpy as np
import torch

GROUPS = ("near_impossible", "other_context", "random_same_size", "likely")


def matched_groups(U_PV: torch.Tensor, L_PV: torch.Tensor, shuffle: np.ndarray, seed: int = 0) -> dict[str, torch.Tensor]:
    """(P, V) masks: the near-impossible group, another context's (``shuffle[p]``: the position paired with p),
    a uniformly random token set of the same expected size per position, and the likely group."""
    gen = torch.Generator().manual_seed(seed)
    share = U_PV.sum(1, keepdim=True) / U_PV.shape[1]
    inv = np.argsort(shuffle)  # inverse permutation: the position whose group pairs with each residual
    return {"near_impossible": U_PV, "other_context": U_PV[torch.from_numpy(inv)],
            "random_same_size": torch.rand(U_PV.shape, generator=gen) < share, "likely": L_PV}


def group_use(X_PD: torch.Tensor, dirs_VD: torch.Tensor, groups: dict[str, torch.Tensor],
              chunk: int = 512) -> dict[str, dict[str, np.ndarray]]:
    """{"energy": {group: (P,)}, "push": {group: (P,)}} (module docstring) for centred rows ``X_PD``, standardised
    by their own covariance; NaN where a group is empty."""
    P, D = X_PD.shape
    X = X_PD.to(dirs_VD.device, torch.float32)
    cov = X.T @ X / max(1, P - 1)
    sigma_V = ((dirs_VD @ cov) * dirs_VD).sum(1).clamp_min(1e-30).sqrt()
    out = {stat: {name: np.full(P, np.nan) for name in groups} for stat in ("energy", "push")}
    for i in range(0, P, chunk):
        z = (X[i:i + chunk] @ dirs_VD.T) / sigma_V
        for name, G in groups.items():
            g = G[i:i + chunk].to(z.device)
            n = g.sum(1)
            for stat, v in (("energy", z.pow(2)), ("push", z)):
                out[stat][name][i:i + chunk] = torch.where(n > 0, (v * g).sum(1) / n.clamp_min(1), torch.nan).cpu().numpy()
    return out
