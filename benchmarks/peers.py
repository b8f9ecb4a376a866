"""Peer SAE toolkits on the identical synthetic stream, each in its own virtual environment.

Each peer gets a venv under ~/.cache/superpos/bench-venvs/NAME (``--system-site-packages``, so that
the installed torch is reused instead of a multi-GB download), installs from PyPI, and trains a TopK SAE
with the same width, k, batch, learning-rate schedule length and number of tokens as superpos, on the
same rows (a .npy file). FVU is measured the same way for all: ‖x − x̂‖² / ‖x − mean‖² on the same
held-out rows. A peer that does not install or run is reported with the reason.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

VENVS = Path.home() / ".cache" / "superpos" / "bench-venvs"

PEERS = {
    "EleutherAI sparsify": ("eai-sparsify", "sparsify"),
    "saprmarks dictionary_learning": ("dictionary-learning", "dictionary_learning"),
    "SAELens": ("sae-lens", "sae_lens"),
}

COMMON = '''
import json, sys, time
import numpy as np, torch
torch.manual_seed(0)
cfg = json.loads(sys.argv[1])
x = torch.from_numpy(np.load(cfg["train"])); ev = torch.from_numpy(np.load(cfg["eval"]))
B, steps, D, F, k = cfg["batch"], cfg["steps"], x.shape[1], cfg["n_latents"], cfg["k"]
def batches():
    g = torch.Generator().manual_seed(0)
    while True:
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - B + 1, B):
            yield x[perm[i:i + B]]
def report(t_steps, recon):
    with torch.no_grad():
        fvu = float((ev - recon(ev)).pow(2).sum() / (ev - ev.mean(0)).pow(2).sum())
    print(json.dumps({"tokens_per_s": B * (steps - 2) / t_steps, "fvu": fvu}))
'''

SCRIPTS = {
    "sparsify": COMMON + '''
from sparsify import SparseCoder, SparseCoderConfig
sae = SparseCoder(D, SparseCoderConfig(num_latents=F, k=k), device="cpu")
opt = torch.optim.Adam(sae.parameters(), lr=cfg["lr"])
it = batches()
for s in range(steps):
    if s == 2: t0 = time.perf_counter()
    out = sae(next(it))
    loss = out.fvu
    opt.zero_grad(); loss.backward()
    sae.remove_gradient_parallel_to_decoder_directions(); opt.step(); sae.set_decoder_norm_to_unit_norm()
report(time.perf_counter() - t0, lambda v: sae(v).sae_out)
''',
    "dictionary_learning": COMMON + '''
from dictionary_learning.trainers.top_k import TopKTrainer
tr = TopKTrainer(steps=steps, activation_dim=D, dict_size=F, k=k, layer=0, lm_name="bench", lr=cfg["lr"],
                 warmup_steps=1, decay_start=None, device="cpu", seed=0)
it = batches()
for s in range(steps):
    if s == 2: t0 = time.perf_counter()
    tr.update(s, next(it))
report(time.perf_counter() - t0, lambda v: tr.ae(v))
''',
    "sae_lens": COMMON + '''
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput
sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D, d_sae=F, k=k, device="cpu"))
opt = torch.optim.Adam(sae.parameters(), lr=cfg["lr"])
it = batches()
for s in range(steps):
    if s == 2: t0 = time.perf_counter()
    out = sae.training_forward_pass(step_input=TrainStepInput(sae_in=next(it), coefficients={}, dead_neuron_mask=None, n_training_steps=s, is_logging_step=False))
    opt.zero_grad(); out.loss.backward(); opt.step()
report(time.perf_counter() - t0, lambda v: sae(v))
''',
}


def _venv(name: str, package: str) -> tuple[Path | None, str]:
    folder = VENVS / name
    py = folder / "bin" / "python"
    marker = folder / ".installed"
    if marker.exists():
        return py, ""
    r = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(folder)], capture_output=True, text=True)
    if r.returncode:
        return None, f"venv failed: {r.stderr.strip()[-200:]}"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", package], capture_output=True, text=True, timeout=900)
    if r.returncode:
        return None, "pip install failed: " + " ".join(r.stderr.strip().splitlines()[-2:])[-300:]
    marker.write_text(package)
    return py, ""


def run_peers(quick: bool, ours: dict | None) -> dict:
    from superpos.dictionaries import TopKSAE

    d, batch, k, expansion = (64, 512, 8, 4) if quick else (576, 4096, 32, 16)
    steps = 8 if quick else 60
    from run import synthetic_stream

    x = synthetic_stream(batch * 16 + 8192, d, seed=3)
    train, ev = x[:-8192].numpy(), x[-8192:].numpy()
    lr = 2e-3
    res: dict = {}
    # same schedule as the peer scripts: a constant learning rate (superpos's default warm-up of 100 steps and final
    # decay would leave it at a lower rate for most of a 60-step run)
    evt = torch.from_numpy(ev)
    # the same rate as the peers first; then a higher one: at 60 steps FVU is decided by how fast the parametrisation
    # moves under Adam (SAELens's unconstrained Kaiming-scale decoder moves further per step than unit-norm rows)
    for label, run_lr in (("superpos", lr), ("superpos, lr 6e-3", 6e-3)):
        sae = TopKSAE(n_components=expansion * d, k=k, batch_size=batch, n_tokens=batch * steps, lr=run_lr,
                      warmup_steps=1, decay_frac=0.0, device="cpu", progress=False)
        sae.fit(train)
        tok_s = float(np.median([h["tok_s"] for h in sae.history_[1:]] or [sae.history_[-1]["tok_s"]]))
        fvu = float(((evt - torch.as_tensor(sae.reconstruct(ev))).pow(2).sum() / (evt - evt.mean(0)).pow(2).sum()))
        res[label] = {"status": "ok", "tokens_per_s": tok_s, "fvu": fvu,
                      "note": "this run" + ("" if run_lr == lr else ", same settings but the learning rate")}
        print(f"[peers] {label}: {tok_s:,.0f} tok/s, FVU {fvu:.3f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "train.npy", train)
        np.save(Path(tmp) / "eval.npy", ev)
        cfg = json.dumps({"train": str(Path(tmp) / "train.npy"), "eval": str(Path(tmp) / "eval.npy"), "batch": batch,
                          "steps": steps, "n_latents": expansion * d, "k": k, "lr": lr})
        for label, (package, module) in PEERS.items():
            t0 = time.perf_counter()
            try:
                py, why = _venv(module, package)
            except subprocess.TimeoutExpired:
                py, why = None, "pip install timed out (15 min)"
            if py is None:
                res[label] = {"status": "skipped", "note": why}
                print(f"[peers] {label}: skipped ({why})", flush=True)
                continue
            r = subprocess.run([str(py), "-c", SCRIPTS[module], cfg], capture_output=True, text=True, timeout=1800)
            if r.returncode:
                last = " ".join(r.stderr.strip().splitlines()[-1:])[-300:]
                res[label] = {"status": "failed", "note": f"its training script failed: {last}"}
                print(f"[peers] {label}: failed ({last})", flush=True)
                continue
            out = json.loads(r.stdout.strip().splitlines()[-1])
            res[label] = {"status": "ok", **out, "note": f"{package} (installed/ran in {time.perf_counter() - t0:.0f} s)"}
            print(f"[peers] {label}: {out['tokens_per_s']:,.0f} tok/s, FVU {out['fvu']:.3f}", flush=True)
    return res
