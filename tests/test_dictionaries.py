import json
import re

import numpy as np
import pytest
import torch
from conftest import planted_data
from sklearn.base import clone
from sklearn.decomposition import NMF as SkNMF
from sklearn.decomposition import PCA as SkPCA

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
from superpos.dictionaries.external import export_saelens, load_saelens
from superpos.dictionaries.metrics import fvu
from superpos.dictionaries.params import InvalidParameterError
from superpos.dictionaries.sparse_ops import (
    aux_k_loss,
    dense_pairs,
    select_batch_topk,
    select_topk,
    sparse_decode,
    sparse_encode,
)
from superpos.errors import SuperposError
from superpos.integrity import load_checkpoint


@pytest.fixture(scope="module")
def planted():
    return planted_data(60000, 64, 256, 5, noise=0.01, seed=0)


def _recovery(atoms, components):
    return np.abs(atoms @ np.asarray(components).T).max(1)


def test_topk_recovers_planted_atoms_and_beats_pca(planted):
    x, atoms = planted
    sae = TopKSAE(n_components=512, k=5, batch_size=1024, n_tokens=1_200_000, dead_after_tokens=20_000,
                  device="cpu", progress=False).fit(x)
    best = _recovery(atoms, sae.components_.numpy())
    assert best.mean() >= 0.9, best.mean()
    assert np.allclose(np.linalg.norm(sae.components_.numpy(), axis=1), 1, atol=1e-5)
    codes = sae.transform(x[:2000])
    assert ((codes != 0).sum(1) <= 5).all() and (codes >= 0).all()
    # PCA with as many components as the SAE's L0 explains far less
    pca = PCA(n_components=5).fit(x)
    assert fvu(x, sae.reconstruct(x)) < 0.5 * fvu(x, pca.reconstruct(x))
    assert sae.score(x) == pytest.approx(1 - fvu(x, sae.reconstruct(x)), abs=1e-4)



def test_aux_k_loss_matches_a_dense_reference():
    """AuxK: each row's k_aux most active dead latents reconstruct the main error, over its variance."""
    torch.manual_seed(1)
    B, D, Fn, k_aux = 32, 8, 40, 3
    pre = torch.randn(B, Fn, dtype=torch.float64, requires_grad=True)
    W_dec = torch.randn(Fn, D, dtype=torch.float64)
    x, x_hat = torch.randn(B, D, dtype=torch.float64), torch.randn(B, D, dtype=torch.float64)
    dead = torch.zeros(Fn, dtype=torch.bool)
    dead[[1, 5, 6, 17, 30, 39]] = True
    got = aux_k_loss(x, x_hat, pre, dead, k_aux, W_dec, lambda r, c: dense_pairs(pre, r, c))
    masked = pre.masked_fill(~dead, float("-inf"))
    idx = masked.topk(k_aux, dim=1).indices
    codes = torch.zeros(B, Fn, dtype=torch.float64).scatter(1, idx, torch.relu(pre.gather(1, idx)))
    e = x - x_hat
    want = (codes @ W_dec - e).pow(2).sum(-1).mean() / (e - e.mean(0)).pow(2).sum(-1).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    assert aux_k_loss(x, x_hat, pre, dead, 100, W_dec, lambda r, c: dense_pairs(pre, r, c)).isfinite()  # k_aux > #dead


def test_batch_topk_row_cap_bounds_a_dominant_row_and_changes_nothing_else():
    gen = torch.Generator().manual_seed(0)
    pre = torch.randn(32, 200, generator=gen)
    k = 4
    free = select_batch_topk(pre, k)
    capped = select_batch_topk(pre, k, row_cap=4 * k)
    assert torch.bincount(free[0], minlength=32).max() <= 4 * k  # no row reaches the cap here: the same selection
    assert all(torch.equal(a, b) for a, b in zip(free, capped))
    pre[7] *= 100  # one row of ~100× the norm, as a later attention sink is
    rows, cols, vals = select_batch_topk(pre, k, row_cap=4 * k)
    counts = torch.bincount(rows, minlength=32)
    assert len(rows) == k * 32 and counts[7] == 4 * k and torch.bincount(select_batch_topk(pre, k)[0])[7] > 4 * k
    assert torch.equal(vals, pre[rows, cols]) and torch.all(rows[1:] >= rows[:-1])  # sorted by row
    kth = pre.masked_fill(torch.arange(32)[:, None] == 7, float("-inf")).reshape(-1).topk(k * 32 - 4 * k).values.min()
    assert vals[rows != 7].min() == kth  # the other rows share the rest by value


