"""``superpos run probes``: the computation (the protocol judges, saves and reports)."""
from __future__ import annotations

from superpos.errors import ConfigError
from superpos.hypotheses.probes.config import ProbeConfig
from superpos.hypotheses.probes.prediction import prediction_test
from superpos.hypotheses.probes.probe import (
    _say,
    embedding_geometry,
    full_vocabulary,
    guess_test,
    model_guesses,
    nearest_embedding_accuracy,
    probe_by_depth,
)
from superpos.hypotheses.probes.result import ProbesResult


def tuned_lens(lm, train, cfg: ProbeConfig):
    """The tuned lens at ``cfg.lens``, or one trained on the training contexts (``cfg.lens_steps`` at most)."""
    from superpos.hypotheses.lenses.lens import TunedLens, train_tuned_lens

    if cfg.lens:
        lens = TunedLens.load(cfg.lens)
        lens.check_model(lm)
        return lens.to(lm.device)
    return train_tuned_lens(lm, train, steps=cfg.lens_steps, seed=cfg.seed)[0]


def run(cfg: ProbeConfig) -> ProbesResult:
    """Input-token probes by depth, calibrated geometry against the embedding, the full-vocabulary read-out and
    the via-the-guess test (``superpos run probes``)."""
    if 0 not in cfg.offsets or any(o > 0 for o in cfg.offsets):
        raise ConfigError("offsets", "{field} must include 0 (the current token) and no positive offsets (use run "
                                     "lookahead)")
    from superpos.hypotheses.common import open_experiment
    from superpos.model.residuals import sample_residuals

    out, lm, tokens = open_experiment(cfg)
    sample = sample_residuals(lm, tokens, cfg.per_context, seed=cfg.seed, min_pos=max(1, -min(cfg.offsets)))
    targets, current_probes = {}, None
    for off in cfg.offsets:
        name = {0: "current token", -1: "previous token"}.get(off, f"token at {off:+d}")
        _say(f"probing the {name} at {len(sample.layers)} layers")
        targets[name], probes = probe_by_depth(sample, off, cfg.n_classes, cfg.ridge, cfg.seed, cfg.n_boot,
                                               pooled=off == 0)
        if off == 0:
            current_probes = probes
    W_E = lm.W_E_VD.detach().float().cpu().numpy()
    classes = current_probes[0].classes
    train, test = sample.split_contexts(0.75, seed=cfg.seed)
    _say("class-mean geometry against the embedding")
    geometry = embedding_geometry(sample, W_E, classes, cfg)
    _say("the model's guesses, and the full-vocabulary read-out")
    guess = guess_test(current_probes, test, model_guesses(lm, tokens), cfg.n_boot, cfg.seed)
    vocab = full_vocabulary(train, test, W_E.shape[0], cfg.n_boot, cfg.seed)
    prediction = None
    if cfg.guess_positions:
        _say("decoding the input from the model's predictions at i and at i-1 (logit and tuned lens)")
        prediction = prediction_test(lm, train, test, classes, tuned_lens(lm, train, cfg), cfg.ridge, cfg.n_boot,
                                     cfg.seed, cfg.guess_positions)
    res = ProbesResult(config=cfg, model=lm.name, n_positions=sample.n_positions, layers=sample.layers,
                       targets=targets, nearest_embedding_acc=nearest_embedding_accuracy(sample, W_E, classes),
                       geometry=geometry, guess=guess, vocabulary=vocab, prediction=prediction)
    return res
