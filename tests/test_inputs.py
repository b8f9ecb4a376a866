"""Property-based tests (hypothesis) of what users type and hand over: numbers and lists on the command line, layer
lists, corpus specs, device strings, and dictionary / SAELens / tuned-lens folders and checkpoints with keys missing,
extra or of the wrong type. Each input is either taken with its right meaning or refused in one line
(``SuperposError`` / ``ValueError`` in the library; exit 2 and one ``superpos: error:`` line on the command line),
never a traceback.

Every test has a ``@settings`` budget (examples, no deadline): together they add about 55 s to the default run
(measured on a loaded 2-core machine, ``pytest --durations=0 tests/test_inputs.py``).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import re
import shutil
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from superpos.errors import ConfigError, SuperposError
from superpos.settings import PARSERS

#: health checks that do not apply: examples write small folders (too_slow), fixtures are module-scoped
CHECKS = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]

# ------------------------------------------------------------------ strategies
#: text a user might type for a number: digits, signs, points, exponents, underscores, words, blanks
number_text = st.one_of(
    st.from_regex(r"\A[ ]?[-+]?[0-9_]{0,22}(\.[0-9]{0,6})?([eE][-+]?[0-9]{1,4})?[ ]?\Z"),
    st.sampled_from(["nan", "inf", "-inf", "Infinity", "1e999", "-0", "0x10", "1_000", "١٢", "1e-3", "2.5e3",
                     "1.5", "", " ", "e", "1e", "--1", "4294967296", "9223372036854775808", "1" * 40]),
    st.text(max_size=10),
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                                                 max_size=3),
                           max_leaves=5)


def exact_decimal(text: str):
    """What a typed number means exactly (None: not a number)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        d = Decimal(text.strip())
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


def cli(argv: list[str]) -> tuple[int, str, str]:
    """``superpos ARGV`` in this process: (exit code, stdout, stderr)."""
    from superpos.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse's errors leave through Parser.error
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def assert_one_line_or_ok(rc: int, err: str, argv) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("superpos: no CUDA")]
    assert "Traceback" not in err, (argv, err)
    if rc != 0:
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("superpos: error:"), (argv, rc, err)


# ------------------------------------------------------------------ numbers, lists, flags
@settings(max_examples=300, deadline=None, suppress_health_check=CHECKS)
@given(text=number_text)
def test_int_parser_is_exact_or_refuses(text):
    from superpos.settings import MAX_INT, parse_int

    meaning = exact_decimal(text)
    whole = meaning is not None and (isinstance(meaning, int) or (
        meaning.adjusted() <= 18 and meaning == meaning.to_integral_value()))  # (never builds 1e9999's digits)
    try:
        value = parse_int(text)
    except ValueError:
        assert not whole or abs(int(meaning)) > MAX_INT, text
        return
    assert whole and isinstance(value, int) and value == meaning, (text, value, meaning)


@settings(max_examples=200, deadline=None, suppress_health_check=CHECKS)
@given(n=st.integers(-10**19, 10**19), form=st.sampled_from(["plain", "under", "spaced", "exp", "EXP", "point"]))
def test_whole_numbers_in_any_spelling_mean_themselves(n, form):
    from superpos.settings import MAX_INT, parse_int

    if form == "exp":  # m × 10^e, as "me" + "e"
        stripped = str(abs(n)).rstrip("0") or "0"
        e = len(str(abs(n))) - len(stripped) if n else 0
        text = f"{'-' if n < 0 else ''}{stripped}e{e}"
    else:
        text = {"plain": str(n), "under": f"{n:_}", "spaced": f" {n} ", "EXP": f"{n}E+0", "point": f"{n}.000"}[form]
    if abs(n) > MAX_INT:
        with pytest.raises(ValueError):
            parse_int(text)
    else:
        assert parse_int(text) == n, text


