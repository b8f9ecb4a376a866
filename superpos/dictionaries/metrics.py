"""Dictionary metrics, with SAEBench's definitions.

* FVU = Σ‖x − x̂‖² / Σ‖x − mean(x)‖²; explained variance = 1 − FVU.
* L0 = mean number of non-zero codes per row.
* dead = never fired over the evaluated rows; dense = fires on more than 10 % of them.
* CE-loss recovered = (CE_zero − CE_spliced) / (CE_zero − CE_clean), splicing x̂ into the model at the
  dictionary's layer (positions ≥ min_pos; the BOS/sink position is left as it is in all three runs).
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from superpos.errors import SuperposError

OUTLIER_NORM = 5.0  # held-out rows above this × the median norm are left out of the stopping rule

DENSE_THRESHOLD = 0.10


def _t(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def fvu(x, x_hat) -> float:
    """Fraction of variance unexplained: Σ‖x − x̂‖² / Σ‖x − mean(x)‖²."""
    x, x_hat = _t(x).double(), _t(x_hat).double()
    return ((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()


def explained_variance(x, x_hat) -> float:
    """1 − FVU."""
    return 1.0 - fvu(x, x_hat)


def mse(x, x_hat) -> float:
    """Mean over rows of the squared error summed over d_model."""
    x, x_hat = _t(x).double(), _t(x_hat).double()
    return (x - x_hat).pow(2).sum(-1).mean().item()


def cosine(x, x_hat) -> float:
    """Mean over rows of cos(x, x̂)."""
    return F.cosine_similarity(_t(x).double(), _t(x_hat).double(), dim=-1).mean().item()


def l0(codes) -> float:
    """Mean number of non-zero codes per row."""
    return (_t(codes) != 0).sum(-1).double().mean().item()


def firing_fractions(codes) -> torch.Tensor:
    """Per latent: fraction of rows where it is non-zero."""
    return (_t(codes) != 0).double().mean(0)


def dead_fraction(firing: torch.Tensor) -> float:
    """Share of latents that never fire on these codes."""
    return (firing == 0).double().mean().item()


def dense_fraction(firing: torch.Tensor, threshold: float = DENSE_THRESHOLD) -> float:
    """Share of latents firing on more than 10 % of rows."""
    return (firing > threshold).double().mean().item()


def ce_loss_recovered(ce_clean: float, ce_spliced: float, ce_zero: float) -> float:
    """(CE zero-ablated − CE spliced) / (CE zero-ablated − CE clean)."""
    return (ce_zero - ce_spliced) / (ce_zero - ce_clean)


@dataclass
class EvalResult:
    """The metrics of one dictionary on one store layer."""
    name: str
    kind: str
    n_components: int
    n_rows: int
    fvu: float
    explained_variance: float
    mse: float
    cosine: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    fvu_typical: float | None = None  # FVU over the typical rows: norm ≤ OUTLIER_NORM × the median (first batch)
    n_outliers: int = 0  # rows left out of fvu_typical (attention sinks with norms far above the rest)
    ce_clean: float | None = None
    ce_spliced: float | None = None
    ce_zero: float | None = None
    ce_loss_recovered: float | None = None
    kl_spliced: float | None = None

    def as_dict(self) -> dict:
        """The metrics as a plain dict (for JSON)."""
        return asdict(self)


def check_width(dictionary, store) -> None:
    """Refuse (one line) a dictionary whose width is not the store's."""
    if dictionary.d_model_ != store.d_model:
        raise SuperposError(f"dictionary has d_model {dictionary.d_model_} but store {store.path} has {store.d_model}")


