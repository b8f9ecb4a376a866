"""The benchmark suite: one command, every figure a ratio taken in the same run, written to RESULTS.md.

    python benchmarks/run.py                 # full suite (~2.5 h on a 2-core CPU: peers ~1 h, frontier ~45 min)
    python benchmarks/run.py --quick --out /tmp/bench   # smoke run with tiny sizes (CI)
    python benchmarks/run.py --only peers,frontier --merge   # some sections, the others kept from the last run
    python benchmarks/run.py --only peers --peers sparsify --merge   # rerun one peer (and superpos); keep the others' rows

Sections:
  sae      TopK SAE training (d 576, 16× and 32×, k 32, batch 4096; fp32 on CPU, bf16 on CUDA): tokens/s and
           the ratio to the roofline = the dense encoder matmul a TopK step cannot avoid, timed here.
  peers    EleutherAI sparsify, SAELens, saprmarks dictionary_learning at their own defaults against superpos on
           2M planted tokens (tok/s, FVU, planted atoms recovered), and quality per second against the fastest
           peer on the planted stream and on real layer-15 activations; each peer in its own virtual environment
           (benchmarks/peers.py), skipped with the reason when one does not install.
  frontier every dictionary kind at several L0: held-out FVU and CE loss recovered on the default model's layer
           15, MMCS on a planted set (benchmarks/frontier.py).
  harvest  `superpos harvest` of layer sets {5}, {15}, {5,15,25}, {all} vs the whole model and its FLOP bound.
  stream   shuffled-batch reads from a store vs the rows per second the SAE step consumes.
  geometry max |cos| over the 49,152 × 576 embedding (exact faiss vs blocked torch), and over 1M × 576 atoms
           with an IVF index (time, recall@1 against exact search on a sample).
  scaling  SAE step time and memory against n_latents and batch size.
  ddp      `superpos fit` on one process vs torchrun with 2 gloo processes (same global batch).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data import clustered_atoms, real_layer_rows, real_store, synthetic_stream  # noqa: E402
from scaling import bench_ddp, bench_scaling  # noqa: E402

from superpos.dictionaries import TopKSAE  # noqa: E402

SECTIONS = ("sae", "peers", "frontier", "harvest", "stream", "geometry", "scaling", "ddp")


ISA = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # the CPU features that decide float32 and bfloat16 speed


def machine() -> dict:
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
            if flags and cpu:
                break
    except OSError:
        pass
    import faiss
    import h5py
    import transformers

    return {"cpu": cpu, "isa": [f for f in ISA if f in flags], "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "faiss": faiss.__version__, "h5py": h5py.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _time(fn, repeat: int) -> float:
    """Best of ``repeat`` timed calls after a warm-up (the least disturbed by the rest of a shared machine)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# ------------------------------------------------------------------------------------------------------
def bench_sae(q: bool, device: str) -> dict:
    d, batch, k = (64, 512, 8) if q else (576, 4096, 32)
    steps = 6 if q else 40
    x = synthetic_stream(batch * 8, d)
    out = {}
    # on CPU the default float32 at two widths, and precision="bfloat16" (its own bound: the bf16 GEMM)
    configs = [(16, "bfloat16"), (32, "bfloat16")] if device == "cuda" else [(16, "float32"), (32, "float32"),
                                                                            (16, "bfloat16")]
    for expansion, precision in configs:
        F = expansion * d
        W = torch.randn(F, d, device=device)
        xb = x[:batch].to(device)
        dtype = getattr(torch, precision)
        xd, Wd = xb.to(dtype), W.to(dtype)
        buf = torch.empty(batch, F, dtype=dtype, device=device)
        def matmuls():  # the encoder matmul a step cannot avoid, into ready memory; and as usually written
            return _time(lambda: torch.mm(xd, Wd.T, out=buf), 5), _time(lambda: xd @ Wd.T, 5)
        sae = TopKSAE(n_components=F, k=k, batch_size=batch, n_tokens=batch * steps, warmup_steps=1, device=device,
                      progress=False, precision=precision)
        before = matmuls()
        t0 = time.perf_counter()
        sae.fit(x)
        total = time.perf_counter() - t0
        after = matmuls()  # timed on both sides of the fit: the best of 10 is what the machine can do
        roof, roof_alloc = min(before[0], after[0]), min(before[1], after[1])
        # best logging window (2 steps each), as the matmul is timed best of 5: both the least disturbed figure
        tok_s = float(max([h["tok_s"] for h in sae.history_[1:]] or [sae.history_[-1]["tok_s"]]))
        step = batch / tok_s
        name = f"{expansion}x" + (" bfloat16" if precision == "bfloat16" and device != "cuda" else "")
        out[name] = {"n_latents": F, "batch": batch, "k": k, "precision": precision, "tokens_per_s": tok_s, "step_s": step,
                     "roofline_matmul_s": roof, "fraction_of_roofline": roof / step,
                     "matmul_fresh_output_s": roof_alloc, "fraction_of_fresh_matmul": roof_alloc / step,
                     "fit_total_s": total, "final_fvu": sae.history_[-1]["fvu"]}
        if expansion == 16:
            out[name]["profile_ms_per_step"] = _profile_steps(F, k, batch, x, device, precision)
        print(f"[sae] {name}: {tok_s:,.0f} tok/s, step {step * 1e3:.0f} ms vs matmul {roof * 1e3:.0f} ms "
              f"→ {roof / step:.2f} of roofline", flush=True)
    return out