@settings(max_examples=200, deadline=None, suppress_health_check=CHECKS)
@given(text=number_text | st.floats().map(repr))
def test_float_parser_is_finite_or_refuses(text):
    from superpos.settings import parse_float

    try:
        value = parse_float(text)
    except ValueError:
        try:
            assert not math.isfinite(float(text)), text
        except ValueError:
            pass
        return
    assert math.isfinite(value) and value == float(text)


@settings(max_examples=300, deadline=None, suppress_health_check=CHECKS)
@given(name=st.sampled_from(sorted(PARSERS)),
       text=number_text | st.text(alphabet=",0123456789 -/.e", max_size=14) | st.text(max_size=12))
def test_every_settings_parser_takes_or_refuses_any_text(name, text):
    try:
        value = PARSERS[name](text)
    except ValueError:
        return
    values = value if isinstance(value, (list, tuple)) else [value]
    assert all(not isinstance(v, float) or math.isfinite(v) for v in values), (name, text, value)


@settings(max_examples=150, deadline=None, suppress_health_check=CHECKS)
@given(values=st.lists(st.integers(0, 10**6), min_size=1, max_size=6),
       sep=st.sampled_from([",", ", ", " ,", ",,"]), name=st.sampled_from(["layer_list", "int_list", "offset_list"]))
def test_number_lists_mean_their_numbers(values, sep, name):
    text = sep.join(map(str, values))
    ok = {"layer_list": lambda v: v >= 0, "int_list": lambda v: v > 0, "offset_list": lambda v: abs(v) <= 16}[name]
    if all(map(ok, values)):
        assert PARSERS[name](text) == values
    else:
        with pytest.raises(ValueError):
            PARSERS[name](text)


@settings(max_examples=200, deadline=None, suppress_health_check=CHECKS)
@given(text=number_text, kind=st.sampled_from([int, float]), zero=st.booleans())
def test_positive_flag_type_is_exact_or_refuses(text, kind, zero):
    from superpos.cli.common import positive

    meaning = exact_decimal(text)
    try:
        value = positive(kind, zero=zero)(text)
    except argparse.ArgumentTypeError as e:
        assert "\n" not in str(e)
        return
    assert meaning is not None and value >= 0 and Decimal(repr(value) if kind is float else value) == Decimal(
        repr(float(meaning)) if kind is float else meaning), (text, value)


@settings(max_examples=120, deadline=None, suppress_health_check=CHECKS)
@given(d=number_text, expansion=number_text, k=number_text, batch=number_text)
def test_plan_flags_on_the_command_line(d, expansion, k, batch):
    argv = ["plan", "--d-model", d, "--expansion", expansion, "--k", k, "--batch-size", batch]
    rc, out, err = cli(argv)
    assert_one_line_or_ok(rc, err, argv)
    if rc == 0:  # every value was taken as the number it spells
        assert out.strip() and int(exact_decimal(d)) > 0


@settings(max_examples=80, deadline=None, suppress_health_check=CHECKS)
@given(tokens=number_text, expansion=number_text, layer=number_text, device=st.sampled_from(
    ["cpu", "auto", "cuda", "cuda:7", "CPU ", "tpu", "cuda:x", "cuda{0}", ""]) | st.text(max_size=8))
def test_fit_flags_on_the_command_line(tmp_path_factory, tokens, expansion, layer, device):
    """fit on a store that does not exist: whatever the flags, one line (a flag refused, or the missing store)."""
    out = tmp_path_factory.getbasetemp() / "fit-out"
    argv = ["fit", "--store", "/nonexistent/store.h5", "--layer", layer, "--tokens", tokens, "--expansion", expansion,
            "--device", device, "--no-progress", "--out", str(out)]
    rc, _, err = cli(argv)
    assert rc == 2, (argv, err)
    assert_one_line_or_ok(rc, err, argv)


@settings(max_examples=60, deadline=None, suppress_health_check=CHECKS)
@given(tokens=number_text, context=number_text, batch=number_text,
       shard=st.text(alphabet="0123456789/-x ", max_size=6) | st.sampled_from(["0/4", "3/4", "4/4", "0/0", "1/2/3"]),
       dtype=st.sampled_from(["auto", "float16", "float32", "f16", ""]), compression=st.sampled_from(["lzf", "gzip",
                                                                                                   "none", "zstd"]))
