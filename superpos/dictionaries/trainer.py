"""The trainer every sparse autoencoder shares (``SparseAutoencoder``): initialisation, the training loop with
checkpoints, early stopping, logging and dead-latent tracking, ``partial_fit``, and publishing the fitted
weights (the run's state and schedule are in ``train_run.py``). Kinds: ``topk.py``, ``relu.py``, ``jumprelu.py``.

Training happens on inputs scaled so that E‖x‖² = d_model (``normalize=True``); the scale is folded
into the weights when training ends, so a fitted SAE takes raw activations and its ``components_``
(the decoder rows) stay unit-norm. Conventions: ``W_enc_FD`` (latents × d_model),
``W_dec_FD`` = ``components_``, ``pre = (x − b_dec) W_encᵀ + b_enc``, ``x̂ = codes W_dec + b_dec``.
"""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

import superpos.dictionaries.train_run as tr
from superpos import distributed, interrupts
from superpos.device import keep_freed_memory
from superpos.dictionaries.base import BaseDictionary, check_finite
from superpos.dictionaries.branches import check_save_at, fork_steps, run_branch, save_branch, saved_branch
from superpos.dictionaries.params import InvalidParameterError
from superpos.dictionaries.sae_params import SAE_PARAMS
from superpos.dictionaries.sources import RowSource, in_memory_if_small, rows_from
from superpos.dictionaries.sparse_ops import aux_k_loss, dense_pairs
from superpos.errors import SuperposError
from superpos.integrity import load_checkpoint


