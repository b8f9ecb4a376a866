"""Crash-anywhere resume, Ctrl-C, disk full, live readers, and a property test of store writing.

The crash harness kills `superpos harvest` and `superpos fit` with SIGKILL at seeded random points (a step, a
row count, a checkpoint half written: ``SUPERPOS_CRASH_AT``, superpos.interrupts.crash_point), checks what each
kill left on disk, resumes each time, and checks the result against an uninterrupted run. The points are chosen,
not timed, so the outcome is the same under any machine load. CI runs it with SUPERPOS_CRASH_KILLS (default 6)
kills per command; `SUPERPOS_CRASH_KILLS=20 pytest tests/test_reliability.py` is the full form. Figures in
docs/reliability.md.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import crash_env, wait_stopped
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

from superpos.integrity import load_checkpoint
from superpos.store import ActivationStore

KILLS = int(os.environ.get("SUPERPOS_CRASH_KILLS", "6"))
REPORT = os.environ.get("SUPERPOS_RELIABILITY_REPORT")  # optional JSON file for the figures in the docs
BATCH_ROWS = 2 * 32  # the harvest's rows per batch (--batch-size 2, --context 32): one commit each
FIT_TOKENS, EVERY = 120_000, 10  # the fit's tokens (468 steps at batch 256) and --checkpoint-every
FIT_STEPS = FIT_TOKENS // 256
STORE_POINTS = ("store.written", "store.flushed", "harvest.rows")  # mid-batch, flushed but uncommitted, committed


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "superpos", *map(str, args)]


def _harvest_args(model, out, tokens=9_600):
    return _cli("harvest", "--model", model, "--layers", "0,2", "--tokens", tokens, "--context", 32,
                "--batch-size", 2, "--device", "cpu", "--token-stats", "--out", out)


def _fit_args(store, out, tokens=FIT_TOKENS):
    return _cli("fit", "--store", store, "--layer", 2, "--expansion", 4, "--k", 4, "--tokens", tokens,
                "--batch-size", 256, "--checkpoint-every", EVERY, "--seed", 3, "--no-progress", "--device", "cpu",
                "--out", out)


def _ctrl_c_reaches_child() -> None:
    """A child started from a background job inherits SIGINT ignored (non-interactive shells do that): give it
    the default disposition, so the Ctrl-C tests test superpos, not how the suite was launched."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run(args, crash_at: str | None = None, rc: int = 0, **kw) -> subprocess.CompletedProcess:
    """Run ``args`` to its end (with ``SUPERPOS_CRASH_AT=crash_at``) and check its exit status."""
    r = subprocess.run(args, capture_output=True, text=True, env=crash_env(crash_at), **kw)
    assert r.returncode == rc, (crash_at, r.returncode, r.stderr[-2000:])
    return r


