"""Non-negative dictionaries over signed activations: NMF (with a sign split) and semi-NMF.

Residual activations are signed. Two ways to use non-negativity:

* :class:`NMF` with ``sign_split=True`` maps x ∈ ℝ^d to [relu(x), relu(−x)] ∈ ℝ₊^{2d} and factorises
  that as H·W with H, W ≥ 0 (multiplicative updates; mini-batch with accumulated statistics for
  streams). An atom's direction in the original space is W[:, :d] − W[:, d:], so reconstruction stays
  linear: x̂ = H (W₊ − W₋). ``components_`` are those atoms, unit-norm; codes absorb their norms.
  With ``sign_split=False`` the input itself must be non-negative (plain NMF).
* :class:`SemiNMF` (Ding, Li & Jordan 2010): signed atoms W, non-negative codes H, x ≈ H W.

Both run at a chosen L0 with ``k``: the code step keeps each row's ``k`` largest contributions halfway through
its multiplicative updates, which then refine them on that support (they never revive a zero), so every code has
at most ``k`` non-zeros — while fitting and in ``transform``. ``k=None`` leaves the codes dense.
"""
from __future__ import annotations

import sys

import torch
from tqdm import tqdm

from superpos import distributed
from superpos.dictionaries.base import SEED, BaseDictionary, as_tensor, check_finite
from superpos.dictionaries.params import Bool, Int, Param, Params, Real
from superpos.dictionaries.sources import rows_from
from superpos.errors import SuperposError

EPS = 1e-10


def _pos(a):
    return (a.abs() + a) / 2


def _neg(a):
    return (a.abs() - a) / 2


