"""The estimator contract shared by every dictionary (scikit-learn style).

* ``__init__(self, *, name=..., ...)`` only stores parameters (``get_params`` / ``set_params`` / ``clone`` come
  from sklearn), in one way for every kind: ``self._set_params(locals())``. Each parameter is declared once, in a
  class's ``_params`` table (``params.py``): its default (the signature's ``...`` stands for it), its doc (the
  class docstring's generated Parameters section) and its check, which ``fit`` / ``partial_fit`` run first
  (``_validate_params``), raising :class:`InvalidParameterError` (a ValueError).
* ``fit(X, y=None, *, layer=None)`` and ``partial_fit(X, y=None, *, layer=None)`` return ``self``; ``X`` is an
  array, a tensor, or an :class:`~superpos.store.ActivationStore` together with ``layer`` (streamed, out of
  core); ``superpos.dictionaries.sources.rows_from`` turns each into a ``RowSource``. ``fit`` starts afresh (and
  resets any streaming state); ``partial_fit`` continues from the fitted dictionary when there is one — after ``fit``, after ``load_dictionary``, or after an earlier
  ``partial_fit`` — as scikit-learn's ``MiniBatchNMF.partial_fit`` does.
* learned state ends in ``_``; ``components_`` holds unit-norm atoms, shape (n_components, d_model). An
  unfitted estimator raises :class:`NotFittedError`, an ``AttributeError`` (so ``hasattr`` is False).
* ``transform`` → codes, ``inverse_transform`` → reconstruction, ``explained_variance_score`` → 1 − FVU, and
  ``score`` → the kind's goodness of fit, higher is better: explained variance, except PCA's average
  log-likelihood (scikit-learn's meaning).
  Outputs match the input's type: numpy in, numpy out; torch in, torch out. ``encode`` / ``decode`` are the
  tensor-level versions (on ``device_``), for code that stays in torch.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin

from superpos.device import resolve_device
from superpos.dictionaries.params import Bool, Device, Int, InvalidParameterError, Param, Params, declare, validate
from superpos.errors import SuperposError
from superpos.store import ActivationStore


class InvalidInputError(SuperposError, ValueError, TypeError):
    """Rows a dictionary cannot take (not 2-D, not numeric, NaN/inf, sparse, empty, wrong width): a SuperposError
    for the CLI, and the ValueError/TypeError scikit-learn's conventions expect."""


def validate_rows(X):
    """The one input check. Stores (checked as they are read) and tensors (checked for shape here and for NaN/inf
    in ``fit``) pass through; anything else goes through ``sklearn.utils.check_array``: a dense 2-D float32/float64
    array with at least one row and only finite values."""
    if isinstance(X, ActivationStore):
        return X
    if isinstance(X, torch.Tensor):
        if X.ndim != 2 or X.shape[0] == 0:
            raise InvalidInputError(f"expected a 2-D array (rows × d_model) with at least one row, got shape "
                                    f"{tuple(X.shape)}")
        return X
    from sklearn.utils import check_array

    try:
        return check_array(X, dtype=[np.float32, np.float64], accept_sparse=False)
    except (ValueError, TypeError) as e:
        raise InvalidInputError(" ".join(str(e).split())) from None


