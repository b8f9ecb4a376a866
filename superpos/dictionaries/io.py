"""Save / load dictionaries (safetensors + JSON), and the SAELens folder format.

A dictionary folder holds ``config.json`` ({"kind", "class", "params", "d_model", "n_components",
"superpos_version", "meta"}), ``weights.safetensors`` (every fitted tensor, raw input space) and, when
training produced them, ``metrics.json``, sealed by ``checksums.json`` (their sha256s, verified on load).
Folders are written to a temporary sibling and renamed.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from superpos import integrity
from superpos.errors import SuperposError
from superpos.files import replace_folder, write_json_atomic

CONFIG, WEIGHTS, METRICS = "config.json", "weights.safetensors", "metrics.json"
SAELENS_CFG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"


def _kinds():
    from superpos.dictionaries.kinds import KINDS

    return KINDS


def save_dictionary(dictionary, path: str | os.PathLike, meta: dict | None = None, metrics: dict | None = None) -> Path:
    """Write ``dictionary`` to folder ``path`` atomically; returns the path."""
    path = Path(path)
    state = dictionary.state_dict()
    config = {
        "kind": dictionary.kind,
        "class": type(dictionary).__name__,
        "params": dictionary.get_params(),
        "d_model": int(state["components_"].shape[1]),
        "n_components": int(state["components_"].shape[0]),
        "superpos_version": __import__("superpos").__version__,
        "meta": meta or {},
    }
    for attr in ("n_iter_", "n_tokens_seen_", "warmup_steps_"):
        if hasattr(dictionary, attr):
            config[attr] = int(getattr(dictionary, attr))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file(state, str(tmp / WEIGHTS))
        write_json_atomic(tmp / CONFIG, config)
        history = getattr(dictionary, "history_", None)
        if metrics or history:
            write_json_atomic(tmp / METRICS, {**(metrics or {}), **({"history": history} if history else {})})
        integrity.seal(tmp, (WEIGHTS, CONFIG, METRICS))
        for extra in (path / "checkpoint.pt",):  # keep the training checkpoint beside the result
            if extra.exists():
                shutil.copy2(extra, tmp / extra.name)
        replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_config(path: Path) -> dict:
    """A dictionary folder's config.json, refused in one line when it is not JSON."""
    try:
        return json.loads((path / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise SuperposError(f"{path / CONFIG} is not valid JSON ({e.msg})") from None


def load_dictionary(path: str | os.PathLike, device: str = "auto"):
    """Load a superpos dictionary folder (or a SAELens folder) as the right estimator class."""
    path = Path(path)
    if not path.is_dir():
        raise SuperposError(f"dictionary folder {path} does not exist")
    if not (path / CONFIG).exists() and (path / SAELENS_CFG).exists():
        return load_saelens(path, device=device)
    if not (path / CONFIG).exists():
        raise SuperposError(f"{path} is not a dictionary folder (no {CONFIG})")
    if not (path / WEIGHTS).exists():
        raise SuperposError(f"{path} is missing its weights ({WEIGHTS})")
    integrity.verify(path)
    config = read_config(path)
    kinds = _kinds()
    if config.get("kind") not in kinds:
        raise SuperposError(f"{path / CONFIG}: unknown dictionary kind {config.get('kind')!r}")
    cls = kinds[config["kind"]]
    try:
        est = cls(**{**config["params"], "device": device})
    except TypeError as e:
        raise SuperposError(f"{path / CONFIG}: parameters do not match {cls.__name__} ({e})") from None
    try:
        state = load_file(str(path / WEIGHTS))
    except Exception as e:
        raise SuperposError(f"{path / WEIGHTS} is unreadable ({type(e).__name__})") from None
    expected = {"components_", *cls._state_names}
    if set(state) != expected:
        missing = sorted(expected - set(state)) or sorted(set(state) - expected)
        raise SuperposError(f"{path / WEIGHTS} does not match a {config['kind']} dictionary (tensor {missing[0]})")
    comp = state["components_"]
    if tuple(comp.shape) != (config["n_components"], config["d_model"]):
        raise SuperposError(f"{path / WEIGHTS}: components_ has shape {tuple(comp.shape)}, config says "
                            f"({config['n_components']}, {config['d_model']})")
    est.load_state_dict(state)
    for attr in ("n_iter_", "n_tokens_seen_", "warmup_steps_"):
        if attr in config:
            setattr(est, attr, config[attr])
    est.meta_ = config.get("meta", {})
    return est


# ---------------------------------------------------------------------- SAELens format
def export_saelens(sae, path: str | os.PathLike, hook_name: str | None = None) -> Path:
    """Write an SAE in SAELens' folder format: ``cfg.json`` + ``sae_weights.safetensors``.

    TopK → ``topk`` (with ``k``), ReLU → ``standard``, JumpReLU and BatchTopK → ``jumprelu`` (BatchTopK's
    single inference threshold broadcast per latent, which is exactly how it encodes at inference).
    """
    kind = getattr(sae, "kind", None)
    arch = {"topk": "topk", "relu": "standard", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}.get(kind)
    if arch is None:
        raise SuperposError(f"only SAEs can be exported to SAELens format, not {kind}")
    s = sae.state_dict()
    n, d = s["components_"].shape
    weights = {"W_enc": s["W_enc_"].T.contiguous(), "b_enc": s["b_enc_"], "W_dec": s["components_"], "b_dec": s["b_dec_"]}
    if arch == "jumprelu":
        weights["threshold"] = s["threshold_"].expand(n).contiguous()
    meta = getattr(sae, "meta_", {}) or {}
    cfg = {
        "architecture": arch,
        "d_in": int(d),
        "d_sae": int(n),
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "hook_name": hook_name or meta.get("hook_name", f"resid_layer_{meta.get('layer', 'unknown')}"),
        "model_name": meta.get("model", ""),
        "metadata": {"model_name": meta.get("model", ""), "hook_name": hook_name or meta.get("hook_name", "")},
    }
    if arch == "topk":
        cfg["k"] = int(sae.k)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    save_file(weights, str(tmp / SAELENS_WEIGHTS))
    write_json_atomic(tmp / SAELENS_CFG, cfg)
    replace_folder(tmp, path)
    return path


def load_saelens(path: str | os.PathLike, device: str = "auto"):
    """Read a SAELens folder back as a superpos SAE (topk → TopKSAE, standard → ReLUSAE, jumprelu → JumpReLUSAE)."""
    from superpos.dictionaries.sae import JumpReLUSAE, ReLUSAE, TopKSAE

    path = Path(path)
    try:
        cfg = json.loads((path / SAELENS_CFG).read_text())
        w = load_file(str(path / SAELENS_WEIGHTS))
    except FileNotFoundError as e:
        raise SuperposError(f"SAELens folder {path} is missing {Path(e.filename).name}") from None
    except Exception as e:
        raise SuperposError(f"SAELens folder {path} is unreadable ({type(e).__name__})") from None
    arch = cfg.get("architecture", "standard")
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    if arch == "topk":
        sae = TopKSAE(k=int(k), device=device)
    elif arch == "standard":
        sae = ReLUSAE(device=device)
    elif arch == "jumprelu":
        sae = JumpReLUSAE(device=device)
    else:
        raise SuperposError(f"SAELens architecture {arch!r} is not supported (topk, standard, jumprelu)")
    W_dec, W_enc_DF, b_enc = w["W_dec"].float(), w["W_enc"].float(), w["b_enc"].float()
    if not cfg.get("apply_b_dec_to_input", True):  # pre = x W_enc + b_enc  →  (x − b_dec) W_enc + b_enc'
        b_enc = b_enc + w["b_dec"].float() @ W_enc_DF
    norms = W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if arch == "topk" and not torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
        raise SuperposError(f"{path}: TopK SAE with non-unit decoder norms cannot be read without changing its codes")
    # superpos keeps unit-norm atoms: fold decoder norms into the encoder (codes scale by ‖d_i‖)
    state = {"components_": W_dec / norms, "W_enc_": W_enc_DF.T * norms,
             "b_enc_": b_enc * norms.squeeze(1), "b_dec_": w["b_dec"].float()}
    if arch == "jumprelu":
        state["threshold_"] = w["threshold"].float() * norms.squeeze(1)
    sae.load_state_dict(state)
    sae.meta_ = {"hook_name": cfg.get("hook_name"), "model": cfg.get("model_name"), "source": "saelens"}
    return sae