def test_harvest_flags_on_the_command_line(tmp_path_factory, tokens, context, batch, shard, dtype, compression):
    """harvest with a model that does not exist: whatever the flags, one line (a flag refused, or the model)."""
    root = tmp_path_factory.getbasetemp() / "harvest"
    root.mkdir(exist_ok=True)
    (root / "corpus.txt").write_text("a small corpus")
    argv = ["harvest", "--model", str(root / "no-model"), "--corpus", str(root / "corpus.txt"), "--tokens", tokens,
            "--context", context, "--batch-size", batch, "--shard", shard, "--dtype", dtype, "--compression",
            compression, "--device", "cpu", "--out", str(root / "out.h5")]
    rc, _, err = cli(argv)
    assert rc == 2, (argv, err)
    assert_one_line_or_ok(rc, err, argv)


@settings(max_examples=120, deadline=None, suppress_health_check=CHECKS)
@given(text=st.text(max_size=10) | st.sampled_from(["cpu", " Cpu", "auto", "", "cuda", "CUDA:0", "cuda:12", "cuda:",
                                                    "cuda:-1", "cuda:0:1", "cuda{x}", "cpu:0", "mps", "cuda0"]))
def test_device_strings(text):
    from superpos.device import resolve_device

    spec = (text or "auto").strip().lower()
    cuda = re.fullmatch(r"cuda(:[0-9]{1,4})?", spec)
    try:
        dev = resolve_device(text)
    except SuperposError as e:
        assert "\n" not in str(e)
        assert spec not in ("cpu", "auto") and (not cuda or not torch.cuda.is_available()
                                                or isinstance(e, ConfigError)), (text, e)
        return
    assert isinstance(dev, torch.device)
    assert spec in ("cpu", "auto") or cuda, text
    if spec == "cpu":
        assert dev.type == "cpu"


@settings(max_examples=200, deadline=None, suppress_health_check=CHECKS)
@given(layers=st.lists(st.integers(-3, 40), max_size=6), n_layers=st.integers(1, 30),
       sep=st.sampled_from([",", ", ", " , "]), junk=st.sampled_from(["", ",", " "]))
def test_layer_lists_mean_their_layers(layers, n_layers, sep, junk):
    from superpos.model.harvest import parse_layers

    text = junk + sep.join(map(str, layers)) + junk
    try:
        got = parse_layers(text, n_layers)
    except SuperposError as e:
        assert not layers or any(not 0 <= x <= n_layers for x in layers), (text, e)
        return
    assert got == sorted(set(layers))


@settings(max_examples=150, deadline=None, suppress_health_check=CHECKS)
@given(text=st.text(max_size=14) | st.sampled_from(["default", "all", "{x}", "1,{2}", "0,,3", "٣"]),
       n_layers=st.integers(1, 30))
def test_any_layers_text_is_taken_or_refused(text, n_layers):
    from superpos.model.harvest import parse_layers

    try:
        got = parse_layers(text, n_layers)
    except SuperposError as e:
        assert "\n" not in str(e)
        return
    assert got == sorted(set(got)) and all(0 <= x <= n_layers for x in got) and got


# ------------------------------------------------------------------ corpus specs
docs = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30)


@settings(max_examples=80, deadline=None, suppress_health_check=CHECKS)
@given(files=st.lists(st.tuples(st.sampled_from([".txt", ".jsonl", ".md"]), st.lists(docs, min_size=1, max_size=4),
                                st.booleans(), st.sampled_from(["\n", "\r\n"])), min_size=1, max_size=4),
       nested=st.booleans())
