"""CLI round trips and entry points (the bad-input catalogue is tests/test_error_catalogue.py)."""
import json
import subprocess
import sys

import pytest

from superpos.cli.main import main
from superpos.model.harvest import HarvestConfig, harvest


def _run(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, [line for line in err if not line.startswith("superpos: no CUDA")]


@pytest.fixture(scope="module")
def store(tiny_models, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "s.h5"
    harvest(HarvestConfig(model=str(tiny_models["gpt2"]), layers="0,2", tokens=1024, context_length=32, device="cpu"),
            path, progress=False)
    return path


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["harvest", "--tokens", "-5", "--out", "x.h5"])
    assert e.value.code == 2


def test_fit_evaluate_cli_roundtrip(store, tmp_path, capsys):
    out = tmp_path / "sae"
    assert main(["fit", "--store", str(store), "--layer", "2", "--kind", "topk", "--expansion", "2", "--k", "4",
                 "--tokens", "20000", "--batch-size", "256", "--no-progress", "--out", str(out)]) == 0
    assert (out / "config.json").exists() and not (out / "checkpoint.pt").exists()
    code, err = _run(["fit", "--store", str(store), "--layer", "2", "--out", str(out)], capsys)
    assert code == 2 and "already holds" in err[0]
    assert main(["fit", "--store", str(store), "--layer", "2", "--kind", "pca", "--k", "4", "--out",
                 str(tmp_path / "pca")]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), str(tmp_path / "pca"), "--store", str(store), "--json",
                 str(tmp_path / "e.json")]) == 0
    table = capsys.readouterr().out
    assert "topk" in table and "pca" in table and "CE rec." in table

    res = json.loads((tmp_path / "e.json").read_text())["results"]
    assert res[0]["l0"] == pytest.approx(4.0) and res[1]["n_components"] == 4
    assert res[0]["ce_loss_recovered"] is not None
    # export to SAELens and evaluate that folder: the same numbers come back
    assert main(["export", str(out), "--out", str(tmp_path / "sl")]) == 0
    assert main(["evaluate", str(tmp_path / "sl"), "--store", str(store), "--layer", "2", "--rows", "all",
                 "--ce-contexts", "0", "--json", str(tmp_path / "sl.json")]) == 0
    assert main(["evaluate", str(out), "--store", str(store), "--rows", "all", "--ce-contexts", "0",
                 "--json", str(tmp_path / "orig.json")]) == 0
    sl = json.loads((tmp_path / "sl.json").read_text())["results"][0]
    orig = json.loads((tmp_path / "orig.json").read_text())["results"][0]
    assert sl["fvu"] == pytest.approx(orig["fvu"], rel=1e-4) and sl["l0"] == pytest.approx(orig["l0"])
    capsys.readouterr()
    code, err = _run(["export", str(tmp_path / "pca"), "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "only SAEs" in err[0]


def test_module_entry_point_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "superpos", "info", str(tmp_path / "none.h5")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.strip().endswith("does not exist")
    r = subprocess.run([sys.executable, "-m", "superpos", "--debug", "info", str(tmp_path / "none.h5")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_fit_reads_toml_config_and_flags_override(store, tmp_path):
    cfg = tmp_path / "sae.toml"
    cfg.write_text('expansion = 2.0\nk = 3\nn_tokens = 5000\nbatch_size = 128\nseed = 4\n')
    out = tmp_path / "t"
    assert main(["fit", "--store", str(store), "--layer", "2", "--config", str(cfg), "--k", "5", "--no-progress",
                 "--out", str(out)]) == 0
    params = json.loads((out / "config.json").read_text())["params"]
    assert params["k"] == 5 and params["expansion"] == 2.0 and params["seed"] == 4 and params["batch_size"] == 128


def test_a_config_error_names_the_field_in_the_library_and_the_flag_on_the_command_line(tiny_models, tmp_path, capsys):
    from superpos.cli.main import main
    from superpos.errors import ConfigError
    from superpos.hypotheses.repurposing import EXPERIMENT
    from superpos.hypotheses.repurposing.config import RepurposingConfig
    run = EXPERIMENT.run

    with pytest.raises(ConfigError, match=r"need 0 < unlikely \(0.5\) < likely \(0.1\) < 1") as err:
        run(RepurposingConfig(model=str(tiny_models["llama"]), unlikely=0.5, likely=0.1, out=str(tmp_path / "r")))
    assert err.value.field == "likely"
    assert main(["run", "repurposing", "--model", str(tiny_models["llama"]), "--unlikely", "0.5", "--likely", "0.1",
                 "--out", str(tmp_path / "r")]) == 2
    assert "need 0 < unlikely (0.5) < --likely (0.1) < 1" in capsys.readouterr().err
    assert main(["harvest", "--model", str(tiny_models["llama"]), "--context", "1", "--out", str(tmp_path / "s.h5")]) == 2
    assert "superpos: error: --context must be at least 2, got 1" in capsys.readouterr().err


def test_fit_save_at_writes_each_nested_budget_and_refuses_one_past_the_run(tmp_path, capsys):
    """--save-at B1,B2 writes OUT/tokens_B/ for each (a loadable dictionary); a budget not below --tokens (or with
    no --tokens) is one line, exit 2, nothing written."""
    import numpy as np

    from superpos.dictionaries.io import load_dictionary
    from superpos.store import ActivationStore

    C, n = 32, 2048
    x = np.random.default_rng(0).standard_normal((n, 16)).astype(np.float32)
    st = ActivationStore.create(tmp_path / "s.h5", layers=[2], d_model=16, n_rows=n, dtype="float32",
                                attrs={"model": "t", "context_length": C})
    st.write_rows(0, {2: x}, tokens=np.zeros(n, np.int32), doc=np.arange(n, dtype=np.int32) // C,
                  pos=np.tile(np.arange(C, dtype=np.int32), n // C), next_logprob=np.zeros(n, np.float32),
                  next_rank=np.zeros(n, np.int32))
    st.close()
    base = ["fit", "--store", str(tmp_path / "s.h5"), "--layer", "2", "--expansion", "2", "--k", "4",
            "--batch-size", "64", "--no-progress"]
    assert main([*base, "--tokens", "3200", "--save-at", "640,1280", "--out", str(tmp_path / "d")]) == 0
    for tokens in (640, 1280):
        assert load_dictionary(tmp_path / "d" / f"tokens_{tokens}").components_.shape == (32, 16)
    for extra in (["--tokens", "3200", "--save-at", "3200"], ["--save-at", "640"]):
        code, err = _run([*base, *extra, "--out", str(tmp_path / "bad")], capsys)
        assert code == 2 and len(err) == 1 and "save_at" in err[0] and "Traceback" not in err[0]
        assert not (tmp_path / "bad").exists()
