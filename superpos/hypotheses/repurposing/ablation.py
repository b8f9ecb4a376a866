"""The causal test of hypothesis 2: project a per-position subspace out of the residual mid-stack and measure
what the next-token loss loses.

If the stream borrows the directions of tokens that are near-impossible in context for its computation, then
removing, at one middle layer, the few near-impossible directions it writes most strongly toward should cost
more loss than removing equally many directions chosen in ways that cannot be repurposing:

* ``near_impossible_top``: the ``rank`` near-impossible tokens (final probability < ``unlikely``, every token
  already in the context excluded, and with ``context_cos`` < 1 every near-duplicate of one: ``exclude_near_context``,
  as in criterion (i)) whose output directions the centred residual projects on most — the tokens
  the hypothesis says are borrowed;
* ``other_context``: the tokens the same rule picks for a position of another context (same selection, same
  marginal distribution of directions, not this context's);
* ``near_impossible_random``: ``rank`` near-impossible tokens drawn at random;
* ``likely``: the ``rank`` tokens the model finds most probable at the output (what removal of output-relevant
  directions costs);
* ``random_directions``: ``rank`` isotropic random unit vectors.

Directions are rows of γ ⊙ W_U (what the logits read; ``LoadedModel.output_gain_D``) or of raw W_E, optionally
with the shared direction of all rows (their unit mean) projected out, so that the token sets do not all remove
that one direction while the isotropic random set does not; the comparison that carries the result is then the
favourites against ``random_directions``. Each
subspace is orthonormalised per position (QR) and projected out of the residual at ``layer`` at every position
≥ ``min_pos`` (the attention sink is left alone); the loss change is the mean next-token NLL per context, ablated
minus clean, so confidence intervals resample contexts.
"""
from __future__ import annotations

import sys
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from superpos.errors import SuperposError

SETS = ("near_impossible_top", "other_context", "near_impossible_random", "likely", "random_directions")


class AblationResult(NamedTuple):
    """Per-context loss changes of projecting each subspace out at one layer."""

    layer: int
    rank: int
    basis: str  # "output" (γ ⊙ W_U) or "embedding" (W_E)
    sets: tuple[str, ...]
    clean_nll_C: np.ndarray  # (contexts,) mean next-token NLL, nats
    delta_nll_CS: np.ndarray  # (contexts, sets) ablated − clean, nats per token
    skipped_positions: int = 0  # positions with fewer than ``rank`` near-impossible tokens, left alone by every set
    shared_removed: bool = False  # the token sets' directions have the shared direction of all rows projected out
    context_cos: float = 1.0  # near-duplicates of a context token (|cos| ≥ this) left out of the near-impossible ones

    def delta(self, name: str) -> np.ndarray:
        """The per-context loss change of one set."""
        return self.delta_nll_CS[:, self.sets.index(name)]


def project_out(resid_BTD: torch.Tensor, Q_BTRD: torch.Tensor) -> torch.Tensor:
    """The residual minus its projection on each position's subspace (rows of ``Q`` orthonormal; R may be 0)."""
    Q_BTRD = Q_BTRD.to(resid_BTD.dtype)
    coef_BTR = torch.einsum("btd,btrd->btr", resid_BTD, Q_BTRD)
    return resid_BTD - torch.einsum("btr,btrd->btd", coef_BTR, Q_BTRD)


