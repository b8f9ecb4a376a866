"""Corruption fuzzing: byte flips, truncations and zeroed blocks over every kind of file superpos reads.

Each case copies a pristine artifact, damages one of its files (seeded), runs the real command that reads it in
a subprocess (with a time limit) and classifies the outcome:

* ``refused``  — exit 2 and one line ``superpos: error: …`` (no traceback);
* ``harmless`` — exit 0 and a result equal to the pristine one (the damage hit bytes nothing reads);
* failures     — ``traceback`` (another exit code, or a traceback printed), ``crash`` (killed by a signal),
  ``hang`` (past the time limit), ``wrong`` (exit 0 with a result that differs from the pristine one) and
  ``touched`` (a file other than the command's own output changed).

A run is a seed: ``plan(n, seed)`` lists its cases, each ``(case seed, artifact, damage)``, and every case is
reproducible on its own. CI draws a fresh run seed each time (from the commit and the time, printed first; or
``SUPERPOS_FUZZ_SEED``) and runs the plan's cases in order for ``SUPERPOS_FUZZ_BUDGET_S`` seconds (60; at least
one case per artifact and damage): the time decides how many cases, never whether they pass.
``SUPERPOS_FUZZ_SEED=S SUPERPOS_FUZZ=N`` replays a run exactly (its first N cases, whatever the time); a failing case
names its own replay, ``python tests/test_corruption.py --case SEED ARTIFACT DAMAGE``.

The long form for releases, ``python tests/test_corruption.py N --seeds A..B``, runs N cases spread over the run
seeds A..B and writes the figures by artifact and damage (docs/results/reliability/: a table, the cases as JSON
lines, PNGs) and the table in docs/reliability.md.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import pytest

BUDGET_S = 60  # CI: seconds of cases (after building the artifacts and their reference runs)
TIMEOUT_S = 120
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "reliability"
STORE_LAYERS = (0, 3)
FIT = ["--layer", "3", "--kind", "topk", "--expansion", "2", "--k", "4", "--tokens", "2048", "--batch-size", "64",
       "--device", "cpu", "--no-progress"]
KINDS = {"store": ["flip", "flip-meta", "truncate", "zero"], "dict": ["flip", "truncate", "zero"],
         "checkpoint": ["flip", "truncate", "zero"], "lens": ["flip", "truncate", "zero"]}
PAIRS = [(a, k) for a, ks in KINDS.items() for k in ks]


# ------------------------------------------------------------------ pristine artifacts
def build_store(store: Path, rng: np.random.Generator | None = None) -> Path:
    """The pristine store: float16 and float32 layers, sealed as a finished harvest is (the same bytes every time;
    ``rng`` goes on to make the other artifacts)."""
    from superpos.store import ActivationStore

    rng = np.random.default_rng(0) if rng is None else rng
    n, d, C = 1024, 16, 32
    st = ActivationStore.create(store, layers=STORE_LAYERS, d_model=d, n_rows=n, dtype={0: "float16", 3: "float32"},
                                attrs={"model": "fuzz", "context_length": C, "corpus": "random"}, chunk_rows=128)
    for start in range(0, n, 128):
        x = rng.standard_normal((128, d)).astype(np.float32)
        st.write_rows(start, {0: x, 3: 3 * x}, tokens=rng.integers(0, 99, 128).astype(np.int32),
                      doc=np.full(128, start // 256, np.int32), pos=np.tile(np.arange(C, dtype=np.int32), 128 // C),
                      next_logprob=-rng.random(128).astype(np.float32), next_rank=rng.integers(0, 9, 128).astype(np.int32))
    st.seal_content()  # as a finished harvest does
    st.close()
    return store


def build_artifacts(root: Path) -> dict[str, Path]:
    """A store (float16 and float32 layers), a dictionary folder, a checkpoint and a tuned-lens folder."""
    import torch

    from superpos.dictionaries import TopKSAE, save_dictionary
    from superpos.hypotheses.lenses.lens import TunedLens
    from superpos.store import ActivationStore

    d = 16
    rng = np.random.default_rng(0)
    store = build_store(root / "store.h5", rng)
    x = rng.standard_normal((2048, d)).astype(np.float32)
    sae = TopKSAE(expansion=2, k=4, n_tokens=4096, batch_size=128, device="cpu", progress=False).fit(x)
    save_dictionary(sae, root / "dict", metrics={"fvu": 0.5})

    ckpt = root / "ckpt"  # a finished fit's checkpoint, with exactly the parameters `fit ... FIT` passes
    with ActivationStore(store) as s:
        train = s.restrict(0, s.split_row(0.9))
        TopKSAE(expansion=2.0, k=4, n_tokens=2048, batch_size=64, device="cpu", progress=False).fit(
            train, layer=3, checkpoint_dir=ckpt)

    torch.manual_seed(0)
    lens = TunedLens(d, 3)
    with torch.no_grad():
        lens.weight_LDD.normal_(0, 0.1)
        lens.bias_LD.normal_(0, 0.1)
    lens.meta = {"steps": 10, "held_out_kl": 0.25}
    lens.save(root / "lens")
    return {"store": store, "dict": root / "dict", "checkpoint": ckpt, "lens": root / "lens"}


def command(kind: str, target: Path) -> list[str]:
    """The command that reads the artifact (run in the case's folder)."""
    if kind == "checkpoint":  # resume the fit from its checkpoint
        return ["fit", "--store", str(target.parent / "store.h5"), *FIT, "--out", str(target)]
    return ["info", str(target)]


# ------------------------------------------------------------------ damage
def chunk_ranges(store: Path) -> list[tuple[int, int]]:
    """Byte ranges of the store's data chunks (everything else is HDF5 metadata)."""
    import h5py

    out = []
    with h5py.File(store, "r") as f:
        def visit(_, obj):
            if isinstance(obj, h5py.Dataset) and obj.chunks:
                for i in range(obj.id.get_num_chunks()):
                    info = obj.id.get_chunk_info(i)
                    out.append((info.byte_offset, info.byte_offset + info.size))
        f.visititems(visit)
    return sorted(out)


def _metadata_offsets(store: Path, size: int) -> np.ndarray:
    inside = np.zeros(size, bool)
    for lo, hi in chunk_ranges(store):
        inside[lo:hi] = True
    return np.flatnonzero(~inside)


def damage(path: Path, how: str, rng: np.random.Generator, meta: np.ndarray | None = None) -> str:
    """Damage one file in place; returns a description."""
    data = bytearray(path.read_bytes())
    size = len(data)
    if how == "truncate":
        cut = int(rng.integers(0, size))
        path.write_bytes(bytes(data[:cut]))
        return f"truncated to {cut} of {size} bytes"
    if how == "zero":
        n = int(rng.integers(64, 8193))
        at = int(rng.integers(0, max(1, size - n)))
        data[at:at + n] = bytes(min(n, size - at))
        path.write_bytes(bytes(data))
        return f"zeroed {n} bytes at {at}"
    n = int(rng.choice([1, 1, 4, 16]))
    pool = meta if (how == "flip-meta" and meta is not None and len(meta)) else None
    at = rng.choice(pool, n) if pool is not None else rng.integers(0, size, n)
    for i in at:
        data[int(i)] ^= int(rng.integers(1, 256))
    path.write_bytes(bytes(data))
    return f"{n} byte(s) flipped at {sorted(int(i) for i in at)[:4]}"


def plan(n_cases: int, seed: int = 0) -> list[tuple[int, str, str]]:
    """(case seed, artifact, damage kind), cycling over artifacts and kinds so every pair is covered."""
    return [(seed * 100_003 + i, *PAIRS[i % len(PAIRS)]) for i in range(n_cases)]


def replay_line(case) -> str:
    """The command that replays one case on its own."""
    seed, kind, how = case
    return f"PYTHONPATH=. python tests/test_corruption.py --case {seed} {kind} {how}"


# ------------------------------------------------------------------ running a case
def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


STORE_CONTENT = """
import hashlib, sys, h5py, numpy as np
h = hashlib.sha256()
with h5py.File(sys.argv[1], "r") as f:
    for k in sorted(f.attrs): h.update(repr((k, np.asarray(f.attrs[k]).tolist())).encode())
    def visit(name, obj):
        if isinstance(obj, h5py.Dataset): h.update(name.encode()); h.update(np.ascontiguousarray(obj[()]).tobytes())
    f.visititems(visit)
print(h.hexdigest())
"""


def _result_digest(kind: str, target: Path) -> str:
    """What a successful command produced, to compare with the pristine run."""
    if kind == "store":
        r = subprocess.run([sys.executable, "-c", STORE_CONTENT, str(target)], capture_output=True, text=True,
                           timeout=TIMEOUT_S)
        return r.stdout.strip() if r.returncode == 0 else f"unreadable: {r.stderr[-200:]}"
    if kind == "checkpoint":
        from safetensors.numpy import load_file

        w = load_file(str(target / "weights.safetensors"))
        return hashlib.sha256(b"".join(w[k].tobytes() for k in sorted(w))).hexdigest()
    return ""  # dictionary and lens folders: the printed summary is compared, and the checksums cover the rest


def run_case(pristine: dict[str, Path], reference: dict, case: tuple[int, str, str], work: Path) -> dict:
    seed, kind, how = case
    rng = np.random.default_rng(seed)
    folder = Path(tempfile.mkdtemp(dir=work))
    shutil.copy(pristine["store"], folder / "store.h5")  # the checkpoint's fit reads it
    target = folder / pristine[kind].name
    if kind != "store":
        shutil.copytree(pristine[kind], target)
    files = [target] if kind == "store" else sorted(p for p in target.iterdir() if p.is_file())
    victim = files[int(rng.integers(len(files)))]
    meta = _metadata_offsets(victim, victim.stat().st_size) if how == "flip-meta" else None
    what = damage(victim, how, rng, meta)
    before = _digests(folder)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        r = subprocess.run([sys.executable, "-m", "superpos", *command(kind, target)], capture_output=True,
                           text=True, timeout=TIMEOUT_S, env=env, cwd=folder)
    except subprocess.TimeoutExpired:
        outcome = "hang"
    else:
        err = [ln for ln in r.stderr.splitlines() if ln.strip() and "%|" not in ln
               and not ln.startswith("superpos: no CUDA")]
        if r.returncode < 0:
            outcome = "crash"
        elif r.returncode == 2 and len(err) == 1 and err[0].startswith("superpos: error:"):
            outcome = "refused"
        elif r.returncode != 0 or "Traceback" in r.stderr:
            outcome = "traceback"
        else:
            same = (r.stdout.replace(str(folder), "<dir>") == reference[kind]["stdout"]
                    and _result_digest(kind, target) == reference[kind]["digest"])
            outcome = "harmless" if same else "wrong"
        after = _digests(folder)
        own = target.name + "/"  # a resumed fit that succeeds writes its dictionary into its own folder
        mine = (lambda k: k.startswith(own)) if (kind == "checkpoint" and outcome == "harmless") else (lambda k: False)
        changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k) and not mine(k)}
        if changed and outcome in ("refused", "harmless"):
            outcome = "touched"
        detail = err[-1][:160] if err else ""
        shutil.rmtree(folder, ignore_errors=True)
        out = {"seed": seed, "artifact": kind, "damage": how, "file": victim.name, "what": what, "outcome": outcome,
               "message": detail}
        if outcome in FAILURES:
            out["stderr"] = r.stderr[-3000:]
            out["changed"] = sorted(changed)
        return out
    shutil.rmtree(folder, ignore_errors=True)
    return {"seed": seed, "artifact": kind, "damage": how, "file": victim.name, "what": what, "outcome": outcome,
            "message": ""}


