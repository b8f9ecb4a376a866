"""Logit lens and tuned lens: read the residual stream at any layer as a next-token distribution.

* logit lens (nostalgebraist 2020): ``unembed(final_norm(h_l))``; on the last residual layer it is the
  model's own output.
* tuned lens (Belrose et al. 2023): one affine translator per layer, ``h + h W_l + b_l`` (W, b start at
  zero, i.e. the identity), trained to minimise KL(final distribution || lens distribution), then the
  same final norm and unembedding. The last residual layer keeps the identity. One change from the
  paper: the translator acts on the residual scaled to unit RMS. The final norm is scale-invariant, so
  this only fixes the scale of the bias, and it keeps Adam stable when row norms span 100×
  (SmolLM2's residual norms run from ~150 to ~23,000 across positions and layers).

``lens_metrics`` gives, per layer and position, KL(final || lens), top-1 agreement with the final
output, and cross-entropy on the true next token. Method and reading in docs/repurposing.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from superpos.errors import SuperposError
from superpos.hypotheses.lenses.result import LensComparison, LensScores
from superpos.model.residuals import ResidualSample

LENS_CONFIG, LENS_WEIGHTS = "lens.json", "lens.safetensors"
#: Adam's rate after the least-squares start: measured on SmolLM2 (32 contexts), 1e-3 first undoes the start
#: (held-out KL 2.06 → 3.96 nats at step 25), 1e-4 improves on it until it levels off (1.94 at step 100)
LENS_LR = 1e-4


def unembed(lm, h_PD: torch.Tensor) -> torch.Tensor:
    """Final norm + unembedding (float32 logits); gradients flow to ``h_PD``."""
    h = h_PD.to(lm.device, dtype=lm.W_U_VD.dtype)
    if lm.final_norm is not None:
        h = lm.final_norm(h)
    return lm.model.get_output_embeddings()(h).float()


class TunedLens(nn.Module):
    """Affine translators for residual layers 0..n_layers-1 (layer n_layers is the identity)."""

    def __init__(self, d_model: int, n_layers: int):
        super().__init__()
        self.d_model, self.n_layers = d_model, n_layers
        self.weight_LDD = nn.Parameter(torch.zeros(n_layers, d_model, d_model))
        self.bias_LD = nn.Parameter(torch.zeros(n_layers, d_model))
        self.meta: dict = {}

    def translate(self, h_PD: torch.Tensor, layer: int) -> torch.Tensor:
        """The tuned lens's translation of residuals at ``layer`` (unit RMS, then affine)."""
        if layer >= self.n_layers:
            return h_PD
        h = h_PD / h_PD.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()  # unit RMS: see the module docstring
        return h + h @ self.weight_LDD[layer] + self.bias_LD[layer]

    def save(self, path) -> Path:
        """Write ``lens.json`` + ``lens.safetensors`` (sealed by ``checksums.json``) to folder ``path`` atomically."""
        import tempfile

        from safetensors.torch import save_file

        from superpos import integrity
        from superpos.files import replace_folder, write_json_atomic

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            save_file({"weight_LDD": self.weight_LDD.detach().cpu().contiguous(),
                       "bias_LD": self.bias_LD.detach().cpu().contiguous()}, str(tmp / LENS_WEIGHTS))
            write_json_atomic(tmp / LENS_CONFIG, {"kind": "tuned_lens", "d_model": self.d_model,
                                                  "n_layers": self.n_layers, "meta": self.meta})
            integrity.seal(tmp, (LENS_WEIGHTS, LENS_CONFIG))
            replace_folder(tmp, path)
        except BaseException:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path) -> "TunedLens":
        """Read a folder written by ``save`` (its checksums verified first); anything else found there — a missing
        or extra key or tensor, a value of the wrong type, weights of another shape or type — is one line."""
        from superpos import integrity
        from superpos.readers import expect_shape, field, read_json_object, read_tensors

        path = Path(path)
        if not (path / LENS_CONFIG).is_file() or not (path / LENS_WEIGHTS).is_file():
            raise SuperposError(f"{path} is not a tuned lens folder (needs {LENS_CONFIG} and {LENS_WEIGHTS})")
        integrity.verify(path)
        where = path / LENS_CONFIG
        cfg = read_json_object(where)
        kind = field(cfg, "kind", "str", where, default="tuned_lens")
        if kind != "tuned_lens":
            raise SuperposError(f"{where}: 'kind' is {kind!r}, expected 'tuned_lens'")
        d, n = field(cfg, "d_model", "int", where, minimum=1), field(cfg, "n_layers", "int", where, minimum=0)
        meta = field(cfg, "meta", "object", where, default={})
        state = read_tensors(path / LENS_WEIGHTS, {"weight_LDD", "bias_LD"})
        expect_shape(state, "weight_LDD", (n, d, d), path / LENS_WEIGHTS)
        expect_shape(state, "bias_LD", (n, d), path / LENS_WEIGHTS)
        lens = cls(d, n)
        lens.load_state_dict(state)
        lens.meta = meta
        return lens

    def summary(self) -> str:
        """A few lines for ``superpos info``."""
        trained = {k: v for k, v in self.meta.items() if not isinstance(v, (dict, list))}
        return "\n".join([f"tuned lens     {self.n_layers} translators, d_model {self.d_model}",
                          *(f"{k:<14} {v}" for k, v in trained.items())])

    def check_model(self, lm) -> None:
        """Refuse a lens made for another model's width or depth."""
        if (self.d_model, self.n_layers) != (lm.d_model, lm.n_layers):
            raise SuperposError(f"tuned lens is for d_model {self.d_model} × {self.n_layers} layers, "
                                f"{lm.name} has {lm.d_model} × {lm.n_layers}")


