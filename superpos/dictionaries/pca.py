"""PCA baseline: exact SVD in memory, exact streaming covariance (float64) over a store."""
from __future__ import annotations

import numpy as np
import torch

from superpos.dictionaries.base import BaseDictionary, InvalidInputError, check_finite
from superpos.dictionaries.params import Int, InvalidParameterError, Param, Params
from superpos.dictionaries.sources import rows_from
from superpos.errors import SuperposError


class PCA(BaseDictionary):
    """Principal components; ``components_`` are the top ``n_components`` unit eigenvectors.

    In memory (array/tensor) this is an exact float64 SVD of the centred data. Over an
    ActivationStore it accumulates Σx and Σxxᵀ in float64 in one streaming pass and
    eigendecomposes the d_model × d_model covariance — exact, and out-of-core for any row count.
    ``partial_fit`` accumulates the same sums. Codes are ``(x − mean_) @ components_ᵀ``.

    ``score`` is scikit-learn's: the average log-likelihood of the rows under probabilistic PCA (Tipping & Bishop
    1999), with the variance the components leave spread evenly over the other directions (``noise_variance_``);
    ``explained_variance_score`` gives 1 − FVU, as for every kind. In ``superpos fit`` its size is ``--k``, the L0
    of the SAE it is compared with (``from_params``).
    """

    kind = "pca"
    _state_names = ("mean_", "explained_variance_", "explained_variance_ratio_")
    _params = Params(batch_size=Param(65536, "Rows read per chunk of a streamed fit.", Int(1)))

    def __init__(self, *, n_components=..., batch_size=..., min_pos=..., device=..., progress=...):
        self._set_params(locals())

    @classmethod
    def from_params(cls, params: dict, **fixed) -> PCA:
        """As for every kind, except that ``k`` (the L0 of the SAE it is compared with) stands for
        ``n_components`` unless that is given; without either, the size is the TopK SAE's default ``k``."""
        from superpos.dictionaries.topk import TopKSAE

        params = dict(params)
        k = params.pop("k", TopKSAE._all_params["k"].default)
        params.setdefault("n_components", k)
        return super().from_params(params, **fixed)

    def _k(self, d: int) -> int:
        k = self.n_components or d
        if not 1 <= k <= d:
            raise InvalidParameterError(f"PCA n_components={k} must be between 1 and d_model ({d})")
        return k

    def fit(self, X, y=None, *, layer: int | None = None):
        """Fit afresh (exact SVD in memory; one streaming pass over a store); a later ``partial_fit`` adds rows."""
        self._validate_params()
        src = rows_from(X, layer)
        for attr in ("_n", "_sum", "_outer"):
            self.__dict__.pop(attr, None)
        if not src.in_memory:
            return self._add_rows(src)
        x = src.tensor(torch.float64).numpy()
        check_finite(torch.from_numpy(x), "PCA input")
        k = self._k(x.shape[1])
        if len(x) < 2:
            raise InvalidInputError("PCA needs at least 2 rows (got 1 sample)")
        mean = x.mean(0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        var = s**2 / (len(x) - 1)
        self._publish(mean, vt, var, k)
        self.n_samples_seen_ = len(x)
        self._n, self._sum, self._outer = len(x), x.sum(0), x.T @ x  # so that partial_fit continues from here
        return self

    def partial_fit(self, X, y=None, *, layer: int | None = None):
        """Add ``X``'s rows to the running float64 sums and re-derive the components (continues after ``fit``)."""
        self._validate_params()
        return self._add_rows(rows_from(X, layer))

    def _add_rows(self, src) -> PCA:
        d = src.d_model
        self._check_width(d)
        k = self._k(d)
        if not hasattr(self, "_n") and "components_" in vars(self):
            raise SuperposError("a loaded PCA keeps only its top components, not the covariance that partial_fit "
                                "adds to; fit() it again on all the rows")
        if not hasattr(self, "_n"):
            self._n, self._sum, self._outer = 0, np.zeros(d), np.zeros((d, d))
        for a in src.chunks(self.batch_size, min_pos=self.min_pos):
            a = np.asarray(a, dtype=np.float64)
            if not np.isfinite(a).all():
                raise SuperposError("PCA input contains NaN or inf values")
            self._n += len(a)
            self._sum += a.sum(0)
            self._outer += a.T @ a
        if self._n < 2:
            raise InvalidInputError("PCA needs at least 2 rows (got 1 sample)")
        mean = self._sum / self._n
        cov = (self._outer - self._n * np.outer(mean, mean)) / (self._n - 1)
        evals, evecs = np.linalg.eigh(cov)
        order = np.argsort(evals)[::-1]
        self._publish(mean, evecs[:, order].T, np.clip(evals[order], 0, None), k)
        self.n_samples_seen_ = self._n
        return self

    def _publish(self, mean, vt, var, k) -> None:
        dev = self._device()
        # deterministic signs: largest-|coordinate| of each component positive
        signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])
        vt = vt * signs[:, None]
        self.mean_ = torch.tensor(mean, dtype=torch.float32, device=dev)
        self.components_ = torch.tensor(vt[:k], dtype=torch.float32, device=dev)
        self.explained_variance_ = torch.tensor(var[:k], dtype=torch.float32, device=dev)
        self.explained_variance_ratio_ = torch.tensor(var[:k] / max(var.sum(), 1e-300), dtype=torch.float32, device=dev)
        # the variance the components leave, spread over the other d − k directions (scikit-learn's noise variance
        # when there are at least d rows)
        d = len(mean)
        self.noise_variance_ = float(var[k:].sum()) / (d - k) if k < d else 0.0

    def load_state_dict(self, state):
        """Set the fitted tensors; ``noise_variance_``, not saved, comes back from the explained variances and
        their ratios (the total variance is their quotient)."""
        super().load_state_dict(state)
        var = self.explained_variance_.double().cpu().numpy()
        ratio = self.explained_variance_ratio_.double().cpu().numpy()
        k, d = self.components_.shape
        total = var.sum() / max(ratio.sum(), 1e-300)
        self.noise_variance_ = max(total - var.sum(), 0.0) / (d - k) if k < d else 0.0
        return self

    def score_samples(self, X) -> np.ndarray:
        """Log-likelihood of each row under probabilistic PCA (as scikit-learn's ``PCA.score_samples``)."""
        x = np.asarray(self._rows(X).cpu() if isinstance(X, torch.Tensor) else self._rows(X), dtype=np.float64)
        W = self.components_.double().cpu().numpy()
        var = self.explained_variance_.double().cpu().numpy()
        noise = self.noise_variance_
        d, k = x.shape[1], len(var)
        xc = x - self.mean_.double().cpu().numpy()
        proj = xc @ W.T  # the covariance is Wᵀ diag(var) W + noise (I − WᵀW): its eigenvalues are var and noise
        maha = (proj**2 / var).sum(1)
        logdet = np.log(var).sum()
        if k < d:
            maha = maha + ((xc**2).sum(1) - (proj**2).sum(1)) / noise
            logdet += (d - k) * np.log(noise)
        return -0.5 * (maha + d * np.log(2 * np.pi) + logdet)

    def score(self, X, y=None) -> float:
        """Average log-likelihood of the rows (scikit-learn's ``PCA.score``); ``explained_variance_score`` gives
        the explained variance."""
        return float(self.score_samples(X).mean())

    def _encode(self, x_BD):
        return (x_BD - self.mean_) @ self.components_.T

    def _decode(self, codes_BK):
        return codes_BK @ self.components_ + self.mean_
