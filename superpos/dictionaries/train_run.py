"""What one SAE ``fit`` carries, and the small pieces of a training step: the learning-rate schedule, early
stopping on held-out FVU, the run state that checkpoints, the progress meter, and the decoder-norm helpers.
The loop itself is ``trainer.SparseAutoencoder.fit``."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from superpos import distributed
from superpos.dictionaries.metrics import OUTLIER_NORM
from superpos.dictionaries.sources import RowSource, TensorRows
from superpos.errors import SuperposError
from superpos.integrity import save_checkpoint as save_checkpoint_file

CHECKPOINT = "checkpoint.pt"
DEFAULT_LR = 2e-3
DENSE_FRACTION = 0.10  # a latent firing on more tokens than this is "dense" (SAEBench)
WARMUP_FRACTION = 0.05  # default warm-up while converging: this share of one epoch's steps
FIXED_BUDGET_WARMUP = 100  # default warm-up with a fixed n_tokens: this many steps ...
FIXED_BUDGET_WARMUP_FRACTION = 0.1  # ... or this share of the run's steps when that is fewer
MIN_EVAL_STEPS = 50  # while converging, the held-out FVU is measured every epoch, at least this many steps apart
MAX_VALIDATION_ROWS = 16384
STORE_IN_MEMORY_BYTES = 2 * 2**30  # with n_tokens=None, a store this small (float32 rows) is read in; a larger one streams
L0_CONTROL_RATE = 0.01  # per step: the penalty coefficient is multiplied by (L0 / target_l0) ** rate
L0_SETTLED = 0.02  # |log(fast / slow smoothed L0)| below this: L0 is not moving by itself
_SHOWN = {"loss": ".3g", "fvu": ".3f", "l0": ".1f", "dead": ".2f", "dense": ".2f", "tok_s": ".0f"}  # progress bar


def geometric_median(x_ND: torch.Tensor, iters: int = 100, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm."""
    m = x_ND.mean(0)
    for _ in range(iters):
        w = 1.0 / torch.clamp(torch.linalg.vector_norm(x_ND - m, dim=1), min=eps)
        new = (w[:, None] * x_ND).sum(0) / w.sum()
        if torch.linalg.vector_norm(new - m) < eps * (1 + torch.linalg.vector_norm(m)):
            return new
        m = new
    return m


@torch.no_grad()
def project_decoder_grad_(W_dec_FD: torch.Tensor) -> None:
    """Remove from each atom's gradient its component along the atom, so the step stays tangent to the unit
    sphere the atoms live on (in place, on ``W_dec_FD.grad``)."""
    g = W_dec_FD.grad
    g.addcmul_(torch.linalg.vecdot(g, W_dec_FD).unsqueeze(1), W_dec_FD, value=-1)  # in place: one temporary fewer


@torch.no_grad()
def renormalise_decoder_(W_dec_FD: torch.Tensor) -> None:
    """Put every atom back on the unit sphere after the optimizer step (in place)."""
    W_dec_FD /= W_dec_FD.norm(dim=1, keepdim=True).clamp_min(1e-8)


@dataclass
class _Schedule:
    """The learning-rate multiplier per step: linear warm-up, constant, then a linear decay to 0 over the final
    ``decay_frac`` of the run. With a fixed budget the decay starts at ``(1 − decay_frac) × total``; while
    converging it starts when the held-out FVU stops improving (``start_decay``), and the run ends with it."""

    warm: int
    total: int
    decay_from: int | None  # None: not decaying yet (converging)

    def __call__(self, step: int) -> float:
        if step < self.warm:
            return (step + 1) / self.warm
        if self.decay_from is not None and step >= self.decay_from:
            return max(0.0, (self.total - step) / max(1, self.total - self.decay_from))
        return 1.0

    def start_decay(self, step: int, decay_frac: float) -> None:
        """Decay from ``step`` on, over ``decay_frac`` of the whole run (which then ends)."""
        self.decay_from = step
        self.total = min(self.total, step + max(1, int(round(step * decay_frac / max(1e-9, 1 - decay_frac)))))


@dataclass
class _Convergence:
    """Early stopping on the held-out objective (in-memory data with ``n_tokens=None``): evaluated every ``every``
    steps; after ``patience`` evaluations without a relative improvement of ``tol`` the final decay starts."""

    val_x: torch.Tensor  # held-out rows, in training units
    every: int
    tol: float
    patience: int
    best: float = math.inf
    bad: int = 0
    # {"step", "val_fvu", "val_objective", "val_fvu_all"} per measurement (``held_out``)
    history: list[dict] = field(default_factory=list)

    def __post_init__(self):
        norms = self.val_x.norm(dim=1)
        self.typical = norms <= OUTLIER_NORM * norms.median()  # the rows the stopping rule watches

    def state(self) -> dict:
        return {"best": self.best, "bad": self.bad, "history": self.history}