def as_tensor(X, device=None, dtype=torch.float32) -> torch.Tensor:
    """``X`` as a 2-D tensor of ``dtype`` on ``device``."""
    t = X if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
    if t.ndim != 2:
        raise SuperposError(f"expected a 2-D array (rows × d_model), got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=dtype)


def like_input(t: torch.Tensor, X):
    """Return ``t`` as numpy when ``X`` was numpy (float64 stays float64), else as a tensor on X's device."""
    if isinstance(X, torch.Tensor):
        return t.to(X.device)
    out = t.detach().cpu().numpy()
    return out.astype(np.float64) if getattr(X, "dtype", None) == np.float64 else out


class NotFittedError(SuperposError, AttributeError):
    """Raised by an estimator used before ``fit``; an AttributeError, like scikit-learn's NotFittedError."""


def check_finite(x: torch.Tensor, where: str) -> None:
    """Refuse (one line) a tensor holding NaN or inf."""
    if not torch.isfinite(x).all():
        raise SuperposError(f"{where} contains NaN or inf values")


#: ``seed``, declared once for the kinds that draw random numbers (the SAEs, the NMFs)
SEED = Param(0, "Random seed: initialisation, batch order and, for the SAEs, the held-out split.", Int(0))


class BaseDictionary(TransformerMixin, BaseEstimator):
    """Common plumbing. A kind sets ``kind``, declares its parameters in ``_params`` (merged with its bases'),
    defines ``__init__(self, *, name=..., ...)`` naming them, and implements ``fit``, ``partial_fit``,
    ``_encode`` and ``_decode``; ``_state_names`` lists the fitted tensors saved besides ``components_``."""

    kind: str = "base"
    #: names of fitted tensors saved with the dictionary (besides components_)
    _state_names: tuple[str, ...] = ()
    #: whether ``fit`` takes ``checkpoint_dir`` / ``checkpoint_every`` and resumes from them (the SAEs)
    resumable: bool = False
    #: the parameters every kind takes (a kind adds its own, or redeclares one, in its ``_params``)
    _params = Params(
        n_components=Param(None, "Number of atoms (rows of ``components_``); None: the kind's default, "
                                 "``expansion × d_model`` where the kind takes ``expansion``, else d_model.",
                           Int(1, none=True)),
        min_pos=Param(1, "Store rows at positions below this are left out (1 leaves out the BOS / "
                         "attention-sink row); arrays and tensors are taken whole.", Int(0)),
        device=Param("auto", "Where to fit: 'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.", Device()),
        progress=Param(True, "Show a progress bar while fitting.", Bool()),
    )
    #: the merged table, in signature order (set by ``params.declare``)
    _all_params: ClassVar[dict[str, Param]] = dict(_params)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        declare(cls)

    def _set_params(self, params: dict) -> None:
        """``__init__``'s one body: store every argument as an attribute of the same name."""
        for name, value in params.items():
            if name not in ("self", "__class__"):
                setattr(self, name, value)

    def _validate_params(self) -> None:
        """Check every parameter against its declaration (``fit`` and ``partial_fit`` call it first)."""
        validate(self)

    @classmethod
    def from_params(cls, params: dict, **fixed) -> BaseDictionary:
        """The estimator for ``params`` by name (``superpos fit``'s flags and config file, then ``fixed``); a name
        this kind does not take is refused in one line."""
        unknown = sorted(set(params) - set(cls._all_params))
        if unknown:
            raise InvalidParameterError(f"parameter '{unknown[0]}' does not apply to kind {cls.kind} (it takes "
                                        f"{', '.join(sorted(cls._all_params))})")
        return cls(**{**params, **fixed})

    # ---------------------------------------------------------------- data plumbing
    def _device(self) -> torch.device:
        return resolve_device(getattr(self, "device", "auto"))

    @property
    def device_(self) -> torch.device:
        """The device the fitted tensors live on."""
        self._check_fitted()
        return self.components_.device

    def _check_fitted(self) -> None:
        if "components_" not in vars(self):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet: call fit() first")

    # ---------------------------------------------------------------- public API
    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Codes (B, n_components) of a tensor already on ``device_`` (no autograd)."""
        self._check_fitted()
        with torch.no_grad():
            return self._encode(x_BD)

    def decode(self, codes_BF: torch.Tensor) -> torch.Tensor:
        """Reconstruction (B, d_model) from codes already on ``device_`` (no autograd)."""
        self._check_fitted()
        with torch.no_grad():
            return self._decode(codes_BF)

    def _check_width(self, d: int) -> None:
        """``partial_fit`` on rows of another width than the fitted dictionary's is refused."""
        if "components_" in vars(self) and d != self.d_model_:
            raise InvalidInputError(f"X has {d} features, but {type(self).__name__} is expecting {self.d_model_} "
                                    f"features as input")

    def _rows(self, X, width: int | None = None):
        """Validated rows for inference, of ``width`` columns (default d_model_)."""
        self._check_fitted()
        X = validate_rows(X)
        want = self.d_model_ if width is None else width
        if X.shape[1] != want:
            raise InvalidInputError(f"X has {X.shape[1]} features, but {type(self).__name__} is expecting {want} "
                                    f"features as input")
        return X

    def transform(self, X):
        """Codes (n_rows, n_components)."""
        X = self._rows(X)
        with torch.no_grad():
            return like_input(self._encode(as_tensor(X, self._device())), X)

    def inverse_transform(self, codes):
        """Reconstruction (n_rows, d_model) from codes."""
        codes = self._rows(codes, self.n_components_)
        with torch.no_grad():
            return like_input(self._decode(as_tensor(codes, self._device())), codes)

    def reconstruct(self, X):
        """``inverse_transform(transform(X))`` without leaving the device."""
        X = self._rows(X)
        with torch.no_grad():
            return like_input(self._decode(self._encode(as_tensor(X, self._device()))), X)

    def explained_variance_score(self, X) -> float:
        """Explained variance 1 − FVU of the reconstruction of ``X``, for every kind."""
        from superpos.dictionaries.metrics import fvu

        x = as_tensor(self._rows(X), self._device())
        with torch.no_grad():
            return 1.0 - fvu(x, self._decode(self._encode(x)))

    def score(self, X, y=None) -> float:
        """The kind's goodness of fit on ``X``, higher is better (scikit-learn's ``score``): the explained variance
        (``explained_variance_score``) unless the kind has a likelihood (PCA)."""
        return self.explained_variance_score(X)

    @property
    def n_components_(self) -> int:
        """Number of atoms."""
        self._check_fitted()
        return self.components_.shape[0]

    @property
    def d_model_(self) -> int:
        """Width of the rows the dictionary takes."""
        self._check_fitted()
        return self.components_.shape[1]

    @property
    def n_features_in_(self) -> int:
        """scikit-learn's name for ``d_model_``."""
        return self.d_model_

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Fitted tensors, in the raw (unscaled) input space, for saving."""
        self._check_fitted()
        out = {"components_": self.components_}
        out.update({n: getattr(self, n) for n in self._state_names})
        return {k: torch.as_tensor(v).detach().cpu().contiguous() for k, v in out.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> BaseDictionary:
        """Set the fitted tensors from ``state`` (as ``state_dict`` returns them)."""
        dev = self._device()
        for k, v in state.items():
            setattr(self, k, v.to(dev))
        return self

    def summary(self) -> str:
        """A few lines for ``superpos info``."""
        params = ", ".join(f"{k}={v}" for k, v in self.get_params().items() if v is not None)
        fitted = f"{self.n_components_} atoms × d_model {self.d_model_}" if hasattr(self, "components_") else "not fitted"
        lines = [f"{type(self).__name__} ({self.kind}): {fitted}", f"  {params}"]
        meta = getattr(self, "meta_", None) or {}
        if meta.get("layer") is not None:
            lines.append(f"  trained on layer {meta['layer']} of {meta.get('model', '?')}, store {meta.get('store', '?')}"
                         + (f", rows {meta['train_rows'][0]}–{meta['train_rows'][1]}" if "train_rows" in meta else ""))
        if hasattr(self, "n_tokens_seen_"):
            lines.append(f"  {self.n_tokens_seen_:,} training tokens in {getattr(self, 'n_iter_', '?')} steps")
        return "\n".join(lines)

    # subclasses
    def _encode(self, x_BD: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _decode(self, codes_BF: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError
