"""Nested budgets (warmup-stable-decay): one fixed-budget SAE run also fits a dictionary at each token budget
``B`` in ``save_at``. The schedule's warm-up and constant phase do not depend on the total, so up to
(1 − ``decay_frac``)·B/batch steps the run is the one a separate ``n_tokens=B`` run makes; there it forks a copy
of the weights, optimizer and counters, runs the decay to 0 over the batches that separate run would see (a
second stream opened at that step), publishes it as ``branches_[B]``, and the main run continues at constant lr.
A branch costs its decay steps only."""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from superpos import distributed
from superpos.dictionaries.folder import read_dictionary, save_dictionary
from superpos.dictionaries.params import InvalidParameterError
from superpos.dictionaries.train_run import _Schedule, _TrainRun
from superpos.errors import SuperposError


def check_save_at(sae) -> None:
    """Nested budgets need a fixed ``n_tokens`` larger than each of them (refused in one line otherwise)."""
    if not sae.save_at:
        return
    if sae.n_tokens is None:
        raise InvalidParameterError("save_at needs a fixed n_tokens (nested budgets branch off a fixed-budget run)")
    big = [b for b in sae.save_at if b >= sae.n_tokens]
    if big:
        raise InvalidParameterError(f"save_at budget {big[0]} is not below n_tokens={sae.n_tokens}")


def _steps(sae, tokens: int, batch: int) -> tuple[int, int]:
    """(where the decay of an ``n_tokens=tokens`` run starts, its last step): as ``fit`` computes them."""
    total = max(1, tokens // batch)
    return int(total * (1 - sae.decay_frac)), total


def fork_steps(sae, batch: int) -> dict[int, list[int]]:
    """{the step a branch forks at: [its token budgets]}."""
    forks: dict[int, list[int]] = {}
    for tokens in sorted({int(b) for b in sae.save_at}):
        forks.setdefault(_steps(sae, tokens, batch)[0], []).append(tokens)
    return forks


def run_branch(sae, run: _TrainRun, src, dev, batch: int, tokens: int):
    """The dictionary an ``n_tokens=tokens`` run ends with, from a copy of ``run`` at its decay step."""
    start, total = _steps(sae, tokens, batch)
    state = {k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in run.state.items()}
    lr = sae._lr(state["W_dec"].shape[0])
    opt = type(run.opt)(sae._param_groups(state, lr), **run.opt.defaults)
    opt.load_state_dict(copy.deepcopy(run.opt.state_dict()))
    schedule = _Schedule(warm=run.schedule.warm, total=total, decay_from=start)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    sched.last_epoch = run.sched.last_epoch
    for group, base in zip(opt.param_groups, sched.base_lrs):
        group["lr"] = base * schedule(sched.last_epoch)
    branch = _TrainRun(d=run.d, state=state, opt=opt, sched=sched, since_fired=run.since_fired.clone(),
                       ckpt_path=None, amp=run.amp, schedule=schedule, step=run.step, l0_ema=run.l0_ema,
                       l0_slow=run.l0_slow)
    batches = src.batches(batch, dev, seed=sae.seed, start_batch=run.step, min_pos=sae.min_pos)
    while branch.step < total:
        sae._train_step(branch, distributed.shard(next(batches) * branch.scale), branch.step, batch)
    est = type(sae)(**{**sae.get_params(), "n_tokens": tokens, "save_at": ()})
    est._finish(branch.state, src, branch.scale)
    est.n_iter_, est.n_tokens_seen_, est.warmup_steps_ = branch.step, branch.step * batch, schedule.warm
    return est

def _branch_folder(checkpoint_dir, tokens: int) -> Path:
    return Path(checkpoint_dir) / f"tokens_{tokens}"


def save_branch(branch, checkpoint_dir, tokens: int) -> None:
    """Write a finished nested-budget branch beside the run's checkpoint (``fit_dictionary`` rewrites it with the
    run's metadata at the end), so that a run killed after its fork step loses nothing."""
    save_dictionary(branch, _branch_folder(checkpoint_dir, tokens))


def saved_branch(sae, checkpoint_dir, tokens: int, device):
    """The branch a run saved before it was stopped; a checkpoint past a fork without it cannot be resumed."""
    folder = _branch_folder(checkpoint_dir, tokens) if checkpoint_dir else None
    if folder is None or not folder.exists():
        raise SuperposError(f"the run resumes past the fork of its {tokens:,}-token branch, which was not saved "
                            f"({folder}): delete the checkpoint to refit")
    return read_dictionary(folder, {sae.kind: type(sae)}, device=str(device))