def references(pristine: dict[str, Path], work: Path) -> dict:
    out = {}
    for kind in pristine:
        folder = Path(tempfile.mkdtemp(dir=work))
        shutil.copy(pristine["store"], folder / "store.h5")
        target = folder / pristine[kind].name
        if kind != "store":
            shutil.copytree(pristine[kind], target)
        r = subprocess.run([sys.executable, "-m", "superpos", *command(kind, target)], capture_output=True,
                           text=True, timeout=TIMEOUT_S, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=folder)
        assert r.returncode == 0, r.stderr
        out[kind] = {"stdout": r.stdout.replace(str(folder), "<dir>"), "digest": _result_digest(kind, target)}
    return out


def fuzz(cases, work: Path, workers: int = 2, budget_s: float | None = None, min_cases: int = len(PAIRS),
         on_result=None, timing: dict | None = None) -> list[dict]:
    """Run ``cases`` in order, ``workers`` at a time, each against fresh copies of the pristine artifacts.

    With ``budget_s`` no case starts once that many seconds have passed since the first one did (but at least
    ``min_cases`` run): the cases run are always the first N of ``cases``, so the run is replayed exactly by its
    seed and N, whatever the time. Results come back in the cases' order; ``on_result`` sees each as it ends;
    ``timing`` gets the seconds spent building the artifacts (with their reference runs) and running the cases."""
    t_build = time.monotonic()
    (work / "pristine").mkdir(parents=True, exist_ok=True)
    pristine = build_artifacts(work / "pristine")
    ref = references(pristine, work)
    cases = list(cases)
    results: dict[int, dict] = {}
    t0 = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        pending, nxt = {}, 0

        def more() -> bool:
            return nxt < len(cases) and (budget_s is None or nxt < min_cases or time.monotonic() - t0 < budget_s)

        while pending or more():
            while len(pending) < workers and more():
                pending[pool.submit(run_case, pristine, ref, cases[nxt], work)] = nxt
                nxt += 1
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                i = pending.pop(f)
                results[i] = f.result()
                if on_result is not None:
                    on_result(results[i])
    if timing is not None:
        timing.update(build_s=t0 - t_build, cases_s=time.monotonic() - t0)
    return [results[i] for i in sorted(results)]