@pytest.mark.parametrize("selector", ["topk", "batchtopk"])
def test_sparse_kernels_match_dense_autograd(selector):
    torch.manual_seed(0)
    B, D, Fn, k = 64, 16, 96, 4
    x = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    W_enc = torch.randn(Fn, D, dtype=torch.float64, requires_grad=True)
    b_enc = torch.randn(Fn, dtype=torch.float64, requires_grad=True)
    W_dec = torch.randn(Fn, D, dtype=torch.float64, requires_grad=True)
    target = torch.randn(B, D, dtype=torch.float64)
    pre = torch.addmm(b_enc, x, W_enc.T)
    rows, cols, pre_nnz = (select_topk if selector == "topk" else select_batch_topk)(pre.detach(), k)
    assert torch.equal(pre_nnz, pre.detach()[rows, cols])
    codes = sparse_encode(x, W_enc, b_enc, pre, rows, cols, pre_nnz)
    loss_sparse = (sparse_decode(codes, W_dec) - target).pow(2).sum()
    grads_sparse = torch.autograd.grad(loss_sparse, (x, W_enc, b_enc, W_dec))
    mask = torch.zeros(B, Fn, dtype=torch.bool)
    mask[rows, cols] = True
    dense = torch.relu(torch.addmm(b_enc, x, W_enc.T)) * mask
    loss_dense = (dense @ W_dec - target).pow(2).sum()
    grads_dense = torch.autograd.grad(loss_dense, (x, W_enc, b_enc, W_dec))
    assert loss_sparse.item() == pytest.approx(loss_dense.item(), rel=1e-12)
    for gs, gd in zip(grads_sparse, grads_dense):
        torch.testing.assert_close(gs, gd, rtol=1e-10, atol=1e-10)
    if selector == "batchtopk":
        assert mask.sum() == k * B and mask.sum(1).float().std() > 0  # variable per-row counts
    # centred by b_dec: b_dec's gradient through the encoder (a GEMV in the sparse path) equals the dense one
    b_dec = torch.randn(D, dtype=torch.float64, requires_grad=True)
    x_c = (x - b_dec).detach()
    pre = torch.addmm(b_enc, x_c, W_enc.T)
    rows, cols, pre_nnz = (select_topk if selector == "topk" else select_batch_topk)(pre.detach(), k)
    codes = sparse_encode(x_c, W_enc, b_enc, pre, rows, cols, pre_nnz, b_dec_D=b_dec)
    grads_sparse = torch.autograd.grad((sparse_decode(codes, W_dec) + b_dec - target).pow(2).sum(),
                                       (W_enc, b_enc, W_dec, b_dec))
    mask = torch.zeros(B, Fn, dtype=torch.bool)
    mask[rows, cols] = True
    dense = torch.relu(torch.addmm(b_enc, x - b_dec, W_enc.T)) * mask
    grads_dense = torch.autograd.grad((dense @ W_dec + b_dec - target).pow(2).sum(), (W_enc, b_enc, W_dec, b_dec))
    for gs, gd in zip(grads_sparse, grads_dense):
        torch.testing.assert_close(gs, gd, rtol=1e-10, atol=1e-10)


def test_batchtopk_threshold_gives_l0_k(planted):
    x, atoms = planted
    sae = BatchTopKSAE(n_components=512, k=5, batch_size=1024, n_tokens=1_200_000, dead_after_tokens=20_000,
                       device="cpu", progress=False).fit(x)
    codes = sae.transform(x[:20000])
    assert (codes != 0).sum(1).mean() == pytest.approx(5, rel=0.1)
    assert _recovery(atoms, sae.components_.numpy()).mean() > 0.8


@pytest.mark.parametrize("cls,coeff", [(ReLUSAE, "l1_coeff"), (JumpReLUSAE, "l0_coeff")])
def test_dense_saes_trade_sparsity_for_reconstruction(planted, cls, coeff):
    """The sparsity penalty controls L0: a larger coefficient gives fewer active latents and higher FVU."""
    x, _ = planted
    out = []
    for c in (0.1, 10.0):
        sae = cls(n_components=256, batch_size=1024, n_tokens=300_000, device="cpu", progress=False, **{coeff: c}).fit(x)
        codes = sae.transform(x[:5000])
        assert (codes >= 0).all()
        out.append(((codes != 0).sum(1).mean(), fvu(x[:5000], sae.reconstruct(x[:5000]))))
    (l0_lo, fvu_lo), (l0_hi, fvu_hi) = out
    assert l0_hi < 0.5 * l0_lo and fvu_lo < fvu_hi
    assert fvu_lo < 0.35  # learned something: PCA with 5 components leaves FVU ≈ 0.84 here


def test_pca_matches_sklearn():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 12)) @ rng.standard_normal((12, 12)) + 3
    ours = PCA(n_components=6).fit(x)
    ref = SkPCA(n_components=6).fit(x)
    signs = np.sign((ours.components_.numpy() * ref.components_).sum(1))
    np.testing.assert_allclose(ours.components_.numpy() * signs[:, None], ref.components_, atol=1e-5)
    np.testing.assert_allclose(ours.explained_variance_.numpy(), ref.explained_variance_, rtol=1e-5)
    np.testing.assert_allclose(np.abs(ours.transform(x)), np.abs(ref.transform(x)), rtol=1e-4, atol=1e-4)
    # score is scikit-learn's: the average log-likelihood under probabilistic PCA (per row: score_samples)
    assert ours.noise_variance_ == pytest.approx(ref.noise_variance_, rel=1e-5)
    assert ours.score(x) == pytest.approx(ref.score(x), rel=1e-5)
    np.testing.assert_allclose(ours.score_samples(x[:20]), ref.score_samples(x[:20]), rtol=1e-5)
    assert ours.explained_variance_score(x) == pytest.approx(1 - fvu(x, ours.reconstruct(x)), abs=1e-6)
    full = PCA().fit(x)  # every component: no noise variance left
    assert full.noise_variance_ == 0 and full.score(x) == pytest.approx(SkPCA().fit(x).score(x), rel=1e-5)
    # streaming (partial_fit) accumulation gives the same answer
    inc = PCA(n_components=6)
    for part in np.array_split(x, 7):
        inc.partial_fit(part)
    np.testing.assert_allclose(np.abs(inc.components_.numpy()), np.abs(ours.components_.numpy()), atol=1e-4)


