"""The nested lookahead comparison: two multinomial logistic probes over the same K classes, one on the base
features and one on the base features plus an extra block (the residual), scored on held-out positions as the
paired per-position gain in log-likelihood.

A probe's logit for class c at position p is

    b_c + Σ_m a[m, bucket(N_pm)] · log p̂_m(c | p) + x̃_p · W_c

* ``log p̂_m`` are *tied* features (one weight per feature, shared by every class): the n-gram's add-½ smoothed
  log-probabilities of each class after the last m tokens, their weight chosen per history length m and per
  bucket of how often that history was seen (``COUNT_BUCKETS``), so a rare history can be trusted less;
* ``x̃_p`` are *vector* features, standardised with training statistics: the model's log-probabilities at i on
  the K classes (a full K × K map, which can carry "the model expects t next, and t is followed by c"), the
  embedding of token i (the layer-0 residual) and, in the larger probe, the residual at i at a later layer.

Fitted by full-batch L-BFGS on the mean log-loss plus ``l2 / 2 · ‖W‖²`` (tied weights and biases unpenalised),
until the gradient's largest entry is below ``GRAD_TOL`` or ``max_iter`` iterations; whether it got there is kept
on the probe (``converged``). The larger probe of a nested pair is fitted *from* the smaller one (``init``): it
starts at the base solution with the added block's weights at 0, and the base block keeps the base's L2, so its
training objective starts at the base's and L-BFGS (a descent method) only lowers it: the pair is nested in fact,
not only in form.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: history counts are bucketed at these edges (a count below the first is "unseen": its features are 0)
COUNT_BUCKETS = (1, 4, 32)
#: a fit has converged when no entry of the objective's gradient is larger than this
GRAD_TOL = 1e-3
#: L-BFGS iterations per fit at most (in rounds of 100, the convergence checked after each)
MAX_ITER = 600


def ngram_features(counts_PMK: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Tied n-gram features from counts: (P, M, K) smoothed log-probabilities (centred per row; 0 where the
    history was never seen) and (P, M) bucket index of each history's count (0 = unseen)."""
    n = torch.from_numpy(np.asarray(counts_PMK, dtype=np.float32))
    total = n.sum(-1)
    logp = torch.log((n + 0.5) / (total[..., None] + 0.5 * n.shape[-1]))
    logp = logp - logp.mean(-1, keepdim=True)  # a constant per row changes no softmax
    bucket = torch.bucketize(total, torch.tensor(COUNT_BUCKETS, dtype=total.dtype), right=True)
    return logp * (bucket > 0)[..., None], bucket


@dataclass
class Features:
    """The inputs of one probe at P positions: tied n-gram features and a vector block (either may be empty)."""

    logp_PMK: torch.Tensor  # tied features (see ``ngram_features``); (P, 0, K) for none
    bucket_PM: torch.Tensor
    X_PF: torch.Tensor  # vector features, raw (standardised by the probe)

    def rows(self, idx: np.ndarray) -> "Features":
        """The features at the rows ``idx``."""
        i = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        return Features(self.logp_PMK[i], self.bucket_PM[i], self.X_PF[i])

    def with_block(self, extra_PE: torch.Tensor) -> "Features":
        """The same features with ``extra_PE`` appended to the vector block."""
        return Features(self.logp_PMK, self.bucket_PM, torch.cat([self.X_PF, extra_PE.to(self.X_PF)], 1))


@dataclass
class LogisticProbe:
    """A fitted probe (see the module docstring); ``log_likelihood`` and ``predict`` read it."""

    a_MB: torch.Tensor
    W_FK: torch.Tensor
    b_K: torch.Tensor
    mean_F: torch.Tensor
    std_F: torch.Tensor
    converged: bool = True  # the gradient's largest entry fell below GRAD_TOL
    iterations: int = 0  # L-BFGS iterations taken
    objective: float = float("nan")  # the training objective at the end (mean log-loss + penalties)
    pen_F: torch.Tensor | None = None  # the L2 strength on each W row (a probe started from this one keeps them)

    def logits(self, f: Features) -> torch.Tensor:
        """(P, K) class scores."""
        dev = self.W_FK.device
        z = self.b_K + ((f.X_PF.to(dev) - self.mean_F) / self.std_F) @ self.W_FK
        if f.logp_PMK.shape[1]:
            w_PM = self.a_MB[torch.arange(f.bucket_PM.shape[1], device=dev), f.bucket_PM.to(dev)]
            z = z + torch.einsum("pm,pmk->pk", w_PM, f.logp_PMK.to(dev))
        return z

    def log_likelihood(self, f: Features, y_P: np.ndarray) -> np.ndarray:
        """log p(y) per position (nats); ``y_P`` are class columns 0..K−1."""
        with torch.no_grad():
            lp = F.log_softmax(self.logits(f), -1)
            return lp[torch.arange(len(y_P)), torch.from_numpy(np.asarray(y_P)).to(lp.device)].double().cpu().numpy()

    def predict(self, f: Features) -> np.ndarray:
        """The most likely class column per position."""
        with torch.no_grad():
            return self.logits(f).argmax(-1).cpu().numpy()


