"""Shared fixtures: tiny random-initialised HF models saved to disk and loaded through superpos."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

VOCAB = 384


def _tokenizer():
    from pydoc_data import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>", "<|bos|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(topics.topics.values())[:20], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|endoftext|>")


def make_tiny_model(kind: str, folder: Path, n_layers: int = 3, d_model: int = 32, seed: int = 0, **config) -> Path:
    """A random-initialised model saved with the test tokenizer; ``config`` overrides HF config fields."""
    import transformers as tf

    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = _tokenizer()
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=0, **config)
    if kind == "gpt2":
        cfg = tf.GPT2Config(n_layer=n_layers, n_embd=d_model, n_head=4, n_positions=512, **common)
        model = tf.GPT2LMHeadModel(cfg)
    elif kind == "llama":
        cfg = tf.LlamaConfig(num_hidden_layers=n_layers, hidden_size=d_model, intermediate_size=2 * d_model,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             tie_word_embeddings=True, **common)
        model = tf.LlamaForCausalLM(cfg)
    elif kind == "neox":
        cfg = tf.GPTNeoXConfig(num_hidden_layers=n_layers, hidden_size=d_model, intermediate_size=2 * d_model,
                               num_attention_heads=4, max_position_embeddings=512, **common)
        model = tf.GPTNeoXForCausalLM(cfg)
    elif kind == "gemma3":  # embedding scaling, four norms per block, sliding-window layers, tied embeddings
        cfg = tf.Gemma3TextConfig(num_hidden_layers=n_layers, hidden_size=d_model, intermediate_size=2 * d_model,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=d_model // 4,
                                  max_position_embeddings=512, sliding_window=8, **common)
        model = tf.Gemma3ForCausalLM(cfg)
    else:
        raise ValueError(kind)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    _TOKENIZER.save_pretrained(folder)
    return folder


_TOKENIZER = None


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {k: make_tiny_model(k, root / k) for k in ("gpt2", "llama", "neox", "gemma3")}


@pytest.fixture(scope="session")
def peaked_llama(tmp_path_factory) -> Path:
    """6-layer llama, d 64, with a large init so that its next-token distributions are peaked (most of the
    vocabulary below 1e-4), as a trained model's are."""
    return make_tiny_model("llama", tmp_path_factory.mktemp("peaked") / "llama", n_layers=6, d_model=64,
                           initializer_range=0.5)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A small .jsonl corpus of real English text."""
    import json
    from pydoc_data import topics

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    keys = sorted(topics.topics)[:12]
    path.write_text("\n".join(json.dumps({"text": topics.topics[k][:3000]}) for k in keys) + "\n")
    return path


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Converted-model cache in a temp dir unless the user points SUPERPOS_CACHE somewhere."""
    if "SUPERPOS_CACHE" not in os.environ:
        os.environ["SUPERPOS_CACHE"] = str(Path.home() / ".cache" / "superpos")
    yield


def planted_data(n: int, d: int, n_features: int, k: int, noise: float = 0.01, seed: int = 0):
    """Rows = sparse non-negative combinations of ``k`` of ``n_features`` unit atoms, plus noise (the library's
    ``planted_superposition``)."""
    from superpos.store.surrogates import planted_superposition

    return planted_superposition(n, d, n_features, k, noise=noise, seed=seed)


def crash_env(spec: str | None = None, base: dict | None = None) -> dict:
    """``base`` (default: this process's environment) with ``SUPERPOS_CRASH_AT=spec``, or without it when ``spec``
    is None: the child kills, stops or interrupts itself at the points ``spec`` names (superpos.interrupts)."""
    from superpos.interrupts import CRASH_ENV

    env = {k: v for k, v in (os.environ if base is None else base).items() if k != CRASH_ENV}
    return env if spec is None else {**env, CRASH_ENV: spec}


def wait_stopped(proc) -> None:
    """Block until the child ``proc`` stops (SIGSTOP, e.g. at a ``name:n:SIGSTOP`` crash point); an
    AssertionError if it exits instead. Resume it with ``proc.send_signal(signal.SIGCONT)``."""
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    if not os.WIFSTOPPED(status):  # reaped here: tell Popen how it ended
        proc.returncode = os.waitstatus_to_exitcode(status)
        raise AssertionError(f"pid {proc.pid} exited with {proc.returncode} before reaching its stop point")
