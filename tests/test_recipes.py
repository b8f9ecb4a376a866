"""docs/recipe_dictionary_kind.md, followed literally: a new dictionary kind is one class (here in the test, as it
would be in its own module) with its parameter declarations, and one line in KINDS."""
import inspect

import numpy as np
import pytest
import torch
from conftest import planted_data

from superpos.dictionaries import load_dictionary, save_dictionary
from superpos.dictionaries.kinds import KINDS
from superpos.dictionaries.params import InvalidParameterError, Param, Params, Real
from superpos.dictionaries.trainer import SparseAutoencoder, _reconstruction_terms
from superpos.errors import SuperposError


class LinearAE(SparseAutoencoder):
    """A dense linear autoencoder: codes = (x − b_dec) W_encᵀ + b_enc, with an L2 penalty on them."""

    kind = "linear"
    _params = Params(code_l2=Param(0.0, "Weight of the L2 penalty on the codes.", Real(0)))

    def __init__(self, *, n_components=..., expansion=..., code_l2=..., batch_size=..., n_tokens=..., lr=...,
                 max_epochs=..., tol=..., n_iter_no_change=..., validation_fraction=..., warmup_steps=...,
                 decay_frac=..., aux_k=..., aux_coeff=..., dead_after_tokens=..., b_dec_init=..., normalize=...,
                 min_pos=..., seed=..., precision=..., save_at=..., device=..., progress=...):
        self._set_params(locals())

    def _train_forward(self, s, x, dead):
        codes = torch.addmm(s["b_enc"], x - s["b_dec"], s["W_enc"].T)
        x_hat = codes @ s["W_dec"] + s["b_dec"]
        loss = _reconstruction_terms(x, x_hat) + self.code_l2 * codes.pow(2).sum(-1).mean()
        counts = (codes.detach() != 0).sum(0)
        return {"loss": loss, "x_hat": x_hat.detach(), "l0": counts.sum().item() / x.shape[0], "counts": counts}

    def _encode(self, x_BD):
        return self._pre(x_BD)


def test_new_dictionary_kind_recipe(monkeypatch, tmp_path):
    monkeypatch.setitem(KINDS, "linear", LinearAE)  # the one line in kinds.py
    # the signature's defaults are the declarations' (the kind's own and the inherited SAE ones)
    sig = inspect.signature(LinearAE)
    assert all(p.kind is p.KEYWORD_ONLY for p in sig.parameters.values())
    assert {n: p.default for n, p in sig.parameters.items()} == {n: d.default for n, d in LinearAE._all_params.items()}
    assert LinearAE().get_params()["code_l2"] == 0.0 and LinearAE().get_params()["batch_size"] == 1024
    # the docstring's Parameters section comes from the declarations
    doc = LinearAE.__doc__
    assert doc.startswith("A dense linear autoencoder") and "\nParameters\n----------\n" in doc
    assert "code_l2 : float, default=0.0\n    Weight of the L2 penalty on the codes." in doc
    assert "batch_size : int, default=1024\n" in doc and "aux_coeff : float, default=1/32\n" in doc
    assert all(f"\n{name} : " in doc for name in LinearAE().get_params())
    # fit / transform / inverse_transform
    x, _ = planted_data(3000, 16, 24, 3, seed=2)
    est = LinearAE(n_components=16, code_l2=1e-3, n_tokens=40_000, batch_size=256, device="cpu", progress=False).fit(x)
    codes = est.transform(x[:100])
    assert codes.shape == (100, 16)
    assert est.explained_variance_score(x) > 0.8  # 16 linear atoms can span d_model = 16
    np.testing.assert_allclose(est.inverse_transform(codes), est.reconstruct(x[:100]), rtol=1e-5, atol=1e-5)
    # save / load round trip through the registered kind
    save_dictionary(est, tmp_path / "d", meta={"layer": 1})
    back = load_dictionary(tmp_path / "d", device="cpu")
    assert type(back) is LinearAE and back.get_params() == est.get_params()
    np.testing.assert_array_equal(back.transform(x[:100]), codes)
    # superpos fit's path: parameters by name, refused when the kind does not take them
    assert KINDS["linear"].from_params({"code_l2": 0.5}, device="cpu").code_l2 == 0.5
    with pytest.raises(SuperposError, match="parameter 'k' does not apply to kind linear"):
        KINDS["linear"].from_params({"k": 4})
    # the validation comes from the declaration, at fit, before any training
    for bad, said in ((-1.0, "a number ≥ 0, got -1.0"), ("big", "a number ≥ 0, got 'big'")):
        with pytest.raises(InvalidParameterError, match=f"LinearAE: code_l2 must be {said}") as info:
            LinearAE(code_l2=bad, device="cpu", progress=False).fit(x)
        assert isinstance(info.value, ValueError) and not hasattr(info.value, "components_")


def test_a_signature_that_differs_from_the_declarations_is_refused():
    with pytest.raises(TypeError, match="without a declaration"):
        class Missing(LinearAE):  # declares nothing new but names a parameter no base declares
            def __init__(self, *, n_components=..., extra=...):
                self._set_params(locals())

    with pytest.raises(TypeError, match="write `...` for every default"):
        class Written(LinearAE):  # a default written in the signature instead of the declaration
            def __init__(self, *, n_components=None, expansion=..., code_l2=..., batch_size=..., n_tokens=...,
                         lr=..., max_epochs=..., tol=..., n_iter_no_change=..., validation_fraction=...,
                         warmup_steps=..., decay_frac=..., aux_k=..., aux_coeff=..., dead_after_tokens=...,
                         b_dec_init=..., normalize=..., min_pos=..., seed=..., precision=..., save_at=..., device=...,
                         progress=...):
                self._set_params(locals())

    with pytest.raises(TypeError, match="keyword-only"):
        class Positional(SparseAutoencoder):
            _params = Params()

            def __init__(self, n_components=..., expansion=..., batch_size=..., n_tokens=..., lr=...,
                         max_epochs=..., tol=..., n_iter_no_change=..., validation_fraction=..., warmup_steps=...,
                         decay_frac=..., aux_k=..., aux_coeff=..., dead_after_tokens=..., b_dec_init=...,
                         normalize=..., min_pos=..., seed=..., precision=..., save_at=..., device=..., progress=...):
                self._set_params(locals())

    with pytest.raises(TypeError, match="redeclares a default"):
        class Redeclared(LinearAE):  # another default for an inherited parameter needs its own __init__
            _params = Params(code_l2=Param(0.5, "Another default.", Real(0)))

    with pytest.raises(TypeError, match="fails its own check"):
        Param(-1, "A default its check refuses.", Real(0))