@dataclass
class _TrainRun:
    """The state of one ``fit``: weights, optimizer, schedule, dead-latent counters, history, and where the run
    checkpoints; ``step`` counts completed optimizer steps."""

    d: int
    state: dict[str, torch.Tensor]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    since_fired: torch.Tensor  # tokens since each latent last fired
    ckpt_path: Path | None
    amp: bool
    schedule: _Schedule | None = None
    convergence: _Convergence | None = None
    step: int = 0
    history: list[dict] = field(default_factory=list)
    window_counts: torch.Tensor | None = None  # firings per latent since the last log line
    l0_ema: float | None = None  # smoothed L0 for the target-L0 controller
    l0_slow: float | None = None  # the same, smoothed ten times longer: its trend

    def l0_gap(self, target: float) -> float:
        """log(smoothed L0 / target): how far the controller still has to go."""
        return math.log(max(self.l0_ema, 0.1) / target)

    def step_controller(self, l0: float, target: float) -> None:
        """Multiplicative control of the sparsity coefficient toward ``target`` L0: by (L0/target)^rate per step
        (the log-ratio clipped to ±1), and only while the smoothed L0 is not already heading to the target by
        itself. The weights answer a new coefficient hundreds of steps late; without that hold, the coefficient
        overshoots while the dense start thins out, and a ReLU-L1 SAE collapses (FVU ≈ 1) once it has."""
        self.l0_ema = l0 if self.l0_ema is None else 0.9 * self.l0_ema + 0.1 * l0
        self.l0_slow = l0 if self.l0_slow is None else 0.99 * self.l0_slow + 0.01 * l0
        err = max(-1.0, min(1.0, self.l0_gap(target)))
        trend = math.log(max(self.l0_ema, 0.1) / max(self.l0_slow, 0.1))
        if err * trend < 0 and abs(trend) > L0_SETTLED:  # on its way: let the weights catch up
            return
        self.state["coeff"] *= math.exp(L0_CONTROL_RATE * err)

    @property
    def scale(self) -> float:
        """The input scale training runs at (E‖x‖² = d_model after it)."""
        return float(self.state["scale"])

    def save(self, sae) -> None:
        """Checkpoint the run (main rank only; nothing without a checkpoint folder)."""
        if self.ckpt_path is None or not distributed.is_main():
            return
        self.ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint_file({"params": sae.get_params(), "d_model": self.d, "step": self.step,
                              "state": {k: v.detach().cpu() for k, v in self.state.items()},
                              "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                              "since_fired": self.since_fired.cpu(), "history": self.history,
                              "schedule": vars(self.schedule),
                              "convergence": self.convergence.state() if self.convergence else None}, self.ckpt_path)



def check_convergence(sae, run: _TrainRun) -> None:
    """While ``sae`` converges, every ``every`` steps: the held-out FVU; start the final decay after ``patience`` measurements without
    a relative improvement of ``tol``, or when the budget's last ``decay_frac`` begins."""
    c, sched, step = run.convergence, run.schedule, run.step
    if step % c.every == 0:
        fvu, objective, fvu_all = held_out(sae, run)
        c.history.append({"step": step, "val_fvu": fvu, "val_objective": objective, "val_fvu_all": fvu_all})
        on_target = run.l0_ema is None or abs(run.l0_gap(sae.target_l0)) < math.log(1.2)
        if objective < c.best * (1 - c.tol):
            c.best, c.bad = objective, 0
        elif on_target:  # while the controller still moves L0, a worse objective is not a plateau
            c.bad += 1
        if c.bad >= c.patience:
            sched.start_decay(step, sae.decay_frac)
    if sched.decay_from is None and step >= int(sched.total * (1 - sae.decay_frac)):
        sched.decay_from = step


@torch.no_grad()
def held_out(sae, run: _TrainRun) -> tuple[float, float, float]:
    """On the held-out rows: (FVU, the training objective — reconstruction plus sparsity penalty, no AuxK — in
    the same units, both on the typical rows; FVU on every row). Early stopping watches the objective: a
    penalised SAE trades FVU for sparsity on its way to convergence, so its FVU alone can rise while training is
    still improving it. Typical rows leave out those above ``OUTLIER_NORM`` × the median norm: a few attention
    sinks can carry most of a held-out set's variance, and an FVU over all rows then follows how those few rows
    are reconstructed (measured in docs/dictionaries.md, "The SAE trainer")."""
    c = run.convergence
    no_dead = torch.zeros_like(run.since_fired, dtype=torch.bool)

    def sums(x):  # (summed squared error, summed objective) over the rows of x
        err = obj = 0.0
        for i in range(0, len(x), sae.batch_size):
            xb = x[i:i + sae.batch_size]
            out = sae._train_forward(run.state, xb, no_dead)
            err += float((out["x_hat"] - xb).pow(2).sum())
            obj += float(out["loss"]) * len(xb)
        return err, obj

    def var(x):
        return float((x - x.mean(0)).pow(2).sum().clamp_min(1e-30))
    x, t = c.val_x, c.typical
    typical = x[t]
    err, obj = sums(typical)
    err_out = sums(x[~t])[0] if not bool(t.all()) else 0.0
    sae._pre_buffer = None
    return err / var(typical), obj / var(typical), (err + err_out) / var(x)