def lens_logits(lm, h_PD: torch.Tensor, layer: int, lens: TunedLens | None = None) -> torch.Tensor:
    """Logits read off residuals at ``layer``: the logit lens, or the tuned lens when given."""
    if lens is not None:
        h_PD = lens.translate(h_PD.to(lens.weight_LDD.device), layer)
    return unembed(lm, h_PD)


def final_logprobs(lm, sample: ResidualSample, chunk: int = 512) -> torch.Tensor:
    """(P, V) log-probabilities of the model's own output at the sampled positions."""
    h = sample.at(lm.n_layers)
    with torch.no_grad():
        return torch.cat([F.log_softmax(unembed(lm, h[i:i + chunk]), -1).cpu() for i in range(0, len(h), chunk)])


def least_squares_init_(lens: TunedLens, sample: ResidualSample, ridge: float = 1e-2) -> TunedLens:
    """Start every translator at the ridge least-squares map from layer l to the last layer, both at unit RMS (the
    scale the final norm removes): W_l, b_l minimise ‖ĥ_L − (ĥ_l + ĥ_l W_l + b_l)‖² over the sample."""
    def unit_rms(h):
        return h / h.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    target = unit_rms(sample.at(lens.n_layers).double())
    with torch.no_grad():
        for layer in range(lens.n_layers):
            h = unit_rms(sample.at(layer).double())
            X = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], 1)
            gram = X.T @ X
            gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
            A = torch.linalg.solve(gram, X.T @ (target - h))
            lens.weight_LDD[layer] = A[:-1].to(lens.weight_LDD)
            lens.bias_LD[layer] = A[-1].to(lens.bias_LD)
    return lens


def _mean_kl(lm, sample: ResidualSample, lens: TunedLens, chunk: int = 128) -> float:
    """KL(final || tuned lens) averaged over the sample's positions and the lens's layers."""
    total = 0.0
    with torch.no_grad():
        for i in range(0, sample.n_positions, chunk):
            final = F.log_softmax(unembed(lm, sample.at(lm.n_layers)[i:i + chunk]), -1)
            for layer in range(lm.n_layers):
                logq = F.log_softmax(lens_logits(lm, sample.at(layer)[i:i + chunk], layer, lens), -1)
                total += float((final.exp() * (final - logq)).sum())
    return total / (sample.n_positions * lm.n_layers)


