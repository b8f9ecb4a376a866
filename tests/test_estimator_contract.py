"""The scikit-learn estimator contract, for every dictionary kind."""
import inspect

import numpy as np
import pytest
import torch
from conftest import planted_data
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from superpos.dictionaries import (
    NMF,
    PCA,
    BatchTopKSAE,
    JumpReLUSAE,
    ReLUSAE,
    SemiNMF,
    TopKSAE,
    load_dictionary,
    save_dictionary,
)
from superpos.dictionaries.base import InvalidInputError, NotFittedError
from superpos.dictionaries.kinds import KINDS
from superpos.dictionaries.metrics import fvu
from superpos.dictionaries.params import InvalidParameterError, Number, OneOf
from superpos.errors import SuperposError

SMALL = dict(device="cpu", progress=False)


def kinds():
    """One small instance of every kind (sizes the sklearn checks' 1- to 10-feature data can take)."""
    return [PCA(n_components=1, **SMALL), TopKSAE(n_components=4, k=1, n_tokens=2000, batch_size=64, **SMALL),
            BatchTopKSAE(n_components=4, k=1, n_tokens=2000, batch_size=64, **SMALL),
            ReLUSAE(n_components=4, n_tokens=2000, batch_size=64, **SMALL),
            JumpReLUSAE(n_components=4, n_tokens=2000, batch_size=64, **SMALL),
            NMF(n_components=2, max_iter=20, **SMALL), SemiNMF(n_components=2, max_iter=20, **SMALL)]


@pytest.mark.parametrize("est", kinds(), ids=lambda e: type(e).__name__)
def test_sklearn_estimator_checks(est):
    """Every check of sklearn.utils.estimator_checks that applies (array-API input is skipped by sklearn itself
    unless SCIPY_ARRAY_API is set)."""
    results = check_estimator(est, on_fail=None)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert not failed, failed
    assert sum(r["status"] == "passed" for r in results) >= 40


@pytest.mark.parametrize("est", kinds(), ids=lambda e: type(e).__name__)
def test_unfitted_clone_and_params(est):
    c = clone(est)
    assert c.get_params() == est.get_params() and c is not est
    assert not hasattr(c, "components_") and not hasattr(c, "n_components_") and not hasattr(c, "d_model_")
    with pytest.raises(NotFittedError) as info:
        c.transform(np.zeros((2, 3)))
    assert isinstance(info.value, AttributeError) and isinstance(info.value, SuperposError)
    c.set_params(seed=5) if "seed" in c.get_params() else c.set_params(batch_size=7)
    assert c.get_params() != est.get_params()


def _heldout_fvu(est, x):
    return fvu(torch.from_numpy(x), torch.from_numpy(est.reconstruct(x)))


@pytest.mark.parametrize("make", [
    lambda: TopKSAE(expansion=2, k=4, n_tokens=60_000, batch_size=256, **SMALL),
    lambda: BatchTopKSAE(expansion=2, k=4, n_tokens=60_000, batch_size=256, **SMALL),
    lambda: ReLUSAE(expansion=2, l1_coeff=1.0, n_tokens=60_000, batch_size=256, **SMALL),
    lambda: JumpReLUSAE(expansion=2, n_tokens=60_000, batch_size=256, **SMALL),
    lambda: NMF(n_components=32, batch_size=1024, n_tokens=20_000, max_iter=50, transform_iter=50, **SMALL),
    lambda: SemiNMF(n_components=32, batch_size=1024, n_tokens=20_000, max_iter=50, transform_iter=50, **SMALL),
], ids=["topk", "batchtopk", "relu", "jumprelu", "nmf", "seminmf"])
def test_partial_fit_continues_after_fit_and_after_load(make, tmp_path):
    x, _ = planted_data(14_000, 16, 24, 3, seed=4)
    if isinstance(make(), NMF):
        x = np.abs(x)
    train, more, held = x[:10_000], x[10_000:12_000], x[12_000:]
    fitted = make().fit(train)
    f_fit = _heldout_fvu(fitted, held)
    f_fresh = _heldout_fvu(make().partial_fit(more), held)  # one pass from a fresh initialisation
    assert f_fit < 0.8 * f_fresh, (f_fit, f_fresh)  # so "jumping back" would be visible
    f_cont = _heldout_fvu(fitted.partial_fit(more), held)
    assert f_cont < f_fit + 0.25 * (f_fresh - f_fit), (f_fit, f_cont, f_fresh)
    save_dictionary(make().fit(train), tmp_path / "d")
    loaded = load_dictionary(tmp_path / "d", device="cpu")
    f_loaded = _heldout_fvu(loaded.partial_fit(more), held)
    assert f_loaded < f_fit + 0.25 * (f_fresh - f_fit), (f_fit, f_loaded, f_fresh)


def test_fit_resets_streaming_state():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((400, 6)) * [5, 4, 3, 2, 1, 1], rng.standard_normal((400, 6)) * [1, 1, 2, 3, 4, 5]
    pca = PCA(n_components=3).fit(a)
    pca.partial_fit(b)  # continues: equals one fit on both halves
    np.testing.assert_allclose(np.abs(pca.components_.numpy()),
                               np.abs(PCA(n_components=3).fit(np.vstack([a, b])).components_.numpy()), atol=1e-5)
    pca.fit(b)  # starts over: no trace of a
    np.testing.assert_allclose(pca.components_.numpy(), PCA(n_components=3).fit(b).components_.numpy(), atol=1e-6)
    pca.partial_fit(a)
    np.testing.assert_allclose(np.abs(pca.components_.numpy()),
                               np.abs(PCA(n_components=3).fit(np.vstack([b, a])).components_.numpy()), atol=1e-5)
    sae = TopKSAE(n_components=8, k=2, n_tokens=800, batch_size=100, **SMALL)
    sae.partial_fit(a)
    assert hasattr(sae, "_pf_state")
    sae.fit(b)
    assert not hasattr(sae, "_pf_state")


