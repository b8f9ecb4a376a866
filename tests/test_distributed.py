"""torchrun data parallelism (gloo, 2 processes on CPU), sharded harvests merged by virtual datasets, and
the memory planner."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import crash_env
from safetensors.numpy import load_file

from superpos.cli.main import main
from superpos.dictionaries.plan import plan_memory


def _cli(*args):
    return [sys.executable, "-m", "superpos", *map(str, args)]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(n, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-addr", "127.0.0.1",
            "--master-port", str(_free_port()), "-m", "superpos", *map(str, args)]


ENV = crash_env(base={**os.environ, "OMP_NUM_THREADS": "1"})


def _ok(args):
    r = subprocess.run(args, capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def store(tiny_models, tmp_path_factory):
    path = tmp_path_factory.mktemp("dist") / "s.h5"
    assert main(["harvest", "--model", str(tiny_models["gpt2"]), "--layers", "0,2", "--tokens", "8000", "--context",
                 "32", "--device", "cpu", "--out", str(path)]) == 0
    return path


def _fit_args(store, out, kind="topk", tokens=60_000):
    extra = ["--expansion", 4, "--k", 4] if kind == "topk" else ["--n-components", 16]
    return ["fit", "--store", store, "--layer", 2, "--kind", kind, *extra, "--tokens", tokens, "--batch-size", 256,
            "--checkpoint-every", 20, "--no-progress", "--device", "cpu", "--out", out]


def _weights(folder):
    return load_file(str(folder / "weights.safetensors"))


@pytest.mark.parametrize("kind", ["topk", "nmf"])
def test_two_gloo_ranks_match_one_process(store, tmp_path, kind):
    """Same global batches, gradients (SAE) or sufficient statistics (NMF) summed over ranks: the result
    differs from one process only by floating-point summation order (measured ~3e-7 on TopK after 200
    steps; 1e-4 leaves room for Adam to amplify it)."""
    _ok(_cli(*_fit_args(store, tmp_path / "one", kind)))
    r = _ok(_torchrun(2, *_fit_args(store, tmp_path / "two", kind)))
    assert "on 2 ranks" in r.stdout
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(b[key], a[key], atol=1e-4, rtol=1e-4, err_msg=key)
    assert not (tmp_path / "two" / "checkpoint.pt").exists()


def test_checkpoint_from_one_process_resumes_on_two(store, tmp_path):
    """Stop a single-process fit with Ctrl-C (at step 234, between checkpoints), finish it on 2 ranks: same result
    as never stopping.

    120k tokens (468 steps): on this store a longer run on 2 ranks meets a row whose k-th and (k+1)-th
    pre-activations differ by less than the ~1e-7 that the ranks' summation order moves them (at step 769 of
    the 200k-token run), and that one flipped choice grows to ~1e-2 by the end, stopped or not."""
    tokens = 120_000
    _ok(_cli(*_fit_args(store, tmp_path / "ref", tokens=tokens)))
    out = tmp_path / "mixed"
    stopped = 234
    r = subprocess.run(_cli(*_fit_args(store, out, tokens=tokens)), capture_output=True, text=True,
                       env=crash_env(f"fit.step:{stopped}:SIGINT", ENV),
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # see test_reliability
    assert r.returncode == 130, r.stderr[-2000:]
    assert f"stopped at step {stopped}; checkpoint saved" in r.stderr
    resumed = _ok(_torchrun(2, *_fit_args(store, out, tokens=tokens)))
    assert f"resuming at step {stopped} of {tokens // 256}" in resumed.stderr  # continued, not restarted
    a, b = _weights(tmp_path / "ref"), _weights(out)
    for key in a:
        np.testing.assert_allclose(b[key], a[key], atol=1e-4, rtol=1e-4, err_msg=key)


def test_sharded_harvest_merges_into_the_single_harvest(tiny_models, tmp_path, capsys):
    m = str(tiny_models["gpt2"])
    base = ["harvest", "--model", m, "--layers", "0,2", "--tokens", "9600", "--context", "32", "--device", "cpu",
            "--token-stats"]  # every row field, the token statistics too, must map through the merge
    assert main([*base, "--out", str(tmp_path / "full.h5")]) == 0
    for i in range(3):
        assert main([*base, "--shard", f"{i}/3", "--out", str(tmp_path / f"part{i}.h5")]) == 0
    shards = [str(tmp_path / f"part{i}.h5") for i in (2, 0, 1)]  # any order
    assert main(["merge", *shards[:2], "--out", str(tmp_path / "bad.h5")]) == 2  # a shard missing
    assert "exactly once" in capsys.readouterr().err
    assert main(["merge", *shards, "--out", str(tmp_path / "merged.h5")]) == 0
    with h5py.File(tmp_path / "merged.h5") as a, h5py.File(tmp_path / "full.h5") as b:
        assert a["acts/L2"].is_virtual
        for name in ("acts/L0", "acts/L2", "tokens", "doc", "pos", "next_logprob", "next_rank"):
            assert np.array_equal(a[name][:], b[name][:], equal_nan=True), name
    assert (tmp_path / "merged.h5").stat().st_size < (tmp_path / "part0.h5").stat().st_size  # mapped, not copied
    # the rest of superpos reads it as one store
    assert main(["fit", "--store", str(tmp_path / "merged.h5"), "--layer", "2", "--expansion", "2", "--k", "4",
                 "--tokens", "4096", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "d")]) == 0


def test_memory_plan_by_hand_and_against_a_measured_fit():
    p = plan_memory(4, 8, 2, 6, world_size=2)  # D=4, F=8, k=2, b=3 rows per rank
    P = 2 * 4 * 8 + 8 + 4
    assert (p.parameters, p.gradients, p.optimizer) == (4 * P, 4 * P, 8 * P)
    assert p.activations == 2 * 3 * 8 * 4 + 3 * 2 * 12 + 3 * 3 * 4 * 4 + 8 * 4 * 4
    code = ("import re, torch; from superpos.dictionaries import TopKSAE; x = torch.randn(4096 * 6, 576); "
            "kb = lambda key: int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024; "
            "s = TopKSAE(n_components=9216, k=32, batch_size=4096, n_tokens=4096 * 5, device='cpu', progress=False); "
            "open('/proc/self/clear_refs', 'w').write('5'); b = kb('VmRSS'); s.fit(x); print(kb('VmHWM') - b)")
    measured = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    predicted = plan_memory(576, 9216, 32, 4096).total
    assert 0.6 * predicted < measured < 1.6 * predicted, (measured, predicted)
