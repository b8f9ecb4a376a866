"""The bad-input catalogue (docs/errors.md): every case gives one line on stderr starting with
``superpos: error:``, exit code 2, no traceback, and leaves every existing file unchanged.

``python tests/test_error_catalogue.py`` rewrites docs/errors.md from the messages the cases really print.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from superpos.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    id: str
    what: str
    argv: list[str]  # {name} placeholders are world paths
    needle: str  # must appear in the one error line


W = "{w}"  # the world folder
CASES = [
    # --- corpus --------------------------------------------------------------------------------------
    Case("corpus-missing", "corpus file does not exist",
         ["harvest", "--model", "{model}", "--corpus", f"{W}/missing.txt", "--out", f"{W}/new.h5"], "does not exist"),
    Case("corpus-empty", "corpus file is empty",
         ["harvest", "--model", "{model}", "--corpus", f"{W}/empty.txt", "--out", f"{W}/new.h5"], "is empty"),
    Case("corpus-binary", "corpus file is binary",
         ["harvest", "--model", "{model}", "--corpus", f"{W}/binary.txt", "--out", f"{W}/new.h5"], "binary"),
    Case("corpus-not-utf8", "corpus file is not UTF-8",
         ["harvest", "--model", "{model}", "--corpus", f"{W}/latin1.txt", "--out", f"{W}/new.h5"], "UTF-8"),
    Case("corpus-jsonl-no-text", "JSONL lines without a text field",
         ["harvest", "--model", "{model}", "--corpus", f"{W}/notext.jsonl", "--out", f"{W}/new.h5"], "text"),
    Case("corpus-empty-folder", "corpus folder with no .txt/.jsonl",
         ["harvest", "--model", "{model}", "--corpus", f"{W}/emptydir", "--out", f"{W}/new.h5"], "holds no .txt"),
    Case("corpus-mixture-unknown-part", "a corpus mixture naming a part that does not exist",
         ["harvest", "--model", "{model}", "--corpus", f"pydoc+{W}/missing.txt", "--out", f"{W}/new.h5"],
         "part '"),
    Case("corpus-mixture-unknown-name", "a corpus mixture naming a corpus that is not known",
         ["harvest", "--model", "{model}", "--corpus", "pydoc+nosuchcorpus", "--out", f"{W}/new.h5"],
         "part 'nosuchcorpus'"),
    Case("corpus-too-short", "corpus shorter than one context",
         ["harvest", "--model", "{model}", "--corpus", f"{W}/short.txt", "--out", f"{W}/new.h5"], "fewer than one context"),
    # --- model ---------------------------------------------------------------------------------------
    Case("model-unknown", "model name that is neither a path nor in the HF cache",
         ["harvest", "--model", "no-such-org/no-such-model", "--out", f"{W}/new.h5"], "unknown model"),
    Case("model-gguf-not-a-model", "a .gguf file that is not a GGUF model",
         ["harvest", "--model", f"{W}/fake.gguf", "--out", f"{W}/new.h5"], "fake.gguf"),
    Case("model-folder-no-config", "model folder without config.json",
         ["harvest", "--model", f"{W}/emptydir", "--out", f"{W}/new.h5"], "emptydir"),
    # --- harvest settings ----------------------------------------------------------------------------
    Case("layer-out-of-range", "a layer the model does not have",
         ["harvest", "--model", "{model}", "--layers", "0,9", "--out", f"{W}/new.h5"], "out of range"),
    Case("layers-not-a-list", "--layers that is not a list of integers",
         ["harvest", "--model", "{model}", "--layers", "a,b", "--out", f"{W}/new.h5"], "comma list"),
    Case("context-too-short", "--context below 2",
         ["harvest", "--model", "{model}", "--context", "1", "--out", f"{W}/new.h5"], "--context must be at least 2"),
    Case("tokens-zero", "--tokens 0",
         ["harvest", "--model", "{model}", "--tokens", "0", "--out", f"{W}/new.h5"], "positive"),
    Case("out-other-harvest", "--out is a store from a different harvest",
         ["harvest", "--model", "{model}", "--layers", "0,1", "--tokens", "1024", "--context", "32", "--out",
          f"{W}/store.h5"], "different harvest"),
    Case("token-stats-of-a-store-without", "--token-stats asked of a store harvested without them (no reader in "
         "the CLI takes them; the library's reader refuses in one line: test_harvest_store)",
         ["harvest", "--model", "{model}", "--layers", "0,2", "--tokens", "1024", "--context", "32", "--token-stats",
          "--out", f"{W}/store.h5"], "token_stats: file has False, this run wants True"),
    Case("out-not-hdf5", "--out exists and is not HDF5",
         ["harvest", "--model", "{model}", "--out", f"{W}/notes.txt"], "not an HDF5 file"),
    Case("out-parent-is-file", "--out inside a path that is a file",
         ["harvest", "--model", "{model}", "--out", f"{W}/notes.txt/sub/new.h5"], "notes.txt"),
    Case("device-cuda-missing", "--device cuda on a machine without CUDA",
         ["harvest", "--model", "{model}", "--device", "cuda", "--out", f"{W}/new.h5"], "no CUDA"),
    Case("device-unknown", "--device that is not auto/cpu/cuda",
         ["harvest", "--model", "{model}", "--device", "tpu", "--out", f"{W}/new.h5"], "device"),
    # --- stores --------------------------------------------------------------------------------------
    Case("store-missing", "store file does not exist", ["info", f"{W}/missing.h5"], "does not exist"),
    Case("store-truncated", "store file cut short (copy interrupted)",
         ["fit", "--store", f"{W}/truncated.h5", "--layer", "2", "--out", f"{W}/newdict"], "truncated.h5"),
    Case("store-corrupted", "store file with overwritten bytes",
         ["info", f"{W}/corrupt.h5"], "corrupt.h5"),
    Case("store-schema-unknown", "store with an unknown schema version",
         ["info", f"{W}/schema99.h5"], "schema version 99"),
    Case("store-missing-dataset", "store without its tokens dataset",
         ["info", f"{W}/notokens.h5"], "tokens"),
    Case("store-layer-missing", "fit a layer the store does not hold",
         ["fit", "--store", f"{W}/store.h5", "--layer", "1", "--out", f"{W}/newdict"], "layer 1 is not in store"),
    Case("store-nan", "NaN in the activations (caught before training; mid-training NaN: test_dictionaries)",
         ["fit", "--store", f"{W}/nan.h5", "--layer", "2", "--k", "4", "--expansion", "2", "--no-progress", "--out",
          f"{W}/newdict"], "holds NaN/inf"),
    # --- fit settings --------------------------------------------------------------------------------
    Case("k-zero", "--k 0", ["fit", "--store", f"{W}/store.h5", "--layer", "2", "--k", "0", "--out", f"{W}/newdict"],
         "positive"),
    Case("k-too-large", "--k larger than the number of atoms",
         ["fit", "--store", f"{W}/store.h5", "--layer", "2", "--k", "5000", "--out", f"{W}/newdict"], "k=5000"),
    Case("expansion-zero", "--expansion 0",
         ["fit", "--store", f"{W}/store.h5", "--layer", "2", "--expansion", "0", "--out", f"{W}/newdict"], "expansion"),
    Case("param-not-for-kind", "a flag the chosen kind does not take",
         ["fit", "--store", f"{W}/store.h5", "--layer", "2", "--kind", "pca", "--l1-coeff", "3", "--out",
          f"{W}/newdict"], "does not apply"),
    Case("config-invalid", "--config file that is not JSON/TOML",
         ["fit", "--store", f"{W}/store.h5", "--layer", "2", "--config", f"{W}/notes.txt", "--out", f"{W}/newdict"],
         "not valid"),
    Case("config-missing", "--config file that does not exist",
         ["fit", "--store", f"{W}/store.h5", "--layer", "2", "--config", f"{W}/none.json", "--out", f"{W}/newdict"],
         "does not exist"),
    Case("config-unknown-param", "--config with a parameter no kind has",
         ["fit", "--store", f"{W}/store.h5", "--layer", "2", "--config", f"{W}/unknown.json", "--out", f"{W}/newdict"],
         "does not apply"),
    Case("train-frac-out-of-range", "--train-frac outside (0, 1]",
         ["fit", "--store", f"{W}/store.h5", "--layer", "2", "--train-frac", "1.5", "--out", f"{W}/newdict"],
         "--train-frac"),
    Case("save-at-beyond-run", "--save-at a nested budget not below the run's --tokens",
         ["fit", "--store", f"{W}/store.h5", "--layer", "2", "--tokens", "2048", "--save-at", "4096", "--out",
          f"{W}/newdict"], "save_at"),
    Case("fit-out-holds-dictionary", "--out already holds a finished dictionary",
         ["fit", "--store", f"{W}/store.h5", "--layer", "2", "--out", f"{W}/dict"], "already holds"),
    Case("fit-out-is-file", "--out is an existing file",
         ["fit", "--store", f"{W}/store.h5", "--layer", "2", "--out", f"{W}/notes.txt"], "not a folder"),
    # --- dictionaries --------------------------------------------------------------------------------
    Case("dict-missing", "dictionary folder does not exist",
         ["evaluate", f"{W}/nodict", "--store", f"{W}/store.h5"], "nodict"),
    Case("dict-not-a-dictionary", "folder that is not a dictionary",
         ["evaluate", f"{W}/emptydir", "--store", f"{W}/store.h5"], "not a dictionary folder"),
    Case("dict-missing-weights", "dictionary folder without its weights",
         ["info", f"{W}/dict_noweights"], "weights"),
    Case("dict-mismatched-weights", "weights that do not match config.json",
         ["info", f"{W}/dict_mismatch"], "config says"),
    Case("dict-damaged-weights", "weights changed after saving (checksums.json no longer matches)",
         ["info", f"{W}/dict_damaged"], "is damaged"),
    Case("dict-store-dmodel", "evaluate on a store of another width",
         ["evaluate", f"{W}/dict", "--store", f"{W}/wide.h5", "--layer", "2", "--rows", "all"], "d_model"),
    Case("export-out-exists", "export onto an existing file",
         ["export", f"{W}/dict", "--out", f"{W}/notes.txt"], "notes.txt"),
    # --- feature browser -----------------------------------------------------------------------------
    Case("browse-no-layer", "browse a dictionary that does not record its layer, without --layer",
         ["browse", f"{W}/dict_other", "--store", f"{W}/store.h5", "--out", f"{W}/newsite"], "--layer"),
    Case("browse-out-not-a-site", "browse --out onto a folder that holds other files",
         ["browse", f"{W}/dict", "--store", f"{W}/store.h5", "--out", f"{W}/dict_other"], "not a superpos site"),
    Case("browse-store-dmodel", "browse with a store of another width",
         ["browse", f"{W}/dict", "--store", f"{W}/wide.h5", "--out", f"{W}/newsite"], "d_model"),
    Case("browse-before-negative", "--before below 0",
         ["browse", f"{W}/dict", "--store", f"{W}/store.h5", "--before", "-1", "--out", f"{W}/newsite"], "--before"),
    # --- experiments ---------------------------------------------------------------------------------
    Case("run-all-unknown", "run all --only with an experiment that does not exist",
         ["run", "all", "--only", "probes,telepathy"], "unknown experiment 'telepathy'"),
    Case("probability-out-of-range", "--unlikely outside (0, 1)",
         ["run", "repurposing", "--unlikely", "2"], "probability"),
    Case("unlikely-above-likely", "--unlikely not below --likely (a library check, named by its flag)",
         ["run", "repurposing", "--model", "{model}", "--unlikely", "0.5", "--likely", "0.1", "--out", f"{W}/newrun"],
         "< --likely (0.1)"),
    Case("reinject-layer-0", "re-injection into layer 0",
         ["run", "reinject", "--model", "{model}", "--layers", "0", "--out", f"{W}/newrun"], "positive integers"),
    Case("reinject-few-contexts", "run reinject with too few evaluation contexts to choose on half and judge on half",
         ["run", "reinject", "--model", "{model}", "--contexts", "2", "--out", f"{W}/newrun"],
         "--contexts must be at least 4"),
    Case("reinject-unknown-target", "run reinject toward something that is not a token representation",
         ["run", "reinject", "--targets", "mean,logits"], "comma list of mean, embedding"),
    Case("donation-short-context", "run donation on contexts too short for the sink to be left out",
         ["run", "donation", "--model", "{model}", "--context-length", "4", "--out", f"{W}/newrun"],
         "--context-length must be at least 6"),
    Case("probes-positive-offset", "run probes with a lookahead offset",
         ["run", "probes", "--model", "{model}", "--offsets", "0,2", "--out", f"{W}/newrun"], "offset"),
    Case("orthogonality-one-seed", "run orthogonality with one seed (atoms are matched across seeds)",
         ["run", "orthogonality", "--model", "{model}", "--seeds", "1", "--out", f"{W}/newrun"], "--seeds must be at least 2"),
    Case("orthogonality-one-size", "run orthogonality with a single dictionary size",
         ["run", "orthogonality", "--model", "{model}", "--expansions", "4,4", "--out", f"{W}/newrun"],
         "--expansions needs at least two"),
    Case("lens-folder-invalid", "--lens folder that is not a tuned lens",
         ["run", "repurposing", "--model", "{model}", "--lens", f"{W}/emptydir", "--out", f"{W}/newrun"],
         "not a tuned lens"),
]


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def build_world(folder: Path, model: Path) -> Path:
    """Every file the cases point at."""
    from superpos.dictionaries import TopKSAE, save_dictionary
    from superpos.model.harvest import HarvestConfig, harvest
    from superpos.store import ActivationStore

    folder.mkdir(parents=True, exist_ok=True)
    store = folder / "store.h5"
    harvest(HarvestConfig(model=str(model), layers="0,2", tokens=1024, context_length=32, device="cpu"), store,
            progress=False)
    (folder / "empty.txt").write_text("")
    (folder / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (folder / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me br\xfbl\xe9e, na\xefve fa\xe7ade. ".encode("latin-1") * 20)
    (folder / "notext.jsonl").write_text('{"body": "no text field here"}\n{"body": "nor here"}\n')
    (folder / "short.txt").write_text("Hi.")
    (folder / "emptydir").mkdir(exist_ok=True)
    (folder / "fake.gguf").write_bytes(b"GGUF" + bytes(100))
    (folder / "notes.txt").write_text("just some notes\n")
    (folder / "unknown.json").write_text(json.dumps({"no_such_parameter": 3}))
    data = store.read_bytes()
    (folder / "truncated.h5").write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    corrupt[:2048] = bytes(2048)  # superblock and root group gone
    (folder / "corrupt.h5").write_bytes(bytes(corrupt))
    for name, edit in (("schema99.h5", lambda f: f.attrs.__setitem__("schema_version", 99)),
                       ("notokens.h5", lambda f: f.__delitem__("tokens")),
                       ("nan.h5", lambda f: f["acts/L2"].__setitem__(slice(0, 64), np.nan))):
        shutil.copy(store, folder / name)
        with h5py.File(folder / name, "r+") as f:
            edit(f)
    with ActivationStore(store) as st:
        x = st.to_numpy(2)
    with ActivationStore.create(folder / "wide.h5", layers=[2], d_model=x.shape[1] * 2, n_rows=64,
                                attrs=_wide_attrs(store)) as wide:
        wide.write_rows(0, {2: np.zeros((64, x.shape[1] * 2), np.float32)},
                        **{k: np.zeros(64, np.int32) for k in ("tokens", "doc", "pos")},
                        next_logprob=np.zeros(64, np.float32), next_rank=np.zeros(64, np.int32))
    sae = TopKSAE(expansion=2, k=4, n_tokens=2048, device="cpu", progress=False).fit(x)
    save_dictionary(sae, folder / "dict", meta={"layer": 2})
    shutil.copytree(folder / "dict", folder / "dict_noweights")
    (folder / "dict_noweights" / "weights.safetensors").unlink()
    other = TopKSAE(expansion=1, k=4, n_tokens=1024, device="cpu", progress=False).fit(x)
    save_dictionary(other, folder / "dict_other")
    shutil.copytree(folder / "dict", folder / "dict_mismatch")
    shutil.copy(folder / "dict_other" / "weights.safetensors", folder / "dict_mismatch" / "weights.safetensors")
    shutil.copytree(folder / "dict_mismatch", folder / "dict_damaged")
    (folder / "dict_mismatch" / "checksums.json").unlink()  # assembled by hand: no manifest, so read unchecked
    return folder


def _wide_attrs(store: Path) -> dict:
    with h5py.File(store, "r") as f:
        keep = ("model", "model_revision", "corpus", "corpus_sha256", "context_length", "bos_token_id", "dtype")
        return {k: f.attrs[k] for k in keep if k in f.attrs}


@pytest.fixture(scope="module")
def world(tiny_models, tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"), tiny_models["gpt2"])


def _argv(case: Case, world: Path, model: Path) -> list[str]:
    return [a.replace(W, str(world)).replace("{model}", str(model)) for a in case.argv]


def run_case(case: Case, world: Path, model: Path) -> tuple[int, list[str]]:
    r = subprocess.run([sys.executable, "-m", "superpos", *_argv(case, world, model)], capture_output=True, text=True,
                       cwd=world)
    lines = [line for line in r.stderr.strip().splitlines() if line and not line.startswith("superpos: no CUDA")]
    return r.returncode, lines


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, world, tiny_models, capsys):
    before = _snapshot(world)
    try:
        code = main(_argv(case, world, tiny_models["gpt2"]))
    except SystemExit as e:  # argparse errors exit from parse_args
        code = e.code
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if line and not line.startswith("superpos: no CUDA") and "%|" not in line and not line.startswith("[")]
    assert code == 2, (case.id, err)
    assert len(err) == 1 and err[0].startswith("superpos: error:"), (case.id, err)
    assert case.needle in err[0], (case.id, err[0])
    assert _snapshot(world) == before, f"{case.id} changed files"
    for new in ("new.h5", "newdict", "newrun"):
        assert not (world / new / "config.json").exists() and not (world / new).is_file()


def test_no_traceback_from_the_real_entry_point(world, tiny_models):
    """Through `python -m superpos` (a subprocess), a bad input prints exactly one line and exits 2."""
    for case in (CASES[0], CASES[21]):
        code, lines = run_case(case, world, tiny_models["gpt2"])
        assert code == 2 and len(lines) == 1 and "Traceback" not in lines[0], lines


def test_docs_list_every_case():
    text = (ROOT / "docs" / "errors.md").read_text()
    for case in CASES:
        assert f"`{case.id}`" in text, f"docs/errors.md does not list {case.id}"


def write_docs(world: Path, model: Path) -> None:
    rows = []
    for case in CASES:
        code, lines = run_case(case, world, model)
        msg = lines[0] if lines else "(no output)"
        msg = msg.replace(str(world), "…").replace(str(model), "MODEL").replace("|", "\\|")
        cmd = " ".join(case.argv).replace(W, "…").replace("{model}", "MODEL")
        rows.append(f"| `{case.id}` | {case.what} | `{cmd}` | {code} | {msg} |")
    head = (ROOT / "docs" / "errors.md").read_text().split("<!-- catalogue -->")[0]
    table = ["<!-- catalogue -->", "", "| case | what | command | exit | message |", "|---|---|---|---|---|", *rows, ""]
    (ROOT / "docs" / "errors.md").write_text(head + "\n".join(table))


if __name__ == "__main__":  # regenerate docs/errors.md
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    import conftest

    with tempfile.TemporaryDirectory() as tmp:
        model = conftest.make_tiny_model("gpt2", Path(tmp) / "model")
        write_docs(build_world(Path(tmp) / "world", model), model)