def _profile_steps(F: int, k: int, batch: int, x: torch.Tensor, device: str, precision: str, steps: int = 6) -> dict:
    """Where a step's time goes: torch.profiler's self time per op, per step, the largest first."""
    from torch.profiler import ProfilerActivity, profile

    sae = TopKSAE(n_components=F, k=k, batch_size=batch, n_tokens=batch * steps, warmup_steps=1, device=device,
                  progress=False, precision=precision)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        sae.fit(x)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    return {e.key: e.self_cpu_time_total / 1e3 / steps for e in ops[:10]}


def bench_stream(q: bool, sae_tok_s: float | None) -> dict:
    from superpos.store import ActivationStore

    d, rows, batch = (64, 20_000, 512) if q else (576, 400_000, 4096)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.h5"
        chunk = 8 * 256
        st = ActivationStore.create(path, layers=[15], d_model=d, n_rows=rows, attrs={"model": "bench", "context_length": 256},
                                    chunk_rows=chunk, compression="none")
        rng = np.random.default_rng(0)
        for lo in range(0, rows, chunk):
            n = min(chunk, rows - lo)
            r = np.arange(lo, lo + n)
            st.write_rows(lo, {15: rng.standard_normal((n, d)).astype(np.float16)}, tokens=r.astype(np.int32),
                          doc=(r // 256).astype(np.int32), pos=(r % 256).astype(np.int32),
                          next_logprob=np.zeros(n, np.float32), next_rank=np.zeros(n, np.int32))
        st.close()
        with ActivationStore(path) as st:
            it = st.stream(15, batch, seed=0)
            next(it)
            n_batches = (rows // batch) - 2
            t0 = time.perf_counter()
            for _ in range(n_batches):
                next(it)
            dt = time.perf_counter() - t0
    rate = n_batches * batch / dt
    res = {"rows": rows, "d_model": d, "batch": batch, "rows_per_s": rate, "mib_per_s": rate * d * 2 / 2**20,
           "compression": "none"}
    if sae_tok_s:
        res["sae_rows_per_s"] = sae_tok_s
        res["ratio_stream_over_sae"] = rate / sae_tok_s
    print(f"[stream] {rate:,.0f} rows/s ({res['mib_per_s']:.0f} MiB/s)"
          + (f", {rate / sae_tok_s:.1f}× what the 16× SAE step consumes" if sae_tok_s else ""), flush=True)
    return res


def bench_geometry(q: bool) -> dict:
    import faiss

    from superpos import geometry as g
    from superpos.model.load import load_model

    res = {}
    if q:
        E = np.random.default_rng(0).standard_normal((5000, 64)).astype(np.float32)
    else:
        E = load_model(None, device="cpu").W_E_VD.detach().float().numpy()
    t0 = time.perf_counter()
    ours = g.max_abs_cos(E)  # exact: one blocked torch pass with |·|
    t_ours = time.perf_counter() - t0
    U = g.unit_rows(E)
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(U.shape[1])  # faiss exact: a flat index searched with +q and −q
    flat.add(U)
    cos, ids = g.search_abs_cos(flat, U, 1, exclude=np.arange(len(U)))
    t_faiss = time.perf_counter() - t0
    assert np.allclose(np.abs(cos[:, 0]), ours.value, atol=1e-4)
    res["embedding"] = {"n": len(E), "d": E.shape[1], "superpos_exact_s": t_ours, "faiss_flat_s": t_faiss,
                        "faiss_over_superpos": t_faiss / t_ours}
    print(f"[geometry] {len(E):,} × {E.shape[1]}: superpos exact {t_ours:.1f} s, faiss flat ±q {t_faiss:.1f} s", flush=True)
    # 1M atoms: every method builds its index over all n, searches a random sample of queries (search time grows
    # linearly with the number of queries, so it is scaled to all n), and is scored against the exact neighbours
    # of part of that sample, found by a blocked torch brute force that is timed and scaled the same way.
    n, n_search, n_exact = (20_000, 2_000, 500) if q else (1_000_000, 20_000, 1_000)
    rng = np.random.default_rng(0)
    for name, V in (("atoms_1M", clustered_atoms(n, E.shape[1])), ("random_1M", g.gaussian_null(n, E.shape[1], seed=1))):
        V = g.unit_rows(V)
        rows = rng.choice(n, size=n_search, replace=False)
        t0 = time.perf_counter()
        truth = g.exact_neighbours(V, rows[:n_exact])
        t_brute = (time.perf_counter() - t0) * n / n_exact
        res[name] = {"n": n, "d": V.shape[1], "queries_timed": n_search, "recall_queries": n_exact,
                     "torch_brute_force_s_extrapolated": t_brute, "methods": {}}
        for method, kw in (("ivf", {"nprobe": 16}), ("pq", {"refine": 64})):
            mc = g.max_abs_cos(V, index=method, rows=rows, **kw)
            total = mc.build_s + mc.search_s * n / n_search
            recall = float((mc.neighbour[:n_exact] == truth).mean())
            res[name]["methods"][method] = {"build_s": mc.build_s, "search_s_all": mc.search_s * n / n_search,
                                            "total_s": total, "recall_at_1": recall, **kw}
            print(f"[geometry] {name} {n:,}: {method} {total:.0f} s (build {mc.build_s:.0f} s), recall@1 {recall:.3f}; "
                  f"brute force ≈ {t_brute:.0f} s", flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run (CI)")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma list of sections")
    ap.add_argument("--merge", action="store_true", help="keep the other sections of the results.json already in --out "
                                                          "(each section says when it was measured)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks"), help="folder for RESULTS.md and results.json")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peers", default=None, help="comma list of peers to rerun in the peers section: sparsify, "
                                                   "sae_lens, dictionary_learning (default: all); with --merge the others "
                                                   "keep their rows from the last run")
    args = ap.parse_args()
    only = set(args.only.split(","))
    from peers import PEERS, keep_other_peers

    by_module = {module: label for label, (_, module) in PEERS.items()}
    labels = [by_module.get(m) for m in args.peers.split(",")] if args.peers else None
    if None in (labels or []) or only - set(SECTIONS):
        print(f"run.py: --only takes {','.join(SECTIONS)}; --peers takes {','.join(by_module)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res: dict = {"machine": machine(), "quick": args.quick}
    before = {}
    if args.merge and (out / "results.json").exists():
        before = json.loads((out / "results.json").read_text())
        peers_date = next((r["date"] for r in before.get("runs", []) if "peers" in r["sections"]), "an earlier run")
        runs = before.get("runs") or [{"date": before["machine"]["date"], "seconds": before["seconds"],
                                       "sections": [k for k in before if k in SECTIONS]}]
        before["runs"] = [r for r in runs if set(r["sections"]) - only]
        for r in before["runs"]:
            r["sections"] = [k for k in r["sections"] if k not in only]
    if "sae" in only:
        res["sae"] = bench_sae(args.quick, args.device)
    if "peers" in only:
        from peers import run_peers

        res["peers"] = run_peers(args.quick, None if args.quick else real_layer_rows(), labels)
        if labels and "peers" in before:
            keep_other_peers(res["peers"], before["peers"], peers_date)
    if "frontier" in only:
        from frontier import run_frontier

        res["frontier"] = run_frontier(args.quick, None if args.quick else real_store(),
                                       cache_path=None if args.quick else real_store().parent / "frontier_rows.jsonl")
    if "harvest" in only:
        from harvest_bench import run_harvest

        res["harvest"] = run_harvest(args.quick, args.device)
    if "stream" in only:
        res["stream"] = bench_stream(args.quick, res.get("sae", {}).get("16x", {}).get("tokens_per_s"))
    if "geometry" in only:
        res["geometry"] = bench_geometry(args.quick)
    if "scaling" in only:
        res["scaling"] = bench_scaling(args.quick)
    if "ddp" in only:
        res["ddp"] = bench_ddp(args.quick)
    res["seconds"] = time.perf_counter() - t0
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["runs"] = before.get("runs", []) + [{"date": res["machine"]["date"], "seconds": res["seconds"],
                                              "sections": [k for k in SECTIONS if k in only],
                                              "machine": res["machine"]}]
    res = {**{k: v for k, v in before.items() if k in SECTIONS}, **res}
    (out / "results.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    from results_md import write_results

    write_results(res, out / "RESULTS.md")
    print(f"wrote {out / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