@dataclass
class _Meter:
    """Tokens and time since the last log line; ``log`` turns a step's outputs into one history row."""

    tokens: int = 0
    since: float = field(default_factory=time.perf_counter)

    @torch.no_grad()
    def log(self, sae, run: _TrainRun, out: dict, step: int) -> dict:
        x = out["x"]
        now = time.perf_counter()
        counts = run.window_counts if run.window_counts is not None else torch.zeros_like(run.since_fired)
        stats = {"step": step, "loss": out["loss"].item(),
                 "fvu": ((out["x_hat"] - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item(), "l0": out["l0"],
                 "dead": (run.since_fired >= sae.dead_after_tokens).float().mean().item(),
                 "dense": (counts > DENSE_FRACTION * self.tokens).float().mean().item(),
                 "tok_s": self.tokens / (now - self.since)}
        self.tokens, self.since, run.window_counts = 0, now, None
        run.history.append(stats)
        return stats


def _adam(groups: list[dict], lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel (one pass over each parameter instead of a dozen elementwise ops; its step time:
    benchmarks/RESULTS.md). The update is the same algorithm; checkpoints load either way."""
    params = [p for g in groups for p in g["params"]]
    fused = all(p.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16) and p.device.type in ("cpu", "cuda")
                for p in params)
    return torch.optim.Adam(groups, lr=lr, betas=(0.9, 0.999), fused=fused)


def _hold_out(src: RowSource, fraction: float, seed: int, min_pos: int = 1) -> tuple[RowSource, torch.Tensor]:
    """(training rows, held-out rows), at most MAX_VALIDATION_ROWS and at least one row held out, and at least one
    left to train on. In-memory rows are split at random (seeded); a store out of core holds out whole contexts
    (``StoreRows.hold_out``), read into memory, which its training stream then never reads."""
    if not src.in_memory:
        return src.hold_out(fraction, seed, min_pos, MAX_VALIDATION_ROWS)
    x = src.tensor()
    n = len(x)
    if n < 2:
        raise SuperposError(f"need at least 2 rows to hold some out for convergence, got {n} (or pass n_tokens)")
    n_val = min(MAX_VALIDATION_ROWS, n - 1, max(1, round(fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    return TensorRows(x[perm[n_val:]]), x[perm[:n_val]]


def _last_good(ckpt_path: Path | None) -> str:
    if ckpt_path is not None and ckpt_path.exists():
        return f"; the last good checkpoint is intact in {ckpt_path.parent}"
    return ""


#: what ``_TrainRun.save`` writes: each key of a checkpoint and its type
_CHECKPOINT_KEYS = {"params": dict, "d_model": int, "step": int, "state": dict, "opt": dict, "sched": dict,
                    "since_fired": torch.Tensor, "history": list, "schedule": dict}


def _checked_checkpoint(ckpt, path: Path) -> dict:
    """A loaded checkpoint whose structure is what ``_TrainRun.save`` writes, refused in one line otherwise (its
    checksum only says the bytes are whole: a checkpoint from another superpos, or an older plain ``torch.save``
    file, can hold anything)."""
    def refuse(what: str):
        raise SuperposError(f"checkpoint {path} is not one this superpos writes ({what}); delete it to start the fit "
                            f"over, or use another output folder")

    if not isinstance(ckpt, dict):
        refuse(f"it holds {type(ckpt).__name__}, not a dict")
    for key, kind in _CHECKPOINT_KEYS.items():
        if key not in ckpt:
            refuse(f"no '{key}'")
        if not isinstance(ckpt[key], kind) or isinstance(ckpt[key], bool):
            refuse(f"'{key}' is {type(ckpt[key]).__name__}, expected {kind.__name__}")
    if not isinstance(ckpt.get("convergence"), (dict, type(None))):
        refuse(f"'convergence' is {type(ckpt['convergence']).__name__}")
    state = ckpt["state"]
    for key in ("W_enc", "b_enc", "W_dec", "b_dec", "scale"):
        if not isinstance(state.get(key), torch.Tensor):
            refuse(f"no tensor 'state.{key}'")
    if state["W_dec"].ndim != 2 or not all(isinstance(v, torch.Tensor) for v in state.values()):
        refuse("its state is not a set of tensors with a 2-D W_dec")
    for key in ("scale", "coeff"):
        if key in state and state[key].numel() != 1:
            refuse(f"'state.{key}' has shape {tuple(state[key].shape)}, expected one number")
    fields = {"warm", "total", "decay_from"}
    if set(ckpt["schedule"]) != fields:
        refuse(f"its schedule has keys {sorted(map(str, ckpt['schedule']))}, expected {sorted(fields)}")
    sched = ckpt["schedule"]
    if not all(isinstance(sched[k], int) and not isinstance(sched[k], bool) for k in ("warm", "total")) or not (
            sched["decay_from"] is None or isinstance(sched["decay_from"], int)) or sched["warm"] < 1:
        refuse(f"its schedule is {sched}")
    if ckpt["step"] < 0:
        refuse(f"step {ckpt['step']}")
    return ckpt