def fit_logistic(f: Features, y_P: np.ndarray, n_classes: int, l2: float, device: str = "cpu",
                 max_iter: int = MAX_ITER, init: LogisticProbe | None = None,
                 l2_extra: float | None = None) -> LogisticProbe:
    """Full-batch L-BFGS on the mean log-loss + ``l2 / 2 · ‖W‖²`` (float32).

    Without ``init``, tied weights start at 1 for seen histories, W at 0 and the biases at the log class prior.
    With ``init`` (a probe fitted on the first F₀ vector columns of ``f``: the base of a nested pair), the fit
    starts at that solution (its tied weights, biases, W rows and their standardisation) with the other columns'
    weights at 0; those F₀ rows keep the penalties ``init`` was fitted with (``l2`` where it does not record them)
    and the added rows take ``l2_extra`` (default ``l2``), so a chain of such fits stays nested."""
    X = f.X_PF.to(device, torch.float32)
    mean, std = X.mean(0), X.std(0).clamp_min(1e-6) if len(X) > 1 else torch.ones(X.shape[1], device=device)
    M = f.logp_PMK.shape[1]
    logp, bucket = f.logp_PMK.to(device, torch.float32), f.bucket_PM.to(device)
    y = torch.from_numpy(np.asarray(y_P, dtype=np.int64)).to(device)
    W = torch.zeros(X.shape[1], n_classes, device=device)
    pen = torch.full((X.shape[1], 1), float(l2), device=device)
    if init is None:
        a = torch.ones(M, len(COUNT_BUCKETS) + 1, device=device)
        a[:, 0] = 0
        prior = torch.bincount(y, minlength=n_classes).float() + 0.5
        b = torch.log(prior / prior.sum())
    else:
        F0 = init.W_FK.shape[0]
        a, b = init.a_MB.to(device).clone(), init.b_K.to(device).clone()
        W[:F0] = init.W_FK.to(device)
        mean[:F0], std[:F0] = init.mean_F.to(device), init.std_F.to(device)
        if init.pen_F is not None:
            pen[:F0, 0] = init.pen_F.to(device)
        pen[F0:] = l2 if l2_extra is None else l2_extra
    Z = (X - mean) / std
    params = [a.requires_grad_(True), W.requires_grad_(True), b.requires_grad_(True)]
    opt = torch.optim.LBFGS(params, max_iter=100, history_size=20, tolerance_grad=GRAD_TOL / 10,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")
    rows = torch.arange(M, device=device)

    def loss_fn():
        opt.zero_grad()
        z = b + Z @ W
        if M:
            z = z + torch.einsum("pm,pmk->pk", a[rows, bucket], logp)
        loss = F.cross_entropy(z, y) + 0.5 * (pen * W.pow(2)).sum()
        loss.backward()
        return loss

    done, converged = 0, False
    while done < max_iter:
        step = opt.param_groups[0]["max_iter"] = min(100, max_iter - done)
        opt.step(loss_fn)
        before, done = done, opt.state[params[0]]["n_iter"]
        converged = max(float(p.grad.abs().max()) for p in params if p.numel()) <= GRAD_TOL
        if converged or done - before < step:  # there, or L-BFGS stopped on its own (no change left to make)
            break
    loss = float(loss_fn().detach())
    converged = max(float(p.grad.abs().max()) for p in params if p.numel()) <= GRAD_TOL
    return LogisticProbe(a.detach(), W.detach(), b.detach(), mean, std, converged=converged, iterations=int(done),
                         objective=loss, pen_F=pen[:, 0].detach())
