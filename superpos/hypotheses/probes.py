"""Linear probes on the residual stream: which token is here (input reconstruction) and which came before
(lookahead, the tokens that come next, is in ``lookahead.py`` and reuses these probes).

Probes are ridge least-squares classifiers onto one-hot targets over the ``n_classes`` most frequent
tokens of the training split (closed form, one solve per layer; rows whose target is outside the
subset are left out of training and scoring, and the kept fraction is reported). Residuals are
standardised per layer with training statistics, so one ridge strength fits all layers. The
trade-off: the full 49k vocabulary would need a 576 × 49k solve per layer and tens of thousands of
examples per class; the frequent subset covers most running text (coverage is in the report).
Method and reading in docs/probes.md.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError, SuperposError
from ..residuals import ResidualSample
from ..stats import cluster_band
from .configs import ProbeConfig
from .results import EmbeddingComparison, ProbeBasis, ProbesResult, ProbeTarget


@dataclass
class RidgeProbe:
    """``predict(x) = argmax((x - mean) / std @ W + b)`` over ``classes`` (token ids)."""

    classes: np.ndarray
    W_DK: torch.Tensor
    b_K: torch.Tensor
    mean_D: torch.Tensor
    std_D: torch.Tensor

    def scores(self, X_PD: torch.Tensor) -> torch.Tensor:
        """Class scores of standardised rows."""
        return ((X_PD - self.mean_D) / self.std_D) @ self.W_DK + self.b_K

    def predict(self, X_PD: torch.Tensor) -> np.ndarray:
        """The most likely class of each row."""
        return self.classes[self.scores(X_PD).argmax(1).numpy()]

    @property
    def read_directions_KD(self) -> torch.Tensor:
        """Each class's read-out direction in the raw residual basis (W scaled back by 1/std)."""
        return (self.W_DK / self.std_D[:, None]).T


def frequent_classes(targets: np.ndarray, n_classes: int) -> np.ndarray:
    """The ``n_classes`` most frequent tokens among ``targets``."""
    ids, counts = np.unique(targets[targets >= 0], return_counts=True)
    return ids[np.argsort(-counts, kind="stable")[:n_classes]]


def fit_ridge_probe(X_PD: torch.Tensor, y_P: np.ndarray, classes: np.ndarray, ridge: float = 1e-2) -> RidgeProbe:
    """Closed-form ridge regression onto one-hot(y) for rows with y in ``classes`` (float64 solve)."""
    keep = np.isin(y_P, classes)
    if keep.sum() < 2:
        raise SuperposError("too few probe training rows with a target among the probed tokens")
    X = X_PD[torch.from_numpy(np.flatnonzero(keep))].double()
    mean, std = X.mean(0), X.std(0).clamp_min(1e-6)
    Z = torch.cat([(X - mean) / std, torch.ones(len(X), 1, dtype=X.dtype)], 1)
    col = torch.from_numpy(np.searchsorted(classes, y_P[keep]))
    Y = torch.zeros(len(X), len(classes), dtype=X.dtype)
    Y[torch.arange(len(X)), col] = 1.0
    gram = Z.T @ Z
    reg = ridge * len(X) * torch.eye(len(gram), dtype=X.dtype)
    reg[-1, -1] = 0  # no penalty on the bias
    Wb = torch.linalg.solve(gram + reg, Z.T @ Y)
    return RidgeProbe(classes, Wb[:-1].float(), Wb[-1].float(), mean.float(), std.float())