def _stores_equal(a: Path, b: Path) -> int:
    """Row-for-row equality of two finished stores, content seal included; returns the number of rows checked."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert fa.attrs["n_rows_complete"] == fa.attrs["n_rows_total"] == fb.attrs["n_rows_complete"]
        for name in ("acts/L0", "acts/L2", "tokens", "doc", "pos", "next_logprob", "next_rank"):
            np.testing.assert_array_equal(fa[name][:], fb[name][:], err_msg=name)
        assert fa.attrs.get("content_sha256") == fb.attrs["content_sha256"]
        return int(fa.attrs["n_rows_complete"])


def _weights_equal(a: Path, b: Path) -> int:
    """Bit-identical weights of two dictionary folders; returns the number of tensors checked."""
    wa, wb = load_file(str(a / "weights.safetensors")), load_file(str(b / "weights.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:  # the trainer resumes bit-exactly: same seed, same stream position, same optimizer state
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    return len(wa)


def _saved_step(out: Path) -> int:
    """The step of the fit checkpoint in ``out`` (0: none yet)."""
    path = out / "checkpoint.pt"
    return int(load_checkpoint(path)["step"]) if path.exists() else 0


def _record(key: str, value: dict) -> None:
    if REPORT:
        path = Path(REPORT)
        data = json.loads(path.read_text()) if path.exists() else {}
        data[key] = value
        path.write_text(json.dumps(data, indent=2))


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models["gpt2"]


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    """An uninterrupted harvest and fit: the folder holding ``ref.h5`` and ``dict/``."""
    folder = tmp_path_factory.mktemp("ref")
    _run(_harvest_args(model, folder / "ref.h5"))
    _run(_fit_args(folder / "ref.h5", folder / "dict"))
    return folder


def test_harvest_survives_kills_anywhere(model, reference, tmp_path):
    """KILLS harvests die by SIGKILL at seeded batches, each mid-batch, flushed but uncommitted, or just committed;
    after each kill the store opens with exactly the committed rows, the next run resumes there, and the last
    one finishes a store equal to the uninterrupted harvest, row for row and seal for seal."""
    ref, out = reference / "ref.h5", tmp_path / "h.h5"
    with ActivationStore(ref) as st:
        total = st.n_rows
    rng = random.Random(1)
    ends = sorted(rng.sample(range(BATCH_ROWS, total + 1, BATCH_ROWS), KILLS))  # the rows each killed batch ends at
    stats = dict.fromkeys(STORE_POINTS, 0)
    committed = None  # rows on disk (None: no store yet)
    for end in ends:
        point = rng.choice(STORE_POINTS)
        r = _run(_harvest_args(model, out), f"{point}:{end}", rc=-signal.SIGKILL)
        if committed is not None:
            assert f"resuming {out} at row {committed:,} of" in r.stderr, r.stderr[-1000:]
        committed = end if point == "harvest.rows" else end - BATCH_ROWS
        with ActivationStore(out) as st:  # opens and validates after the kill
            assert st.n_rows == committed and st.n_rows_total == total, (point, end)
        stats[point] += 1
    r = _run(_harvest_args(model, out))
    done = f"is already complete ({total:,} rows)" if committed == total else f"resuming {out} at row {committed:,} of"
    assert done in r.stderr, r.stderr[-1000:]
    stats["kills"] = KILLS
    stats["rows_checked"] = _stores_equal(out, ref)
    assert not list(tmp_path.glob("*.tmp"))
    _record("harvest", stats)


def test_harvest_killed_after_its_last_commit_is_sealed_on_resume(model, reference, tmp_path):
    """A kill between the last batch's commit and the content seal: the re-run finds every row there and seals."""
    ref, out = reference / "ref.h5", tmp_path / "h.h5"
    with ActivationStore(ref) as st:
        total = st.n_rows
    _run(_harvest_args(model, out), f"harvest.rows:{total}", rc=-signal.SIGKILL)
    with h5py.File(out, "r") as f:
        assert f.attrs["n_rows_complete"] == total and "content_sha256" not in f.attrs
    _run(_harvest_args(model, out))
    _stores_equal(out, ref)