def figures(results: list[dict]) -> dict:
    table = collections.defaultdict(collections.Counter)
    for r in results:
        table[f"{r['artifact']} / {r['damage']}"][r["outcome"]] += 1
    return {k: dict(v) for k, v in sorted(table.items())}


FAILURES = ("traceback", "crash", "hang", "wrong", "touched")


def run_seed() -> tuple[int, str]:
    """This run's seed and where it came from: ``SUPERPOS_FUZZ_SEED``, or fresh from the commit and the time."""
    if os.environ.get("SUPERPOS_FUZZ_SEED"):
        return int(os.environ["SUPERPOS_FUZZ_SEED"]), "SUPERPOS_FUZZ_SEED"
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "no-git"
    except (OSError, subprocess.SubprocessError):
        head = "no-git"
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return int(hashlib.sha256(f"{head} {now}".encode()).hexdigest()[:7], 16), f"commit {head[:10]} at {now}"


def failure_report(bad: list[dict], seed: int, n: int) -> str:
    """Each failing case: its seed, artifact, damage, what happened and the command that replays it."""
    lines = [f"{len(bad)} of {n} fuzz cases failed (run seed {seed}; the whole run: SUPERPOS_FUZZ_SEED={seed} "
             f"SUPERPOS_FUZZ={n} python -m pytest tests/test_corruption.py)"]
    for r in bad:
        case = (r["seed"], r["artifact"], r["damage"])
        lines += [f"- case seed {r['seed']}, {r['artifact']} / {r['damage']}: {r['what']} of {r['file']} -> "
                  f"{r['outcome']}: {r['message'] or r.get('changed') or '(no message)'}",
                  f"  replay: {replay_line(case)}"]
    return "\n".join(lines)


