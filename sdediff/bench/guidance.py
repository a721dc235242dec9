"""Class-conditional digits by classifier-free guidance weight: accuracy and Fréchet distance.

For a conditional digits model, every class ``c = 0 .. 9`` is sampled ``per_class`` times at
each guidance weight ``w`` from the same prior draws, within one NFE budget (forward passes; the
final denoise included, as :func:`~sdediff.bench.sweep.digits_by_budget`). Two numbers per ``w``:

- **accuracy**: the fraction of samples the digit classifier
  (:func:`~sdediff.bench.digit_features.predict_digits`) labels as the class they were asked for;
- **Fréchet distance** of all the samples (classes in equal numbers) to the held-out digits in the
  classifier's features, beside its real-against-real floor
  (:func:`~sdediff.bench.digit_features.digits_frechet`).

The same for classifier guidance (a noisy classifier's ``scale * grad log p_t(c | x)`` added to
the unconditional score) when a ``classifier`` is given. Guidance trades one for the other:
``w = 0`` is the conditional model itself; larger ``w`` sharpens each class (accuracy up) and
narrows it (diversity, hence Fréchet distance, down at first, then up).
``benchmarks/bench_guidance.py`` and ``sdediff demo`` call :func:`digits_by_guidance`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..checks import InputValueError
from ..guidance import network_classes
from ..samplers import get as get_sampler
from ..samplers import sample
from .digit_features import DigitsQuality, digits_frechet, predict_digits
from .sweep import T_END


@dataclass
class GuidanceRun:
    """One guidance weight: the samples ``x`` ``(N, 1, 8, 8)`` (clamped to the data range, on the
    CPU), the ``labels`` asked for ``(N,)``, the classifier's ``accuracy`` overall and per class,
    the Fréchet ``quality``, and the cost: ``steps``, ``nfe`` (forward passes), ``evaluations``
    (network evaluations per sample: ``2 nfe`` when ``w > 0``) and ``seconds``."""

    guidance: float
    x: torch.Tensor
    labels: torch.Tensor
    accuracy: float
    class_accuracy: list[float]
    quality: DigitsQuality
    steps: int
    nfe: int
    evaluations: int
    seconds: float


def digits_by_guidance(model, guidances: Sequence[float], per_class: int, sampler: str = "dpm_solver++",
                       budget: int = 20, seed: int = 0, classifier=None,
                       **options) -> Iterator[GuidanceRun]:
    """Yield a :class:`GuidanceRun` per weight in ``guidances`` (see the module docstring). The
    prior draws (``seed``) are shared by every weight, so the rows differ by guidance alone.

    With a noisy ``classifier`` (:func:`sdediff.load_classifier`), each weight is instead a
    classifier-guidance scale: ``model.guide(classifier, c, scale=w)`` on the model's
    unconditional score (a conditional model's null class)."""
    classes = model.num_classes if classifier is None else network_classes(classifier)
    if classes is None:
        raise InputValueError("digits_by_guidance needs a conditional model (num_classes set) or a "
                              "classifier; got an unconditional model and no classifier")
    chosen = get_sampler(sampler, **options)
    fit = chosen.steps_within(budget, model.sde, T_END, reserve=1)
    if fit is None:
        raise InputValueError(f"no step count of {sampler!r} fits {budget} NFE with the final denoise")
    labels = torch.arange(classes).repeat_interleave(per_class)
    device = model.device
    x_T = model.sde.prior_sample((len(labels), 1, 8, 8), generator=torch.Generator().manual_seed(seed))
    for w in guidances:
        guided = (model.condition(labels.to(device), guidance=w) if classifier is None
                  else model.guide(classifier, labels.to(device), scale=w))
        r = sample(guided, x_T=x_T.to(device), sampler=sampler, steps=fit[0],
                   generator=torch.Generator().manual_seed(seed + 1), return_info=True, **options)
        x = r.x.clamp(-1, 1).cpu()
        hit = (predict_digits(x) == labels).double()
        yield GuidanceRun(float(w), x, labels, float(hit.mean()),
                          [float(h.mean()) for h in hit.reshape(classes, per_class)],
                          digits_frechet(x), fit[0], r.nfe, r.evaluations, r.seconds)
