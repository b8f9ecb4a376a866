"""Dictionaries in other toolkits' folder formats: SAELens (read and written) and EleutherAI sparsify (read).

SAELens: ``cfg.json`` + ``sae_weights.safetensors``. sparsify: ``cfg.json`` (``SparseCoderConfig`` plus ``d_in``) +
``sae.safetensors`` (``encoder.weight``, ``encoder.bias``, ``W_dec``, ``b_dec``), one folder per hookpoint inside a
run's folder. ``load_dictionary`` dispatches here for any folder that is not a superpos one.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from superpos.errors import SuperposError
from superpos.files import replace_folder, write_json_atomic
from superpos.readers import expect_shape, field, read_json_object, read_tensors

SAELENS_CFG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
SPARSIFY_CFG, SPARSIFY_WEIGHTS = "cfg.json", "sae.safetensors"
EXPECTED = ("config.json + weights.safetensors (superpos), cfg.json + sae_weights.safetensors (SAELens), "
            "cfg.json + sae.safetensors (EleutherAI sparsify) or sparsify hookpoint subfolders")


def sparsify_hookpoints(path: Path) -> list[str]:
    """The hookpoint subfolders of a sparsify run's folder (each holding ``cfg.json`` + ``sae.safetensors``)."""
    return sorted(p.name for p in path.iterdir() if p.is_dir() and (p / SPARSIFY_CFG).is_file()
                  and (p / SPARSIFY_WEIGHTS).is_file())


def load_external(path: Path, device: str = "auto", hookpoint: str | None = None):
    """A SAELens or sparsify folder (or one hookpoint of a sparsify run's folder) as a superpos SAE; any other
    folder is refused in one line naming what was expected."""
    if hookpoint is not None:
        hooks = sparsify_hookpoints(path)
        if hookpoint not in hooks:
            raise SuperposError(f"{path} has no sparsify hookpoint {hookpoint!r} "
                                f"({'it holds ' + ', '.join(hooks) if hooks else 'it holds no hookpoint subfolders'})")
        return load_sparsify(path / hookpoint, device=device)
    if (path / SAELENS_WEIGHTS).exists() and (path / SAELENS_CFG).exists():
        return load_saelens(path, device=device)
    if (path / SPARSIFY_WEIGHTS).exists() and (path / SPARSIFY_CFG).exists():
        return load_sparsify(path, device=device)
    hooks = sparsify_hookpoints(path)
    if len(hooks) == 1:
        return load_sparsify(path / hooks[0], device=device)
    if hooks:
        raise SuperposError(f"{path} is a sparsify run with {len(hooks)} hookpoints ({', '.join(hooks[:6])}"
                            f"{', …' if len(hooks) > 6 else ''}): name one (hookpoint=…, or the subfolder itself)")
    raise SuperposError(f"{path} is not a dictionary folder (expected {EXPECTED})")


