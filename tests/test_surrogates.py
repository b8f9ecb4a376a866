"""Surrogate stores: the Gaussian and PC-shuffle nulls keep the second moments and lose the sparse features;
the planted store holds known atoms; all of them are ordinary stores."""
import numpy as np
import pytest
from scipy.stats import kurtosis

from superpos.cli.main import main
from superpos.store import ActivationStore
from superpos.store.surrogates import gaussian_like, pc_shuffle, planted_superposition, surrogate_of_store


@pytest.fixture(scope="module")
def planted():
    return planted_superposition(20000, 32, 128, 3, noise=0.01, seed=0)


@pytest.mark.parametrize("null", [gaussian_like, pc_shuffle])
def test_nulls_keep_the_covariance_and_lose_the_features(planted, null):
    x, atoms = planted
    y = null(x, seed=1)
    cov_x, cov_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    assert np.abs(cov_y - cov_x).max() < 0.05 * np.abs(np.diag(cov_x)).max()
    np.testing.assert_allclose(y.mean(0), x.mean(0), atol=0.02)
    # along each planted atom the real rows are sparse (heavy-tailed); in a null they are not
    assert kurtosis(x @ atoms.T, axis=0).mean() > 1.0
    assert abs(kurtosis(y @ atoms.T, axis=0).mean()) < 0.2


def test_pc_shuffle_keeps_each_principal_marginal_exactly(planted):
    x, _ = planted
    y = pc_shuffle(x, seed=2)
    _, _, Vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    a, b = np.sort((x - x.mean(0)) @ Vt.T, axis=0), np.sort((y - x.mean(0)) @ Vt.T, axis=0)
    np.testing.assert_allclose(a, b, atol=1e-4)  # the same values on every axis, only paired differently


def test_surrogate_command_writes_a_store_shaped_like_the_layer(tmp_path, capsys):
    from superpos.store.surrogates import write_surrogate_store

    x, _ = planted_superposition(4096, 16, 64, 4, seed=0)
    src = write_surrogate_store(x, tmp_path / "src.h5", 3, description="planted test rows", context_length=64)
    with ActivationStore(src) as st:
        assert st.n_rows == 4096 and st.layers == [3] and st.attrs["model"] == "planted test rows"
        np.testing.assert_allclose(st.to_numpy(3), x, atol=1e-6)
    for kind in ("gaussian", "pc-shuffle", "planted"):
        out = tmp_path / f"{kind}.h5"
        assert main(["surrogate", "--store", str(src), "--layer", "3", "--kind", kind, "--out", str(out)]) == 0
        with ActivationStore(out) as st:
            y = st.to_numpy(3, slice(0, st.n_rows))
            assert st.d_model == 16 and st.n_rows == 4032 and kind in st.attrs["model"]  # 64 contexts of 63 rows
            assert np.isfinite(y).all() and abs(np.mean((y ** 2).sum(1)) / np.mean((x ** 2).sum(1)) - 1) < 0.1
    assert main(["surrogate", "--store", str(src), "--layer", "3", "--kind", "planted", "--out",
                 str(tmp_path / "planted.h5")]) == 2
    assert "exists" in capsys.readouterr().err
    with ActivationStore(src) as st, pytest.raises(Exception, match="unknown surrogate"):
        surrogate_of_store(st, 3, "rotated", tmp_path / "r.h5")