def test_corruption_fuzz(tmp_path, capsys):
    """CI's fuzz: a fresh run seed each time, as many cases as fit in BUDGET_S (SUPERPOS_FUZZ=N: exactly N)."""
    seed, source = run_seed()
    exact = int(os.environ["SUPERPOS_FUZZ"]) if os.environ.get("SUPERPOS_FUZZ") else None
    budget = None if exact else float(os.environ.get("SUPERPOS_FUZZ_BUDGET_S", BUDGET_S))
    with capsys.disabled():  # printed before anything runs, whatever pytest captures
        print(f"\nfuzz: run seed {seed} ({source}); "
              + (f"{exact} cases" if exact else f"cases for {budget:g} s") + f"; replay: SUPERPOS_FUZZ_SEED={seed}")
    timing: dict = {}
    results = fuzz(plan(exact or 100_000, seed), tmp_path, budget_s=budget, timing=timing)
    n = len(results)
    counts = collections.Counter(r["outcome"] for r in results)
    with capsys.disabled():
        print(f"fuzz: {n} cases in {timing['cases_s']:.0f} s (+ {timing['build_s']:.0f} s building the artifacts and "
              f"their reference runs), run seed {seed}: {dict(counts)}; the same run: SUPERPOS_FUZZ_SEED={seed} "
              f"SUPERPOS_FUZZ={n}")
    bad = [r for r in results if r["outcome"] in FAILURES]
    assert not bad, failure_report(bad, seed, n)
    assert counts["refused"] >= n // 2, counts  # the damage is real: most cases must be refused