def test_nmf_objective_no_worse_than_sklearn():
    rng = np.random.default_rng(1)
    x = (rng.random((300, 10)) @ rng.random((10, 40))).astype(np.float32)
    ref = SkNMF(n_components=10, init="nndsvda", max_iter=2000, random_state=0).fit(x)
    ref_obj = 0.5 * np.sum((x - ref.transform(x) @ ref.components_) ** 2)
    ours = NMF(n_components=10, sign_split=False, max_iter=2000, transform_iter=300, device="cpu",
               progress=False).fit(x)
    ours_obj = ours._objective(x)
    # multiplicative updates vs sklearn's coordinate descent: allow 10 % on the objective
    assert ours_obj <= 1.10 * ref_obj, (ours_obj, ref_obj)
    assert (ours.transform(x) >= 0).all()


def test_signed_nmf_variants_reconstruct():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((400, 16)).astype(np.float32)
    with pytest.raises(SuperposError, match="non-negative"):
        NMF(n_components=8, sign_split=False, device="cpu", progress=False).fit(x)
    split = NMF(n_components=32, sign_split=True, max_iter=500, device="cpu", progress=False).fit(x)
    semi = SemiNMF(n_components=32, max_iter=300, device="cpu", progress=False).fit(x)
    for est in (split, semi):
        assert est.components_.shape == (32, 16)
        assert np.allclose(np.linalg.norm(est.components_.numpy(), axis=1), 1, atol=1e-5)
        assert (est.transform(x) >= 0).all()
        assert fvu(x, est.reconstruct(x)) < 0.25
    # codes × unit atoms reproduce the factorisation: inverse_transform is consistent with transform
    np.testing.assert_allclose(split.inverse_transform(split.transform(x)), split.reconstruct(x), atol=1e-5)


def test_estimator_contract(planted):
    x, _ = planted
    for est in (TopKSAE(k=3, expansion=2, n_tokens=5000, batch_size=512, progress=False, device="cpu"),
                BatchTopKSAE(k=3, expansion=2, n_tokens=5000, batch_size=512, progress=False, device="cpu"),
                ReLUSAE(expansion=2, n_tokens=5000, batch_size=512, progress=False, device="cpu"),
                JumpReLUSAE(expansion=2, n_tokens=5000, batch_size=512, progress=False, device="cpu"),
                PCA(n_components=4), NMF(n_components=8, max_iter=20, progress=False, device="cpu"),
                SemiNMF(n_components=8, max_iter=20, progress=False, device="cpu")):
        c = clone(est)
        assert c.get_params() == est.get_params()
        assert not hasattr(c, "components_")
        with pytest.raises(SuperposError, match="not fitted"):
            c.transform(x[:4])
        assert c.fit(x[:3000]) is c
        assert c.components_.shape[1] == 64
        assert c.partial_fit(x[3000:4000]) is c
        codes = c.transform(torch.from_numpy(x[:10]))
        assert isinstance(codes, torch.Tensor) and codes.shape == (10, c.n_components_)
        assert isinstance(c.transform(x[:10]), np.ndarray)


def test_checkpoint_resume_is_exact(planted, tmp_path):
    x, _ = planted
    kw = dict(n_components=128, k=4, batch_size=256, n_tokens=256 * 60, dead_after_tokens=2000, device="cpu",
              progress=False)
    full = TopKSAE(**kw).fit(x)

    def interrupt(step, stats):
        if step >= 25:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        TopKSAE(**kw).fit(x, checkpoint_dir=tmp_path, checkpoint_every=1000, callback=interrupt)
    assert 25 <= load_checkpoint(tmp_path / "checkpoint.pt")["step"] < 60
    resumed = TopKSAE(**kw).fit(x, checkpoint_dir=tmp_path, checkpoint_every=1000)
    assert len(resumed.history_) == len(full.history_)  # the training log survives the interruption
    last = full.history_[-1]
    assert {"loss", "fvu", "l0", "dead", "dense", "tok_s"} <= set(last) and 0 <= last["dense"] <= 1
    assert last["l0"] == 4.0
    for name in ("components_", "W_enc_", "b_enc_", "b_dec_"):
        torch.testing.assert_close(getattr(resumed, name), getattr(full, name), rtol=0, atol=0)
    with pytest.raises(SuperposError, match="other settings"):
        TopKSAE(**{**kw, "k": 5}).fit(x, checkpoint_dir=tmp_path)


def test_topk_decoder_steps_at_its_multiple_and_old_checkpoints_are_refused(planted, tmp_path, monkeypatch):
    from superpos.dictionaries.topk import TOPK_DECODER_LR_MULT
    x, _ = planted
    for cls, mult in ((TopKSAE, TOPK_DECODER_LR_MULT), (BatchTopKSAE, 1.0), (ReLUSAE, 1.0)):
        sae = cls(n_components=64, batch_size=512, lr=1e-3, device="cpu", progress=False).partial_fit(x[:1024])
        lr_of = {id(p): g["lr"] for g in sae._pf_opt.param_groups for p in g["params"]}
        assert lr_of[id(sae._pf_state["W_enc"])] == 1e-3
        assert lr_of[id(sae._pf_state["W_dec"])] == pytest.approx(1e-3 * mult)
    # a checkpoint whose optimizer grouped the weights otherwise (made before the decoder had its own lr)
    kw = dict(n_components=64, k=4, batch_size=256, n_tokens=256 * 20, device="cpu", progress=False)
    monkeypatch.setattr(TopKSAE, "_decoder_lr_mult", 1.0)

    def stop(step, stats):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        TopKSAE(**kw).fit(x, checkpoint_dir=tmp_path, callback=stop)
    monkeypatch.undo()
    with pytest.raises(SuperposError, match="another superpos version"):
        TopKSAE(**kw).fit(x, checkpoint_dir=tmp_path)


