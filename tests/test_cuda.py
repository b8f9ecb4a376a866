"""The CUDA path, for a machine that has a GPU (skipped, saying why, where there is none): a bfloat16 harvest, every
SAE kind in both precisions, a fit streamed from a store into the GPU step, and one torchrun fit.

Run them alone with ``python -m pytest -q -m cuda``; benchmarks/gpu.sh times the same paths."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import planted_data

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]

SAE_KINDS = ("topk", "batchtopk", "jumprelu", "relu")


def test_bfloat16_harvest_on_cuda_is_close_to_float32(tiny_models, tmp_path):
    from superpos.model.harvest import HarvestConfig, harvest
    from superpos.store import ActivationStore

    base = dict(model=str(tiny_models["llama"]), layers="0,2", tokens=512, context_length=32, dtype="float32",
                device="cuda")
    a = harvest(HarvestConfig(**base, model_dtype="float32"), tmp_path / "f32.h5", progress=False)
    b = harvest(HarvestConfig(**base, model_dtype="bfloat16"), tmp_path / "bf16.h5", progress=False)
    with ActivationStore(a) as s32, ActivationStore(b) as s16:
        assert s16.attrs["model_dtype"] == "bfloat16" and s32.attrs["model_dtype"] == "float32"
        for layer in (0, 2):
            x, y = s32.to_numpy(layer), s16.to_numpy(layer)
            rel = np.linalg.norm(x - y) / np.linalg.norm(x)
            assert 0 < rel < 0.05, (layer, rel)  # bfloat16 keeps 8 bits of mantissa


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", SAE_KINDS)
def test_every_sae_kind_fits_on_cuda(kind, precision):
    from superpos.dictionaries.kinds import KINDS

    x, atoms = planted_data(20_000, 64, 128, 4, seed=0)
    sae = KINDS[kind](n_components=128, n_tokens=200_000, batch_size=1024, device="cuda", precision=precision,
                      progress=False, **({"k": 4} if kind in ("topk", "batchtopk") else {}))
    sae.fit(x)
    assert sae.components_.shape == (128, 64)
    assert sae.score(x) > 0.7, (kind, precision, sae.score(x))


def test_a_fit_streams_from_the_store_into_the_gpu_step(tiny_models, tmp_path):
    from superpos.cli.main import main
    from superpos.dictionaries import load_dictionary

    store = tmp_path / "s.h5"
    assert main(["harvest", "--model", str(tiny_models["llama"]), "--layers", "2", "--tokens", "4096", "--context",
                 "32", "--device", "cuda", "--out", str(store)]) == 0
    assert main(["fit", "--store", str(store), "--layer", "2", "--kind", "topk", "--expansion", "4", "--k", "4",
                 "--tokens", "40000", "--device", "cuda", "--no-progress", "--out", str(tmp_path / "d")]) == 0
    d = load_dictionary(tmp_path / "d")
    assert d.components_.shape == (128, 32) and d.meta_["layer"] == 2


def test_one_torchrun_process_fits_on_cuda(tiny_models, tmp_path):
    from superpos.cli.main import main

    store = tmp_path / "s.h5"
    assert main(["harvest", "--model", str(tiny_models["gpt2"]), "--layers", "2", "--tokens", "4096", "--context",
                 "32", "--device", "cuda", "--out", str(store)]) == 0
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "-m", "superpos", "fit",
            "--store", str(store), "--layer", "2", "--kind", "topk", "--expansion", "4", "--k", "4", "--tokens",
            "40000", "--device", "cuda", "--no-progress", "--out", str(tmp_path / "ddp")]
    r = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "ddp" / "config.json").is_file()