def test_corpus_folders_mean_their_documents(files, nested):
    """A folder of .txt (one document each) and .jsonl (one per line) files, read in path order; other files are
    not read; blank documents are left out; nothing readable: one line."""
    from superpos.model.corpus import load_corpus

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        expected = []
        for i, (suffix, texts, ascii_only, eol) in enumerate(files):
            path = root / ("sub" if nested and i % 2 else "") / f"f{i:02d}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            if suffix == ".txt":
                text = "\n".join(texts)
                path.write_bytes(text.encode())
                got = [] if "\x00" in text else [text]
            elif suffix == ".jsonl":
                path.write_bytes(eol.join(json.dumps({"text": t}, ensure_ascii=ascii_only) for t in texts).encode())
                got = texts
            else:
                path.write_text("not read")
                got = []
            expected.append((str(path), got, "\x00" in "\n".join(texts) and suffix == ".txt"))
        expected.sort()
        binary = any(b for _, _, b in expected)
        texts = [t for _, got, _ in expected for t in got if t.strip()]
        try:
            corpus = load_corpus(str(root))
        except SuperposError as e:
            assert binary or not texts, e
            return
        assert not binary and corpus.texts == texts


@settings(max_examples=100, deadline=None, suppress_health_check=CHECKS)
@given(raw=st.binary(max_size=60) | st.text(max_size=30).map(str.encode), suffix=st.sampled_from([".txt", ".jsonl"]))
def test_any_corpus_file_is_read_or_refused(raw, suffix):
    from superpos.model.corpus import load_corpus

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"c{suffix}"
        path.write_bytes(raw)
        try:
            corpus = load_corpus(str(path))
        except SuperposError as e:
            assert "\n" not in str(e)
            return
        assert corpus.texts and all(isinstance(t, str) and t.strip() for t in corpus.texts)
        if suffix == ".txt":
            assert corpus.texts == [raw.decode()]