def probe_accuracy(probe: RidgeProbe, X_PD: torch.Tensor, y_P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(correct per scored row as 0/1, mask of the rows scored = target among the probe's classes)."""
    keep = np.isin(y_P, probe.classes)
    pred = probe.predict(X_PD[torch.from_numpy(np.flatnonzero(keep))])
    return (pred == y_P[keep]).astype(np.float64), keep


def conditional_mode_baseline(cur_train: np.ndarray, y_train: np.ndarray, cur_test: np.ndarray,
                              classes: np.ndarray) -> np.ndarray:
    """Best guess of y from the current token alone: the most common y after that token in training
    (over targets among ``classes``), else the overall most common. This is the bigram-style predictor a
    lookahead probe has to beat."""
    keep = np.isin(y_train, classes)
    pairs = np.stack([cur_train[keep], y_train[keep]], 1)
    uniq, counts = np.unique(pairs, axis=0, return_counts=True)
    order = np.lexsort((-counts, uniq[:, 0]))
    uniq = uniq[order]
    first = np.unique(uniq[:, 0], return_index=True)[1]
    table = dict(zip(uniq[first, 0].tolist(), uniq[first, 1].tolist()))
    fallback = frequent_classes(y_train[keep], 1)[0]
    return np.array([table.get(int(t), fallback) for t in cur_test])


# ------------------------------------------------------------------------------------------------------
# basis analysis: where does a probe put its weight, relative to the embedding matrix?
# ------------------------------------------------------------------------------------------------------
def energy_in_basis(dirs_KD: np.ndarray, basis_CD: np.ndarray) -> np.ndarray:
    """Share of the directions' squared norm along each (orthonormal) basis vector."""
    e = ((dirs_KD @ basis_CD.T) ** 2).sum(0)
    return e / e.sum()


def nmf_energy(dirs_KD: np.ndarray, components_CD: np.ndarray) -> np.ndarray:
    """Share of the least-squares coefficients' energy on each (non-orthogonal) NMF component."""
    coef, *_ = np.linalg.lstsq(components_CD.T, dirs_KD.T, rcond=None)
    e = (coef ** 2).sum(1)
    return e / e.sum()


def procrustes_fit(A_KD: np.ndarray, B_KD: np.ndarray) -> float:
    """Relative residual of the best orthogonal map A R ≈ B (rows unit-normalised): 0 = same geometry."""
    A = A_KD / np.linalg.norm(A_KD, axis=1, keepdims=True)
    B = B_KD / np.linalg.norm(B_KD, axis=1, keepdims=True)
    U, _, Vt = np.linalg.svd(A.T @ B)
    return float(np.linalg.norm(A @ (U @ Vt) - B) / np.linalg.norm(B))


def compare_to_embedding(read_KD: np.ndarray, emb_KD: np.ndarray, n_shuffle: int = 100,
                         seed: int = 0) -> EmbeddingComparison:
    """Same-token cosine (after the best orthogonal alignment and without it) vs a shuffled-token null.

    ``read_KD[k]`` and ``emb_KD[k]`` belong to the same token. The null pairs probe rows with the
    embeddings of other tokens (random permutations); the p-value is the share of shuffles at least as
    good as the true pairing.
    """
    rng = np.random.default_rng(seed)
    A = read_KD / np.linalg.norm(read_KD, axis=1, keepdims=True)
    B = emb_KD / np.linalg.norm(emb_KD, axis=1, keepdims=True)
    cos = float((A * B).sum(1).mean())
    fit = procrustes_fit(A, B)
    null_cos, null_fit = [], []
    for _ in range(n_shuffle):
        perm = rng.permutation(len(B))
        null_cos.append(float((A * B[perm]).sum(1).mean()))
        null_fit.append(procrustes_fit(A, B[perm]))
    null_cos, null_fit = np.array(null_cos), np.array(null_fit)
    return EmbeddingComparison(same_token_cos=cos, null_cos_mean=float(null_cos.mean()),
                               null_cos_p95=float(np.quantile(null_cos, 0.95)), procrustes_residual=fit,
                               null_procrustes_mean=float(null_fit.mean()),
                               null_procrustes_p05=float(np.quantile(null_fit, 0.05)),
                               p_value=float((1 + (null_fit <= fit).sum()) / (1 + n_shuffle)))


# ------------------------------------------------------------------------------------------------------
# experiments
# ------------------------------------------------------------------------------------------------------
def _say(msg: str) -> None:
    print(f"[probes] {msg}", file=sys.stderr, flush=True)


def probe_by_depth(sample: ResidualSample, offset: int, n_classes: int, ridge: float, seed: int, n_boot: int,
                   pooled: bool = False) -> tuple[ProbeTarget, list[RidgeProbe]]:
    """Held-out top-1 accuracy per layer of probes for the token at pos + offset (split by context).

    Returns the per-layer accuracy with CIs, the coverage and (``pooled``) the accuracy per layer of one probe
    trained on rows from all layers together; and the probes, one per layer.
    """
    train, test = sample.split_contexts(0.75, seed=seed)
    y_tr, y_te = train.offset_tokens(offset), test.offset_tokens(offset)
    classes = np.sort(frequent_classes(y_tr, n_classes))
    probes, per_layer = [], []
    for j in range(len(sample.layers)):
        probe = fit_ridge_probe(train.resid_LPD[j], y_tr, classes, ridge)
        per_layer.append(probe_accuracy(probe, test.resid_LPD[j], y_te)[0])
        probes.append(probe)
    ctx = test.ctx_P[np.isin(y_te, classes)]
    target = ProbeTarget(offset=offset, n_classes=len(classes), coverage=float(np.isin(y_te, classes).mean()),
                         layers=sample.layers, acc=cluster_band(np.stack(per_layer, 1), ctx, n_boot=n_boot, seed=seed),
                         majority=float(np.mean(y_te[np.isin(y_te, classes)] == frequent_classes(y_tr, 1)[0])))
    if pooled:
        X = train.resid_LPD.reshape(-1, train.resid_LPD.shape[-1])
        probe = fit_ridge_probe(X, np.tile(y_tr, len(sample.layers)), classes, ridge)
        acc = [probe_accuracy(probe, test.resid_LPD[j], y_te)[0] for j in range(len(sample.layers))]
        target.pooled_acc = cluster_band(np.stack(acc, 1), ctx, n_boot=n_boot, seed=seed)
    return target, probes


def nearest_embedding_accuracy(sample: ResidualSample, W_E: np.ndarray, classes: np.ndarray) -> list[float]:
    """Per layer: share of positions whose input token is the nearest (cosine) embedding among ``classes``."""
    y = sample.token_P
    keep = np.isin(y, classes)
    E = torch.from_numpy(W_E[classes])
    E = E / E.norm(dim=1, keepdim=True)
    out = []
    for j in range(len(sample.layers)):
        X = sample.resid_LPD[j][torch.from_numpy(np.flatnonzero(keep))]
        pred = classes[(X @ E.T).argmax(1).numpy()]
        out.append(float((pred == y[keep]).mean()))
    return out


def run_probes(cfg: ProbeConfig) -> ProbesResult:
    """Input-token probes by depth against the embedding matrix (``superpos run probes``)."""
    if 0 not in cfg.offsets or any(o > 0 for o in cfg.offsets):
        raise ConfigError("offsets", "{field} must include 0 (the current token) and no positive offsets (use run "
                                     "lookahead)")
    from ..dictionaries import NMF
    from ..residuals import sample_residuals
    from .opening import open_experiment
    from .reports.probes import write_report
    from .verdicts import probes as verdict

    t0 = time.perf_counter()
    out, lm, tokens = open_experiment(cfg)
    sample = sample_residuals(lm, tokens, cfg.per_context, seed=cfg.seed, min_pos=max(1, -min(cfg.offsets)))
    targets, current_probes = {}, None
    for off in cfg.offsets:
        name = {0: "current token", -1: "previous token"}.get(off, f"token at {off:+d}")
        _say(f"probing the {name} at {len(sample.layers)} layers")
        targets[name], probes = probe_by_depth(sample, off, cfg.n_classes, cfg.ridge, cfg.seed, cfg.n_boot,
                                               pooled=off == 0)
        if off == 0:
            current_probes = probes
    W_E = lm.W_E_VD.detach().float().cpu().numpy()
    classes = current_probes[0].classes

    # where do the current-token probes put their weight, relative to the embedding? -----------------
    E = W_E - W_E.mean(0)
    _, svals, Vt = np.linalg.svd(E, full_matrices=False)
    emb_var = svals ** 2 / (svals ** 2).sum()
    nmf = NMF(n_components=min(64, E.shape[1]), seed=cfg.seed, max_iter=200, device="cpu", progress=False).fit(W_E)
    nmf_C = np.asarray(nmf.components_, dtype=np.float64)
    nmf_importance = np.asarray(nmf.transform(W_E)).mean(0) * np.linalg.norm(nmf_C, axis=1)
    nmf_order = np.argsort(-nmf_importance)
    nmf_emb = nmf_energy(E[classes], nmf_C[nmf_order])
    coord_var = E.var(0) / E.var(0).sum()
    coord_order = np.argsort(-coord_var)
    basis = ProbeBasis(layers=sample.layers, pca_embedding_var=emb_var.tolist(), pca=[], nmf=[], coord=[],
                       nmf_embedding=nmf_emb.tolist(), coord_embedding=coord_var[coord_order].tolist(),
                       coord_order=coord_order.tolist(), embedding_comparison=[])
    for probe in current_probes:
        read = probe.read_directions_KD.numpy().astype(np.float64)
        basis.pca.append(energy_in_basis(read, Vt).tolist())
        basis.nmf.append(nmf_energy(read, nmf_C[nmf_order]).tolist())
        basis.coord.append(energy_in_basis(read, np.eye(E.shape[1])[coord_order]).tolist())
        basis.embedding_comparison.append(compare_to_embedding(read, W_E[classes], cfg.n_shuffle, cfg.seed))
    res = ProbesResult(config=cfg, model=lm.name, n_positions=sample.n_positions, layers=sample.layers,
                       targets=targets, nearest_embedding_acc=nearest_embedding_accuracy(sample, W_E, classes),
                       basis=basis)
    res.verdict = verdict(res)
    res.timings["total_s"] = time.perf_counter() - t0
    res.save(out)
    write_report(res, out)
    return res
