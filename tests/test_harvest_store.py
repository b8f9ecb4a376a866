import hashlib
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from conftest import crash_env

from superpos.errors import SuperposError
from superpos.model.corpus import load_corpus, pack_contexts
from superpos.model.harvest import HarvestConfig, harvest
from superpos.model.load import load_model
from superpos.store import ActivationStore


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _contents(path):
    with h5py.File(path, "r") as f:
        out = {k: f[k][()] for k in ("tokens", "doc", "pos", "next_logprob", "next_rank") if k in f}
        out.update({k: f["acts"][k][()] for k in f["acts"]})
        out["n"] = int(f.attrs["n_rows_complete"])
    return out


@pytest.mark.parametrize("kind", ["gpt2", "llama", "gemma3"])
def test_harvest_equals_direct_forward(tiny_models, tmp_path, kind):
    cfg = HarvestConfig(model=str(tiny_models[kind]), layers="all", tokens=640, context_length=32, batch_size=3,
                        dtype="float32", device="cpu", token_stats=True)
    out = harvest(cfg, tmp_path / "a.h5", progress=False)
    lm = load_model(tiny_models[kind], device="cpu")
    with ActivationStore(out) as store:
        assert store.complete and store.n_rows == 640 and store.layers == list(range(lm.n_layers + 1))
        tokens = store.row_field("tokens").reshape(-1, 32)
        packed = pack_contexts(lm.tokenizer, load_corpus(None), 32, bos_token_id=1, max_tokens=640)
        np.testing.assert_array_equal(tokens, packed.tokens_NC)
        np.testing.assert_array_equal(store.row_field("pos"), np.tile(np.arange(32), 20))
        with torch.no_grad():
            out_ = lm.model(torch.from_numpy(tokens).long(), output_hidden_states=True)
        for layer in range(lm.n_layers):
            ref = out_.hidden_states[layer].reshape(-1, lm.d_model).numpy()
            np.testing.assert_allclose(store.to_numpy(layer), ref, rtol=1e-5, atol=1e-5)
        logp = torch.log_softmax(out_.logits, -1)
        lp = store.row_field("next_logprob").reshape(20, 32)
        rk = store.row_field("next_rank").reshape(20, 32)
        for c, t in [(0, 0), (5, 17), (19, 30)]:
            nxt = tokens[c, t + 1]
            assert lp[c, t] == pytest.approx(logp[c, t, nxt].item(), abs=1e-4)
            assert rk[c, t] == int((logp[c, t] > logp[c, t, nxt]).sum())
        assert np.isnan(lp[:, -1]).all() and (rk[:, -1] == -1).all()


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_harvest_runs_only_the_blocks_it_reads(tiny_models, tmp_path, kind):
    """Without --token-stats the forward stops after the deepest requested block: later blocks, the final norm and
    the LM head never run, and the rows equal those of a whole-model harvest."""
    lm = load_model(tiny_models[kind], device="cpu")
    deepest = lm.n_layers - 1
    calls = {"blocks": [], "head": 0, "norm": 0}
    for i, block in enumerate(lm.blocks):
        block.register_forward_hook(lambda m, a, o, i=i: calls["blocks"].append(i))
    lm.model.get_output_embeddings().register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))
    lm.final_norm.register_forward_hook(lambda *a: calls.__setitem__("norm", calls["norm"] + 1))
    cfg = HarvestConfig(model=str(tiny_models[kind]), layers=f"0,{deepest}", tokens=256, context_length=32,
                        batch_size=4, dtype="float32", device="cpu")
    lean = harvest(cfg, tmp_path / "lean.h5", lm=lm, progress=False)
    assert set(calls["blocks"]) == set(range(deepest)) and calls["head"] == 0 and calls["norm"] == 0
    full = harvest(HarvestConfig(**{**cfg.__dict__, "token_stats": True}), tmp_path / "full.h5", lm=lm,
                   progress=False)
    assert lm.n_layers - 1 in calls["blocks"] and calls["head"] == 256 // 32 // 4  # one per batch
    with ActivationStore(lean) as a, ActivationStore(full) as b:
        assert not a.has_token_stats and b.has_token_stats and a.attrs["token_stats"] == 0
        assert "next_logprob" not in a.file and "token stats    none" in a.summary()
        for layer in (0, deepest):
            np.testing.assert_array_equal(a.to_numpy(layer), b.to_numpy(layer))
        with pytest.raises(SuperposError, match="harvested without --token-stats"):
            a.row_field("next_logprob")
        assert np.isfinite(b.row_field("next_logprob").reshape(-1, 32)[:, :-1]).all()


