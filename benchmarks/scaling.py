"""Scaling sections: SAE step time and memory against n_latents and batch size, and one process against torchrun
with two gloo processes."""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from data import synthetic_store

ROOT = Path(__file__).resolve().parents[1]


def bench_ddp(q: bool) -> dict:
    """`superpos fit` on 1 process vs `torchrun --nproc-per-node 2` (gloo), same global batch and tokens."""
    import re
    import socket

    d, rows, batch, steps = (64, 16_384, 512, 10) if q else (576, 65_536, 4096, 16)
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = synthetic_store(Path(tmp) / "s.h5", rows, d)
        args = ["fit", "--store", str(store), "--layer", "15", "--expansion", "16", "--k", "32", "--batch-size",
                str(batch), "--tokens", str(batch * steps), "--train-frac", "1", "--no-progress", "--device", "cpu"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        runs = {"1 process (all threads)": [sys.executable, "-m", "superpos", *args, "--out", f"{tmp}/one"],
                "2 processes (torchrun, gloo)": [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                                                 "--master-addr", "127.0.0.1", "--master-port", str(port),
                                                 "-m", "superpos", *args, "--out", f"{tmp}/two"]}
        for name, cmd in runs.items():
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
            res[name] = float(re.search(r"in ([\d.]+) s", out).group(1))
            print(f"[ddp] {name}: {res[name]:.1f} s", flush=True)
    res["speedup_2_over_1"] = res["1 process (all threads)"] / res["2 processes (torchrun, gloo)"]
    return {"d_model": d, "n_latents": 16 * d, "batch": batch, "steps": steps, "seconds": res}


def bench_scaling(q: bool) -> dict:
    from superpos.dictionaries.plan import plan_memory

    d = 64 if q else 576
    rows = []
    for expansion in ((4, 8) if q else (8, 16, 32)):
        for batch in ((256, 512) if q else (1024, 4096)):
            F = expansion * d
            # peak RSS growth: reset the high-water mark (/proc/self/clear_refs) just before the fit
            code = (f"import re, torch, sys; sys.path.insert(0, {str(ROOT)!r}); "
                    f"from superpos.dictionaries import TopKSAE; x = torch.randn({batch} * 4, {d}); "
                    f"kb = lambda k: int(re.search(k + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024; "
                    f"s = TopKSAE(n_components={F}, k=32, batch_size={batch}, n_tokens={batch} * 12, warmup_steps=1, "
                    f"device='cpu', progress=False); open('/proc/self/clear_refs', 'w').write('5'); b = kb('VmRSS'); "
                    f"s.fit(x); import numpy as np; print(kb('VmHWM') - b, np.median([h['tok_s'] for h in s.history_]))")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
            mem, tok_s = int(out[0]), float(out[1])
            rows.append({"n_latents": F, "batch": batch, "step_ms": 1e3 * batch / tok_s, "tokens_per_s": tok_s,
                         "measured_peak_mib": mem / 2**20, "planned_mib": plan_memory(d, F, 32, batch).total / 2**20})
            print(f"[scaling] F {F:,} batch {batch}: {rows[-1]['step_ms']:.0f} ms/step, "
                  f"{rows[-1]['measured_peak_mib']:.0f} MiB (plan {rows[-1]['planned_mib']:.0f})", flush=True)
    return {"d_model": d, "rows": rows}
