"""Nothing stored that the file cannot hold, and one writer per store (issue: overflow-safe storage)."""
import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from conftest import crash_env, make_tiny_model, wait_stopped

from superpos.errors import SuperposError
from superpos.model.harvest import HarvestConfig, harvest
from superpos.model.load import load_model
from superpos.store import ActivationStore, choose_dtypes
from superpos.writelock import lock_path


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "superpos", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": os.getcwd()})


@pytest.fixture(scope="module")
def massive_llama(tmp_path_factory):
    """A tiny llama whose block 2 writes values near ±200,000 (past float16's 65,504), as Gemma 3 does mid-stack."""
    folder = make_tiny_model("llama", tmp_path_factory.mktemp("massive") / "llama", n_layers=3)
    lm = load_model(folder, device="cpu")
    with torch.no_grad():
        lm.blocks[1].mlp.down_proj.weight *= 5e7
    lm.model.save_pretrained(folder)
    return folder


def _peaks(folder, tokens_BT):
    lm = load_model(folder, device="cpu")
    with torch.no_grad():
        hs = lm.model(torch.from_numpy(tokens_BT).long(), output_hidden_states=True).hidden_states
    return lm, hs


def test_auto_dtype_stores_massive_layer_losslessly(massive_llama, tmp_path):
    out = harvest(HarvestConfig(model=str(massive_llama), layers="all", tokens=256, context_length=32, batch_size=4,
                                device="cpu"), tmp_path / "a.h5", progress=False)
    with ActivationStore(out) as st:
        tokens = st.row_field("tokens").reshape(-1, 32)
        lm, hs = _peaks(massive_llama, tokens)
        assert float(hs[2].abs().max()) > 65504  # the planted overflow is real
        dtypes = st.layer_dtypes
        assert dtypes[0] == dtypes[1] == "float16" and dtypes[2] == "float32" and st.attrs["dtype"] == "auto"
        for layer in (0, 1, 2):
            got = st.to_numpy(layer)
            assert np.isfinite(got).all()
            ref = hs[layer].reshape(-1, lm.d_model).numpy()
            tol = 1e-3 if dtypes[layer] == "float16" else 1e-6
            np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())
        assert st.scan_text().startswith("non-finite     none")


def test_float16_overflow_is_refused_with_the_fix(massive_llama, tmp_path):
    res = _cli("harvest", "--model", massive_llama, "--layers", "all", "--tokens", 256, "--context", 32,
               "--dtype", "float16", "--device", "cpu", "--out", tmp_path / "b.h5")
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("superpos: error: layer 2 reaches |a| = ") and "--dtype auto" in last
    assert "Traceback" not in res.stderr
    with ActivationStore(tmp_path / "b.h5") as st:  # nothing of the refused batch was written
        assert st.n_rows == 0


def test_model_nan_is_refused(tiny_models, tmp_path):
    folder = tmp_path / "nan"
    make_tiny_model("llama", folder, n_layers=2)
    lm = load_model(folder, device="cpu")
    with torch.no_grad():
        lm.blocks[0].mlp.down_proj.weight[0, 0] = float("nan")
    lm.model.save_pretrained(folder)
    with pytest.raises(SuperposError, match="the model produced NaN/inf at layer 1"):
        harvest(HarvestConfig(model=str(folder), layers="0,1", tokens=128, context_length=32, device="cpu"),
                tmp_path / "n.h5", progress=False)


def test_choose_dtypes_thresholds():
    acts = {0: np.array([[32752.0]]), 1: np.array([[32753.0]]), 2: np.array([[-1e5]])}
    assert choose_dtypes("auto", acts) == {0: "float16", 1: "float32", 2: "float32"}
    assert choose_dtypes("float16", acts) == dict.fromkeys(acts, "float16")
    with pytest.raises(SuperposError):
        choose_dtypes("bfloat16", acts)