class _FactorisationBase(BaseDictionary):
    """Shared fit loop: full-batch alternating updates in memory, mini-batch over streams. A kind implements
    ``_init_W``, ``_update_H``, ``_update_W_full``, ``_update_W_stats`` and ``_atoms`` (and ``_prepare`` when it
    transforms its input)."""

    _params = Params(
        expansion=Param(4.0, "Atoms per input dimension when ``n_components`` is None.",
                        Real(0, closed="neither")),
        k=Param(None, "Most non-zeros per code, while fitting and in ``transform``; None: dense codes.",
                Int(1, none=True)),
        max_iter=Param(300, "Alternating updates of a full-batch (in-memory) fit.", Int(1)),
        transform_iter=Param(100, "Multiplicative updates that solve the codes of a batch.", Int(0)),
        batch_size=Param(4096, "Rows per mini-batch; in-memory data of at most this many rows is fitted full-batch.",
                         Int(1)),
        n_tokens=Param(None, "Rows a streamed fit reads; None: one pass.", Int(1, none=True)),
        forget=Param(0.99, "How much of the accumulated statistics each mini-batch keeps (per batch_size rows).",
                     Real(0, 1)),
        seed=SEED,
    )

    def _prepare(self, x_BD: torch.Tensor) -> torch.Tensor:
        return x_BD

    def _objective(self, X) -> float:
        """0.5‖X' − H W‖²_F on the prepared input (what the updates minimise)."""
        x = self._prepare(as_tensor(X, self._device()))
        h = self._solve_codes(x, self._W)
        return 0.5 * (x - h @ self._W).pow(2).sum().item()

    def fit(self, X, y=None, *, layer: int | None = None):
        """Fit afresh: multiplicative updates in memory for small ``X``, else mini-batch over a stream."""
        self._validate_params()
        src = rows_from(X, layer)
        d = src.d_model
        dev = self._device()
        for name in ("_A", "_B"):  # streaming statistics belong to the dictionary being replaced
            self.__dict__.pop(name, None)
        gen = torch.Generator().manual_seed(self.seed)
        if src.in_memory and src.n_rows() <= self.batch_size:
            x = self._prepare(src.tensor().to(dev))
            check_finite(x, f"{self.kind} input")
            W = self._init_W(x, gen)
            H = self._init_H(x, x @ W.T, W)
            for _ in tqdm(range(self.max_iter), desc=f"fit {self.kind}", file=sys.stderr, disable=not self.progress):
                # sparse codes are solved afresh each time, so their support can follow the atoms
                H = self._solve_codes(x, W) if self.k else self._update_H(x @ W.T, W @ W.T, H)
                W = self._update_W_full(x, H, W)
            self._W = W
            self.n_iter_ = self.max_iter
        else:
            n_rows = src.n_rows(self.min_pos)
            steps = max(1, (self.n_tokens or n_rows) // min(self.batch_size, n_rows))
            batches = src.batches(min(self.batch_size, n_rows), dev, seed=self.seed, min_pos=self.min_pos)
            first = self._prepare(next(batches))
            check_finite(first, f"{self.kind} input")
            W = self._init_W(first, gen)
            A = torch.zeros(W.shape[0], W.shape[0], device=dev)
            B = torch.zeros_like(W)
            x = first
            distributed.check_batch(len(first))  # under torchrun: global batches, each rank codes a slice
            bar = tqdm(range(steps), desc=f"fit {self.kind}", file=sys.stderr,
                       disable=not self.progress or not distributed.is_main())
            for step in bar:
                if step:
                    x = self._prepare(next(batches))
                    if not torch.isfinite(x).all():
                        raise SuperposError(f"NaN/inf in {self.kind} input batch at step {step}")
                rho = self.forget ** (x.shape[0] / self.batch_size) if step else 0.0
                x_local = distributed.shard(x)
                H = self._solve_codes(x_local, W)
                A = rho * A + distributed.all_reduce_(H.T @ H)  # sufficient statistics of the global batch
                B = rho * B + distributed.all_reduce_(H.T @ x_local)
                W = self._update_W_stats(A, B, W)
            self._W = W
            self.n_iter_ = steps
        self._publish(d)
        return self

    def partial_fit(self, X, y=None, *, layer: int | None = None):
        """Update the dictionary with one mini-batch pass over ``X``, keeping accumulated statistics; continues
        from the fitted dictionary (after ``fit`` or ``load_dictionary``) when there is one."""
        self._validate_params()
        src = rows_from(X, layer)
        d = src.d_model
        self._check_width(d)
        dev = self._device()
        for x in src.batches(self.batch_size, dev, seed=self.seed, min_pos=self.min_pos, epochs=1):
            x = self._prepare(x)
            if not hasattr(self, "_A"):
                fitted = "W_" in vars(self)
                self._W = self.W_.to(dev) if fitted else self._init_W(x, torch.Generator().manual_seed(self.seed))
                self._A = torch.zeros(self._W.shape[0], self._W.shape[0], device=dev)
                self._B = torch.zeros_like(self._W)
            H = self._solve_codes(x, self._W)
            self._A = self.forget * self._A + H.T @ H
            self._B = self.forget * self._B + H.T @ x
            self._W = self._update_W_stats(self._A, self._B, self._W)
        self._publish(d)
        return self

    def _solve_codes(self, x, W) -> torch.Tensor:
        """Multiplicative updates from ``_init_H``. With ``k``: halfway, all but each row's ``k`` largest
        contributions (code × atom norm) are set to 0 — multiplicative updates keep zeros at zero, so the
        codes end with at most ``k`` non-zeros, refined on that support."""
        xw, ww = x @ W.T, W @ W.T  # fixed while the codes are solved: computed once, not once per update
        H = self._init_H(x, xw, W)
        cut = self.transform_iter // 2 if self.k else -1
        for it in range(self.transform_iter):
            if it == cut:
                H = self._keep_top_k(H, W)
            H = self._update_H(xw, ww, H)
        return self._keep_top_k(H, W) if self.k and self.transform_iter == 0 else H

    def _keep_top_k(self, H, W) -> torch.Tensor:
        k = min(self.k, H.shape[1])
        idx = (H * self._atoms(W).norm(dim=1)).topk(k, dim=1).indices
        return torch.zeros_like(H).scatter_(1, idx, H.gather(1, idx))

    def _init_H(self, x, xw, W) -> torch.Tensor:
        """Each row's projection on each atom (``xw`` = x Wᵀ) over the atom's squared norm, plus a small positive
        floor (multiplicative updates never move a zero)."""
        gram = (W * W).sum(1).clamp_min(EPS)
        return xw.clamp_min(0) / gram + 1e-3 * x.abs().mean()

    def _publish(self, d: int) -> None:
        atoms = self._atoms(self._W)
        norms = atoms.norm(dim=1).clamp_min(EPS)
        self.components_ = atoms / norms[:, None]
        self.atom_norms_ = norms
        self.W_ = self._W

    def _encode(self, x_BD):
        return self._solve_codes(self._prepare(x_BD), self.W_) * self.atom_norms_

    def _decode(self, codes_BF):
        return codes_BF @ self.components_

    def load_state_dict(self, state):
        """Set the fitted tensors, and the internal factor ``W`` they come from."""
        super().load_state_dict(state)
        self._W = self.W_
        return self


class NMF(_FactorisationBase):
    """Mini-batch NMF in torch; see the module docstring for the sign split."""

    kind = "nmf"
    _state_names = ("W_", "atom_norms_")
    _params = Params(sign_split=Param(True, "Factorise the sign split [relu(x), relu(−x)] (any input); False: "
                                            "the input itself, which must be non-negative.", Bool()))

    def __init__(self, *, n_components=..., expansion=..., k=..., sign_split=..., max_iter=..., transform_iter=...,
                 batch_size=..., n_tokens=..., forget=..., min_pos=..., seed=..., device=..., progress=...):
        self._set_params(locals())

    def _prepare(self, x_BD):
        if self.sign_split:
            return torch.cat([x_BD.clamp_min(0), (-x_BD).clamp_min(0)], dim=1)
        if (x_BD < 0).any():
            raise SuperposError("NMF with sign_split=False needs non-negative input; use sign_split=True or SemiNMF")
        return x_BD

    def _init_W(self, x, gen):
        n = self.n_components or int(round(self.expansion * (x.shape[1] // (2 if self.sign_split else 1))))
        scale = (x.mean() / n).clamp_min(EPS).sqrt()
        return (torch.rand(n, x.shape[1], generator=gen) * scale).to(x.device) + EPS

    def _update_H(self, xw, ww, H):
        return H * xw / (H @ ww).clamp_min(EPS)

    def _update_W_full(self, x, H, W):
        return W * (H.T @ x) / ((H.T @ H) @ W).clamp_min(EPS)

    def _update_W_stats(self, A, B, W):
        for _ in range(5):
            W = W * B / (A @ W).clamp_min(EPS)
        return W

    def _atoms(self, W):
        if self.sign_split:
            d = W.shape[1] // 2
            return W[:, :d] - W[:, d:]
        return W


class SemiNMF(_FactorisationBase):
    """Semi-NMF: signed atoms, non-negative codes (Ding, Li & Jordan 2010), mini-batch over streams."""

    kind = "seminmf"
    _state_names = ("W_", "atom_norms_")
    _params = Params(ridge=Param(1e-6, "Ridge of the atoms' least-squares update, relative to the codes' "
                                       "mean energy.", Real(0)))

    def __init__(self, *, n_components=..., expansion=..., k=..., max_iter=..., transform_iter=..., batch_size=...,
                 n_tokens=..., forget=..., ridge=..., min_pos=..., seed=..., device=..., progress=...):
        self._set_params(locals())

    def _init_W(self, x, gen):
        n = self.n_components or int(round(self.expansion * x.shape[1]))
        idx = torch.randint(0, x.shape[0], (n,), generator=gen).to(x.device)
        return x[idx] + 0.01 * x.std() * torch.randn(n, x.shape[1], generator=gen).to(x.device)

    def _update_H(self, xw, ww, H):
        num = _pos(xw) + H @ _neg(ww)
        den = _neg(xw) + H @ _pos(ww)
        return H * (num / den.clamp_min(EPS)).sqrt()

    def _update_W_full(self, x, H, W):
        return self._update_W_stats(H.T @ H, H.T @ x, W)

    def _update_W_stats(self, A, B, W):
        # atoms come back unit-norm (the codes, solved afresh, carry the scale) and an atom no code used keeps its
        # place: unnormalised, the solve let atom norms drift apart until every code collapsed (docs/dictionaries.md)
        ridge = self.ridge * A.diagonal().mean().clamp_min(EPS)
        new = torch.linalg.solve(A + ridge * torch.eye(A.shape[0], device=A.device), B)
        norms = new.norm(dim=1, keepdim=True)
        used = A.diagonal()[:, None] > ridge
        return torch.where(used, new / norms.clamp_min(EPS), W / W.norm(dim=1, keepdim=True).clamp_min(EPS))

    def _atoms(self, W):
        return W