def orthonormal_rows(dirs_BTRD: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows (float64) spanning each position's R directions (reduced QR; R ≤ D)."""
    if dirs_BTRD.shape[-2] == 0:
        return dirs_BTRD.double()
    Q, _ = torch.linalg.qr(dirs_BTRD.transpose(-1, -2).double())
    return Q.transpose(-1, -2)


def context_tokens_mask(tok_BT: torch.Tensor, n_vocab: int) -> torch.Tensor:
    """(B, T, V) bool: token v occurs in the context at or before position t."""
    B, T = tok_BT.shape
    seen = torch.zeros(B, T, n_vocab, dtype=torch.bool, device=tok_BT.device)
    seen.scatter_(2, tok_BT[..., None], True)
    return seen.cummax(1).values


def choose_subspaces(resid_BTD: torch.Tensor, logp_BTV: torch.Tensor, tok_BT: torch.Tensor, dirs_VD: torch.Tensor,
                     rank: int, unlikely: float, gen: torch.Generator, min_pos: int = 1,
                     context_VD: torch.Tensor | None = None, context_cos: float = 1.0) -> dict[str, torch.Tensor]:
    """Each set's (B, T, rank, D) directions (module docstring), and the (B, T) mask of positions that have at least
    ``rank`` near-impossible tokens (the others are left alone by every set). ``dirs_VD``: unit token directions.
    With ``context_VD`` (``context_directions``) and ``context_cos`` < 1, near-duplicates of the context so far leave
    the near-impossible tokens too (``exclude_near_context``), as in criterion (i)."""
    B, T, D = resid_BTD.shape
    if B < 2:
        raise SuperposError("the other-context subspace needs at least 2 contexts per batch")
    near = (logp_BTV < np.log(unlikely)) & ~context_tokens_mask(tok_BT, logp_BTV.shape[-1])
    if context_VD is not None and context_cos < 1:
        exclude_near_context(near.view(B * T, -1), context_so_far(tok_BT.cpu().numpy()), dirs_VD, context_VD,
                             context_cos)
    x = resid_BTD.float()
    x = x - x[:, min_pos:].reshape(-1, D).mean(0)  # centred: the common direction of every residual is no one's
    proj = x @ dirs_VD.T  # (B, T, V)
    top = proj.masked_fill(~near, float("-inf")).topk(rank, dim=-1).indices
    idx = {"near_impossible_top": top,
           "other_context": top.roll(1, dims=0),
           "near_impossible_random": random_members(near, rank, gen),
           "likely": logp_BTV.topk(rank, dim=-1).indices}
    out = {name: dirs_VD[i] for name, i in idx.items()}
    rand = torch.randn(B, T, rank, D, generator=gen).to(resid_BTD.device)
    out["random_directions"] = rand / rand.norm(dim=-1, keepdim=True)
    return {name: out[name] for name in SETS}, near.sum(-1) >= rank


def _token_rows(lm, basis: str) -> torch.Tensor:
    """Rows of γ ⊙ W_U ("output"), W_U ("unembedding") or W_E ("embedding"), float32, unnormalised."""
    if basis == "output":
        return lm.W_U_VD.detach().float() * lm.output_gain_D().to(lm.W_U_VD.device)
    if basis == "unembedding":
        return lm.W_U_VD.detach().float()
    if basis == "embedding":
        return lm.W_E_VD.detach().float()
    raise SuperposError(f"unknown basis '{basis}' (expected output, unembedding or embedding)")


def unit_rows(W_VD: torch.Tensor) -> torch.Tensor:
    """Each row divided by its norm (a zero row stays zero)."""
    return W_VD / W_VD.norm(dim=1, keepdim=True).clamp_min(1e-12)


def mean_direction(W_VD: torch.Tensor) -> torch.Tensor:
    """The unit mean of the rows (float32): the direction every row shares."""
    m = W_VD.double().mean(0)
    return (m / m.norm().clamp_min(1e-30)).float()


def without_direction(dirs_VD: torch.Tensor, u_D: torch.Tensor | None) -> torch.Tensor:
    """Unit rows of ``dirs_VD`` with the unit direction ``u_D`` projected out (``dirs_VD`` itself, renormalised, when
    ``u_D`` is None)."""
    if u_D is None:
        return unit_rows(dirs_VD)
    u = u_D.to(dirs_VD.device, dirs_VD.dtype)
    return unit_rows(dirs_VD - (dirs_VD @ u)[:, None] * u)


def shared_direction(lm, basis: str = "output") -> torch.Tensor:
    """The shared token direction of ``basis``: the unit mean of its rows (``mean_direction``)."""
    return mean_direction(_token_rows(lm, basis))


def token_directions(lm, basis: str = "output", remove_shared: bool = False) -> torch.Tensor:
    """Unit token directions: rows of γ ⊙ W_U ("output", what the logits read), of W_U itself ("unembedding") or of
    W_E ("embedding"); with ``remove_shared``, the shared direction (``shared_direction``) projected out of every row
    before it is normalised."""
    W = _token_rows(lm, basis)
    return without_direction(W, mean_direction(W) if remove_shared else None)


def context_directions(lm, basis: str, remove_shared: bool) -> torch.Tensor:
    """Unit rows of W_E, what a context token writes into the stream, in the space ``basis`` is scanned in: with
    ``remove_shared`` the shared direction of ``basis`` (``shared_direction``) projected out, since no scanned
    direction sees it (γ is not applied: the final norm's gain acts at the output, not on what the embedding writes)."""
    return without_direction(lm.W_E_VD.detach().float(), shared_direction(lm, basis) if remove_shared else None)


def context_so_far(tok_BT: np.ndarray) -> np.ndarray:
    """(B·T, T) the tokens of each position's context up to and including it, -1 padded (``exclude_near_context``'s
    ``recent_PK`` for every position of a batch, rows in (b, t) order)."""
    B, T = tok_BT.shape
    upto = np.arange(T)[None, :] <= np.arange(T)[:, None]  # (t, s): s ≤ t
    return np.where(upto[None], tok_BT[:, None, :], -1).reshape(B * T, T)


def exclude_near_context(U_PV: torch.Tensor, recent_PK: np.ndarray, scan_VD: torch.Tensor, context_VD: torch.Tensor,
                         max_cos: float, chunk: int = 64) -> float:
    """Take out of the near-impossible masks ``U_PV`` (in place) every token u whose scanned direction ``scan_VD[u]``
    has |cos| ≥ ``max_cos`` with what one of the position's context tokens t (``recent_PK``, -1 padded) writes into
    the stream, ``context_VD[t]`` (``context_directions``: the raw embedding, in the scanned space): the stream
    carries t's embedding, and with it a share of every scanned direction it leans on. Returns the mean number of
    tokens taken out per position beyond those already out. ``max_cos`` ≥ 1 takes nothing out."""
    if max_cos >= 1:
        return 0.0
    seen = np.unique(recent_PK[recent_PK >= 0])
    near: dict[int, np.ndarray] = {}
    for i in range(0, len(seen), chunk):
        ids = torch.from_numpy(seen[i:i + chunk]).to(context_VD.device)
        hit = (context_VD[ids] @ scan_VD.T.to(context_VD.device)).abs() >= max_cos
        for t, row in zip(seen[i:i + chunk].tolist(), hit.cpu()):
            near[t] = torch.nonzero(row)[:, 0].numpy()
    taken = 0
    for p in range(len(U_PV)):
        toks = np.unique(recent_PK[p][recent_PK[p] >= 0])
        if len(toks) == 0:
            continue
        cols = torch.from_numpy(np.unique(np.concatenate([near[t] for t in toks.tolist()]))).to(U_PV.device)
        taken += int(U_PV[p, cols].sum())
        U_PV[p, cols] = False
    return taken / max(1, len(U_PV))


def random_members(mask: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """(..., k) indices of ``k`` True entries of each row of ``mask``, drawn uniformly (a row with fewer than k fills
    the rest with False entries)."""
    draw = torch.rand(mask.shape, generator=gen).to(mask.device).masked_fill(~mask, -1.0)
    return draw.topk(k, dim=-1).indices


def _nll_per_context(logits_BTV: torch.Tensor, tok_BT: torch.Tensor, min_pos: int) -> torch.Tensor:
    """Mean next-token NLL per context over predictions made at positions ≥ min_pos."""
    logp = F.log_softmax(logits_BTV[:, min_pos:-1].float(), -1)
    return -logp.gather(-1, tok_BT[:, min_pos + 1:, None])[..., 0].mean(1)


def subspace_ablation(lm, tokens_NC: np.ndarray, layer: int, rank: int, *, unlikely: float = 1e-6,
                      basis: str = "output", remove_shared: bool = False, context_cos: float = 1.0, min_pos: int = 1,
                      batch_size: int = 4, seed: int = 0, progress: bool = True) -> AblationResult:
    """Project each set's rank-``rank`` subspace out of the residual at ``layer`` (module docstring) and return
    the per-context loss change. ``rank`` 0 is the empty subspace: every change is exactly 0. With ``remove_shared``
    the token sets' directions have the shared direction of all rows projected out (``token_directions``), so that
    no token set removes what every row has in common. ``context_cos`` < 1: near-duplicates of the context tokens
    leave the near-impossible tokens as in criterion (i) (``exclude_near_context``)."""
    from tqdm import tqdm

    lm.check_layers([layer])
    if not 0 <= rank <= lm.d_model:
        raise SuperposError(f"rank {rank} outside 0..{lm.d_model}")
    dirs_VD = token_directions(lm, basis, remove_shared)
    context_VD = context_directions(lm, basis, remove_shared) if context_cos < 1 else None
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.as_tensor(np.asarray(tokens_NC), dtype=torch.long)
    clean, deltas, skipped = [], [], 0
    with torch.inference_mode():
        for i in tqdm(range(0, len(tokens), batch_size), desc=f"ablation L{layer}", unit="batch", file=sys.stderr,
                      disable=not progress):
            tok = tokens[i:i + batch_size].to(lm.device)
            with lm.capture([layer]) as cap:
                logits = lm.model(tok).logits
            nll0 = _nll_per_context(logits, tok, min_pos)
            subspaces, ok_BT = choose_subspaces(cap[layer], F.log_softmax(logits.float(), -1), tok, dirs_VD, rank,
                                                unlikely, gen, min_pos, context_VD, context_cos)
            del logits
            skipped += int((~ok_BT[:, min_pos:]).sum())
            row = []
            for name in SETS:
                Q = orthonormal_rows(subspaces[name]) * ok_BT[..., None, None]  # too few near-impossible: no ablation

                def ablate(resid, Q=Q):  # in float64: what is left must be ~0, as the next norm rescales it
                    new = project_out(resid.double(), Q).to(resid.dtype)
                    new[:, :min_pos] = resid[:, :min_pos]
                    return new
                with lm.splice(layer, ablate):
                    row.append(_nll_per_context(lm.model(tok).logits, tok, min_pos) - nll0)
            clean.append(nll0.cpu())
            deltas.append(torch.stack(row, 1).cpu())
    return AblationResult(layer, rank, basis, SETS, torch.cat(clean).double().numpy(),
                          torch.cat(deltas).double().numpy(), skipped, remove_shared, context_cos)
