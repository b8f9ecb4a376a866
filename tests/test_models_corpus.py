import json

import numpy as np
import pytest
import torch

from superpos.corpus import load_corpus, pack_contexts
from superpos.errors import SuperposError
from superpos.models import load_model


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

    from superpos.models import join_parts

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
    from superpos.cli import main
    from superpos.models import KNOWN_MODELS

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