# ------------------------------------------------------------------ dictionary, SAELens and tuned-lens folders
D, N_ROWS = 8, 32


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A fitted TopK dictionary, its SAELens export and a tuned lens, each saved once; their outputs on fixed rows."""
    from superpos.dictionaries import TopKSAE, save_dictionary
    from superpos.dictionaries.external import export_saelens, load_saelens
    from superpos.hypotheses.lenses.lens import TunedLens

    root = tmp_path_factory.mktemp("inputs")
    x = np.random.default_rng(0).standard_normal((512, D)).astype(np.float32)
    sae = TopKSAE(expansion=2, k=3, n_tokens=1024, batch_size=128, device="cpu", progress=False).fit(x)
    save_dictionary(sae, root / "dict", meta={"layer": 3, "train_rows": [0, 900]}, metrics={"fvu": 0.5})
    export_saelens(sae, root / "saelens", hook_name="blocks.3.hook_resid_post")
    torch.manual_seed(0)
    lens = TunedLens(D, 2)
    with torch.no_grad():
        lens.weight_LDD.normal_(0, 0.1)
        lens.bias_LD.normal_(0, 0.1)
    lens.meta = {"steps": 3}
    lens.save(root / "lens")
    rows = x[:N_ROWS]
    return {"root": root, "rows": rows, "dict": sae.reconstruct(rows),
            "saelens": load_saelens(root / "saelens", device="cpu").reconstruct(rows),
            "lens": lens.translate(torch.from_numpy(rows), 0).detach().numpy()}


def _copy(folders, name: str, tmp: str) -> Path:
    dst = Path(tmp) / name
    shutil.copytree(folders["root"] / name, dst)
    (dst / "checksums.json").unlink(missing_ok=True)  # a folder edited by hand: the parser, not the checksum, decides
    return dst


def _mutate(data, obj: dict, keys: list[str], protect=()) -> tuple[str, str, object]:
    """Delete, add or replace one key of ``obj`` (or of one of its object values); returns (op, key path, value)."""
    target, path = obj, ""
    inner = [k for k in keys if isinstance(obj.get(k), dict)]
    if inner and data.draw(st.booleans(), label="inside"):
        k = data.draw(st.sampled_from(inner), label="object")
        target, path = obj[k], k + "."
    op = data.draw(st.sampled_from(["delete", "add", "replace"]), label="op")
    if op == "add" or not target:
        key = data.draw(st.text(min_size=1, max_size=6).filter(lambda s: s not in target), label="new key")
        value = data.draw(json_values, label="value")
        target[key] = value
        return "add", path + key, value
    key = data.draw(st.sampled_from(sorted(target)), label="key")
    if op == "delete":
        del target[key]
        return "delete", path + key, None
    value = data.draw(json_values | st.sampled_from([0, -1, 10**9, 2.5, "4", True, None, [], {}]), label="value")
    old = target[key]
    target[key] = value
    return "replace", path + key, (old, value)


def _same(old, new) -> bool:
    """Two JSON values that mean the same (8 and 8.0 do; True and 1 do not)."""
    if isinstance(old, bool) or isinstance(new, bool):
        return type(old) is type(new) and old == new
    return old == new and type(old) is type(new) or (isinstance(old, (int, float)) and isinstance(new, (int, float))
                                                      and old == new and float(new).is_integer())


@settings(max_examples=150, deadline=None, suppress_health_check=CHECKS)
@given(data=st.data())
def test_dictionary_config_with_keys_missing_extra_or_retyped(folders, data):
    from superpos.dictionaries.io import load_dictionary

    with tempfile.TemporaryDirectory() as tmp:
        folder = _copy(folders, "dict", tmp)
        config = json.loads((folder / "config.json").read_text())
        op, key, value = _mutate(data, config, ["params", "meta"])
        (folder / "config.json").write_text(json.dumps(config))
        try:
            est = load_dictionary(folder, device="cpu")
        except SuperposError as e:
            assert "\n" not in str(e)
            assert not (op == "add" and "." not in key), (op, key, value, e)  # an extra top-level key is ignored
            assert not (op == "delete" and key in ("meta", "class", "superpos_version", "n_iter_")), (key, e)
            if op == "replace" and _same(*value):
                raise AssertionError(f"{key}: {value[1]!r} means what {value[0]!r} meant, yet refused: {e}")
            return
        # taken: it must mean something usable, and the same where the change meant nothing
        assert est.summary()
        out = est.reconstruct(folders["rows"])
        assert out.shape == (N_ROWS, D) and np.isfinite(out).all()
        if op == "delete":
            assert key not in ("kind", "params", "d_model", "n_components"), key
        if op == "add":
            assert not key.startswith("params."), key  # an unknown parameter is refused
        if op == "replace" and key in ("kind", "d_model", "n_components"):
            assert _same(*value), (key, value)
        neutral = (op == "add" and "." not in key) or key.startswith("meta.") or key in (
            "meta", "superpos_version", "class", "n_iter_", "n_tokens_seen_", "warmup_steps_") or (
            op == "replace" and _same(*value)) or key in ("params.progress", "params.device", "params.seed",
                                                          "params.lr", "params.batch_size", "params.n_tokens")
        if neutral:
            np.testing.assert_allclose(out, folders["dict"], atol=1e-6)


@settings(max_examples=100, deadline=None, suppress_health_check=CHECKS)
@given(data=st.data(), folder_name=st.sampled_from(["dict", "saelens", "lens"]))
def test_weights_with_tensors_missing_extra_retyped_or_reshaped(folders, data, folder_name):
    from safetensors.torch import load_file, save_file

    from superpos.dictionaries.io import load_dictionary
    from superpos.hypotheses.lenses.lens import TunedLens

    file = {"dict": "weights.safetensors", "saelens": "sae_weights.safetensors", "lens": "lens.safetensors"}[folder_name]
    with tempfile.TemporaryDirectory() as tmp:
        folder = _copy(folders, folder_name, tmp)
        state = load_file(str(folder / file))
        op = data.draw(st.sampled_from(["drop", "add", "dtype", "reshape"]), label="op")
        name = data.draw(st.sampled_from(sorted(state)), label="tensor")
        dtype = None
        if op == "drop":
            del state[name]
        elif op == "add":
            state[data.draw(st.text(min_size=1, max_size=6).filter(lambda s: s not in state), label="new")] = \
                torch.zeros(data.draw(st.integers(1, 4)))
        elif op == "dtype":
            dtype = data.draw(st.sampled_from([torch.int32, torch.int64, torch.bool, torch.float16, torch.bfloat16,
                                               torch.float64, torch.uint8]), label="dtype")
            state[name] = state[name].to(dtype)
        else:
            state[name] = torch.cat([state[name].reshape(-1), torch.zeros(1)]).reshape(-1)
        save_file(state, str(folder / file))
        try:
            if folder_name == "lens":
                out = TunedLens.load(folder).translate(torch.from_numpy(folders["rows"]), 0).detach().numpy()
            else:
                out = load_dictionary(folder, device="cpu").reconstruct(folders["rows"])
        except SuperposError as e:
            assert "\n" not in str(e)
            rounded_norms = folder_name == "saelens" and name == "W_dec" and "non-unit decoder norms" in str(e)
            assert op != "dtype" or not dtype.is_floating_point or rounded_norms, (op, name, dtype, e)
            return
        assert op == "dtype" and dtype.is_floating_point, (op, name, dtype)  # only a float dtype means the same
        assert out.shape == folders[folder_name].shape and np.isfinite(out).all()
        if dtype == torch.float64:  # (float16 rounding may swap a TopK's last latent: only usable, not equal)
            np.testing.assert_allclose(out, folders[folder_name], atol=1e-6)


@settings(max_examples=120, deadline=None, suppress_health_check=CHECKS)
@given(data=st.data())
def test_saelens_cfg_values_of_the_wrong_type(folders, data):
    from superpos.dictionaries.io import load_dictionary

    with tempfile.TemporaryDirectory() as tmp:
        folder = _copy(folders, "saelens", tmp)
        cfg = json.loads((folder / "cfg.json").read_text())
        op, key, value = _mutate(data, cfg, ["metadata"])
        (folder / "cfg.json").write_text(json.dumps(cfg))
        try:
            sae = load_dictionary(folder, device="cpu")
        except SuperposError as e:
            assert "\n" not in str(e)
            assert not (op == "add" and "." not in key) and not key.startswith("metadata"), (op, key, value, e)
            return
        out = sae.reconstruct(folders["rows"])
        assert out.shape == (N_ROWS, D) and np.isfinite(out).all()
        if op == "replace":  # a value of the right type may mean another SAE; of the wrong type it is refused
            new = value[1]
            if key == "architecture":
                assert new in ("topk", "standard", "jumprelu"), new
            if key == "k":
                assert isinstance(new, (int, float)) and not isinstance(new, bool) and 1 <= new <= 2 * D, new
            if key == "apply_b_dec_to_input":
                assert isinstance(new, bool), new
        if key not in ("architecture", "k", "apply_b_dec_to_input"):
            np.testing.assert_allclose(out, folders["saelens"], atol=1e-6)


@settings(max_examples=100, deadline=None, suppress_health_check=CHECKS)
@given(data=st.data())
def test_lens_config_with_keys_missing_extra_or_retyped(folders, data):
    from superpos.hypotheses.lenses.lens import TunedLens

    with tempfile.TemporaryDirectory() as tmp:
        folder = _copy(folders, "lens", tmp)
        cfg = json.loads((folder / "lens.json").read_text())
        op, key, value = _mutate(data, cfg, ["meta"])
        (folder / "lens.json").write_text(json.dumps(cfg))
        try:
            lens = TunedLens.load(folder)
        except SuperposError as e:
            assert "\n" not in str(e)
            assert not (op == "add" and "." not in key) and not key.startswith("meta."), (op, key, value, e)
            assert not (op == "delete" and key in ("meta", "kind")), (op, key, e)
            return
        assert lens.summary()
        if op == "replace" and key in ("d_model", "n_layers"):
            assert _same(*value), (key, value)
        out = lens.translate(torch.from_numpy(folders["rows"]), 0).detach().numpy()
        np.testing.assert_allclose(out, folders["lens"], atol=1e-6)


@settings(max_examples=60, deadline=None, suppress_health_check=CHECKS)
@given(what=st.sampled_from(["config.json", "weights.safetensors", "cfg.json", "lens.json", "checksums.json"]),
       how=st.sampled_from(["folder", "list", "string", "empty", "binary", "link"]),
       folder_name=st.sampled_from(["dict", "saelens", "lens"]))
def test_a_folder_or_other_json_where_a_file_belongs(folders, what, how, folder_name):
    from superpos.dictionaries.io import load_dictionary
    from superpos.hypotheses.lenses.lens import TunedLens

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / folder_name
        shutil.copytree(folders["root"] / folder_name, folder)
        target = folder / what
        if target.is_file():
            target.unlink()
        if how == "folder":
            target.mkdir()
        elif how == "link":
            target.symlink_to(folder / "nowhere")
        else:
            target.write_bytes({"list": b"[1, 2]", "string": b'"text"', "empty": b"", "binary": b"\x00\xff"}[how])
        try:
            if folder_name == "lens":
                TunedLens.load(folder)
            else:
                load_dictionary(folder, device="cpu")
        except SuperposError as e:
            assert "\n" not in str(e)


# ------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A store and a finished fit's checkpoint on it (what `fit` resumes)."""
    from superpos.dictionaries import TopKSAE
    from superpos.store import ActivationStore

    root = tmp_path_factory.mktemp("ckpt")
    st_ = ActivationStore.create(root / "s.h5", layers=[1], d_model=D, n_rows=256,
                                 attrs={"model": "m", "context_length": 16})
    rng = np.random.default_rng(0)
    st_.write_rows(0, {1: rng.standard_normal((256, D)).astype(np.float32)},
                   tokens=np.zeros(256, np.int32), doc=np.zeros(256, np.int32),
                   pos=np.tile(np.arange(16, dtype=np.int32), 16), next_logprob=np.zeros(256, np.float32),
                   next_rank=np.zeros(256, np.int32))
    st_.close()
    TopKSAE(**CKPT_PARAMS).fit(ActivationStore(root / "s.h5"), layer=1, checkpoint_dir=root / "ck")
    return root


