"""Corruption fuzzing: byte flips, truncations and zeroed blocks over every kind of file superpos reads.

Each case copies a pristine artifact, damages one of its files (seeded), runs the real command that reads it in
a subprocess (with a time limit) and classifies the outcome:

* ``refused``  — exit 2 and one line ``superpos: error: …`` (no traceback);
* ``harmless`` — exit 0 and a result equal to the pristine one (the damage hit bytes nothing reads);
* failures     — ``traceback`` (another exit code, or a traceback printed), ``crash`` (killed by a signal),
  ``hang`` (past the time limit), ``wrong`` (exit 0 with a result that differs from the pristine one) and
  ``touched`` (a file other than the command's own output changed).

The CI form runs ``CI_CASES`` cases; ``SUPERPOS_FUZZ=N`` runs N, and ``python tests/test_corruption.py N`` prints
the figures by artifact and damage kind (docs/reliability.md).
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

CI_CASES = 40
TIMEOUT_S = 120
ROOT = Path(__file__).resolve().parents[1]
STORE_LAYERS = (0, 3)
FIT = ["--layer", "3", "--kind", "topk", "--expansion", "2", "--k", "4", "--tokens", "2048", "--batch-size", "64",
       "--device", "cpu", "--no-progress"]


# ------------------------------------------------------------------ pristine artifacts
def build_artifacts(root: Path) -> dict[str, Path]:
    """A store (float16 and float32 layers), a dictionary folder, a checkpoint and a tuned-lens folder."""
    import torch

    from superpos.dictionaries import TopKSAE, save_dictionary
    from superpos.hypotheses.lenses.lens import TunedLens
    from superpos.store import ActivationStore

    rng = np.random.default_rng(0)
    n, d, C = 1024, 16, 32
    store = root / "store.h5"
    st = ActivationStore.create(store, layers=STORE_LAYERS, d_model=d, n_rows=n, dtype={0: "float16", 3: "float32"},
                                attrs={"model": "fuzz", "context_length": C, "corpus": "random"}, chunk_rows=128)
    for start in range(0, n, 128):
        x = rng.standard_normal((128, d)).astype(np.float32)
        st.write_rows(start, {0: x, 3: 3 * x}, tokens=rng.integers(0, 99, 128).astype(np.int32),
                      doc=np.full(128, start // 256, np.int32), pos=np.tile(np.arange(C, dtype=np.int32), 128 // C),
                      next_logprob=-rng.random(128).astype(np.float32), next_rank=rng.integers(0, 9, 128).astype(np.int32))
    st.seal_content()  # as a finished harvest does
    st.close()

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
    """(seed, artifact, damage kind), cycling over artifacts and kinds so every pair is covered."""
    kinds = {"store": ["flip", "flip-meta", "truncate", "zero"], "dict": ["flip", "truncate", "zero"],
             "checkpoint": ["flip", "truncate", "zero"], "lens": ["flip", "truncate", "zero"]}
    pairs = [(a, k) for a, ks in kinds.items() for k in ks]
    return [(seed * 100_003 + i, *pairs[i % len(pairs)]) for i in range(n_cases)]


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
        return {"seed": seed, "artifact": kind, "damage": how, "file": victim.name, "what": what,
                "outcome": outcome, "message": detail}
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


def fuzz(n_cases: int, work: Path, workers: int = 2) -> list[dict]:
    pristine = build_artifacts(work / "pristine")
    ref = references(pristine, work)
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda c: run_case(pristine, ref, c, work), plan(n_cases)))


def figures(results: list[dict]) -> dict:
    table = collections.defaultdict(collections.Counter)
    for r in results:
        table[f"{r['artifact']} / {r['damage']}"][r["outcome"]] += 1
    return {k: dict(v) for k, v in sorted(table.items())}


FAILURES = ("traceback", "crash", "hang", "wrong", "touched")


def test_corruption_fuzz(tmp_path):
    (tmp_path / "pristine").mkdir()
    n = int(os.environ.get("SUPERPOS_FUZZ", CI_CASES))
    results = fuzz(n, tmp_path)
    bad = [r for r in results if r["outcome"] in FAILURES]
    assert not bad, json.dumps(bad[:5], indent=1)
    counts = collections.Counter(r["outcome"] for r in results)
    assert counts["refused"] >= n // 2, counts  # the damage is real: most cases must be refused


if __name__ == "__main__":  # figures for docs/reliability.md
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "pristine").mkdir()
        res = fuzz(n, Path(tmp))
    print(json.dumps({"cases": n, "by_kind": figures(res),
                      "outcomes": dict(collections.Counter(r["outcome"] for r in res)),
                      "failures": [r for r in res if r["outcome"] in FAILURES]}, indent=1))