def test_model_dtype_auto_follows_the_hardware(monkeypatch, tiny_models, tmp_path):
    from superpos import device as dev

    monkeypatch.setattr(dev, "native_bfloat16", lambda d: True)
    assert dev.resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    out = harvest(HarvestConfig(model=str(tiny_models["llama"]), layers="1", tokens=256, context_length=32,
                                device="cpu", model_dtype="auto"), tmp_path / "auto.h5", progress=False)
    with ActivationStore(out) as s:  # the store says which precision computed its rows
        assert s.attrs["model_dtype"] == "bfloat16"
    monkeypatch.setattr(dev, "native_bfloat16", lambda d: False)
    assert dev.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert dev.resolve_dtype("bfloat16") == torch.bfloat16


def test_float16_store_and_info(tiny_models, tmp_path):
    cfg = HarvestConfig(model=str(tiny_models["llama"]), layers="0,2", tokens=256, context_length=32, device="cpu")
    out = harvest(cfg, tmp_path / "h.h5", progress=False)
    with ActivationStore(out) as s:
        assert s.file["acts/L2"].dtype == np.float16 and s.layers == [0, 2]
        assert s.attrs["bos_token_id"] == 1 and s.attrs["schema_version"] == 1
        assert "rows           256 / 256 complete" in s.summary()


