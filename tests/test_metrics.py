import numpy as np
import pytest
import torch

from superpos.dictionaries import PCA, TopKSAE, metrics
from superpos.model.harvest import HarvestConfig, harvest
from superpos.model.load import load_model
from superpos.store import ActivationStore


def test_metrics_on_hand_computed_case():
    x = np.array([[1.0, 0.0], [3.0, 2.0]])
    x_hat = np.array([[1.0, 1.0], [3.0, 0.0]])
    # mean (2, 1); Σ‖x − mean‖² = (1+1)+(1+1) = 4; Σ‖x − x̂‖² = 1 + 4 = 5
    assert metrics.fvu(x, x_hat) == pytest.approx(5 / 4)
    assert metrics.explained_variance(x, x_hat) == pytest.approx(-0.25)
    assert metrics.mse(x, x_hat) == pytest.approx(2.5)
    cos1 = 1 / np.sqrt(2)
    cos2 = 9 / (np.sqrt(13) * 3)
    assert metrics.cosine(x, x_hat) == pytest.approx((cos1 + cos2) / 2)
    codes = np.array([[0, 2, 0, 0], [1, 3, 0, 0], [0, 1, 0, 0], [0, 5, 0, 0],
                      [0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0]])
    assert metrics.l0(codes) == pytest.approx(1.1)
    firing = metrics.firing_fractions(codes)
    np.testing.assert_allclose(firing.numpy(), [0.1, 1.0, 0.0, 0.0])
    assert metrics.dead_fraction(firing) == 0.5
    assert metrics.dense_fraction(firing) == 0.25  # 0.1 is not > 10 %
    assert metrics.ce_loss_recovered(2.0, 2.5, 6.0) == pytest.approx(0.875)


class _Exact:
    """A 'dictionary' whose reconstruction is the input itself (or zero)."""

    kind = "exact"

    def __init__(self, d, zero=False):
        self.components_ = torch.eye(d)
        self.zero = zero
        self.d_model_ = self.n_components_ = d
        self.device_ = self.components_.device

    def encode(self, x):  # the tensor-level interface metrics use (public encode/decode/device_)
        return x * 0 if self.zero else x

    def decode(self, c):
        return c


def test_ce_recovered_exact_and_zero(tiny_models, tmp_path):
    out = harvest(HarvestConfig(model=str(tiny_models["llama"]), layers="2", tokens=512, context_length=32,
                                dtype="float32", device="cpu"), tmp_path / "a.h5", progress=False)
    lm = load_model(tiny_models["llama"], device="cpu")
    with ActivationStore(out) as store:
        d = store.d_model
        res = metrics.evaluate_dictionaries({"exact": _Exact(d), "zero": _Exact(d, zero=True)}, store, 2, lm=lm,
                                            ce_contexts=8, progress=False)
    exact, zero = res
    assert exact.fvu == pytest.approx(0, abs=1e-10)
    assert exact.ce_loss_recovered == pytest.approx(1.0, abs=1e-6) and exact.kl_spliced == pytest.approx(0, abs=1e-7)
    assert zero.ce_loss_recovered == pytest.approx(0.0, abs=1e-6) and zero.kl_spliced > 0
    assert zero.l0 == 0 and zero.dead_fraction == 1.0


def test_streaming_metrics_match_in_memory(tiny_models, tmp_path):
    out = harvest(HarvestConfig(model=str(tiny_models["gpt2"]), layers="1", tokens=1024, context_length=32,
                                dtype="float32", device="cpu"), tmp_path / "a.h5", progress=False)
    with ActivationStore(out) as store:
        sae = TopKSAE(k=4, expansion=2, n_tokens=20_000, batch_size=256, progress=False, device="cpu").fit(store, layer=1)
        x = store.to_numpy(1)[store.pos >= 1]
        res = metrics.reconstruction_metrics(sae, store, 1, batch_size=100, progress=False)
    x_hat = sae.reconstruct(x)
    assert res.n_rows == len(x)
    assert res.fvu == pytest.approx(metrics.fvu(x, x_hat), rel=1e-6)
    assert res.cosine == pytest.approx(metrics.cosine(x, x_hat), rel=1e-6)
    assert res.l0 == pytest.approx(metrics.l0(sae.transform(x)), rel=1e-9)
    pca = PCA(n_components=5).fit(x)
    assert res.fvu < 1.0 and pca.explained_variance_score(x) < 1.0


def test_fvu_on_typical_rows_leaves_out_attention_sink_rows(tmp_path):
    """Three rows of a thousand with norms ~1000× the rest hold nearly all the variance: the all-row FVU of a
    dictionary that reconstructs them exactly is tiny whatever it does elsewhere, while the typical-row FVU is the
    hand-computed FVU of the other rows."""
    from superpos.store.surrogates import write_store

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 8)).astype(np.float32)
    sinks = [150, 420, 910]  # not at position 0 of a context (rows 0, 100, …), which evaluation skips anyway
    x[sinks] = 1000 * rng.standard_normal((3, 8))
    path = write_store({1: x}, tmp_path / "s.h5", description="sinks", context_length=100)

    class Half(_Exact):  # exact on the sink rows, half of every other row
        def decode(self, codes):
            big = codes.norm(dim=1, keepdim=True) > 100
            return torch.where(big, codes, codes / 2)

    with ActivationStore(path) as store:
        kept = store.pos >= 1
        res = metrics.reconstruction_metrics(Half(8), store, 1, batch_size=1000, progress=False)
    rows = x[kept]
    typical = np.linalg.norm(rows, axis=1) < 100
    assert res.n_outliers == 3 and res.fvu < 0.01
    assert res.fvu_typical == pytest.approx(metrics.fvu(rows[typical], rows[typical] / 2), rel=1e-6)
