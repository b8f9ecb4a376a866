"""Crash-anywhere resume, Ctrl-C, disk full, live readers, and a property test of store writing.

The crash harness kills `superpos harvest` and `superpos fit` with SIGKILL at seeded random moments,
resumes each time, and checks the result against an uninterrupted run. CI runs it with
SUPERPOS_CRASH_KILLS (default 6) kills per command; `SUPERPOS_CRASH_KILLS=20 pytest tests/test_reliability.py`
is the full form. Figures in docs/reliability.md.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

from superpos.errors import SuperposError
from superpos.store import ActivationStore

KILLS = int(os.environ.get("SUPERPOS_CRASH_KILLS", "6"))
REPORT = os.environ.get("SUPERPOS_RELIABILITY_REPORT")  # optional JSON file for the figures in the docs


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "superpos", *map(str, args)]


def _harvest_args(model, out, tokens=4000 * max(6, KILLS)):
    return _cli("harvest", "--model", model, "--layers", "0,2", "--tokens", tokens, "--context", 32,
                "--batch-size", 2, "--device", "cpu", "--out", out)


def _fit_args(store, out, tokens=40_000 * max(3, KILLS)):  # more kills need a longer fit to land in
    return _cli("fit", "--store", store, "--layer", 2, "--expansion", 4, "--k", 4, "--tokens", tokens,
                "--batch-size", 256, "--checkpoint-every", 10, "--seed", 3, "--no-progress", "--device", "cpu",
                "--out", out)


def _ctrl_c_reaches_child() -> None:
    """A child started from a background job inherits SIGINT ignored (non-interactive shells do that): give it
    the default disposition, so the Ctrl-C tests test superpos, not how the suite was launched."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run(args, **kw):
    r = subprocess.run(args, capture_output=True, text=True, **kw)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def _stores_equal(a: Path, b: Path) -> int:
    """Row-for-row equality of two finished stores; returns the number of rows checked."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert fa.attrs["n_rows_complete"] == fa.attrs["n_rows_total"] == fb.attrs["n_rows_complete"]
        for name in ("acts/L0", "acts/L2", "tokens", "doc", "pos", "next_logprob", "next_rank"):
            np.testing.assert_array_equal(fa[name][:], fb[name][:], err_msg=name)
        return int(fa.attrs["n_rows_complete"])


def crash_and_resume(args: list[str], kills: int, seed: int, delay: tuple[float, float], done) -> dict:
    """Start ``args``, SIGKILL it after a random delay, repeat ``kills`` times, then let it finish."""
    rng = random.Random(seed)
    stats = {"kills": 0, "kills_with_output": 0, "finished_early": 0}
    for _ in range(kills):
        had_output = done()
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(*delay))
        if proc.poll() is not None:  # finished before the kill: nothing left to interrupt
            stats["finished_early"] += 1
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stats["kills"] += 1
        stats["kills_with_output"] += int(had_output)
    r = subprocess.run(args, capture_output=True, text=True)
    stats["final_rc"] = r.returncode
    assert r.returncode == 0 or "already holds a finished dictionary" in r.stderr, r.stderr[-2000:]
    return stats


def _record(key: str, value: dict) -> None:
    if REPORT:
        path = Path(REPORT)
        data = json.loads(path.read_text()) if path.exists() else {}
        data[key] = value
        path.write_text(json.dumps(data, indent=2))


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models["gpt2"]


def _timed_run(args, started: Path) -> tuple[float, float]:
    """Run ``args`` to the end; return (seconds until ``started`` appeared, total seconds)."""
    err = tempfile.TemporaryFile("w+")  # a file, not a pipe: a progress bar could fill a pipe nobody reads yet
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
    start = None
    while proc.poll() is None:
        if start is None and started.exists():
            start = time.perf_counter() - t0
        time.sleep(0.02)
    total = time.perf_counter() - t0
    err.seek(0)
    assert proc.returncode == 0, err.read()[-2000:]
    return (total if start is None else start), total


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    """Uninterrupted harvest and fit, with how long each takes to start writing and to finish."""
    folder = tmp_path_factory.mktemp("ref")
    times = {"harvest": _timed_run(_harvest_args(model, folder / "ref.h5"), folder / "ref.h5"),
             "fit": _timed_run(_fit_args(folder / "ref.h5", folder / "dict"), folder / "dict" / "checkpoint.pt")}
    return folder, times


def _delays(times: dict, what: str) -> tuple[float, float]:
    """Kill moments from 1 s (still importing) to start-up plus 1/KILLS of the work: however the kills
    land, the first KILLS - 1 attempts cannot finish the run between them, so every kill happens."""
    start, total = times[what]
    return 1.0, start + max(0.5, total - start) / max(KILLS, 1)


def test_harvest_survives_kills_anywhere(model, reference, tmp_path):
    ref, times = reference
    out = tmp_path / "h.h5"
    stats = crash_and_resume(_harvest_args(model, out), KILLS, seed=1, delay=_delays(times, "harvest"),
                             done=out.exists)
    assert stats["kills"] >= min(KILLS, 3), stats
    stats["rows_checked"] = _stores_equal(out, ref / "ref.h5")
    assert not list(tmp_path.glob("*.tmp"))
    _record("harvest", stats)


def test_fit_survives_kills_anywhere(reference, tmp_path):
    ref, times = reference
    out = tmp_path / "d"
    stats = crash_and_resume(_fit_args(ref / "ref.h5", out), KILLS, seed=2, delay=_delays(times, "fit"),
                             done=lambda: (out / "checkpoint.pt").exists())
    assert stats["kills"] >= min(KILLS, 3), stats
    a, b = load_file(str(out / "weights.safetensors")), load_file(str(ref / "dict" / "weights.safetensors"))
    assert a.keys() == b.keys()
    for k in a:  # the trainer resumes bit-exactly: same seed, same stream position, same optimizer state
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    stats["tensors_checked"] = len(a)
    _record("fit", stats)


@pytest.mark.parametrize("what", ["harvest", "fit"])
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(model, reference, tmp_path, what):
    ref, times = reference
    out = tmp_path / ("h.h5" if what == "harvest" else "d")
    args = _harvest_args(model, out) if what == "harvest" else _fit_args(ref / "ref.h5", out)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ctrl_c_reaches_child)
    started = out if what == "harvest" else out / "checkpoint.pt"  # the work is under way once this exists
    deadline = time.time() + 120
    while not started.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted; make the workload bigger"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-1000:]
    assert "Traceback" not in err and "re-run the same command to resume" in err.lower(), err[-1000:]
    _run(args)
    if what == "harvest":
        _stores_equal(out, ref / "ref.h5")
    else:
        a, b = load_file(str(out / "weights.safetensors")), load_file(str(ref / "dict" / "weights.safetensors"))
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("path", ["space check", "failed write"])
def test_disk_full_during_harvest_is_one_line_and_resumable(model, reference, tmp_path, path):
    """RLIMIT_FSIZE makes writes past 300 kB fail as a full disk would (EFBIG rather than ENOSPC).

    "space check": superpos sees the limit coming and stops cleanly before the batch. "failed write": with the
    check off, HDF5's write fails mid-batch; the committed rows survive and the resume repairs the file.
    """
    ref, _ = reference
    out = tmp_path / "h.h5"
    limit = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000)); from superpos.cli.main import main; "
             "sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, **({"SUPERPOS_NO_SPACE_CHECK": "1"} if path == "failed write" else {})}
    r = subprocess.run([sys.executable, "-c", limit, *_harvest_args(model, out)[3:]], capture_output=True, text=True,
                       env=env)
    lines = [x for x in r.stderr.replace("\r", "\n").splitlines() if x.strip() and "harvest:" not in x
             and "no CUDA" not in x]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert len(lines) == 1 and lines[0].startswith("superpos: error:"), lines
    assert ("not enough space" if path == "space check" else "File too large") in lines[0], lines
    assert "re-run the same command to resume" in lines[0]
    r = subprocess.run(_harvest_args(model, out), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-1500:]
    assert ("cut short by a failed write" in r.stderr) == (path == "failed write")
    _stores_equal(out, ref / "ref.h5")


def test_live_reader_sees_consistent_prefixes(model, reference, tmp_path):
    """Open the store again and again while a harvest writes it: every view is a prefix of the final file."""
    ref, _ = reference
    out = tmp_path / "h.h5"
    proc = subprocess.Popen(_harvest_args(model, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    views, errors = [], 0
    try:
        while proc.poll() is None:
            if out.exists():
                try:
                    with ActivationStore(out, live=True) as st:
                        n = st.n_rows
                        if n:  # a just-created store has no complete rows to read yet
                            views.append((n, st.row_field("tokens").copy(), st.to_numpy(2, rows=np.arange(n))))
                except (OSError, SuperposError):  # the writer moved metadata under us: an error, never torn rows
                    errors += 1
            time.sleep(0.2)
    finally:
        proc.wait()
    assert proc.returncode == 0
    with ActivationStore(ref / "ref.h5") as st:
        tokens, acts = st.row_field("tokens"), st.to_numpy(2)
    growing = sorted({n for n, _, _ in views})
    assert len(growing) >= 3 and growing[0] < growing[-1], growing
    for n, tok, a in views:
        np.testing.assert_array_equal(tok, tokens[:n])
        np.testing.assert_array_equal(a, acts[:n])
    assert errors <= len(views), (errors, len(views))  # occasional, not the rule
    _record("live_reader", {"views": len(views), "distinct_prefixes": len(growing), "read_errors": errors})


# ---------------------------------------------------------------------------------------------------
# property test: random layouts and interruption points never corrupt a store
# ---------------------------------------------------------------------------------------------------
def _write_then_die(path, layout, rows_LND, stop_after, conn):
    store = ActivationStore(path, "r+")
    start = 0
    for b, n in enumerate(layout["batches"]):
        if b == stop_after:
            conn.send(start)
            os._exit(9)  # like SIGKILL: no close, no flush beyond what write_rows did
        store.write_rows(start, {layer: rows_LND[i][start:start + n] for i, layer in enumerate(layout["layers"])},
                         **_fields(start, n))
        start += n
    conn.send(start)
    os._exit(0)


def _fields(start, n):
    r = np.arange(start, start + n)
    return {"tokens": r.astype(np.int32), "doc": (r // 7).astype(np.int32), "pos": (r % 7).astype(np.int32),
            "next_logprob": -r.astype(np.float32) / 10, "next_rank": (r % 5).astype(np.int32)}


@st.composite
def _layouts(draw):
    batches = draw(st.lists(st.integers(1, 40), min_size=1, max_size=8))
    return {"batches": batches, "d": draw(st.integers(1, 24)), "dtype": draw(st.sampled_from(["float16", "float32"])),
            "chunk_rows": draw(st.integers(1, 48)), "compression": draw(st.sampled_from(["lzf", "gzip", "none"])),
            "layers": draw(st.lists(st.integers(0, 6), min_size=1, max_size=3, unique=True)),
            "stop_after": draw(st.integers(0, len(batches)))}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=_layouts())
def test_store_writes_survive_random_interruptions(tmp_path_factory, layout):
    path = tmp_path_factory.mktemp("prop") / "s.h5"
    n_total = sum(layout["batches"])
    rng = np.random.default_rng(n_total)
    rows = [rng.standard_normal((n_total, layout["d"])).astype(layout["dtype"]) for _ in layout["layers"]]
    ActivationStore.create(path, layers=layout["layers"], d_model=layout["d"], n_rows=n_total, dtype=layout["dtype"],
                           attrs={"model": "synthetic", "context_length": 7}, compression=layout["compression"],
                           chunk_rows=layout["chunk_rows"]).close()
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_write_then_die, args=(path, layout, rows, layout["stop_after"], send))
    child.start()
    child.join()
    written = recv.recv()
    with ActivationStore(path, "r+") as store:  # opens and validates after the "kill"
        assert store.n_rows == written
        for i, layer in enumerate(sorted(layout["layers"]) if written else []):
            j = layout["layers"].index(layer)
            np.testing.assert_array_equal(store.to_numpy(layer, rows=np.arange(written)),
                                          rows[j][:written].astype(np.float32))
        np.testing.assert_array_equal(store.row_field("tokens"), np.arange(written))
        if written < n_total:  # resume: append the rest
            store.write_rows(written, {layer: rows[i][written:] for i, layer in enumerate(layout["layers"])},
                             **_fields(written, n_total - written))
    with ActivationStore(path) as store:
        assert store.complete
        np.testing.assert_array_equal(store.row_field("next_rank"), np.arange(n_total) % 5)