def test_pipeline_and_bad_input():
    x, _ = planted_data(2000, 8, 12, 2, seed=1)
    pipe = make_pipeline(StandardScaler(), PCA(n_components=3)).fit(x, np.zeros(len(x)))  # y passed positionally
    assert pipe.transform(x).shape == (2000, 3)
    sae = TopKSAE(n_components=16, k=2, n_tokens=4000, batch_size=200, **SMALL).fit(x)
    assert sae.n_features_in_ == 8
    with pytest.raises(InvalidInputError, match="X has 5 features, but TopKSAE is expecting 8"):
        sae.transform(x[:, :5])
    with pytest.raises(InvalidInputError, match="X has 5 features"):
        sae.partial_fit(x[:, :5])
    with pytest.raises(InvalidInputError, match="NaN"):
        TopKSAE(**SMALL).fit(np.full((10, 4), np.nan))
    assert sae.transform(x.astype(np.float64)).dtype == np.float64
    codes = sae.encode(torch.from_numpy(x[:4]).to(sae.device_))
    torch.testing.assert_close(codes, torch.from_numpy(sae.transform(x[:4])))
    torch.testing.assert_close(sae.decode(codes), torch.from_numpy(sae.reconstruct(x[:4])))


def test_loaded_pca_refuses_partial_fit(tmp_path):
    x = np.random.default_rng(0).standard_normal((100, 5))
    save_dictionary(PCA(n_components=2).fit(x), tmp_path / "p")
    with pytest.raises(SuperposError, match="a loaded PCA keeps only its top components"):
        load_dictionary(tmp_path / "p", device="cpu").partial_fit(x)


KIND_CLASSES = sorted(set(KINDS.values()), key=lambda c: c.kind)


@pytest.mark.parametrize("cls", KIND_CLASSES, ids=lambda c: c.__name__)
def test_each_parameter_is_declared_once(cls):
    """The keyword-only signature's defaults, the docstring's Parameters section and the checks all come from the
    one declaration table (params.py), so none of them can drift from the others."""
    sig = inspect.signature(cls)
    assert all(p.kind is p.KEYWORD_ONLY for p in sig.parameters.values())
    assert {n: p.default for n, p in sig.parameters.items()} == {n: d.default for n, d in cls._all_params.items()}
    section = cls.__doc__.split("\nParameters\n----------\n")[1]
    listed = [line.split(" : ")[0] for line in section.splitlines() if line and not line.startswith(" ")]
    assert listed == list(sig.parameters)
    for name, decl in cls._all_params.items():
        shown = decl.shown or repr(decl.default)
        assert f"{name} : {decl.check.type}, default={shown}\n" in section


def _out_of_range(check):
    """Values a declared check refuses although their type is right."""
    if isinstance(check, OneOf):
        return ["no-such-option"]
    if not isinstance(check, Number):
        return []
    step = 1 if check.integer else 0.5
    out = []
    if check.low is not None:
        out.append(check.low if check.closed in ("right", "neither") else check.low - step)
    if check.high is not None:
        out.append(check.high if check.closed in ("left", "neither") else check.high + step)
    return out


@pytest.mark.parametrize("cls", KIND_CLASSES, ids=lambda c: c.__name__)
def test_bad_parameters_raise_a_value_error_at_fit(cls):
    """As scikit-learn's check_param_validation: a value of no valid type, and one outside the declared range,
    make fit and partial_fit raise InvalidParameterError (a ValueError and a SuperposError) naming the parameter;
    the constructor and set_params accept anything."""
    x = np.abs(np.random.default_rng(0).standard_normal((20, 5)))
    BadType = type("BadType", (), {})
    for name, decl in cls._all_params.items():
        for bad in [BadType(), *_out_of_range(decl.check)]:
            est = cls(**SMALL).set_params(**{name: bad})
            for method in (est.fit, est.partial_fit):
                with pytest.raises(InvalidParameterError, match=f"{cls.__name__}: {name} must be ") as info:
                    method(x)
                assert isinstance(info.value, ValueError) and isinstance(info.value, SuperposError)
            assert "components_" not in vars(est)


def test_fit_workflow_hooks_live_on_the_classes():
    """What `superpos fit` treats per kind is on the class: PCA's size from --k, and which kinds checkpoint."""
    assert PCA.from_params({"k": 16}).n_components == 16
    assert PCA.from_params({}).n_components == TopKSAE().k  # without --k: the TopK SAE's default k
    assert PCA.from_params({"k": 8, "n_components": 4}).n_components == 4
    with pytest.raises(InvalidParameterError, match="parameter 'l1_coeff' does not apply to kind pca"):
        PCA.from_params({"l1_coeff": 3})
    assert TopKSAE.from_params({"k": 4}, device="cpu").get_params()["k"] == 4
    assert [c.kind for c in KIND_CLASSES if c.resumable] == ["batchtopk", "jumprelu", "relu", "topk"]


def test_topk_and_batchtopk_are_siblings():
    from superpos.dictionaries.topk import TOPK_DECODER_LR_MULT, _SparseSelectSAE

    assert BatchTopKSAE.__bases__ == TopKSAE.__bases__ == (_SparseSelectSAE,)
    assert not issubclass(BatchTopKSAE, TopKSAE)
    assert TopKSAE._decoder_lr_mult == TOPK_DECODER_LR_MULT and BatchTopKSAE._decoder_lr_mult == 1.0
    assert "threshold_" in BatchTopKSAE._state_names and "threshold_" not in TopKSAE._state_names