def test_nan_input_stops_with_step(planted):
    x, _ = planted
    bad = x[:4096].copy()
    bad[100, 3] = np.nan
    with pytest.raises(SuperposError, match="NaN"):
        TopKSAE(k=3, expansion=1, batch_size=256, progress=False, device="cpu").fit(bad)
    with pytest.raises(SuperposError, match="k=999"):
        TopKSAE(k=999, expansion=1, progress=False, device="cpu").fit(x[:100])


@pytest.mark.parametrize("cls", [TopKSAE, BatchTopKSAE, JumpReLUSAE, ReLUSAE])
def test_save_load_and_saelens_roundtrip(planted, tmp_path, cls):
    x, _ = planted
    sae = cls(expansion=2, n_tokens=20_000, batch_size=512, progress=False, device="cpu").fit(x)
    codes = sae.transform(x[:500])
    save_dictionary(sae, tmp_path / "d", meta={"layer": 3})
    back = load_dictionary(tmp_path / "d", device="cpu")
    assert type(back) is cls and back.meta_["layer"] == 3 and back.get_params() == {**sae.get_params(), "device": "cpu"}
    assert sae.n_iter_ == 20_000 // 512 and back.warmup_steps_ == sae.warmup_steps_ == 4  # a tenth of a short run
    np.testing.assert_array_equal(back.transform(x[:500]), codes)
    export_saelens(back, tmp_path / "sl", hook_name="blocks.2.hook_resid_post")
    sl = load_saelens(tmp_path / "sl", device="cpu")
    np.testing.assert_allclose(sl.transform(x[:500]), codes, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sl.reconstruct(x[:500]), sae.reconstruct(x[:500]), rtol=1e-4, atol=1e-4)
    assert type(load_dictionary(tmp_path / "sl", device="cpu")) is type(sl)


