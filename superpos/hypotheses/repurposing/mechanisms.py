"""Planted mechanisms of hypothesis 2: controls that the repurposing statistics must see (or must not).

A control hooks the model, and the whole experiment then runs on the hooked model. At every position ≥ 1 (the
attention sink is left alone) it writes ``alpha × ‖r‖`` along a direction drawn per position at residual layer a,
and removes it at layer b (``control_layers``). The controls differ in the direction, in where the write enters
and in how it is removed. "Scanned" directions are the unit token directions criterion (i) scans (the run's
``--basis``, with the shared direction projected out under ``--remove-shared``):

=============  =================================================================  ============  ==========
control        direction                                                          written by    removed
=============  =================================================================  ============  ==========
``positive``   a random token's scanned direction (near-impossible in almost      residual a    exactly
               every context)
``gamma``      a random token's row in the other basis (raw W_U when the          residual a    exactly
               statistic scans γ ⊙ W_U, and the reverse)
``subspace``   a random unit vector in the span of ``rank`` random tokens' rows    residual a    exactly
``consistent`` one of ``CONSISTENT_TOKENS`` fixed tokens' scanned directions, the  residual a    exactly
               same tokens in every context (it lives in the layer's covariance,
               where the max-z scan cannot see it; ``channels`` can)
``attn``       a random token's scanned direction                                  the attention exactly
                                                                                   of the block
                                                                                   making a
``mlp``        the same                                                            that MLP      exactly
``gated``      the same                                                            residual a    gated
``anti``       the same                                                            residual a    reversed
``negative``   a random unit vector that is no token's direction                   residual a    exactly
=============  =================================================================  ============  ==========

Gated removal is what a later component can do: it reads how much of the planted direction v̂ the stream at b
carries, c = r·v̂, and removes σ(4(c/|v| − ½))·c of it — about 88 % of an intact plant, less of a weaker one,
and whatever else the stream holds along v̂ with it.

``anti`` subtracts 2v at b: the stream from b on carries −v, so the token pushed mid-stack is pushed *down* at the
output (a push anti-correlated with the final logit). The off-output part (``token_stats.off_output_part``) removes
whatever the final residual predicts linearly, and −v at the output predicts +v mid-stack, so this is the control
for that route: tests/test_mechanisms.py measures how much of it the regression takes out.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import NamedTuple

import numpy as np
import torch

from superpos.errors import SuperposError
from superpos.hypotheses.repurposing.ablation import token_directions
from superpos.hypotheses.repurposing.config import RepurposingConfig
from superpos.hypotheses.repurposing.result import MechanismRow
from superpos.settings import CONTROL_KINDS as CONTROLS

SUBSPACE_RANK = 4  # tokens spanning the ``subspace`` control's direction at each position
CONSISTENT_TOKENS = 8  # the fixed tokens the ``consistent`` control writes, one per position
DESCRIPTIONS = {
    "positive": "a random token's scanned direction",
    "negative": "a random non-token direction",
    "gamma": "a random token's row in the basis the statistic does not scan (raw W_U against γ ⊙ W_U)",
    "subspace": f"a random direction in the span of {SUBSPACE_RANK} random tokens' scanned directions",
    "consistent": f"one of {CONSISTENT_TOKENS} fixed tokens' scanned directions, the same in every context",
    "attn": "a random token's scanned direction, written by the attention of the block that makes layer a",
    "mlp": "a random token's scanned direction, written by the MLP of the block that makes layer a",
    "gated": "a random token's scanned direction, removed by a gate that reads the stream (about 88 %)",
    "anti": "a random token's scanned direction, reversed rather than removed (the output carries −v)",
}
#: what criterion (i) scans, as the config declares it by default (``basis``, ``remove_shared``, ``context_cos``)
SCAN_DEFAULTS = {k: getattr(RepurposingConfig(), k) for k in ("basis", "remove_shared", "context_cos")}


def control_layers(n_layers: int) -> tuple[int, int]:
    """Residual layers where a planted control writes (a) and removes (b) its directions."""
    a = max(1, round(n_layers / 3))
    b = min(n_layers - 1, max(a + 1, round(2 * n_layers / 3)))
    return a, b


def control_directions(tok_VD: torch.Tensor | None, kind: str, B: int, T: int, D: int,
                       gen: torch.Generator) -> torch.Tensor:
    """(B, T, D) unit directions of control ``kind`` (module docstring), one per position, drawn from the unit token
    directions ``tok_VD`` (None for ``negative``, whose directions are no token's)."""
    if kind == "negative":
        dirs = torch.randn(B, T, D, generator=gen)
        return dirs / dirs.norm(dim=-1, keepdim=True)
    if kind == "subspace":
        t = torch.randint(0, len(tok_VD), (B, T, SUBSPACE_RANK), generator=gen)
        dirs = torch.einsum("btk,btkd->btd", torch.randn(B, T, SUBSPACE_RANK, generator=gen), tok_VD[t])
        return dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return tok_VD[torch.randint(0, len(tok_VD), (B, T), generator=gen)]


def gated_removal(resid: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``resid`` minus σ(4(c/|v| − ½))·c·v̂ with c = resid·v̂ per position (positions where v = 0 untouched)."""
    norm = v.norm(dim=-1, keepdim=True)
    v_hat = v / norm.clamp_min(1e-12)
    c = (resid.float() * v_hat).sum(-1, keepdim=True)
    gate = torch.sigmoid(4 * (c / norm.clamp_min(1e-12) - 0.5))
    return resid - (gate * c * v_hat * (norm > 0)).to(resid.dtype)


@contextmanager
def planted_control(lm, kind: str, alpha: float = 1.0, seed: int = 0, basis: str = SCAN_DEFAULTS["basis"],
                    remove_shared: bool = SCAN_DEFAULTS["remove_shared"]):
    """Install control ``kind``'s hooks (module docstring); ``none``: no hooks. ``basis`` and ``remove_shared``:
    the directions the statistic scans (``token_stats.scan_directions``)."""
    if kind not in CONTROLS:
        raise SuperposError(f"unknown control '{kind}' (choose from {', '.join(CONTROLS)})")
    if kind == "none":
        yield
        return
    a, b = control_layers(lm.n_layers)
    gen = torch.Generator().manual_seed(seed)
    other = {"output": "unembedding", "unembedding": "output"}[basis]
    tok_VD = (None if kind == "negative" else token_directions(lm, other).cpu() if kind == "gamma"
              else token_directions(lm, basis, remove_shared).cpu())
    if kind == "consistent":  # drawn once: every position then writes one of these
        tok_VD = tok_VD[torch.randint(0, len(tok_VD), (CONSISTENT_TOKENS,), generator=gen)]
    state: dict = {}

    def plant(resid, size_from):
        B, T, D = resid.shape
        dirs = control_directions(tok_VD, kind, B, T, D, gen).to(resid.device)
        v = alpha * size_from.float().norm(dim=-1, keepdim=True) * dirs
        v[:, 0] = 0
        state["v"] = v
        return v

    def write(resid):
        return resid + plant(resid, resid).to(resid.dtype)

    def remove(resid):
        if kind == "gated":
            return gated_removal(resid, state["v"])
        return resid - (2 if kind == "anti" else 1) * state["v"].to(resid.dtype)

    with ExitStack() as stack:
        if kind in ("attn", "mlp"):  # sized by the residual the block receives, as for the other controls
            seen = stack.enter_context(lm.capture([a - 1]))
            stack.enter_context(lm.splice_component(a - 1, kind, lambda out: out + plant(out, seen[a - 1]).to(out.dtype)))
        else:
            stack.enter_context(lm.splice(a, write))
        stack.enter_context(lm.splice(b, remove))
        yield


class HookedRead(NamedTuple):
    """One hooked model's statistics at a layer (``layer_stats``' dict with the consistent-channel scan), the
    context of each position, and the positions that chose the channels."""

    stats: dict
    ctx_P: np.ndarray
    sel_P: np.ndarray

    @property
    def channel_excess(self) -> np.ndarray:
        """Per position: the chosen tokens' energy share minus the chosen random directions' (``channels``)."""
        return self.stats["channel_tokens"] - self.stats["channel_random"]


def read_hooked(lm, tokens_NC, kind, alpha, layer, *, per_context, unlikely, likely, exclude_recent, z_high,
                seed, basis: str = SCAN_DEFAULTS["basis"], remove_shared: bool = SCAN_DEFAULTS["remove_shared"],
                context_cos: float = SCAN_DEFAULTS["context_cos"]) -> HookedRead:
    """Hook ``lm`` with control ``kind`` at size ``alpha``, sample its residuals at ``layer`` and the output over
    ``tokens_NC``, form the groups from the hooked model's own output, and compute the statistics at ``layer``
    exactly as the experiment does (the same scanned directions, near-duplicates of context tokens left out), with
    the channels chosen on half the contexts."""
    from superpos.hypotheses.lenses.lens import final_logprobs
    from superpos.hypotheses.repurposing.ablation import context_directions, exclude_near_context
    from superpos.hypotheses.repurposing.token_stats import (
        layer_stats,
        scan_directions,
        selection_mask,
        shuffle_contexts,
        token_groups,
    )
    from superpos.model.residuals import sample_residuals

    with planted_control(lm, kind, alpha, seed, basis, remove_shared):
        s = sample_residuals(lm, tokens_NC, per_context, layers=[layer, lm.n_layers], seed=seed, progress=False)
    recent = s.recent_tokens(exclude_recent or tokens_NC.shape[1])
    U, L = token_groups(final_logprobs(lm, s), unlikely, likely, recent)
    tok_VD, rand_VD = scan_directions(lm, seed, basis, remove_shared)
    exclude_near_context(U, recent, tok_VD, context_directions(lm, basis, remove_shared), context_cos)
    sel = selection_mask(s.ctx_P, 0.5, seed)
    st = layer_stats(s.at(layer), s.at(lm.n_layers), U, L, tok_VD, rand_VD, shuffle_contexts(s.ctx_P), z_high, seed,
                     channel_sel=sel)
    return HookedRead(st, s.ctx_P, sel)


def mechanism_row(read: HookedRead, kind: str, alpha: float, unhooked: HookedRead | None, *, n_boot: int,
                  seed: int) -> MechanismRow:
    """A control's row from its ``read``: criterion (i) of the verdict, the same with the unhooked model at the same
    positions as the baseline (``power.criterion_i`` with ``baseline``), and the consistent-channel excess minus the
    unhooked model's on the contexts that did not choose the channels. ``unhooked``: ``read_hooked(..., "none",
    ...)`` on the same tokens (None for the unhooked model itself, read against itself)."""
    from superpos.hypotheses.repurposing.power import criterion_i
    from superpos.hypotheses.repurposing.token_stats import tested_mask
    from superpos.stats import cluster_interval

    base = read if unhooked is None else unhooked
    if not np.array_equal(base.ctx_P, read.ctx_P):
        raise SuperposError("the unhooked read is not at the same positions as the hooked one")
    excess, effect = criterion_i(read.stats, read.ctx_P, n_boot, seed)
    ex_u, ef_u = criterion_i(read.stats, read.ctx_P, n_boot, seed, baseline=base.stats)
    over = read.channel_excess - base.channel_excess
    held = tested_mask(read.sel_P)
    channel = cluster_interval(over[held], read.ctx_P[held], n_boot=n_boot, seed=seed)
    return MechanismRow(control=kind, alpha=float(alpha), detected=bool(excess.lo > 0 and effect.lo > 0), excess=excess,
                        effect=effect, channel=channel, channel_detected=bool(channel.lo > 0),
                        excess_vs_unhooked=ex_u, effect_vs_unhooked=ef_u,
                        detected_vs_unhooked=bool(ex_u.lo > 0 and ef_u.lo > 0))


def detect(lm, tokens_NC: np.ndarray, kind: str, alpha: float, layer: int, *, per_context: int, unlikely: float,
           likely: float, exclude_recent: int = 0, z_high: float = 5.0, n_boot: int = 200, seed: int = 0,
           unhooked: HookedRead | None = None, basis: str = SCAN_DEFAULTS["basis"],
           remove_shared: bool = SCAN_DEFAULTS["remove_shared"],
           context_cos: float = SCAN_DEFAULTS["context_cos"]) -> MechanismRow:
    """``read_hooked`` then ``mechanism_row``: criterion (i) at ``layer`` on the model hooked with control ``kind``
    at size ``alpha``, read against the Gaussian null and against the unhooked model at the same positions, and its
    consistent-channel excess beyond the unhooked model's (``unhooked``: ``read_hooked(..., "none", ...)``; read
    here when not given)."""
    kw = dict(per_context=per_context, unlikely=unlikely, likely=likely, exclude_recent=exclude_recent, z_high=z_high,
              seed=seed, basis=basis, remove_shared=remove_shared, context_cos=context_cos)
    read = read_hooked(lm, tokens_NC, kind, alpha, layer, **kw)
    if unhooked is None and kind != "none":
        unhooked = read_hooked(lm, tokens_NC, "none", 0.0, layer, **kw)
    return mechanism_row(read, kind, alpha, unhooked, n_boot=n_boot, seed=seed)
