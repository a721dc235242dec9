"""A small MNIST classifier: the feature space of the 28x28 digits' Fréchet distance, and class
coverage (the sibling of :mod:`sdediff.bench.digit_features` for ``--data mnist``).

Inception features are a download and a poor fit for 28x28 grey digits, so we train our own,
reproducibly, on the training split of the MNIST data at hand (:func:`sdediff.data.load_mnist`:
the 4,000 training images of the 5,000-image subset by default; the held-out split is never
seen):

    MnistClassifier: conv 3x3 (1 -> 16), SiLU, conv 3x3 stride 2 (16 -> 32), SiLU    28 -> 14
                     conv 3x3 stride 2 (32 -> 64), SiLU                               14 -> 7
                     flatten (3136), linear (3136 -> 64), SiLU  = the features (64-D)
                     linear (64 -> 10)                          = the class logits

trained by :func:`train_mnist_classifier` (Adam, cross-entropy, :data:`EPOCHS` epochs of batches
of 64, cosine learning rate, seeded; under a minute on one CPU thread). No weights ship: the
classifier is retrained, identically for a seed, the first time it is needed in a process
(:func:`mnist_classifier`), and the held-out accuracy is reported with every measurement.

- :func:`mnist_features`: the 64-D features of images ``(N, 1, 28, 28)`` in ``[-1, 1]``;
- :func:`mnist_class_histogram`: the fraction of images per predicted class;
- :func:`mnist_frechet`: the Fréchet distance (:func:`sdediff.bench.metrics.frechet_distance`)
  between images and the held-out split in this feature space, with the real-vs-real floor (as
  many training images against the held-out split) beside it, and the class histogram.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from ..checks import InputValueError
from .digit_features import ConvClassifier, DigitsQuality, check_images, fit_classifier
from .metrics import frechet_distance

EPOCHS, SEED = 8, 0
MNIST_SHAPE = (1, 28, 28)


class MnistClassifier(ConvClassifier):
    """Three convolutions (28 -> 28 -> 14 -> 7) and a 64-D feature layer, for 28x28 digits."""

    def __init__(self):
        super().__init__(channels=(16, 32, 64), size=28)


def train_mnist_classifier(dataset=None, seed: int = SEED, epochs: int = EPOCHS) -> MnistClassifier:
    """The classifier trained on ``dataset.train`` (default :func:`sdediff.data.load_mnist`),
    deterministic for a seed."""
    from ..data import load_mnist

    data = load_mnist() if dataset is None else dataset
    x, y = _check_mnist(data.train), data.train_labels
    if y is None:
        raise InputValueError(f"data set {data.name!r} has no labels; the MNIST classifier needs them")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = MnistClassifier()
    return fit_classifier(net, x, y, seed, epochs)


@lru_cache(maxsize=1)
def mnist_classifier() -> MnistClassifier:
    """The classifier of the default MNIST data, trained once per process."""
    return train_mnist_classifier()


def _check_mnist(x: torch.Tensor) -> torch.Tensor:
    return check_images(x, MNIST_SHAPE, "MNIST")


@torch.no_grad()
def mnist_features(x: torch.Tensor, classifier: MnistClassifier | None = None) -> torch.Tensor:
    """64-D features ``(N, 64)`` of images ``(N, 1, 28, 28)`` (clipped to ``[-1, 1]`` first)."""
    x = _check_mnist(x)
    net = classifier or mnist_classifier()
    return torch.cat([net.features(part) for part in x.split(1000)])


@torch.no_grad()
def predict_mnist(x: torch.Tensor, classifier: MnistClassifier | None = None) -> torch.Tensor:
    """Predicted classes ``(N,)`` of images ``(N, 1, 28, 28)``."""
    x = _check_mnist(x)
    net = classifier or mnist_classifier()
    return torch.cat([net(part).argmax(1) for part in x.split(1000)])


def mnist_class_histogram(x: torch.Tensor, classifier: MnistClassifier | None = None) -> list[float]:
    """Fraction of the images predicted as each class 0..9 (sums to 1)."""
    counts = torch.bincount(predict_mnist(x, classifier), minlength=10).double()
    return (counts / counts.sum()).tolist()


def mnist_accuracy(classifier: MnistClassifier | None = None, dataset=None) -> float:
    """The classifier's accuracy on the held-out split of ``dataset`` (default the subset)."""
    from ..data import load_mnist

    data = load_mnist() if dataset is None else dataset
    return float((predict_mnist(data.test, classifier) == data.test_labels).double().mean())


@dataclass
class MnistQuality(DigitsQuality):
    """:class:`~sdediff.bench.digit_features.DigitsQuality` (``frechet``, ``floor``, ``classes``,
    ``n``, ``ratio``) with the verdict of issue 15's bar: :attr:`fine`."""

    #: The bar: the Fréchet distance at most this many times the floor ...
    MAX_RATIO = 2.0
    #: ... and every class between these fractions of the samples.
    CLASS_RANGE = (0.05, 0.15)

    @property
    def fine(self) -> bool:
        low, high = self.CLASS_RANGE
        return self.ratio <= self.MAX_RATIO and all(low <= c <= high for c in self.classes)


def mnist_frechet(x: torch.Tensor, seed: int = 0, classifier: MnistClassifier | None = None,
                  dataset=None) -> MnistQuality:
    """Fréchet distance of images ``x`` ``(N, 1, 28, 28)`` to the held-out split of ``dataset``
    (default :func:`sdediff.data.load_mnist`) in classifier features, with the floor from
    ``len(x)`` training images (drawn without replacement with ``seed``; all of them when ``x``
    has more) and the class histogram of ``x``."""
    from ..data import load_mnist

    data = load_mnist() if dataset is None else dataset
    held_out = mnist_features(data.test, classifier)
    g = torch.Generator().manual_seed(seed)
    n = min(len(x), len(data.train))
    real = data.train[torch.randperm(len(data.train), generator=g)[:n]]
    return MnistQuality(frechet=frechet_distance(mnist_features(x, classifier), held_out),
                        floor=frechet_distance(mnist_features(real, classifier), held_out),
                        classes=mnist_class_histogram(x, classifier), n=len(x))
