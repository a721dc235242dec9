"""A small digit classifier: the feature space of the digits' Fréchet distance, and class coverage.

Image quality needs a feature space in which "looks like a digit" is measurable without a
download. Inception features do not exist for 8x8 digits, so we train our own, reproducibly, on
the digits' training split only (:func:`sdediff.data.load_digits`; the held-out split is never
seen):

    DigitClassifier: conv 3x3 (1 -> 16), SiLU, conv 3x3 stride 2 (16 -> 32), SiLU   8x8 -> 4x4
                     flatten (512), linear (512 -> 64), SiLU  = the features (64-D)
                     linear (64 -> 10)                        = the class logits

trained by :func:`train_digit_classifier` (Adam, cross-entropy, :data:`EPOCHS` epochs of
batches of 64, seeded). Its weights ship with the package (``pretrained/digit_classifier``,
150 kB), so every user measures in the same space; ``python -m sdediff.bench.digit_features``
retrains and rewrites them (a few seconds on a CPU). Held-out accuracy is printed by that command
and checked by the tests.

- :func:`digit_features`: the 64-D features of images ``(N, 1, 8, 8)`` in ``[-1, 1]``;
- :func:`class_histogram`: the fraction of images per predicted class (class coverage);
- :func:`digits_frechet`: the Fréchet distance (:func:`sdediff.bench.metrics.frechet_distance`)
  between images and the held-out split in this feature space, with the real-vs-real floor (as
  many training digits against the held-out split) beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from ..checks import InputValueError, check_batch, check_int
from .metrics import frechet_distance

#: Where the shipped classifier lives: with the package's other weights, in ``sdediff/pretrained``.
WEIGHTS = Path(__file__).resolve().parents[1] / "pretrained" / "digit_classifier.safetensors"
EPOCHS, BATCH_SIZE, LEARNING_RATE, SEED = 40, 64, 2e-3, 0
FEATURES = 64
DIGIT_SHAPE = (1, 8, 8)


class ConvClassifier(nn.Module):
    """Strided 3x3 convolutions (SiLU) and a 64-D feature layer; ``forward`` returns logits
    ``(N, 10)``. ``channels``: the convolutions' widths (the first keeps the size, each later one
    halves it); ``size``: the input's side."""

    def __init__(self, channels=(16, 32), size: int = 8):
        super().__init__()
        layers, width = [], 1
        for i, out in enumerate(channels):
            layers += [nn.Conv2d(width, out, 3, stride=1 if i == 0 else 2, padding=1), nn.SiLU()]
            width, size = out, size if i == 0 else (size + 1) // 2
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * size * size, FEATURES),
                                  nn.SiLU())
        self.head = nn.Linear(FEATURES, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DigitClassifier(ConvClassifier):
    """Two convolutions (8 -> 8 -> 4) and a 64-D feature layer, for the 8x8 digits."""

    def __init__(self):
        super().__init__(channels=(16, 32), size=8)


def fit_classifier(net: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int,
                   epochs: int) -> nn.Module:
    """Train ``net`` on images ``x`` and labels ``y`` by cross-entropy (Adam, cosine decay,
    batches of :data:`BATCH_SIZE` in an order seeded by ``seed``); returns it in eval mode."""
    check_int("epochs", epochs, minimum=1)
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=epochs * -(-len(x) // BATCH_SIZE))
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), BATCH_SIZE):
            batch = order[i:i + BATCH_SIZE]
            loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return net.eval()


def train_digit_classifier(seed: int = SEED, epochs: int = EPOCHS) -> DigitClassifier:
    """The classifier trained on the digits' training split (deterministic for a seed)."""
    from ..data import load_digits

    data = load_digits()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DigitClassifier()
    return fit_classifier(net, data.train, data.train_labels, seed, epochs)


@lru_cache(maxsize=1)
def load_digit_classifier() -> DigitClassifier:
    """The shipped classifier (trained by :func:`train_digit_classifier` if the file is absent)."""
    from safetensors.torch import load_file

    if not WEIGHTS.is_file():
        return train_digit_classifier()
    net = DigitClassifier()
    net.load_state_dict(load_file(str(WEIGHTS)), strict=True)
    return net.eval()


def check_images(x: torch.Tensor, shape: tuple[int, ...], what: str) -> torch.Tensor:
    """Images ``(N, *shape)`` for a classifier, as float32 clipped to ``[-1, 1]``."""
    check_batch("images", x)
    if tuple(x.shape[1:]) != shape:
        raise InputValueError(f"images must have shape (N, {', '.join(map(str, shape))}) in [-1, 1] "
                              f"({what}), got {tuple(x.shape)}")
    return x.float().clamp(-1, 1)


def _check_digits(x: torch.Tensor) -> torch.Tensor:
    return check_images(x, DIGIT_SHAPE, "the digits")


@torch.no_grad()
def digit_features(x: torch.Tensor) -> torch.Tensor:
    """64-D features ``(N, 64)`` of digits ``(N, 1, 8, 8)`` (clipped to ``[-1, 1]`` first)."""
    return load_digit_classifier().features(_check_digits(x))


@torch.no_grad()
def predict_digits(x: torch.Tensor) -> torch.Tensor:
    """Predicted classes ``(N,)`` of digits ``(N, 1, 8, 8)``."""
    return load_digit_classifier()(_check_digits(x)).argmax(1)


def class_histogram(x: torch.Tensor) -> list[float]:
    """Fraction of the images predicted as each class 0..9 (sums to 1)."""
    counts = torch.bincount(predict_digits(x), minlength=10).double()
    return (counts / counts.sum()).tolist()


@dataclass
class DigitsQuality:
    """``frechet``: of the images against the held-out split; ``floor``: the same for as many
    training digits (real against real); ``classes``: :func:`class_histogram`."""

    frechet: float
    floor: float
    classes: list[float]
    n: int

    @property
    def ratio(self) -> float:
        return self.frechet / self.floor


def digits_frechet(x: torch.Tensor, seed: int = 0) -> DigitsQuality:
    """Fréchet distance of digits ``x`` to the held-out split in classifier features, with the
    floor from ``len(x)`` training digits (drawn without replacement with ``seed``; all of them,
    1437, when ``x`` has more)."""
    from ..data import load_digits

    data = load_digits()
    held_out = digit_features(data.test)
    g = torch.Generator().manual_seed(seed)
    n = min(len(x), len(data.train))
    real = data.train[torch.randperm(len(data.train), generator=g)[:n]]
    return DigitsQuality(frechet=frechet_distance(digit_features(x), held_out),
                         floor=frechet_distance(digit_features(real), held_out),
                         classes=class_histogram(x), n=len(x))


def held_out_accuracy(net: DigitClassifier) -> float:
    from ..data import load_digits

    data = load_digits()
    with torch.no_grad():
        return float((net(data.test).argmax(1) == data.test_labels).double().mean())


def main() -> None:
    """Retrain the shipped classifier and rewrite its weights."""
    import time

    from safetensors.torch import save_file

    start = time.perf_counter()
    net = train_digit_classifier()
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(WEIGHTS))
    print(f"trained the digit classifier in {time.perf_counter() - start:.1f} s; held-out "
          f"accuracy {held_out_accuracy(net):.4f}; wrote {WEIGHTS}")


if __name__ == "__main__":
    main()