# ---------------------------------------------------------------------- EleutherAI sparsify
def load_sparsify(path: str | os.PathLike, device: str = "auto"):
    """Read a sparsify ``SparseCoder`` folder as a superpos ``TopKSAE`` that encodes and decodes exactly as sparsify:
    codes = top-k of ReLU(W_enc (x − b_dec) + b_enc), x̂ = codes · W_dec + b_dec. Only what that covers is read:
    ``activation`` topk, no skip connection, not a transcoder, a decoder of unit-norm rows (sparsify's
    ``normalize_decoder``, superpos's convention); anything else is refused in one line."""
    from superpos.dictionaries.sae import TopKSAE

    path = Path(path)
    where = path / SPARSIFY_CFG
    cfg = read_json_object(where)
    d_in = field(cfg, "d_in", "int", where, minimum=1)
    activation = field(cfg, "activation", "str", where, default="topk")
    if activation != "topk":
        raise SuperposError(f"{where}: sparsify activation {activation!r} is not supported (topk)")
    for flag, what in (("skip_connection", "a skip connection"), ("transcode", "a transcoder")):
        if field(cfg, flag, "bool", where, default=False):
            raise SuperposError(f"{where}: {what} is not a dictionary of its input ('{flag}': true)")
    k = field(cfg, "k", "int", where, minimum=1)
    w = read_tensors(path / SPARSIFY_WEIGHTS, {"encoder.weight", "encoder.bias", "W_dec", "b_dec"})
    if w["W_dec"].ndim != 2 or w["W_dec"].shape[1] != d_in:
        raise SuperposError(f"{path / SPARSIFY_WEIGHTS}: tensor 'W_dec' has shape {tuple(w['W_dec'].shape)}, "
                            f"expected (num_latents, {d_in})")
    n = w["W_dec"].shape[0]
    want = field(cfg, "num_latents", "int", where, default=0, minimum=0) or \
        d_in * field(cfg, "expansion_factor", "int", where, default=32, minimum=1)
    if want != n:
        raise SuperposError(f"{where}: num_latents / expansion_factor give {want} latents, W_dec has {n}")
    for key, shape in (("encoder.weight", (n, d_in)), ("encoder.bias", (n,)), ("b_dec", (d_in,))):
        expect_shape(w, key, shape, path / SPARSIFY_WEIGHTS)
    if k > n:
        raise SuperposError(f"{where}: 'k' is {k}, more than the SAE's {n} latents")
    norms = w["W_dec"].norm(dim=1)
    if not torch.allclose(norms, torch.ones_like(norms), atol=1e-2):
        raise SuperposError(f"{path}: decoder rows are not unit norm (sparsify's normalize_decoder off): not read, "
                            f"superpos keeps unit-norm atoms")
    sae = TopKSAE(k=k, device=device)
    sae.load_state_dict({"components_": w["W_dec"], "W_enc_": w["encoder.weight"], "b_enc_": w["encoder.bias"],
                         "b_dec_": w["b_dec"]})
    sae.meta_ = {"hook_name": path.name, "source": "sparsify"}
    return sae


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
    cfg = read_json_object(path / SAELENS_CFG)
    where = path / SAELENS_CFG
    arch = field(cfg, "architecture", "str", where, default="standard")
    if arch not in ("topk", "standard", "jumprelu"):
        raise SuperposError(f"SAELens architecture {arch!r} is not supported (topk, standard, jumprelu)")
    k = field(cfg, "k", "int?", where, default=None, minimum=1)
    if k is None:
        k = field(field(cfg, "activation_fn_kwargs", "object?", where, default=None) or {}, "k", "int?",
                  f"{where}: activation_fn_kwargs", default=None, minimum=1)
    if arch == "topk" and k is None:
        raise SuperposError(f"{where}: a topk SAE needs 'k' (or activation_fn_kwargs.k)")
    apply_b_dec = field(cfg, "apply_b_dec_to_input", "bool", where, default=True)
    hook_name = field(cfg, "hook_name", "str?", where, default=None)
    model_name = field(cfg, "model_name", "str?", where, default=None)
    w = read_tensors(path / SAELENS_WEIGHTS, {"W_enc", "W_dec", "b_enc", "b_dec"},
                     ("threshold",) if arch == "jumprelu" else ())
    if arch == "jumprelu" and "threshold" not in w:
        raise SuperposError(f"{path / SAELENS_WEIGHTS} lacks tensor 'threshold' (a jumprelu SAE needs it)")
    if w["W_dec"].ndim != 2:
        raise SuperposError(f"{path / SAELENS_WEIGHTS}: tensor 'W_dec' has shape {tuple(w['W_dec'].shape)}, "
                            f"expected (d_sae, d_in)")
    n, d = w["W_dec"].shape
    for key, want in (("d_in", d), ("d_sae", n)):
        got = field(cfg, key, "int?", where, default=None)
        if got is not None and got != want:
            raise SuperposError(f"{where}: '{key}' is {got}, but W_dec has shape ({n}, {d})")
    shapes = {"W_enc": (d, n), "b_enc": (n,), "b_dec": (d,), "threshold": (n,)}
    for key in sorted(w):
        if key != "W_dec":
            expect_shape(w, key, shapes[key], path / SAELENS_WEIGHTS)
    if k is not None and arch == "topk" and k > n:
        raise SuperposError(f"{where}: 'k' is {k}, more than the SAE's {n} latents")
    if arch == "topk":
        sae = TopKSAE(k=k, device=device)
    elif arch == "standard":
        sae = ReLUSAE(device=device)
    else:
        sae = JumpReLUSAE(device=device)
    W_dec, W_enc_DF, b_enc = w["W_dec"].float(), w["W_enc"].float(), w["b_enc"].float()
    if not apply_b_dec:  # pre = x W_enc + b_enc  →  (x − b_dec) W_enc + b_enc'
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
    sae.meta_ = {"hook_name": hook_name, "model": model_name, "source": "saelens"}
    return sae