CKPT_PARAMS = dict(expansion=2, k=2, n_tokens=256, batch_size=64, device="cpu", progress=False)


@settings(max_examples=25, deadline=None, suppress_health_check=CHECKS)
@given(data=st.data())
def test_checkpoint_with_keys_missing_extra_or_retyped(checkpoint, data):
    """A checkpoint whose checksum is right but whose contents are not what this superpos writes (another version,
    or a plain torch.save file): resumed exactly, or one line."""
    from superpos.dictionaries import TopKSAE
    from superpos.dictionaries.train_run import CHECKPOINT
    from superpos.integrity import load_checkpoint, save_checkpoint
    from superpos.store import ActivationStore

    ckpt = load_checkpoint(checkpoint / "ck" / CHECKPOINT)
    op = data.draw(st.sampled_from(["delete", "replace", "replace-state", "not-a-dict"]), label="op")
    if op == "not-a-dict":
        ckpt = data.draw(json_values, label="value")
    elif op == "delete":
        del ckpt[data.draw(st.sampled_from(sorted(ckpt)), label="key")]
    elif op == "replace":
        ckpt[data.draw(st.sampled_from(sorted(ckpt)), label="key")] = data.draw(
            json_values | st.just(torch.zeros(3)), label="value")
    else:
        key = data.draw(st.sampled_from(sorted(ckpt["state"])), label="state key")
        ckpt["state"][key] = data.draw(st.sampled_from([torch.zeros(3), torch.zeros(2, 2), "x", None]), label="v")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "ck").mkdir()
        save_checkpoint(ckpt, Path(tmp) / "ck" / CHECKPOINT)
        with ActivationStore(checkpoint / "s.h5") as store:
            try:
                TopKSAE(**CKPT_PARAMS).fit(store, layer=1, checkpoint_dir=Path(tmp) / "ck")
            except SuperposError as e:
                assert "\n" not in str(e)