def test_fit_survives_kills_anywhere(reference, tmp_path):
    """KILLS fits die by SIGKILL at seeded steps, each after a step or between a checkpoint's temp file and its
    rename; after each kill the checkpoint on disk is the last one completed, the next run resumes from it, and
    the last one finishes with weights bit-identical to the uninterrupted fit."""
    out = tmp_path / "d"
    args = _fit_args(reference / "ref.h5", out)
    rng = random.Random(2)
    stats = {"fit.step": 0, "checkpoint.renaming": 0}
    saved = 0
    for tens in sorted(rng.sample(range(1, FIT_STEPS // EVERY), KILLS)):  # one kill per distinct ten steps
        if rng.random() < 0.5:  # the checkpoint of step 10 × tens, written to its temp name, never renamed
            point, step = "checkpoint.renaming", EVERY * tens
            r = _run(args, f"{point}:{(step - saved) // EVERY}", rc=-signal.SIGKILL)  # this run's nth checkpoint
            assert (out / "checkpoint.pt.tmp").exists()
            expect = step - EVERY
        else:  # just after a step (and after its checkpoint, when it has one)
            point, step = "fit.step", EVERY * tens + rng.randrange(EVERY)
            r = _run(args, f"{point}:{step}", rc=-signal.SIGKILL)
            expect = step // EVERY * EVERY
        if saved:
            assert f"resuming at step {saved} of {FIT_STEPS}" in r.stderr, r.stderr[-1000:]
        saved = _saved_step(out)
        assert saved == expect, (point, step, saved)
        stats[point] += 1
    r = _run(args)
    assert f"resuming at step {saved} of {FIT_STEPS}" in r.stderr, r.stderr[-1000:]
    assert not list(out.glob("*.tmp")) and not (out / "checkpoint.pt").exists()
    stats["kills"] = KILLS
    stats["tensors_checked"] = _weights_equal(out, reference / "dict")
    _record("fit", stats)


@pytest.mark.parametrize("what", ["harvest", "fit"])
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(model, reference, tmp_path, what):
    """SIGINT in the middle of a store write (harvest) or of a checkpoint write (fit) is held until the write is
    done: the run stops at the next safe point, exits 130 with the resume hint, and the re-run finishes it."""
    if what == "harvest":
        out, rows = tmp_path / "h.h5", 10 * BATCH_ROWS
        args, crash_at = _harvest_args(model, out), f"store.written:{rows}:SIGINT"
    else:
        out, rows = tmp_path / "d", None
        args, crash_at = _fit_args(reference / "ref.h5", out), "checkpoint.renaming:2:SIGINT"  # step 20's write
    r = _run(args, crash_at, rc=130, preexec_fn=_ctrl_c_reaches_child)
    assert "Traceback" not in r.stderr and "re-run the same command to resume" in r.stderr.lower(), r.stderr[-1000:]
    if what == "harvest":
        assert f"{rows:,} rows are safe in {out}" in r.stderr, r.stderr[-1000:]
        with ActivationStore(out) as st:
            assert st.n_rows == rows
        assert f"resuming {out} at row {rows:,}" in _run(args).stderr
        _stores_equal(out, reference / "ref.h5")
    else:
        assert f"stopped at step {2 * EVERY}; checkpoint saved" in r.stderr, r.stderr[-1000:]
        assert _saved_step(out) == 2 * EVERY
        assert f"resuming at step {2 * EVERY} of {FIT_STEPS}" in _run(args).stderr
        _weights_equal(out, reference / "dict")


@pytest.mark.parametrize("path", ["space check", "failed write"])
def test_disk_full_during_harvest_is_one_line_and_resumable(model, reference, tmp_path, path):
    """RLIMIT_FSIZE makes writes past 300 kB fail as a full disk would (EFBIG rather than ENOSPC).

    "space check": superpos sees the limit coming and stops cleanly before the batch. "failed write": with the
    check off, HDF5's write fails mid-batch; the committed rows survive and the resume repairs the file.
    """
    out = tmp_path / "h.h5"
    limit = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000)); from superpos.cli.main import main; "
             "sys.exit(main(sys.argv[1:]))")
    env = {**crash_env(), **({"SUPERPOS_NO_SPACE_CHECK": "1"} if path == "failed write" else {})}
    r = subprocess.run([sys.executable, "-c", limit, *_harvest_args(model, out)[3:]], capture_output=True, text=True,
                       env=env)
    lines = [x for x in r.stderr.replace("\r", "\n").splitlines() if x.strip() and "harvest:" not in x
             and "no CUDA" not in x]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert len(lines) == 1 and lines[0].startswith("superpos: error:"), lines
    assert ("not enough space" if path == "space check" else "File too large") in lines[0], lines
    assert "re-run the same command to resume" in lines[0]
    r = _run(_harvest_args(model, out))
    assert "resuming" in r.stderr, r.stderr[-1000:]
    if path == "space check":  # a clean stop leaves nothing to repair (a failed write may: test_repair_eof_...)
        assert "cut short by a failed write" not in r.stderr
    _stores_equal(out, reference / "ref.h5")