def reconstruction_metrics(dictionary, store, layer: int, n_rows: int | None = None, batch_size: int = 4096,
                           min_pos: int = 1, name: str = "", progress: bool = True) -> EvalResult:
    """Stream the store once and compute FVU, MSE, cosine, L0, dead and dense fractions; and FVU over the typical
    rows alone (``fvu_typical``: rows whose norm is at most ``OUTLIER_NORM`` × the median norm of the first batch,
    the rule the fits' early stopping uses), since a handful of attention-sink rows with norms 100× the rest can
    hold most of a layer's variance and so decide the all-row FVU by themselves."""
    check_width(dictionary, store)
    d = store.d_model
    n_feat = dictionary.n_components_
    fire = torch.zeros(n_feat, dtype=torch.float64)
    sums = dict(n=0, err=0.0, sx=torch.zeros(d, dtype=torch.float64), sxx=0.0, cos=0.0, l0=0.0)
    typ = dict(n=0, err=0.0, sx=torch.zeros(d, dtype=torch.float64), sxx=0.0)
    limit = None
    dev = dictionary.device_
    total = min(n_rows or store.n_rows, int(store.row_mask(min_pos).sum()))
    bar = tqdm(total=total, desc="evaluate", unit="row", unit_scale=True, file=sys.stderr, disable=not progress)
    for rows, x in store.iter_rows(layer, batch_size, min_pos=min_pos):
        if n_rows is not None and sums["n"] >= n_rows:
            break
        x = torch.from_numpy(x).to(dev)
        with torch.no_grad():
            codes = dictionary.encode(x)
            x_hat = dictionary.decode(codes)
        xd, xh = x.double(), x_hat.double()
        sums["n"] += len(x)
        sums["err"] += (xd - xh).pow(2).sum().item()
        sums["sx"] += xd.sum(0).cpu()
        sums["sxx"] += xd.pow(2).sum().item()
        norms = xd.norm(dim=1)
        if limit is None:
            limit = OUTLIER_NORM * norms.median().item()
        t = norms <= limit
        typ["n"] += int(t.sum().item())
        typ["err"] += (xd[t] - xh[t]).pow(2).sum().item()
        typ["sx"] += xd[t].sum(0).cpu()
        typ["sxx"] += xd[t].pow(2).sum().item()
        sums["cos"] += F.cosine_similarity(xd, xh, dim=-1).sum().item()
        nz = codes != 0
        sums["l0"] += nz.sum().item()
        fire += nz.sum(0).double().cpu()
        bar.update(len(rows))
    bar.close()
    n = sums["n"]
    if n == 0:
        raise SuperposError(f"no rows to evaluate in {store.path} at layer {layer}")
    total_var = sums["sxx"] - (sums["sx"].pow(2).sum().item() / n)
    f = sums["err"] / total_var
    firing = fire / n
    typ_var = typ["sxx"] - (typ["sx"].pow(2).sum().item() / max(typ["n"], 1))
    return EvalResult(name=name, kind=dictionary.kind, n_components=n_feat, n_rows=n, fvu=f, explained_variance=1 - f,
                      fvu_typical=typ["err"] / typ_var if typ["n"] > 1 and typ_var > 0 else None,
                      n_outliers=n - typ["n"],
                      mse=sums["err"] / n, cosine=sums["cos"] / n, l0=sums["l0"] / n, dead_fraction=dead_fraction(firing),
                      dense_fraction=dense_fraction(firing))