def _planted_inf_store(path, n=64, d=8):
    st = ActivationStore.create(path, layers=[0, 3], d_model=d, n_rows=n, dtype="float16",
                                attrs={"model": "t", "context_length": 16})
    x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    st.write_rows(0, {0: x, 3: x}, tokens=np.zeros(n, np.int32), doc=np.zeros(n, np.int32),
                  pos=np.tile(np.arange(16, dtype=np.int32), n // 16), next_logprob=np.zeros(n, np.float32),
                  next_rank=np.zeros(n, np.int32))
    st.close()
    with h5py.File(path, "r+") as f:  # damage written behind superpos's back (a store from elsewhere)
        f["acts/L3"][17, 2] = np.inf
        f["acts/L3"][40, 0] = np.nan
    return path


def test_store_write_refuses_unrepresentable(tmp_path):
    st = ActivationStore.create(tmp_path / "w.h5", layers=[0], d_model=2, n_rows=4, dtype="float16",
                                attrs={"model": "t", "context_length": 2})
    fields = dict(tokens=np.zeros(4, np.int32), doc=np.zeros(4, np.int32), pos=np.zeros(4, np.int32),
                  next_logprob=np.zeros(4, np.float32), next_rank=np.zeros(4, np.int32))
    with pytest.raises(SuperposError, match="layer 0 reaches"):
        st.write_rows(0, {0: np.array([[1, 2], [3, 7e4], [0, 0], [0, 0]], np.float32)}, **fields)
    with pytest.raises(SuperposError, match="NaN/inf at layer 0"):
        st.write_rows(0, {0: np.array([[1, 2], [3, np.inf], [0, 0], [0, 0]], np.float32)}, **fields)
    assert st.n_rows == 0
    st.close()


def test_info_reports_and_fit_refuses_nonfinite_rows(tmp_path):
    path = _planted_inf_store(tmp_path / "inf.h5")
    res = _cli("info", path)
    assert res.returncode == 0
    assert "L3: 2 rows (first 17)" in res.stdout and "NOT USABLE" in res.stdout
    res = _cli("fit", "--store", path, "--layer", 3, "--kind", "pca", "--k", 2, "--out", tmp_path / "pca")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("superpos: error:")
    assert "layer 3 holds NaN/inf values" in res.stderr
    assert not (tmp_path / "pca").exists()
    with ActivationStore(path) as st:  # the clean layer still reads
        assert st.to_numpy(0).shape == (64, 8)
        np.testing.assert_array_equal(st.nonfinite_rows(3), [17, 40])
        with pytest.raises(SuperposError, match="row 17"):
            st.to_numpy(3, np.arange(10, 30))
        with pytest.raises(SuperposError, match="NaN/inf"):
            next(st.stream(3, 8))


def test_damaged_attributes_are_refused(tmp_path):
    path = _planted_inf_store(tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["context_length"] = 17
    with pytest.raises(SuperposError, match="metadata is damaged"):
        ActivationStore(path)


HOLD = """
import sys
from superpos.writelock import claim
with claim(sys.argv[1], "test"):
    print("held", flush=True)
    sys.stdin.read()  # hold the claim until the test kills this process (or closes stdin)
"""


def test_second_writer_refused_then_stale_claim_taken_over(tiny_models, tmp_path):
    out = tmp_path / "one.h5"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "held"
        args = ["harvest", "--model", tiny_models["llama"], "--layers", "0,1", "--tokens", 256, "--context", 32,
                "--device", "cpu", "--out", out]
        res = _cli(*args)
        assert res.returncode == 2 and "Traceback" not in res.stderr
        line = res.stderr.strip().splitlines()[-1]
        assert line.startswith(f"superpos: error: {out} is being written by pid {holder.pid}"), line
        with pytest.raises(SuperposError, match="being written"):
            from superpos.store.merge import merge_shards
            merge_shards([tmp_path / "x.h5"], out)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdin.close()
    assert lock_path(out).exists()  # the killed holder's claim is left behind...
    res = _cli(*args)  # ...and taken over
    assert res.returncode == 0, res.stderr
    assert f"taking over {out} from a writer that is gone (pid {holder.pid}" in res.stderr
    assert not lock_path(out).exists()  # released on a clean exit
    with ActivationStore(out) as st:
        assert st.complete and st.n_rows == 256


def test_harvest_killed_then_resumed_under_claims(tiny_models, tmp_path):
    """Two harvests on one path: the second is refused while the first writes (held stopped after its second
    batch); SIGKILL the first, and the same command takes its claim over and resumes to the full store."""
    out = tmp_path / "k.h5"
    args = [sys.executable, "-m", "superpos", "harvest", "--model", str(tiny_models["llama"]), "--layers", "all",
            "--tokens", "3200", "--context", "32", "--batch-size", "1", "--device", "cpu", "--out", str(out)]
    env = crash_env(base={**os.environ, "PYTHONPATH": os.getcwd()})
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=crash_env("harvest.rows:64:SIGSTOP", env))
    try:
        wait_stopped(proc)  # 64 rows committed, the claim held
        second = subprocess.run(args, capture_output=True, text=True, env=env)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"is being written by pid {proc.pid}" in second.stderr.strip().splitlines()[-1]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with ActivationStore(out) as st:
        assert st.n_rows == 64 < st.n_rows_total
    res = subprocess.run(args, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert f"resuming {out} at row 64 of" in res.stderr and f"taking over {out} from a writer that is gone (pid {proc.pid}" in res.stderr
    with ActivationStore(out) as st:
        assert st.complete and st.scan_text().startswith("non-finite     none")