class SparseAutoencoder(BaseDictionary):
    """The trainer every SAE kind shares: initialisation, the loop with checkpoints, early stopping, logging and
    dead-latent tracking, ``partial_fit``, and publishing the fitted weights. A kind sets ``kind``, declares the
    parameters it adds (``_params``; the ones below are every SAE's), defines ``__init__(self, *, ...)`` and
    implements these hooks:

    * ``_train_forward(state, x, dead)`` (required): one training forward on the scaled batch ``x`` with the
      training ``state`` (``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``, the extra parameters, ``scale``, and
      ``coeff`` under a target L0); returns ``{"loss", "x_hat", "l0", "counts"}`` (``counts``: firings per
      latent). ``_with_aux`` adds the AuxK term on the ``dead`` latents.
    * ``_encode(x)`` (required): codes at inference, in raw input units, from the published weights (``_pre``
      gives the pre-activations). ``_decode(codes)`` defaults to ``codes @ components_ + b_dec_``.
    * ``_init_params(sample, d_model, device)``: the starting state from a sample of rows; a kind extends it (the
      penalised kinds start at their target L0).
    * ``_init_extra(n_latents)``, ``_finish_extra(state, src, scale)``, ``_extra_from_fitted(scale)``: trainable
      tensors besides the four (named in ``_extra_params``, stepping at ``_extra_lr_mult`` × lr), the fitted
      state published after training (thresholds), and the way back to the training state for ``partial_fit``.
    * Class attributes: ``_state_names`` (fitted tensors saved), ``_sparsity_param`` (the penalty a
      ``target_l0`` steers), ``_decoder_lr_mult`` (the decoder's step, × lr) and ``_autocast``.
    """

    resumable = True
    _state_names = ("W_enc_", "b_enc_", "b_dec_")
    #: trainable tensors besides W_enc, b_enc, W_dec, b_dec
    _extra_params: tuple[str, ...] = ()
    _autocast = True  # precision="bfloat16" autocasts the step (the TopK kinds cast their encoder product themselves)
    _params = SAE_PARAMS

    # ---------------------------------------------------------------- sizes and defaults
    def _n_latents(self, d_model: int) -> int:
        n = self.n_components or int(round(self.expansion * d_model))
        if n < 1:
            raise InvalidParameterError(f"n_components/expansion give {n} latents; need at least 1")
        return n

    def _lr(self, n_latents: int) -> float:
        # the default rate: see tr.DEFAULT_LR in docs/dictionaries.md ("The SAE trainer")
        return self.lr if self.lr is not None else tr.DEFAULT_LR

    def _check_params(self, d_model: int) -> None:
        """The declared checks, then those that need the data's width (a kind extends it)."""
        self._validate_params()
        self._n_latents(d_model)
        check_save_at(self)

    def _train_forward(self, state: dict, x: torch.Tensor, dead: torch.Tensor) -> dict:  # pragma: no cover
        raise NotImplementedError

    # ---------------------------------------------------------------- parameters
    def _init_params(self, sample_ND: torch.Tensor, d_model: int, dev) -> dict[str, torch.Tensor]:
        n = self._n_latents(d_model)
        gen = torch.Generator().manual_seed(self.seed)
        scale = math.sqrt(d_model / sample_ND.pow(2).sum(1).mean().item()) if self.normalize else 1.0
        xs = sample_ND * scale
        if self.b_dec_init == "median":
            b_dec = tr.geometric_median(xs)
        elif self.b_dec_init == "mean":
            b_dec = xs.mean(0)
        else:  # "zeros" (the declared options)
            b_dec = torch.zeros(d_model)
        W_dec = torch.randn(n, d_model, generator=gen)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        params = {"W_enc": W_dec.clone(), "b_enc": torch.zeros(n), "W_dec": W_dec, "b_dec": b_dec.float()}
        params.update(self._init_extra(n))
        state = {k: v.to(dev).requires_grad_(True) for k, v in params.items()}
        state["scale"] = torch.tensor(scale)
        if self._controls_sparsity:
            state["coeff"] = torch.tensor(float(getattr(self, self._sparsity_param)))
        return state

    #: the penalty coefficient a ``target_l0`` controls (JumpReLU: l0_coeff)
    _sparsity_param: str | None = None

    @property
    def _controls_sparsity(self) -> bool:
        return self._sparsity_param is not None and getattr(self, "target_l0", None) is not None

    def _coeff(self, state: dict) -> float:
        """The sparsity coefficient in force: the controller's while training toward ``target_l0``."""
        return float(state["coeff"]) if "coeff" in state else float(getattr(self, self._sparsity_param))

    def _init_extra(self, n_latents: int) -> dict[str, torch.Tensor]:
        return {}

    def _k_aux(self, d_model: int) -> int:
        """How many dead latents the AuxK loss lets reconstruct the error (default d_model / 2)."""
        return self.aux_k or d_model // 2

    def _with_aux(self, loss, x, x_hat, pre_BF, dead, W_dec_FD, codes_at=None):
        """``loss`` plus the AuxK term on dead latents (when there are some and ``aux_coeff`` > 0); ``codes_at``
        defaults to the ReLU'd entries of the dense, differentiable ``pre_BF``."""
        if self.aux_coeff <= 0 or not bool(dead.any()):
            return loss
        codes_at = codes_at or (lambda r, c: dense_pairs(pre_BF, r, c))
        return loss + self.aux_coeff * aux_k_loss(x, x_hat, pre_BF, dead, self._k_aux(x.shape[1]), W_dec_FD, codes_at)

    #: learning-rate multipliers: the decoder's (TopK: TOPK_DECODER_LR_MULT) and the extra parameters'
    _decoder_lr_mult = _extra_lr_mult = 1.0

    def _param_groups(self, state: dict, lr: float) -> list[dict]:
        if self._decoder_lr_mult == 1.0:
            groups = [{"params": [state[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")]}]
        else:
            groups = [{"params": [state[k] for k in ("W_enc", "b_enc", "b_dec")]},
                      {"params": [state["W_dec"]], "lr": lr * self._decoder_lr_mult}]
        if self._extra_params:
            groups.append({"params": [state[k] for k in self._extra_params], "lr": lr * self._extra_lr_mult})
        return groups

    # ---------------------------------------------------------------- training
    def fit(self, X, y=None, *, layer: int | None = None, checkpoint_dir: str | os.PathLike | None = None,
            checkpoint_every: int = 500, callback: Callable[[int, dict], None] | None = None):
        """Train on ``X`` (array, tensor, or ActivationStore + layer).

        With ``n_tokens`` the run makes ``n_tokens // batch_size`` steps. With ``n_tokens=None`` (the default)
        in-memory data trains until it converges: ``validation_fraction`` of the rows is held out, its FVU is
        measured every epoch (at least every 50 steps), and after ``n_iter_no_change`` measurements without a
        relative improvement of ``tol`` the final decay starts and the run ends (at most ``max_epochs`` passes);
        ``converged_`` says which ended it. So does a store: read in when its rows take at most
        ``STORE_IN_MEMORY_BYTES`` (float32), else streamed epoch after epoch with whole contexts held out. With ``checkpoint_dir``, the state is saved every ``checkpoint_every`` steps,
        on Ctrl-C and at the end; the same ``fit`` resumes it exactly. ``callback(step, stats)`` runs at each log."""
        src = rows_from(X, layer)
        self._check_params(src.d_model)
        dev = self._device()
        if dev.type == "cpu":
            keep_freed_memory()
        self._forget_stream()
        val = None
        if self.n_tokens is None:  # converge: in memory (a store small enough is read in) or streamed from the store
            src = in_memory_if_small(src, self.min_pos, tr.STORE_IN_MEMORY_BYTES)
            src, val = tr._hold_out(src, self.validation_fraction, self.seed, self.min_pos)
        n_rows = src.n_rows(self.min_pos)
        batch = min(self.batch_size, n_rows)
        distributed.check_batch(batch)  # under torchrun the batch is global; each rank trains on a slice
        per_epoch = max(1, n_rows // batch)
        total_steps = per_epoch * self.max_epochs if val is not None else max(1, (self.n_tokens or n_rows) // batch)
        run = self._start_run(src, dev, total_steps, per_epoch, val,
                              Path(checkpoint_dir) / tr.CHECKPOINT if checkpoint_dir else None)
        sched = run.schedule
        batches = src.batches(batch, dev, seed=self.seed, start_batch=run.step, min_pos=self.min_pos)
        bar = tqdm(total=sched.total, initial=run.step, desc=f"fit {self.kind}", unit="step", file=sys.stderr,
                   disable=not self.progress or not distributed.is_main(), dynamic_ncols=True)
        log_every = max(1, min(50, per_epoch // 20 if val is not None else total_steps // 20))
        meter, forks = tr._Meter(), fork_steps(self, batch)
        if forks:  # a resumed run reads back the branches it forked before its checkpoint (saved as they finished)
            self.branches_ = {tokens: saved_branch(self, checkpoint_dir, tokens, dev) for fork, budgets in forks.items()
                              if fork < run.step for tokens in budgets}
        try:
            with interrupts.deferred():
                while run.step < sched.total:
                    interrupts.check()  # Ctrl-C stops here, between steps
                    for tokens in forks.get(run.step, ()):  # a nested budget: its decay branch, then on at constant lr
                        self.branches_[tokens] = run_branch(self, run, src, dev, batch, tokens)
                        if checkpoint_dir and distributed.is_main():  # on disk now: a later checkpoint is past it
                            save_branch(self.branches_[tokens], checkpoint_dir, tokens)
                    step = run.step
                    out = self._train_step(run, distributed.shard(next(batches) * run.scale), step, batch)
                    meter.tokens += batch
                    if (step + 1) % log_every == 0 or step + 1 == sched.total:
                        stats = meter.log(self, run, out, step + 1)
                        bar.set_postfix({k: format(stats[k], f) for k, f in tr._SHOWN.items()}, refresh=False)
                        if callback is not None:
                            callback(step + 1, stats)
                    if run.convergence is not None and sched.decay_from is None:
                        tr.check_convergence(self, run)
                        bar.total = sched.total
                    bar.update(1)
                    if run.step % checkpoint_every == 0:
                        run.save(self)
                    interrupts.crash_point("fit.step", run.step)  # a test's kill: after step n (and its checkpoint)
        except KeyboardInterrupt:
            bar.close()
            run.save(self)  # at the last step the optimizer completed
            if run.ckpt_path is not None:
                print(f"\nsuperpos: stopped at step {run.step}; checkpoint saved in {run.ckpt_path.parent}",
                      file=sys.stderr)
            raise
        bar.close()
        run.save(self)
        self._finish(run.state, src, run.scale)
        self.n_iter_ = run.step
        self.n_tokens_seen_ = run.step * batch
        self.history_ = run.history
        if run.convergence is not None:
            self.converged_ = run.convergence.bad >= run.convergence.patience
            self.validation_history_ = run.convergence.history
            self.steps_per_epoch_ = per_epoch
        return self

    def _start_run(self, src: RowSource, dev, total_steps: int, per_epoch: int, val: torch.Tensor | None,
                   ckpt_path: Path | None) -> tr._TrainRun:
        """A fresh run initialised from a sample of ``src``, or the one saved in ``ckpt_path`` (same settings)."""
        d = src.d_model
        ckpt = None
        if ckpt_path is not None and ckpt_path.exists():
            ckpt = tr._checked_checkpoint(load_checkpoint(ckpt_path, map_location=dev), ckpt_path)
            if ckpt["params"] != self.get_params() or ckpt["d_model"] != d:
                raise SuperposError(f"checkpoint {ckpt_path} was made with other settings; use another output folder")
            n, st = self._n_latents(d), ckpt["state"]
            shapes = {"W_dec": (n, d), "W_enc": (n, d), "b_enc": (n,), "b_dec": (d,)}
            bad = [k for k, shape in shapes.items() if tuple(st[k].shape) != shape]
            if bad or tuple(ckpt["since_fired"].shape) != (n,):
                what = f"'{bad[0]}' {tuple(st[bad[0]].shape)}, expected {shapes[bad[0]]}" if bad else "since_fired"
                raise SuperposError(f"checkpoint {ckpt_path} holds a dictionary of another shape ({what}); use "
                                    f"another output folder")
            state = {k: v.to(dev).requires_grad_(k not in ("scale", "coeff")) for k, v in ckpt["state"].items()}
        else:
            sample = src.sample(8192, seed=self.seed, min_pos=self.min_pos)
            check_finite(sample, src.where)
            state = self._init_params(sample, d, dev)
        lr = self._lr(state["W_dec"].shape[0])
        opt = tr._adam(self._param_groups(state, lr), lr)
        # warm-up: while converging, a share of one epoch (the run's length is not known); with a fixed budget,
        # tr.FIXED_BUDGET_WARMUP steps or a tenth of the run when that is fewer (a short run is never all warm-up)
        warm = self.warmup_steps or (round(tr.WARMUP_FRACTION * per_epoch) if val is not None else tr.FIXED_BUDGET_WARMUP
                                     if self.save_at else  # nested budgets: a warm-up that ignores the total
                                     min(tr.FIXED_BUDGET_WARMUP, round(tr.FIXED_BUDGET_WARMUP_FRACTION * total_steps)))
        self.warmup_steps_ = warm = max(1, warm)
        schedule = tr._Schedule(warm=warm, total=total_steps,
                             decay_from=None if val is not None else int(total_steps * (1 - self.decay_frac)))
        run = tr._TrainRun(d=d, state=state, opt=opt, sched=torch.optim.lr_scheduler.LambdaLR(opt, schedule),
                        since_fired=torch.zeros(state["W_dec"].shape[0], dtype=torch.long, device=dev),
                        ckpt_path=ckpt_path, amp=self._autocast and self.precision == "bfloat16",
                        schedule=schedule)
        if val is not None:
            run.convergence = tr._Convergence(val_x=val.to(dev) * run.scale, every=max(per_epoch, tr.MIN_EVAL_STEPS),
                                           tol=self.tol, patience=self.n_iter_no_change)
        if ckpt is not None:
            other = SuperposError(f"checkpoint {ckpt_path} was made by another superpos version; use another output "
                                  "folder")
            try:  # torch's loaders take whatever the file holds; an older superpos grouped the parameters otherwise
                run.opt.load_state_dict(ckpt["opt"])
                run.sched.load_state_dict(dict(ckpt["sched"]))
            except (ValueError, KeyError, TypeError, IndexError, AttributeError, RuntimeError):
                raise other from None
            for group in run.opt.param_groups:  # a moment of another shape would fail at the first step
                for param in group["params"]:
                    if any(torch.is_tensor(v) and v.ndim and v.shape != param.shape
                           for v in run.opt.state.get(param, {}).values()):
                        raise SuperposError(f"checkpoint {ckpt_path} holds optimizer moments of another shape; use "
                                            f"another output folder")
            vars(schedule).update(ckpt["schedule"])
            if run.convergence is not None:
                saved = ckpt["convergence"]
                if not isinstance(saved, dict) or not set(saved) <= set(vars(run.convergence)):
                    raise other
                vars(run.convergence).update(saved)
            run.since_fired = ckpt["since_fired"].to(dev)
            run.history, run.step = ckpt["history"], ckpt["step"]
            if distributed.is_main():
                print(f"superpos: resuming at step {run.step} of {total_steps} from {ckpt_path}", file=sys.stderr)
        return run

    def _train_step(self, run: tr._TrainRun, x: torch.Tensor, step: int, batch: int) -> dict:
        """One optimizer step on the (scaled) batch ``x``; returns the forward's outputs with ``x`` and ``loss``."""
        if not torch.isfinite(x).all():
            raise SuperposError(f"NaN/inf in training batch at step {step}" + tr._last_good(run.ckpt_path))
        dead = run.since_fired >= self.dead_after_tokens
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=run.amp):  # fp32 master weights
            out = self._train_forward(run.state, x, dead)
        loss = out["loss"].float()
        if not torch.isfinite(loss):
            raise SuperposError(f"loss became NaN/inf at step {step}" + tr._last_good(run.ckpt_path))
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_grads_(run.state.values())
        tr.project_decoder_grad_(run.state["W_dec"])
        run.opt.step()
        run.sched.step()
        run.step = step + 1
        with torch.no_grad():
            tr.renormalise_decoder_(run.state["W_dec"])
            counts = distributed.all_reduce_(out["counts"].clone())  # firing over the global batch
            run.since_fired += batch
            run.since_fired[counts > 0] = 0
            if "coeff" in run.state:  # multiplicative control of the penalty toward the target L0 (smoothed L0)
                run.step_controller(out["l0"], self.target_l0)
            run.window_counts = counts if run.window_counts is None else run.window_counts + counts
        return {**out, "x": x, "loss": loss}

    def _forget_stream(self) -> None:
        for name in ("_pf_state", "_pf_opt", "_pf_fired"):
            self.__dict__.pop(name, None)

    def _state_from_fitted(self, dev, sample_ND: torch.Tensor) -> dict[str, torch.Tensor]:
        """The training state (normalised input units) that ``_finish`` published: the inverse of ``_finish``.
        A loaded dictionary does not carry its input scale; it is measured again on ``sample_ND``."""
        if hasattr(self, "scale_"):
            scale = float(self.scale_)
        else:
            scale = math.sqrt(sample_ND.shape[1] / sample_ND.pow(2).sum(1).mean().item()) if self.normalize else 1.0
        state = {"W_enc": self.W_enc_.clone(), "b_enc": self.b_enc_ * scale, "W_dec": self.components_.clone(),
                 "b_dec": self.b_dec_ * scale}
        state.update(self._extra_from_fitted(scale))
        state = {k: v.detach().float().to(dev).requires_grad_(True) for k, v in state.items()}
        state["scale"] = torch.tensor(scale)
        return state

    def _extra_from_fitted(self, scale: float) -> dict[str, torch.Tensor]:
        return {}

    def partial_fit(self, X, y=None, *, layer: int | None = None):
        """One pass of Adam steps over ``X`` at a constant learning rate.

        Continues from the fitted dictionary when there is one (after ``fit``, ``load_dictionary`` or an earlier
        ``partial_fit``; the optimizer's moments restart after ``fit``/loading), else initialises from ``X``.
        """
        src = rows_from(X, layer)
        d = src.d_model
        self._check_params(d)
        dev = self._device()
        self._check_width(d)
        if not hasattr(self, "_pf_state"):
            sample = src.sample(8192, seed=self.seed, min_pos=self.min_pos)
            if "components_" in vars(self):
                self._pf_state = self._state_from_fitted(dev, sample)
            else:
                self._pf_state = self._init_params(sample, d, dev)
            lr = self._lr(self._pf_state["W_dec"].shape[0])
            self._pf_opt = tr._adam(self._param_groups(self._pf_state, lr), lr)
            self._pf_fired = torch.zeros(self._pf_state["W_dec"].shape[0], dtype=torch.long, device=dev)
        state, scale = self._pf_state, float(self._pf_state["scale"])
        for x in src.batches(self.batch_size, dev, seed=self.seed, min_pos=self.min_pos, epochs=1):
            x = x * scale
            out = self._train_forward(state, x, self._pf_fired >= self.dead_after_tokens)
            self._pf_opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            tr.project_decoder_grad_(state["W_dec"])
            self._pf_opt.step()
            with torch.no_grad():
                tr.renormalise_decoder_(state["W_dec"])
                self._pf_fired += x.shape[0]
                self._pf_fired[out["counts"] > 0] = 0
        self._finish(state, src, scale)
        return self

    def _finish(self, state: dict, src: RowSource, scale: float) -> None:
        """Fold the input scale into the weights (codes and thresholds divide by it) and publish them."""
        self._pre_buffer = None  # the training step's (batch × latents) scratch
        with torch.no_grad():
            self.components_ = state["W_dec"].detach().clone()
            self.W_enc_ = state["W_enc"].detach().clone()
            self.b_enc_ = state["b_enc"].detach() / scale
            self.b_dec_ = state["b_dec"].detach() / scale
            self.scale_ = torch.tensor(scale)
            if "coeff" in state:
                self.sparsity_coeff_ = float(state["coeff"])
            self._finish_extra(state, src, scale)

    def _finish_extra(self, state, src: RowSource, scale) -> None:
        pass

    # ---------------------------------------------------------------- inference (raw input space)
    def _pre(self, x_BD: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b_enc_, x_BD - self.b_dec_, self.W_enc_.T)

    def _decode(self, codes_BF: torch.Tensor) -> torch.Tensor:
        return codes_BF @ self.components_ + self.b_dec_


def _reconstruction_terms(x, x_hat) -> torch.Tensor:
    return (x_hat - x).pow(2).sum(-1).mean()
