"""Denoising score matching (Ho et al. 2020; Song et al. 2021).

``t ~ U(t_min, T)``, ``x_t = alpha(t) x_0 + sigma(t) eps``, and the per-sample loss
``w(t) * mean_d (eps_theta(x_t, t) - eps)^2``, averaged over the batch. Weightings:

- ``"eps"``: ``w = 1`` (Ho et al.'s "simple" loss);
- ``"likelihood"``: ``w = g(t)^2 / sigma(t)^2``, which makes the loss a bound on the negative
  log-likelihood (Song et al. 2021, "Maximum likelihood training of score-based diffusion
  models"). It is ``g^2 ||score_theta + eps/sigma||^2``, written in eps form.

The noise-conditional classifier of classifier guidance (Dhariwal & Nichol 2021; Song et al.
2021, section 5) is trained on the same draws: ``t ~ U(t_min, T)``, ``x_t`` from the same forward
process, and the cross-entropy ``-log p_phi(y | x_t, t)`` (:func:`classifier_loss`).
"""

from __future__ import annotations

import torch

from .checks import InputValueError, check_choice, check_float, check_labels, check_tensor
from .score import ScoreModel

WEIGHTINGS = ("eps", "likelihood")
#: The prediction a noise-conditional classifier records in its checkpoint (class logits, trained
#: by :func:`classifier_loss`), where a score network records one of ``eps``, ``x0``, ``v``,
#: ``score``: how :func:`~sdediff.checkpoint.load_model` and ``load_classifier`` tell them apart.
LOGITS = "logits"


def loss_weight(sde, t: torch.Tensor, weighting: str) -> torch.Tensor:
    """``w(t)`` of the eps-space loss, shape of ``t``."""
    check_choice("weighting", weighting, WEIGHTINGS)
    if weighting == "eps":
        return torch.ones_like(t)
    return sde.g2(t) / sde.sigma(t) ** 2


def dsm_loss(model: ScoreModel, x0: torch.Tensor, weighting: str = "eps",
             generator: torch.Generator | None = None, t_min: float | None = None,
             labels: torch.Tensor | None = None, label_dropout: float = 0.0) -> torch.Tensor:
    """Scalar denoising score matching loss of ``model`` on the batch ``x0`` ``(B, ...)``.

    ``generator`` seeds the times, the noise and the label dropout, so a seeded loss is
    reproducible. ``t_min`` defaults to the process's (1e-5, Song et al.; a discrete chain's
    first index 1/M).

    ``labels`` ``(B,)`` (a conditional network): each example's class, replaced by the null class
    with probability ``label_dropout``, per example (Ho & Salimans 2022: one network learns
    ``eps(x, t, y)`` and ``eps(x, t, null)``; 0.1 is their default).
    """
    check_tensor("x0", x0)
    check_float("label_dropout", label_dropout, 0.0, 1.0)
    if labels is not None:
        dropped = torch.rand(x0.shape[0], generator=generator, device=x0.device) < label_dropout
        if model.num_classes is not None:
            labels = labels.to(x0.device).masked_fill(dropped, model.num_classes)
        model = model.with_labels(labels)
    check_choice("weighting", weighting, WEIGHTINGS)
    sde = model.sde
    t = training_times(sde, x0, generator, t_min)
    xt, eps = sde.perturb(x0, t, generator=generator)
    per_sample = (model.eps(xt, t) - eps).pow(2).reshape(x0.shape[0], -1).mean(dim=1)
    return (loss_weight(sde, t, weighting).to(per_sample) * per_sample).mean()


def training_times(sde, x0: torch.Tensor, generator: torch.Generator | None = None,
                   t_min: float | None = None) -> torch.Tensor:
    """``t ~ U(t_min, T)``, shape ``(B,)`` in ``x0``'s dtype and device, drawn from ``generator``;
    ``t_min`` defaults to the process's."""
    t_min = sde.t_min if t_min is None else t_min
    check_float("t_min", t_min, 0.0, sde.T, low_open=True, high_open=True)
    u = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype, device=x0.device)
    return t_min + (sde.T - t_min) * u


def classifier_loss(classifier, sde, x0: torch.Tensor, labels: torch.Tensor,
                    generator: torch.Generator | None = None, t_min: float | None = None
                    ) -> torch.Tensor:
    """Scalar cross-entropy of a noise-conditional classifier on the batch ``x0`` ``(B, ...)``.

    ``t ~ U(t_min, T)`` and ``x_t = alpha(t) x_0 + sigma(t) eps`` as in :func:`dsm_loss` (the
    same draws from ``generator``, so a seeded loss is reproducible), then
    ``mean_b -log softmax(classifier(x_t, t))[labels_b]``. ``classifier(x, t) -> (B, C)``
    logits (a :class:`~sdediff.nets.NoisyClassifier`); ``labels`` ``(B,)`` in ``0 .. C - 1``.
    """
    check_tensor("x0", x0)
    t = training_times(sde, x0, generator, t_min)
    xt, _ = sde.perturb(x0, t, generator=generator)
    logits = classifier(xt, t)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x0.shape[0]:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise InputValueError(f"classifier(x, t) must return logits of shape ({x0.shape[0]}, "
                              f"num_classes), got {got}")
    labels = check_labels(labels, logits.shape[1], x0.shape[0], what="labels").to(logits.device)
    return torch.nn.functional.cross_entropy(logits.float(), labels)
