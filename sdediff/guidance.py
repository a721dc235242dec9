"""Guidance through the one score interface: classifier-free guidance and classifier guidance.

Both return a new :class:`~sdediff.score.ScoreModel`, so every sampler, ``encode``, ``decode``,
``interpolate`` and ``log_likelihood`` run guided without a change
(:meth:`ScoreModel.condition <sdediff.score.ScoreModel.condition>`,
:meth:`ScoreModel.guide <sdediff.score.ScoreModel.guide>`).

- Classifier-free guidance (Ho & Salimans 2022), with ``w >= 0``::

      eps~(x, t) = (1 + w) eps(x, t, y) - w eps(x, t, null)

  the two evaluations batched as one forward pass of ``2B`` (``w = 0`` is the plain conditional
  model, one pass of ``B``). The combination is affine with weights summing to 1, so it is taken
  in the network's own prediction (``eps``, ``x0``, ``v`` or ``score``): all give the same
  ``eps~``. It is the score of ``p_t(x) p_t(y | x)^(1 + w)`` at each ``t`` separately, exact for
  ``w = 0`` only.
- Classifier guidance (Song et al. 2021, Dhariwal & Nichol 2021), with a noise-conditional
  classifier ``p_t(y | x)`` given as logits ``classifier(x, t) -> (B, C)``::

      score~(x, t) = score(x, t) + s grad_x log p_t(y | x)

  With the exact classifier and ``s = 1`` this is exactly the class-conditional score (Bayes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .checks import InputValueError, check_float, check_labels


def network_classes(net) -> int | None:
    """The ``num_classes`` of a conditional network (looking through DDP and ``torch.compile``
    wrappers), or ``None`` for an unconditional one or a plain function."""
    for candidate in (net, getattr(net, "module", None), getattr(net, "_orig_mod", None)):
        classes = getattr(candidate, "num_classes", None)
        if isinstance(classes, int):
            return classes
    return None


def label_batch(y) -> int:
    """The batch a label argument fixes: ``len(y)`` for a ``(B,)`` tensor, else 1 (any batch)."""
    return y.shape[0] if isinstance(y, torch.Tensor) and y.dim() == 1 else 1


def _labels_for(y, num_classes: int, batch: int, null: bool) -> torch.Tensor:
    """``y`` as ``(batch,)`` labels; a ``(B,)`` tensor must match the batch the solver runs."""
    if label_batch(y) not in (1, batch):
        raise InputValueError(f"the model was conditioned on {label_batch(y)} labels (one per sample) but "
                              f"is called on a batch of {batch}; condition on an int (one class for "
                              f"every batch) or on {batch} labels")
    return check_labels(y, num_classes, batch, null=null)


class ClassConditioned(nn.Module):
    """``net(x, t) -> prediction`` of a conditional network ``net(x, t, y)`` at labels ``y``, with
    classifier-free guidance weight ``guidance`` (see the module docstring).

    ``y``: an int, or ``(B,)`` labels (then every batch has ``B`` samples); with ``null=True``
    a label may be ``num_classes`` (the null class: training's label dropout).
    """

    def __init__(self, net: Callable, y, guidance: float, num_classes: int, null: bool = False):
        super().__init__()
        self.net = net
        self.y = y
        self.guidance = guidance
        self.classes = num_classes
        self.null = null

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        labels = _labels_for(self.y, self.classes, batch, self.null).to(x.device)
        if self.guidance == 0:
            return self.net(x, t, labels)
        null = torch.full_like(labels, self.classes)
        both = self.net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
        cond, uncond = both.chunk(2)
        return (1 + self.guidance) * cond - self.guidance * uncond


class ClassifierGuided(nn.Module):
    """``net(x, t) -> score``: ``model``'s score plus ``scale * grad_x log p_t(y | x)``, with
    ``log p_t(y | x) = log_softmax(classifier(x, t))[y]`` (see the module docstring).

    The gradient is taken by autograd whatever the caller's grad mode (samplers run without
    grad); when the caller itself differentiates (an exact divergence), the graph is kept.
    """

    def __init__(self, model, classifier: Callable, y, scale: float):
        super().__init__()
        self.model = [model]            # a ScoreModel (a list: not registered as a submodule)
        if isinstance(model.net, nn.Module):
            self.net = model.net        # for the device of the guided model
        self.classifier = classifier
        self.y = y
        self.scale = scale
        self.classes = network_classes(classifier)

    def log_prob(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``log p_t(y | x)`` per sample, shape ``(B,)``."""
        logits = self.classifier(x, t)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise InputValueError(f"classifier(x, t) must return logits of shape ({x.shape[0]}, "
                                  f"num_classes), got {got}")
        labels = _labels_for(self.y, logits.shape[1], x.shape[0], null=False).to(x.device)
        return torch.log_softmax(logits, dim=1).gather(1, labels[:, None])[:, 0]

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        score = self.model[0].score(x, t)
        if self.scale == 0:
            return score
        keep_graph = torch.is_grad_enabled() and x.requires_grad
        with torch.enable_grad():
            xg = x if keep_graph else x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_prob(xg, t).sum(), xg, create_graph=keep_graph)
        return score + self.scale * grad.to(score.dtype)


def check_guidance(guidance) -> float:
    """A classifier-free guidance weight ``w``: finite and ``>= 0`` (0 = plain conditional)."""
    return check_float("guidance", guidance, 0.0, None)


def check_scale(scale) -> float:
    """A classifier-guidance scale ``s``: finite and ``>= 0`` (1 = Bayes' rule, exact)."""
    return check_float("scale", scale, 0.0, None)