def test_interrupted_harvest_resumes_identically(tiny_models, tmp_path, monkeypatch):
    cfg = HarvestConfig(model=str(tiny_models["gpt2"]), layers="0,1,3", tokens=960, context_length=32, batch_size=4,
                        device="cpu")
    full = harvest(cfg, tmp_path / "full.h5", progress=False)
    calls = {"n": 0}
    orig = ActivationStore.write_rows

    def flaky(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return orig(self, *a, **kw)

    monkeypatch.setattr(ActivationStore, "write_rows", flaky)
    with pytest.raises(KeyboardInterrupt):
        harvest(cfg, tmp_path / "part.h5", progress=False)
    with ActivationStore(tmp_path / "part.h5") as s:
        assert s.n_rows == 2 * 4 * 32 and not s.complete
    monkeypatch.setattr(ActivationStore, "write_rows", orig)
    harvest(cfg, tmp_path / "part.h5", progress=False)
    a, b = _contents(full), _contents(tmp_path / "part.h5")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_sigkill_mid_harvest_then_resume(tiny_models, tmp_path):
    """A real SIGKILL while writing, once the 40th batch's rows are flushed but before the counter names them:
    the file opens, its counter names only the 39 complete batches, and the resume completes it."""
    out = tmp_path / "k.h5"
    args = [sys.executable, "-m", "superpos", "harvest", "--model", str(tiny_models["llama"]), "--layers", "all",
            "--context", "32", "--batch-size", "1", "--tokens", "3200", "--device", "cpu", "--out", str(out)]
    killed = subprocess.run(args, capture_output=True, env=crash_env(f"store.flushed:{40 * 32}"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    with ActivationStore(out) as s:
        assert s.n_rows == 39 * 32 < s.n_rows_total
    assert subprocess.run(args, capture_output=True, env=crash_env()).returncode == 0
    ref = tmp_path / "ref.h5"
    assert subprocess.run(args[:-1] + [str(ref)], capture_output=True, env=crash_env()).returncode == 0
    a, b = _contents(ref), _contents(out)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_resume_with_other_settings_is_refused(tiny_models, tmp_path):
    cfg = HarvestConfig(model=str(tiny_models["gpt2"]), layers="0,1", tokens=128, context_length=32, device="cpu")
    out = harvest(cfg, tmp_path / "a.h5", progress=False)
    before = _digest(out)
    for other in (HarvestConfig(**{**cfg.__dict__, "model": str(tiny_models["llama"])}),
                  HarvestConfig(**{**cfg.__dict__, "layers": "0,2"}),
                  HarvestConfig(**{**cfg.__dict__, "context_length": 16})):
        with pytest.raises(SuperposError, match="different harvest"):
            harvest(other, out, progress=False)
    assert _digest(out) == before


def test_store_validation(tmp_path):
    p = tmp_path / "x.h5"
    p.write_text("not hdf5")
    with pytest.raises(SuperposError, match="not an HDF5 file"):
        ActivationStore(p)
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(SuperposError, match="not a superpos store"):
        ActivationStore(tmp_path / "y.h5")
    s = ActivationStore.create(tmp_path / "z.h5", layers=[0], d_model=4, n_rows=10,
                               attrs={"model": "m", "context_length": 5})
    s.close()
    with h5py.File(tmp_path / "z.h5", "r+") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(SuperposError, match="schema version 99"):
        ActivationStore(tmp_path / "z.h5")
    with h5py.File(tmp_path / "z.h5", "r+") as f:
        f.attrs["schema_version"] = 1
        del f["acts/L0"]
    with pytest.raises(SuperposError, match="missing dataset '/acts/L0'"):
        ActivationStore(tmp_path / "z.h5")
    data = (tmp_path / "z.h5").read_bytes()
    (tmp_path / "t.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(SuperposError):
        ActivationStore(tmp_path / "t.h5")


def _synthetic_store(path, n_ctx=40, C=16, d=8):
    s = ActivationStore.create(path, layers=[3], d_model=d, n_rows=n_ctx * C, dtype="float32",
                               attrs={"model": "synthetic", "context_length": C}, chunk_rows=24)
    rows = np.arange(n_ctx * C, dtype=np.float32)
    acts = np.repeat(rows[:, None], d, axis=1)  # row i holds the value i everywhere
    n = n_ctx * C
    s.write_rows(0, {3: acts}, tokens=np.zeros(n, np.int32), doc=np.zeros(n, np.int32),
                 pos=np.tile(np.arange(C, dtype=np.int32), n_ctx), next_logprob=np.zeros(n, np.float32),
                 next_rank=np.zeros(n, np.int32))
    return s


def test_the_seal_hashed_while_writing_equals_a_read_back(tmp_path):
    """A store written from row 0 is sealed from digests taken as it was written; they must equal what reading the
    file back gives (what ``info`` verifies and a resumed harvest seals with), for every dtype a caller may pass."""
    import json

    C, n_ctx, d = 16, 6, 8
    s = ActivationStore.create(tmp_path / "s.h5", layers=[0, 2], d_model=d, n_rows=n_ctx * C,
                               dtype={0: "float16", 2: "float32"}, attrs={"model": "synthetic", "context_length": C},
                               chunk_rows=2 * C)
    rng = np.random.default_rng(0)
    for c0 in range(0, n_ctx, 2):
        n = 2 * C
        s.write_rows(c0 * C, {0: rng.normal(size=(n, d)), 2: rng.normal(size=(n, d)).astype(np.float32)},
                     tokens=rng.integers(0, 99, n), doc=np.full(n, c0), pos=np.tile(np.arange(C), 2),
                     next_logprob=rng.normal(size=n), next_rank=rng.integers(0, 99, n))
    s.seal_content()
    streamed = json.loads(s.file.attrs["content_sha256"])
    read_back, _ = s._scan()
    s.close()
    assert streamed == read_back and len(streamed) == 2 + 5


def test_repair_eof_extends_a_file_shorter_than_its_superblock_says(tmp_path):
    """A failed write can leave the file shorter than the end-of-file address in its superblock (HDF5 reserved the
    space, the bytes never landed); h5py then refuses the file. ``repair_eof`` extends it with zeros to the recorded
    size, after which it opens and its data read back; a whole file is left alone."""
    from superpos.store import repair_eof, stored_eof

    p = tmp_path / "f.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.arange(100, dtype=np.float32)
    size = p.stat().st_size
    assert stored_eof(p) == size and not repair_eof(p)
    with open(p, "r+b") as f:  # the superblock now records 4 KiB the file does not have
        f.seek(40)
        f.write((size + 4096).to_bytes(8, "little"))
    with pytest.raises(OSError):
        h5py.File(p, "r")
    assert repair_eof(p) and p.stat().st_size == size + 4096
    with h5py.File(p, "r") as f:
        assert np.array_equal(f["x"][:], np.arange(100, dtype=np.float32))


def test_shuffled_stream_each_row_once(tmp_path):
    s = _synthetic_store(tmp_path / "s.h5")
    ids = lambda batches: np.concatenate([b[:, 0].numpy() for b in batches]).astype(int)
    one = ids(s.batches(3, 50, seed=7))
    expected = np.flatnonzero(s.pos >= 1)
    assert sorted(one.tolist()) == expected.tolist()  # every non-sink row exactly once
    assert not np.array_equal(one, np.sort(one))  # actually shuffled
    assert np.array_equal(one, ids(s.batches(3, 50, seed=7)))  # same seed, same order
    assert not np.array_equal(one, ids(s.batches(3, 50, seed=8)))
    with_sink = ids(s.batches(3, 64, seed=1, min_pos=0))
    assert sorted(with_sink.tolist()) == list(range(s.n_rows))
    # the endless stream: epochs back to back, resumable at any batch
    stream = s.stream(3, 37, seed=3)
    full = [next(stream)[:, 0].numpy() for _ in range(40)]
    resumed = s.stream(3, 37, seed=3, start_batch=25)
    for i in range(25, 40):
        np.testing.assert_array_equal(next(resumed)[:, 0].numpy(), full[i])
    per_epoch = len(expected)
    flat = np.concatenate(full)
    assert sorted(flat[:per_epoch].tolist()) == expected.tolist()
    assert sorted(flat[per_epoch:2 * per_epoch].tolist()) == expected.tolist()
    # restricted views see only their rows
    view = s.restrict(0, 320)
    assert set(ids(view.batches(3, 50)).tolist()) == set(expected[expected < 320].tolist())
    s.close()


def test_to_numpy_and_sample(tmp_path):
    s = _synthetic_store(tmp_path / "s.h5")
    np.testing.assert_array_equal(s.to_numpy(3, [5, 1, 9])[:, 0], [5, 1, 9])
    np.testing.assert_array_equal(s.to_numpy(3, [7, 2, 7, 2])[:, 0], [7, 2, 7, 2])
    samp = s.sample(3, 30, seed=0)
    assert len(samp) == 30 and (s.pos[samp[:, 0].astype(int)] >= 1).all()
    with pytest.raises(SuperposError, match="layer 4 is not in store"):
        s.to_numpy(4)
    s.close()


def test_a_restricted_view_reads_only_its_rows_through_every_reader(tmp_path):
    s = _synthetic_store(tmp_path / "s.h5")  # column 0 of every row holds its row index
    view = s.restrict(100, 320)
    assert view.row_range == (100, 320) and s.row_range == (0, s.n_rows)
    np.testing.assert_array_equal(view.to_numpy(3)[:, 0], np.arange(100, 320))
    np.testing.assert_array_equal(view.row_field("pos"), s.row_field("pos")[100:320])
    np.testing.assert_array_equal(view.to_numpy(3, slice(150, 160))[:, 0], np.arange(150, 160))
    rows = np.concatenate([r for r, _ in view.iter_rows(3, batch_size=64)])
    in_view = np.arange(100, 320)
    np.testing.assert_array_equal(rows, in_view[s.pos[100:320] >= 1])
    assert view.n_train_rows() == len(rows) and set(view.sample(3, 10_000)[:, 0].astype(int)) == set(rows)
    narrower = view.restrict(0, 200)  # a view of a view: the intersection
    assert narrower.row_range == (100, 200)
    np.testing.assert_array_equal(narrower.to_numpy(3)[:, 0], np.arange(100, 200))
    for bad in (lambda: view.to_numpy(3, [99, 120]), lambda: view.to_numpy(3, slice(300, 330)),
                lambda: view.row_field("tokens", slice(0, 10))):
        with pytest.raises(SuperposError, match="outside this store's rows 100..319|out of range 100..319"):
            bad()
    s.close()


def test_next_token_stats_match_log_softmax_and_a_sorted_rank():
    import torch

    from superpos.model.harvest import next_token_stats

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 40, 500, generator=g) * 4
    logits[0, 5, :] = 0.0  # all tied: rank 0 (nothing strictly above the target)
    tokens = torch.randint(0, 500, (3, 40), generator=g)
    lp, rk = next_token_stats(logits, tokens)
    ref = torch.log_softmax(logits.double(), -1)[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(lp[:, :-1].double(), ref, atol=1e-5, rtol=0)
    tgt = logits[:, :-1].gather(-1, tokens[:, 1:, None])
    order = torch.sort(logits[:, :-1], dim=-1, descending=True).values
    want = (order > tgt).sum(-1)  # how many logits lie strictly above the target's
    assert torch.equal(rk[:, :-1].long(), want) and rk[0, 5] == 0
    assert torch.isnan(lp[:, -1]).all() and (rk[:, -1] == -1).all()