def train_tuned_lens(lm, sample: ResidualSample, steps: int = 300, lr: float = LENS_LR, batch: int = 128,
                     layers_per_step: int = 8, seed: int = 0, progress: bool = True, eval_every: int = 25,
                     tol: float = 0.01, patience: int = 2) -> tuple[TunedLens, list[float]]:
    """Fit the translators: start at the least-squares map to the last layer (``least_squares_init_``), then Adam on
    KL(final || lens), ``layers_per_step`` random layers per step, for at most ``steps`` steps.

    A tenth of the sample's contexts is held out: every ``eval_every`` steps their KL is measured, training stops
    after ``patience`` measurements without a relative improvement of ``tol``, and the best translators are kept
    (``meta``: ``steps_run``, ``converged``, ``validation_kl``). Each step draws ``batch`` positions; the final
    distribution is recomputed from the sample's last layer, so only residuals are held in memory. Returns the
    lens and the training-loss history.
    """
    if lm.n_layers not in sample.layers or not set(range(lm.n_layers)) <= set(sample.layers):
        raise SuperposError("a tuned lens needs residuals at every layer 0..n_layers")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    fit, val = sample.split_contexts(0.9, seed=seed) if len(np.unique(sample.ctx_P)) >= 4 else (sample, sample)
    val = val.subset(np.arange(val.n_positions) < 256)  # enough positions to see the KL move, cheap to score
    lens = least_squares_init_(TunedLens(lm.d_model, lm.n_layers), fit).to(lm.device)
    opt = torch.optim.Adam(lens.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.1, 1 - s / steps))
    history: list[float] = []
    validation = [{"step": 0, "kl": _mean_kl(lm, val, lens)}]
    best, bad, best_state = validation[0]["kl"], 0, {k: v.detach().clone() for k, v in lens.state_dict().items()}
    bar = tqdm(range(steps), desc="tuned lens", unit="step", file=sys.stderr, disable=not progress)
    for step in bar:
        idx = torch.from_numpy(rng.integers(0, fit.n_positions, size=batch))
        chosen = rng.choice(lm.n_layers, size=min(layers_per_step, lm.n_layers), replace=False)
        with torch.no_grad():
            target = F.log_softmax(unembed(lm, fit.at(lm.n_layers)[idx]), -1)
        loss = 0.0
        for layer in chosen:
            h = fit.at(int(layer))[idx].to(lm.device)
            logq = F.log_softmax(lens_logits(lm, h, int(layer), lens), -1)
            loss = loss + F.kl_div(logq, target, log_target=True, reduction="batchmean")
        loss = loss / len(chosen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        history.append(loss.item())
        bar.set_postfix(kl=f"{np.mean(history[-20:]):.3f}", held_out=f"{best:.3f}")
        if (step + 1) % eval_every == 0:
            kl = _mean_kl(lm, val, lens)
            validation.append({"step": step + 1, "kl": kl})
            if kl < best * (1 - tol):
                best, bad = kl, 0
                best_state = {k: v.detach().clone() for k, v in lens.state_dict().items()}
            else:
                bad += 1
                if bad >= patience:
                    break
    bar.close()
    lens.load_state_dict(best_state)
    lens.meta = {"steps": steps, "steps_run": len(history), "converged": bad >= patience, "lr": lr, "batch": batch,
                 "layers_per_step": layers_per_step, "seed": seed, "train_positions": fit.n_positions,
                 "model": lm.name, "init": "least squares", "validation_kl": validation, "best_validation_kl": best,
                 "final_kl": float(np.mean(history[-20:])) if history else best}
    return lens.eval(), history


def lens_metrics(lm, sample: ResidualSample, lens: TunedLens | None = None, chunk: int = 256) -> dict[str, np.ndarray]:
    """Per layer and position: ``kl`` = KL(final || lens), ``top1`` agreement, ``ce`` on the true next token.

    Returns arrays of shape (len(sample.layers), P).
    """
    P = sample.n_positions
    out = {k: np.zeros((len(sample.layers), P)) for k in ("kl", "top1", "ce")}
    nxt = torch.from_numpy(sample.next_P.astype(np.int64))
    with torch.no_grad():
        for i in range(0, P, chunk):
            final = F.log_softmax(unembed(lm, sample.at(lm.n_layers)[i:i + chunk]), -1).cpu()
            for j, layer in enumerate(sample.layers):
                logq = F.log_softmax(lens_logits(lm, sample.resid_LPD[j, i:i + chunk], layer, lens), -1).cpu()
                out["kl"][j, i:i + chunk] = (final.exp() * (final - logq)).sum(-1).numpy()
                out["top1"][j, i:i + chunk] = (logq.argmax(-1) == final.argmax(-1)).numpy()
                out["ce"][j, i:i + chunk] = (-logq.gather(-1, nxt[i:i + chunk, None])[:, 0]).numpy()
    return out


def compare_lenses(lm, sample: ResidualSample, lens: TunedLens | None = None, steps: int = 300, lr: float = LENS_LR,
                   seed: int = 0, n_boot: int = 1000, save_to=None,
                   progress: bool = True) -> tuple[TunedLens, LensComparison]:
    """Train a tuned lens on 75% of the sample's contexts (unless given one) and score both lenses on the rest.

    Returns the lens and the comparison: per layer KL, top-1 and CE of each lens with CIs bootstrapped over
    held-out contexts, and the training loss history.
    """
    from superpos.stats import cluster_band

    train, held = sample.split_contexts(0.75, seed=seed)
    history: list[float] = []
    if lens is None:
        lens, history = train_tuned_lens(lm, train, steps=steps, lr=lr, seed=seed, progress=progress)
        if save_to is not None:
            lens.save(save_to)
    scores = {}
    for name, ln in (("logit", None), ("tuned", lens)):
        m = lens_metrics(lm, held, ln)
        scores[name] = LensScores(**{k: cluster_band(v.T, held.ctx_P, n_boot=n_boot, seed=seed) for k, v in m.items()})
    return lens, LensComparison(held_out_positions=held.n_positions, train_positions=train.n_positions,
                                history=list(history), logit_lens=scores["logit"], tuned_lens=scores["tuned"],
                                training=dict(lens.meta))