# ------------------------------------------------------------------ regressions: objects where datasets belong
def _plant(store: Path, how: str, name: str) -> None:
    """Put something other than the dataset the schema names at ``name`` (or at the group ``acts``)."""
    import h5py

    with h5py.File(store, "r+") as f:
        if how == "dataset-for-group":
            del f[name]
            f[name] = np.zeros(3, np.float32)
            return
        if how == "datatype-for-group":
            del f[name]
            f[name] = np.dtype("float32")
            return
        data = f[name][()]
        del f[name]
        if how == "named-datatype":
            f[name] = np.dtype("int32")
        elif how == "group":
            f.create_group(name)
        elif how == "soft-link":  # to a good copy of the data: still not the dataset the schema names
            f["copy"] = data
            f[name] = h5py.SoftLink("/copy")
        elif how == "dangling-soft-link":
            f[name] = h5py.SoftLink("/nowhere")
        elif how == "external-link":
            f[name] = h5py.ExternalLink("elsewhere.h5", "/" + name)
        else:
            raise ValueError(how)


PLANTED = [(how, name) for name in ("doc", "acts/L3")
           for how in ("named-datatype", "group", "soft-link", "dangling-soft-link", "external-link")]
PLANTED += [("dataset-for-group", "acts"), ("datatype-for-group", "acts")]