def _sparsify_folder(folder, W_dec, W_enc, b_enc, b_dec, **cfg):
    """A folder as EleutherAI sparsify's ``SparseCoder.save_to_disk`` writes it (its config fields, ``d_in``, and
    the module's parameters under their module names)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"encoder.weight": W_enc, "encoder.bias": b_enc, "W_dec": W_dec, "b_dec": b_dec},
              str(folder / "sae.safetensors"))
    cfg = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": W_dec.shape[0],
           "k": 4, "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": W_dec.shape[1], **cfg}
    (folder / "cfg.json").write_text(json.dumps(cfg))


def test_sparsify_folders_encode_and_decode_as_sparsify_does(tmp_path):
    """sparsify's TopK, written out by hand as the reference: codes = top-k of ReLU(W_enc (x − b_dec) + b_enc),
    x̂ = codes · W_dec + b_dec. A hookpoint folder, a run's folder of hookpoints and every unsupported variant."""
    g = torch.Generator().manual_seed(0)
    n, d, k = 48, 12, 4
    W_dec = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    W_enc, b_enc, b_dec = torch.randn(n, d, generator=g), 0.1 * torch.randn(n, generator=g), torch.randn(d, generator=g)
    for hook in ("layers.5", "layers.15"):
        _sparsify_folder(tmp_path / "run" / hook, W_dec, W_enc, b_enc, b_dec, k=k)
    x = torch.randn(200, d, generator=g) * 2
    pre = torch.relu((x - b_dec) @ W_enc.T + b_enc)
    vals, idx = pre.topk(k, dim=1)
    ref_codes = torch.zeros(200, n).scatter_(1, idx, vals)
    ref_hat = ref_codes @ W_dec + b_dec
    for sae in (load_dictionary(tmp_path / "run" / "layers.15", device="cpu"),
                load_dictionary(tmp_path / "run", device="cpu", hookpoint="layers.15")):
        assert type(sae) is TopKSAE and sae.k == k and sae.meta_ == {"hook_name": "layers.15", "source": "sparsify"}
        np.testing.assert_allclose(sae.transform(x.numpy()), ref_codes.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(sae.reconstruct(x.numpy()), ref_hat.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(SuperposError, match=r"sparsify run with 2 hookpoints \(layers.15, layers.5\): name one"):
        load_dictionary(tmp_path / "run", device="cpu")
    with pytest.raises(SuperposError, match="no sparsify hookpoint 'layers.9' .it holds layers.15, layers.5"):
        load_dictionary(tmp_path / "run", device="cpu", hookpoint="layers.9")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SuperposError, match="not a dictionary folder .expected config.json .*sparsify hookpoint"):
        load_dictionary(tmp_path / "empty", device="cpu")
    bad = {"groupmax": ({"activation": "groupmax"}, "activation 'groupmax' is not supported"),
           "skip": ({"skip_connection": True}, "a skip connection is not a dictionary of its input"),
           "transcoder": ({"transcode": True}, "a transcoder is not a dictionary of its input"),
           "size": ({"num_latents": 0, "expansion_factor": 2}, "give 24 latents, W_dec has 48"),
           "k": ({"k": 49}, "'k' is 49, more than the SAE's 48 latents"),
           "k type": ({"k": "4"}, "'k'")}
    for name, (cfg, message) in bad.items():
        _sparsify_folder(tmp_path / name, W_dec, W_enc, b_enc, b_dec, **cfg)
        with pytest.raises(SuperposError, match=re.escape(message)):
            load_dictionary(tmp_path / name, device="cpu")
    _sparsify_folder(tmp_path / "norms", 2 * W_dec, W_enc, b_enc, b_dec)
    with pytest.raises(SuperposError, match="decoder rows are not unit norm"):
        load_dictionary(tmp_path / "norms", device="cpu")


def test_pca_nmf_save_load(planted, tmp_path):
    x, _ = planted
    for est in (PCA(n_components=5).fit(x[:2000]),
                SemiNMF(n_components=16, max_iter=30, progress=False, device="cpu").fit(x[:2000])):
        save_dictionary(est, tmp_path / est.kind)
        back = load_dictionary(tmp_path / est.kind, device="cpu")
        np.testing.assert_allclose(back.transform(x[:50]), est.transform(x[:50]), rtol=1e-5, atol=1e-5)
        assert back.score(x[:500]) == pytest.approx(est.score(x[:500]), rel=1e-5)  # PCA: noise_variance_ restored


def test_broken_dictionary_folders(planted, tmp_path):
    x, _ = planted
    save_dictionary(PCA(n_components=3).fit(x[:500]), tmp_path / "p")
    with pytest.raises(SuperposError, match="does not exist"):
        load_dictionary(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SuperposError, match="not a dictionary folder"):
        load_dictionary(tmp_path / "empty")
    import shutil

    shutil.copytree(tmp_path / "p", tmp_path / "q")
    (tmp_path / "q" / "weights.safetensors").unlink()
    with pytest.raises(SuperposError, match="missing its weights"):
        load_dictionary(tmp_path / "q")
    shutil.copytree(tmp_path / "p", tmp_path / "r")
    (tmp_path / "r" / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(SuperposError, match="weights.safetensors is damaged"):  # caught by checksums.json
        load_dictionary(tmp_path / "r")
    (tmp_path / "r" / "checksums.json").unlink()  # a folder assembled by hand: read unchecked, still refused
    with pytest.raises(SuperposError, match="unreadable"):
        load_dictionary(tmp_path / "r")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("Fn,k", [(96, 4), (9216, 32), (512, 16), (100, 7), (512, 40)])
def test_topk_cols_keeps_torch_topks_positive_entries(dtype, Fn, k):
    """The grouped top k over the floats' bit patterns (the first three sizes take it, the last two fall back)
    returns the entries torch.topk returns wherever the ReLU lets them through: rows with fewer than k
    positives, no positive at all, ties and -0.0 included."""
    from superpos.dictionaries.sparse_ops import topk_cols

    pre = torch.randn(300, Fn, generator=torch.Generator().manual_seed(Fn + k)).to(dtype)
    pre[::7] -= 2.5  # few positives
    pre[1, : Fn // 2] = pre[1, 0].abs()  # ties
    pre[2] = -pre[2].abs()
    pre[3, ::3] = -0.0
    cols = topk_cols(pre, k)
    assert cols.shape == (300, k) and (cols.sort(1).values.diff(dim=1) > 0).all()  # k distinct latents per row
    got, ref = pre.gather(1, cols).float().clamp_min(0), pre.topk(k, dim=1).values.float().clamp_min(0)
    assert torch.equal(got.sort(1).values, ref.sort(1).values)
    rows, flat_cols, vals = select_topk(pre, k)
    assert torch.equal(vals, pre[rows, flat_cols])


def test_bfloat16_trains_as_well_as_float32(planted):
    """precision="bfloat16" (TopK: the encoder product in bfloat16, codes and backward in float32; the penalised
    kinds autocast; fp32 master weights throughout) must reach the float32 reconstruction and recover the same
    planted atoms."""
    x, atoms = planted
    kw = dict(expansion=2, k=4, n_tokens=150_000, batch_size=512, progress=False, device="cpu")
    f32 = TopKSAE(**kw).fit(x)
    b16 = TopKSAE(**kw, precision="bfloat16").fit(x)
    assert b16.components_.dtype == torch.float32
    assert fvu(x, b16.reconstruct(x)) < fvu(x, f32.reconstruct(x)) + 0.03
    assert _recovery(atoms, b16.components_).mean() > _recovery(atoms, f32.components_).mean() - 0.05


def test_encoder_pre_into_a_buffer_matches_addmm():
    from superpos.dictionaries.sparse_ops import encoder_pre

    torch.manual_seed(1)
    x, W, b = torch.randn(64, 16), torch.randn(96, 16), torch.randn(96)
    buf = torch.full((64, 96), float("nan"))
    out = encoder_pre(x, W, b, buf)
    assert out.data_ptr() == buf.data_ptr()  # written in place, no new (B × F) tensor
    torch.testing.assert_close(out, torch.addmm(b, x, W.T))
    torch.testing.assert_close(encoder_pre(x[:10], W, b, buf), torch.addmm(b, x[:10], W.T))  # wrong-size buffer: fallback
    buf16 = torch.empty(64, 96, dtype=torch.bfloat16)  # a bfloat16 buffer: the product in bfloat16, in place
    out = encoder_pre(x, W, b, buf16)
    assert out.data_ptr() == buf16.data_ptr() and out.dtype == torch.bfloat16
    exact = torch.addmm(b, x, W.T)
    err = (out.float() - exact).abs().max() / exact.abs().max()
    assert 0 < err < 2e-2  # rounded (8 bits of mantissa), not wrong


def test_default_fit_converges_and_recovers_planted_atoms(planted):
    """fit(X) with default budget arguments trains until the held-out FVU stops improving (one epoch of these
    60k rows would leave the atoms unrecovered: MMCS ≈ 0.47)."""
    x, atoms = planted
    sae = TopKSAE(n_components=512, k=5, device="cpu", progress=False).fit(x)
    best = _recovery(atoms, sae.components_.numpy())
    assert best.mean() >= 0.95, best.mean()
    assert sae.converged_ and sae.n_iter_ < sae.max_epochs * (54000 // 1024)  # stopped early, not at the cap
    fvus = [h["val_fvu"] for h in sae.validation_history_]
    assert fvus[-1] < 0.5 * fvus[0]
    once = TopKSAE(n_components=512, k=5, n_tokens=len(x), device="cpu", progress=False).fit(x)
    assert _recovery(atoms, once.components_.numpy()).mean() < 0.8  # a fixed one-epoch budget stops too early


def test_the_stopping_rule_watches_typical_rows_not_a_few_sinks(monkeypatch):
    """A handful of held-out rows of 100× the typical norm (as SmolLM2's later attention sinks) carry most of the
    held-out variance: the stopping rule's FVU leaves them out (``OUTLIER_NORM``) and equals the FVU of the
    dictionary at that step on the other held-out rows; the FVU over every row is kept beside it."""
    from superpos.dictionaries import train_run as tr

    x, _ = planted_data(12_000, 16, 48, 2, noise=0.02, seed=4)
    rng = np.random.default_rng(0)
    sinks = rng.choice(len(x), 30, replace=False)
    x[sinks] = 100 * rng.standard_normal((30, 16)).astype(np.float32) * np.linalg.norm(x, axis=1).mean() / 4
    held, checks = [], []
    real_hold_out, real_held_out = tr._hold_out, tr.held_out

    def spy_hold_out(*a, **k):
        src, val = real_hold_out(*a, **k)
        held.append(val)
        return src, val

    def spy_held_out(sae, run):
        got = real_held_out(sae, run)
        norms = held[0].norm(dim=1)
        typical = held[0][norms <= tr.OUTLIER_NORM * norms.median()]
        with torch.no_grad():
            out = sae._train_forward(run.state, typical * run.scale, torch.zeros_like(run.since_fired, dtype=bool))
        checks.append((got, fvu(typical * run.scale, out["x_hat"]), len(typical), len(held[0])))
        return got

    monkeypatch.setattr(tr, "_hold_out", spy_hold_out)
    monkeypatch.setattr(tr, "held_out", spy_held_out)
    sae = TopKSAE(n_components=64, k=2, batch_size=256, device="cpu", progress=False, max_epochs=8).fit(x)
    assert checks and len(checks) == len(sae.validation_history_)
    for (fvu_typical, _, fvu_all), direct, n_typical, n_held in checks:
        assert n_held - 10 <= n_typical < n_held  # a few sinks held out, and only they left out
        assert fvu_typical == pytest.approx(float(direct), rel=1e-4)
        assert fvu_all > 0.5 > fvu_typical  # the sinks, not reconstructable by 2 of 64 atoms, dominate every row's FVU
    assert [h["val_fvu_all"] for h in sae.validation_history_] == [c[0][2] for c in checks]


def test_default_fit_on_a_small_store_converges(planted, tmp_path):
    """A store whose rows fit in STORE_IN_MEMORY_BYTES is read in and converges like an array (a 4k-token store used to
    get 3 steps); one over the limit converges streamed (test_a_store_too_big_for_memory_converges_out_of_core...)."""
    from superpos.store import ActivationStore

    x, atoms = planted
    C = 64
    n = len(x) // C * C
    x = x[:n]
    st = ActivationStore.create(tmp_path / "s.h5", layers=[3], d_model=x.shape[1], n_rows=n, dtype="float32",
                                attrs={"model": "planted", "context_length": C})
    st.write_rows(0, {3: x.astype(np.float32)}, tokens=np.zeros(n, np.int32), doc=np.arange(n, dtype=np.int32) // C,
                  pos=np.tile(np.arange(C, dtype=np.int32), n // C), next_logprob=np.zeros(n, np.float32),
                  next_rank=np.zeros(n, np.int32))
    st.close()
    with ActivationStore(tmp_path / "s.h5") as store:
        sae = TopKSAE(n_components=512, k=5, device="cpu", progress=False).fit(store, layer=3)
        rows = store.n_train_rows(1)
        assert sae.converged_ and sae.n_iter_ > 3 * (rows // 1024)
        assert _recovery(atoms, sae.components_.numpy()).mean() >= 0.95


@pytest.mark.parametrize("cls", [NMF, SemiNMF])
def test_sparse_nmf_codes_have_at_most_k_nonzeros(cls, planted):
    x, atoms = planted
    x = x[:20000]
    kw = dict(sign_split=False) if cls is NMF else {}
    model = cls(n_components=256, k=5, max_iter=60, transform_iter=40, batch_size=2048, device="cpu", progress=False,
                **kw).fit(np.abs(x) if cls is NMF else x)
    codes = np.asarray(model.transform(np.abs(x[:3000]) if cls is NMF else x[:3000]))
    nnz = (codes != 0).sum(1)
    assert nnz.max() <= 5 and np.median(nnz) == 5 and (codes >= 0).all()
    with pytest.raises(InvalidParameterError, match="k must be an integer ≥ 1 or None, got 0"):
        cls(n_components=8, k=0, device="cpu", progress=False).fit(x[:100])


def test_jumprelu_lands_on_a_target_l0_and_recovers_planted_atoms():
    x, atoms = planted_data(30000, 32, 64, 3, noise=0.01, seed=1)
    sae = JumpReLUSAE(n_components=128, target_l0=3, device="cpu", progress=False).fit(x)
    l0 = (np.asarray(sae.transform(x[:5000])) > 0).sum(1).mean()
    assert abs(l0 - 3) <= 0.6, l0  # within 20 %
    assert _recovery(atoms, sae.components_.numpy()).mean() >= 0.9
    assert sae.sparsity_coeff_ != sae.l0_coeff  # the controller moved it


@pytest.mark.parametrize("target", [3, 12])
def test_relu_lands_on_a_target_l0_with_auxk_and_recovers_planted_atoms(target):
    """ReLU-L1 at the planted k and at 4× it: within 20 % of the target, every atom recovered. Started dense (a zero
    encoder bias) it could not get below L0 ≈ 4.5× the planted k here; its bias now starts at the target's quantile."""
    x, atoms = planted_data(30000, 32, 64, 3, noise=0.01, seed=1)
    sae = ReLUSAE(n_components=128, target_l0=target, device="cpu", progress=False).fit(x)
    assert sae.aux_coeff > 0  # AuxK on by default
    l0 = (np.asarray(sae.transform(x[:5000])) > 0).sum(1).mean()
    assert abs(l0 - target) <= 0.2 * target, l0
    assert _recovery(atoms, sae.components_.numpy()).mean() >= 0.9
    assert fvu(x, sae.reconstruct(x)) < (0.35 if target == 3 else 0.1)


def test_penalised_saes_start_at_their_target_l0():
    """The first step's L0 is the target (thresholds / encoder bias at the per-latent firing quantile), not a dense
    start the penalty then has to thin."""
    x, _ = planted_data(30000, 32, 64, 3, noise=0.01, seed=1)
    for cls in (ReLUSAE, JumpReLUSAE):
        sae = cls(n_components=128, target_l0=6, n_tokens=1024, batch_size=1024, warmup_steps=1, device="cpu",
                  progress=False).fit(x)
        assert sae.history_[0]["l0"] == pytest.approx(6, rel=0.25), (cls, sae.history_[0])



def test_seminmf_atom_update_keeps_atoms_unit_norm_and_unused_ones_in_place():
    """Semi-NMF's least-squares atom update: every atom comes back unit-norm (codes carry the scale; on SmolLM2 layer
    15 the unnormalised solve gave atom norms from 0 to 10⁵ and the codes collapsed), and an atom no code used keeps
    its direction instead of being solved from nothing."""
    rng = np.random.default_rng(0)
    W = torch.from_numpy(rng.standard_normal((6, 5)).astype(np.float32))
    H = torch.from_numpy(np.abs(rng.standard_normal((200, 6))).astype(np.float32))
    H[:, 2] = 0  # atom 2 unused
    x = H @ (3 * torch.from_numpy(rng.standard_normal((6, 5)).astype(np.float32)))
    new = SemiNMF(n_components=6, device="cpu")._update_W_stats(H.T @ H, H.T @ x, W)
    np.testing.assert_allclose(new.norm(dim=1).numpy(), 1, atol=1e-5)
    np.testing.assert_allclose(new[2].numpy(), (W[2] / W[2].norm()).numpy(), atol=1e-6)
    used = [0, 1, 3, 4, 5]
    exact = torch.linalg.lstsq(H[:, used], x).solution  # the used atoms: the least-squares directions
    np.testing.assert_allclose(new[used].numpy(), (exact / exact.norm(dim=1, keepdim=True)).numpy(), atol=1e-3)


def _context_store(path, x, C=64):
    from superpos.store import ActivationStore

    n = len(x) // C * C
    st = ActivationStore.create(path, layers=[3], d_model=x.shape[1], n_rows=n, dtype="float32",
                                attrs={"model": "planted", "context_length": C})
    st.write_rows(0, {3: x[:n].astype(np.float32)}, tokens=np.zeros(n, np.int32), doc=np.arange(n, dtype=np.int32) // C,
                  pos=np.tile(np.arange(C, dtype=np.int32), n // C), next_logprob=np.zeros(n, np.float32),
                  next_rank=np.zeros(n, np.int32))
    st.close()
    return ActivationStore(path)


def test_a_store_too_big_for_memory_converges_out_of_core_on_held_out_contexts(tmp_path, monkeypatch):
    """n_tokens=None on a store over STORE_IN_MEMORY_BYTES streams epoch after epoch until the held-out objective
    stops improving; the held-out rows are whole contexts the training stream never reads; a resumed run is the
    uninterrupted one."""
    import superpos.dictionaries.train_run as trainer  # the training loop reads both through this module
    from superpos.dictionaries.sources import StoreRows

    monkeypatch.setattr(trainer, "STORE_IN_MEMORY_BYTES", 1)
    x = np.asarray(planted_data(6400, 32, 48, 3, seed=5)[0], dtype=np.float32)
    C = 64
    store = _context_store(tmp_path / "s.h5", x, C)
    row_ctx = {r.tobytes(): i // C for i, r in enumerate(store.to_numpy(3))}
    held, streamed = [], set()
    real_hold_out, real_batches = trainer._hold_out, StoreRows.batches

    def spy_hold_out(*a, **k):
        src, val = real_hold_out(*a, **k)
        held.append(val.numpy().copy())
        return src, val

    def spy_batches(self, *a, **k):
        for b in real_batches(self, *a, **k):
            streamed.update(r.tobytes() for r in b.numpy())
            yield b

    monkeypatch.setattr(trainer, "_hold_out", spy_hold_out)
    monkeypatch.setattr(StoreRows, "batches", spy_batches)
    kw = dict(n_components=64, k=3, batch_size=64, max_epochs=20, tol=0.1, dead_after_tokens=4000, device="cpu",
              progress=False)
    sae = TopKSAE(**kw).fit(store, layer=3)
    per_epoch = (len(row_ctx) - len(held[0]) - len(row_ctx) // C) // 64  # position 0 is left out
    assert sae.converged_ and 3 * per_epoch <= sae.n_iter_ < 20 * per_epoch  # several epochs, stopped on the plateau
    assert [h["step"] for h in sae.validation_history_][:2] == [per_epoch, 2 * per_epoch]
    assert sae.steps_per_epoch_ == per_epoch
    saved = json.loads((save_dictionary(sae, tmp_path / "dict") / "metrics.json").read_text())  # the curve is kept
    assert saved["validation_history"] == sae.validation_history_ and saved["converged"] is True
    assert saved["steps_per_epoch"] == per_epoch
    val_ctx = {row_ctx[r.tobytes()] for r in held[0]}
    assert len(held[0]) == len(val_ctx) * (C - 1)  # whole contexts (without their position-0 row)
    assert not streamed & {r.tobytes() for r in held[0]}  # never streamed for training
    assert {row_ctx[r] for r in streamed}.isdisjoint(val_ctx)

    def interrupt(step, stats):
        if step >= per_epoch + 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        TopKSAE(**kw).fit(store, layer=3, checkpoint_dir=tmp_path / "ck", checkpoint_every=10**6, callback=interrupt)
    resumed = TopKSAE(**kw).fit(store, layer=3, checkpoint_dir=tmp_path / "ck")
    assert resumed.n_iter_ == sae.n_iter_ and resumed.validation_history_ == sae.validation_history_
    for name in ("components_", "W_enc_", "b_enc_", "b_dec_"):
        torch.testing.assert_close(getattr(resumed, name), getattr(sae, name), rtol=0, atol=0)
    store.close()


@pytest.mark.parametrize("cls", [TopKSAE, ReLUSAE])
def test_a_nested_budget_branch_equals_a_separate_run(cls, tmp_path):
    """save_at: the branch at B (forked at its decay step, decayed over the batches a separate run sees) is the
    dictionary a separate n_tokens=B run with the same warm-up ends with; the main run is unchanged by it."""
    x = np.asarray(planted_data(4096, 32, 48, 3, seed=2)[0], dtype=np.float32)
    kw = dict(n_components=64, batch_size=128, warmup_steps=10, dead_after_tokens=2000, device="cpu", progress=False)
    kw.update(k=3) if cls is TopKSAE else None
    nested = cls(n_tokens=128 * 60, save_at=(128 * 20, 128 * 35), **kw).fit(x)
    for tokens in (128 * 20, 128 * 35):
        alone = cls(n_tokens=tokens, **kw).fit(x)
        branch = nested.branches_[tokens]
        assert branch.n_iter_ == alone.n_iter_ == tokens // 128
        for name in ("components_", "W_enc_", "b_enc_", "b_dec_"):
            torch.testing.assert_close(getattr(branch, name), getattr(alone, name), rtol=0, atol=1e-6)
    plain = cls(n_tokens=128 * 60, **kw).fit(x)
    torch.testing.assert_close(nested.components_, plain.components_, rtol=0, atol=0)

    def interrupt(step, stats):  # past the first branch's fork, before the second's
        if step >= 25:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cls(n_tokens=128 * 60, save_at=(128 * 20, 128 * 35), **kw).fit(x, checkpoint_dir=tmp_path, checkpoint_every=5,
                                                                       callback=interrupt)
    assert (tmp_path / f"tokens_{128 * 20}").exists() and not (tmp_path / f"tokens_{128 * 35}").exists()
    resumed = cls(n_tokens=128 * 60, save_at=(128 * 20, 128 * 35), **kw).fit(x, checkpoint_dir=tmp_path)
    for tokens in (128 * 20, 128 * 35):  # the branch forked before the kill is read back, the other one run
        for name in ("components_", "W_enc_", "b_enc_", "b_dec_"):
            torch.testing.assert_close(getattr(resumed.branches_[tokens], name), getattr(nested.branches_[tokens], name),
                                       rtol=0, atol=1e-6)
    for bad in (dict(n_tokens=128 * 60, save_at=(128 * 60,)), dict(save_at=(1000,))):
        with pytest.raises(InvalidParameterError, match="save_at"):
            cls(**bad, **kw).fit(x)