def test_live_reader_sees_consistent_prefixes(model, reference, tmp_path):
    """The harvest stops itself (SIGSTOP) at seeded points: mid-batch, flushed but uncommitted, just committed.
    At every stop a live reader opens the store, without an error, and sees exactly the committed rows, equal to
    the final file's prefix; `superpos info` reads it too. The harvest then goes on and finishes."""
    ref, out = reference / "ref.h5", tmp_path / "h.h5"
    with ActivationStore(ref) as st:
        total, tokens, acts = st.n_rows, st.row_field("tokens"), st.to_numpy(2)
    rng = random.Random(4)
    stops = [(rng.choice(STORE_POINTS), end) for end in sorted(rng.sample(range(2 * BATCH_ROWS, total, BATCH_ROWS), 8))]
    crash_at = ",".join(f"{point}:{end}:SIGSTOP" for point, end in stops)
    proc = subprocess.Popen(_harvest_args(model, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=crash_env(crash_at))
    seen = []
    try:
        for i, (point, end) in enumerate(stops):
            wait_stopped(proc)
            committed = end if point == "harvest.rows" else end - BATCH_ROWS
            with ActivationStore(out, live=True) as st:
                assert st.n_rows == committed, (point, end, st.n_rows)
                np.testing.assert_array_equal(st.row_field("tokens"), tokens[:committed])
                np.testing.assert_array_equal(st.to_numpy(2, rows=np.arange(committed)), acts[:committed])
            if i == 0:  # info's full read (every complete row's checksum) while the writer is stopped mid-way
                info = _run(_cli("info", out)).stdout
                assert f"rows           {committed:,} / {total:,} complete  (PARTIAL" in info, info
            seen.append(committed)
            proc.send_signal(signal.SIGCONT)
        assert proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    assert {p for p, _ in stops} == set(STORE_POINTS)  # the seed stops at every kind of point
    _stores_equal(out, ref)
    _record("live_reader", {"stops": len(stops), "distinct_prefixes": len(set(seen)),
                            "points": sorted({p for p, _ in stops})})


def test_crash_points_parse_and_fire_exactly_where_named():
    from superpos.interrupts import _parse_crash_points

    assert _parse_crash_points(" fit.step:40, store.flushed:64:SIGSTOP,harvest.rows:8:int ,") == {
        ("fit.step", 40): signal.SIGKILL, ("store.flushed", 64): signal.SIGSTOP, ("harvest.rows", 8): signal.SIGINT}
    assert _parse_crash_points("") == {}
    for bad in ("fit.step", "fit.step:x", "fit.step:4:SIGNOPE", "a:1:KILL:2"):
        with pytest.raises(ValueError, match="SUPERPOS_CRASH_AT"):
            _parse_crash_points(bad)
    code = ("from superpos.interrupts import crash_point as c\n"
            "c('a', 1); c('b', 3); print('past a:1 and b:3', flush=True); c('a', 2)\n"
            "c('n'); print('past n #1', flush=True); c('n'); print('past n #2', flush=True)")
    r = _run([sys.executable, "-c", code], "a:2:SIGUSR1,b:4,n:2", rc=-signal.SIGUSR1)
    assert r.stdout == "past a:1 and b:3\n"
    r = _run([sys.executable, "-c", code], "n:2", rc=-signal.SIGKILL)  # unnumbered: the 2nd call
    assert r.stdout.splitlines() == ["past a:1 and b:3", "past n #1"]
    assert _run([sys.executable, "-c", code]).stdout.splitlines()[-1] == "past n #2"  # unset: never


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