def _info_in_process(path: Path, capsys) -> tuple[int, list[str]]:
    from superpos.cli.main import main

    rc = main(["info", str(path)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not ln.startswith("superpos: no CUDA")]
    return rc, err


@pytest.fixture(scope="module")
def pristine_store(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("fuzz-store") / "store.h5")


@pytest.mark.parametrize("how,name", PLANTED, ids=[f"{h}@{n}" for h, n in PLANTED])
def test_unexpected_hdf5_object_is_one_line(pristine_store, tmp_path, capsys, how, name):
    """Before the fix a named datatype at /doc was an AttributeError ('Datatype' object has no attribute 'shape')."""
    from superpos.errors import SuperposError
    from superpos.store import ActivationStore

    store = tmp_path / "store.h5"
    shutil.copy(pristine_store, store)
    _plant(store, how, name)
    for live in (False, True):
        with pytest.raises(SuperposError) as e:
            ActivationStore(store, live=live)
        assert f"'/{name}'" in str(e.value) and "expected a" in str(e.value), str(e.value)
    rc, err = _info_in_process(store, capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("superpos: error:"), err


def test_issue_40_case_replayed(pristine_store, tmp_path, capsys):
    """The case the issue reported: run seed 9's store / flip-meta, case seed 900028 (16 bytes of HDF5 metadata
    flipped; a named datatype where /doc belongs). Replayed in process: one line, not a traceback."""
    store = tmp_path / "store.h5"
    shutil.copy(pristine_store, store)
    rng = np.random.default_rng(900028)
    rng.integers(1)  # run_case draws the victim file first (the store is the only one)
    what = damage(store, "flip-meta", rng, _metadata_offsets(store, store.stat().st_size))
    rc, err = _info_in_process(store, capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("superpos: error:"), (what, err)
    if what == "16 byte(s) flipped at [2516, 2993, 6441, 7165]":  # the issue's bytes: the same damage as reported
        assert "'/doc' is a named datatype, expected a dataset" in err[0], err


def test_a_damaged_global_heap_is_refused_not_a_hang(pristine_store, tmp_path, capsys):
    """The long form's one failure (run seed 8, case 800053, store / zero: 1,234 bytes zeroed at 5045): the zeroes
    fell on the free-space entry of the HDF5 global heap that holds the text attributes, and libhdf5 then loops
    forever reading any of them. Replayed, and the same damage planted directly (that entry's size set to 0, and
    set past the collection's end): one line each, in seconds."""
    import struct

    store = tmp_path / "store.h5"
    shutil.copy(pristine_store, store)
    rng = np.random.default_rng(800053)
    rng.integers(1)
    what = damage(store, "zero", rng)
    rc, err = _info_in_process(store, capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("superpos: error:"), (what, err)
    data = pristine_store.read_bytes()
    heap = data.find(b"GCOL")
    end, p = heap + struct.unpack_from("<Q", data, heap + 8)[0], heap + 16
    while struct.unpack_from("<H", data, p)[0] != 0:  # to the free-space entry (index 0)
        p += 16 + (struct.unpack_from("<Q", data, p + 8)[0] + 7) // 8 * 8
    for size in (0, end - p + 8):
        bad = bytearray(data)
        bad[p + 8:p + 16] = struct.pack("<Q", size)
        store.write_bytes(bytes(bad))
        rc, err = _info_in_process(store, capsys)
        assert rc == 2 and err == [f"superpos: error: {store}: its HDF5 metadata is damaged (the global heap at byte "
                                   f"{heap} holds an entry of impossible size)"], (size, err)


def test_a_chunk_index_pointing_past_the_file_is_one_line(pristine_store, tmp_path, capsys):
    """CI's fresh-seed fuzz, case 8440061794272 (store, 16 metadata bytes flipped): a chunk's address pointed far past
    the end of the file and the global-heap check tried to read up to it (MemoryError). Replayed: one line."""
    store = tmp_path / "store.h5"
    shutil.copy(pristine_store, store)
    rng = np.random.default_rng(8440061794272)
    rng.integers(1)
    what = damage(store, "flip-meta", rng, _metadata_offsets(store, store.stat().st_size))
    rc, err = _info_in_process(store, capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("superpos: error:"), (what, err)


# ------------------------------------------------------------------ the long form (releases)
def _seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("..")
    return list(range(int(lo), int(hi or lo) + 1))


OUTCOMES = ("refused", "harmless", *FAILURES)
LABELS = {"flip": "bytes flipped anywhere", "flip-meta": "bytes flipped in HDF5 metadata", "truncate": "truncated",
          "zero": "zeroed block"}
ARTIFACTS = {"store": "store", "dict": "dictionary folder", "checkpoint": "checkpoint", "lens": "tuned-lens folder"}


def table_markdown(results: list[dict], seeds: list[int], seconds: float) -> str:
    """The figures as markdown: the totals, then cases by artifact and damage, then by run seed."""
    total = collections.Counter(r["outcome"] for r in results)
    fails = sum(total[o] for o in FAILURES)
    shown = [o for o in OUTCOMES if total[o] or o in ("refused", "harmless")]
    lines = [f"**{len(results):,} cases over run seeds {seeds[0]}..{seeds[-1]} ({len(seeds)} seeds), "
             f"{total['refused']:,} refused, {total['harmless']:,} harmless, {fails} failure{'' if fails == 1 else 's'}** "
             f"({seconds / 60:.0f} min on {os.cpu_count()} cores).", "",
             "| artifact / damage | cases | " + " | ".join(shown) + " |", "|---|---|" + "---|" * len(shown)]
    for kind, how in PAIRS:
        rows = [r for r in results if (r["artifact"], r["damage"]) == (kind, how)]
        c = collections.Counter(r["outcome"] for r in rows)
        lines.append(f"| {ARTIFACTS[kind]} / {LABELS[how]} | {len(rows)} | " + " | ".join(str(c[o]) for o in shown)
                     + " |")
    lines += ["", "| run seed | cases | " + " | ".join(shown) + " |", "|---|---|" + "---|" * len(shown)]
    for seed in seeds:
        rows = [r for r in results if r["run_seed"] == seed]
        c = collections.Counter(r["outcome"] for r in rows)
        lines.append(f"| {seed} | {len(rows)} | " + " | ".join(str(c[o]) for o in shown) + " |")
    bad = [r for r in results if r["outcome"] in FAILURES]
    if bad:
        lines += ["", "Failures (each replays with `python tests/test_corruption.py --case SEED ARTIFACT DAMAGE`):", ""]
        lines += [f"- case {r['seed']}, {r['artifact']} / {r['damage']} ({r['what']} of {r['file']}): "
                  f"{r['outcome']}, {r['message'] or r.get('changed') or '(no message)'}" for r in bad]
    return "\n".join(lines) + "\n"


def plot(results: list[dict], seeds: list[int], out: Path) -> list[Path]:
    """PNGs: outcomes by artifact and damage (share of cases, counts written on the bars), and by run seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"refused": "#4c72b0", "harmless": "#8fbc8f", "traceback": "#c44e52", "crash": "#8c1c13",
               "hang": "#dd8452", "wrong": "#937860", "touched": "#da8bc3"}
    written = []
    for name, groups, title in (
            ("fuzz_by_damage.png", [((k, h), f"{ARTIFACTS[k]} / {LABELS[h]}") for k, h in PAIRS],
             "outcome by artifact and damage"),
            ("fuzz_by_seed.png", [(s, f"run seed {s}") for s in seeds], "outcome by run seed")):
        key = (lambda r: (r["artifact"], r["damage"])) if name == "fuzz_by_damage.png" else (lambda r: r["run_seed"])
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(groups) + 1.4))
        for i, (g, label) in enumerate(groups):
            rows = [r for r in results if key(r) == g]
            c, left = collections.Counter(r["outcome"] for r in rows), 0.0
            for o in OUTCOMES:
                if c[o]:
                    w = c[o] / len(rows)
                    ax.barh(i, w, left=left, color=colours[o], label=o if o not in ax.get_legend_handles_labels()[1]
                            else None)
                    if w > 0.06:
                        ax.text(left + w / 2, i, str(c[o]), ha="center", va="center", fontsize=8, color="white")
                    left += w
        ax.set_yticks(range(len(groups)), [f"{label} ({sum(key(r) == g for r in results)})" for g, label in groups],
                      fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of cases")
        total = collections.Counter(r["outcome"] for r in results)
        ax.set_title(f"Corruption fuzz, {title}: {len(results):,} cases, "
                     f"{sum(total[o] for o in FAILURES)} failures", fontsize=10)
        ax.legend(loc="lower right", fontsize=7, ncol=len(ax.get_legend_handles_labels()[1]),
                  bbox_to_anchor=(1, 1.06), frameon=False)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(out / name)
    return written


DOC_BEGIN, DOC_END = "<!-- fuzz-figures: written by python tests/test_corruption.py N --seeds A..B -->", \
    "<!-- /fuzz-figures -->"


def write_doc(doc: Path, command: str, table: str, figures_at: str) -> None:
    """Replace the figures between the markers in docs/reliability.md."""
    text = doc.read_text()
    if DOC_BEGIN not in text or DOC_END not in text:
        raise SystemExit(f"{doc} has no {DOC_BEGIN} ... {DOC_END} block to rewrite")
    block = (f"{DOC_BEGIN}\nToday's long form (`{command}`):\n\n{table}\n![outcomes by artifact and damage]"
             f"({figures_at}/fuzz_by_damage.png)\n![outcomes by run seed]({figures_at}/fuzz_by_seed.png)\n")
    head, rest = text.split(DOC_BEGIN, 1)
    doc.write_text(head + block + DOC_END + rest.split(DOC_END, 1)[1])


def long_form(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python tests/test_corruption.py",
                                description="The fuzz's long form: N cases over run seeds A..B, with figures.")
    p.add_argument("n", type=int, nargs="?", default=400, help="cases in all, spread evenly over the seeds")
    p.add_argument("--seeds", default="0..0", help="run seeds A..B (inclusive; default 0..0)")
    p.add_argument("--workers", type=int, default=2, help="cases at a time (default 2)")
    p.add_argument("--out", default=str(RESULTS), help=f"folder for the figures (default {RESULTS.relative_to(ROOT)})")
    p.add_argument("--no-doc", action="store_true", help="leave docs/reliability.md alone")
    p.add_argument("--case", nargs=3, metavar=("SEED", "ARTIFACT", "DAMAGE"), help="replay one case and show it")
    args = p.parse_args(argv)
    if args.case:
        case = (int(args.case[0]), args.case[1], args.case[2])
        if (case[1], case[2]) not in PAIRS:
            p.error(f"no such artifact / damage: {case[1]} / {case[2]} (choose from {PAIRS})")
        with tempfile.TemporaryDirectory() as tmp:
            r = fuzz([case], Path(tmp), workers=1)[0]
        print(json.dumps({k: v for k, v in r.items() if k != "stderr"}, indent=1))
        if r.get("stderr"):
            print("--- stderr ---\n" + r["stderr"])
        return 1 if r["outcome"] in FAILURES else 0
    seeds = _seeds(args.seeds)
    share = [args.n // len(seeds) + (i < args.n % len(seeds)) for i in range(len(seeds))]
    cases = [(c, s) for s, k in zip(seeds, share) for c in plan(k, s)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = (out / "fuzz_cases.jsonl").open("w")
    by_case = {c: s for c, s in cases}
    t0, done = time.monotonic(), [0]

    def seen(r):
        r["run_seed"] = by_case[(r["seed"], r["artifact"], r["damage"])]
        lines.write(json.dumps(r) + "\n")
        lines.flush()
        done[0] += 1
        if done[0] % 50 == 0 or r["outcome"] in FAILURES:
            print(f"{done[0]}/{len(cases)} cases, {time.monotonic() - t0:.0f} s"
                  + (f"; FAILURE {r['outcome']}: {replay_line((r['seed'], r['artifact'], r['damage']))}"
                     if r["outcome"] in FAILURES else ""), file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        results = fuzz([c for c, _ in cases], Path(tmp), workers=args.workers, on_result=seen)
    lines.close()
    for r in results:
        r.setdefault("run_seed", by_case[(r["seed"], r["artifact"], r["damage"])])
    seconds = time.monotonic() - t0
    command = f"python tests/test_corruption.py {args.n} --seeds {args.seeds}"
    table = table_markdown(results, seeds, seconds)
    (out / "fuzz.md").write_text(f"# Corruption fuzz: `{command}`\n\n{table}")
    plot(results, seeds, out)
    if not args.no_doc:
        write_doc(ROOT / "docs" / "reliability.md", command, table,
                  os.path.relpath(out, ROOT / "docs"))
    print(table)
    print(json.dumps({"cases": len(results), "by_kind": figures(results),
                      "outcomes": dict(collections.Counter(r["outcome"] for r in results))}, indent=1))
    return 1 if any(r["outcome"] in FAILURES for r in results) else 0


if __name__ == "__main__":  # the long form, or one case replayed (--case)
    sys.path.insert(0, str(ROOT))
    sys.exit(long_form(sys.argv[1:]))