def _context_tokens(store, n_contexts: int) -> torch.Tensor:
    """The first ``n_contexts`` whole contexts inside the store's (possibly restricted) row range."""
    C = int(store.attrs["context_length"])
    lo, hi = store.row_range
    first = -(-lo // C)
    n = min(n_contexts, hi // C - first)
    if n <= 0:
        raise SuperposError(f"store {store.path} has no complete context for CE evaluation")
    tokens = store.row_field("tokens", slice(first * C, (first + n) * C))
    return torch.from_numpy(tokens.reshape(n, C).astype(np.int64))


def spliced_ce(lm, tokens_NC: torch.Tensor, layer: int, splices: dict, min_pos: int = 1, batch_size: int = 8,
               progress: bool = True) -> dict[str, dict]:
    """Next-token CE (and KL to the clean run) with the residual at ``layer`` replaced by each splice fn.

    ``splices`` maps a name to ``fn(resid_BTD) -> new_resid_BTD`` (positions < min_pos are restored);
    "clean" is always included. Returns {name: {"ce": float, "kl": float}}.
    """
    results = {name: {"nll": 0.0, "kl": 0.0} for name in ["clean", *splices]}
    count = 0
    bar = tqdm(total=len(tokens_NC), desc="CE splice", unit="ctx", file=sys.stderr, disable=not progress)
    with torch.inference_mode():
        for i in range(0, len(tokens_NC), batch_size):
            tok = tokens_NC[i:i + batch_size].to(lm.device)
            target = tok[:, 1:]
            clean_logp = F.log_softmax(lm.model(tok).logits[:, :-1].float(), -1)
            results["clean"]["nll"] += -clean_logp.gather(-1, target[..., None]).sum().item()
            for name, fn in splices.items():
                def keep_sink(resid, fn=fn):
                    new = fn(resid)
                    new[:, :min_pos] = resid[:, :min_pos]
                    return new
                with lm.splice(layer, keep_sink):
                    logp = F.log_softmax(lm.model(tok).logits[:, :-1].float(), -1)
                results[name]["nll"] += -logp.gather(-1, target[..., None]).sum().item()
                results[name]["kl"] += (clean_logp.exp() * (clean_logp - logp)).sum().item()
            count += target.numel()
            bar.update(len(tok))
    bar.close()
    return {name: {"ce": r["nll"] / count, "kl": r["kl"] / count} for name, r in results.items()}


def evaluate_dictionaries(dictionaries: dict, store, layer: int, lm=None, n_rows: int | None = None,
                          ce_contexts: int = 16, min_pos: int = 1, progress: bool = True) -> list[EvalResult]:
    """Reconstruction metrics for each dictionary; with a model, CE-loss recovered and KL by splicing."""
    results = [reconstruction_metrics(d, store, layer, n_rows=n_rows, min_pos=min_pos, name=name, progress=progress)
               for name, d in dictionaries.items()]
    if lm is None or ce_contexts <= 0:
        return results
    if lm.d_model != store.d_model:
        raise SuperposError(f"model {lm.name} has d_model {lm.d_model} but store {store.path} has {store.d_model}")
    tokens = _context_tokens(store, ce_contexts)

    def recon(dic):
        def fn(resid):
            flat = resid.reshape(-1, resid.shape[-1]).float()
            return dic.decode(dic.encode(flat.to(dic.device_))).to(resid).reshape(resid.shape)
        return fn

    splices = {"zero": lambda r: torch.zeros_like(r)}
    splices.update({f"dict:{name}": recon(d) for name, d in dictionaries.items()})
    ce = spliced_ce(lm, tokens, layer, splices, min_pos=min_pos, progress=progress)
    for res in results:
        sp = ce[f"dict:{res.name}"]
        res.ce_clean, res.ce_zero, res.ce_spliced, res.kl_spliced = ce["clean"]["ce"], ce["zero"]["ce"], sp["ce"], sp["kl"]
        res.ce_loss_recovered = ce_loss_recovered(res.ce_clean, res.ce_spliced, res.ce_zero)
    return results


def format_table(results: list[EvalResult]) -> str:
    """The metrics of several dictionaries as an aligned text table."""
    cols = [("name", "{}"), ("kind", "{}"), ("n_components", "{}"), ("l0", "{:.1f}"), ("fvu", "{:.4f}"),
            ("explained_variance", "{:.4f}"), ("cosine", "{:.4f}"), ("dead_fraction", "{:.3f}"),
            ("dense_fraction", "{:.3f}"), ("ce_loss_recovered", "{:.4f}"), ("kl_spliced", "{:.4f}")]
    header = ["dictionary", "kind", "atoms", "L0", "FVU", "EV", "cos", "dead", "dense", "CE rec.", "KL"]
    rows = [[fmt.format(getattr(r, c)) if getattr(r, c) is not None else "-" for c, fmt in cols] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    out = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    if results and results[0].ce_clean is not None:
        r = results[0]
        out.append(f"CE clean {r.ce_clean:.4f}, zero-ablated {r.ce_zero:.4f} nats/token (over {r.n_rows:,} rows for "
                   "reconstruction metrics)")
    return "\n".join(out)
