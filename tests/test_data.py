"""Data sets: toy sets' determinism and scale, the digits' levels and split, files and errors."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits as sklearn_digits

from sdediff.data import (
    DATASETS,
    TOY_DATASETS,
    Dataset,
    gmm_distribution,
    load_dataset,
    load_digits,
    toy_sample,
)

ALLOWED = ("swissroll, moons, 8gaussians, checkerboard, gmm, digits, mnist, mnist:FOLDER, "
           "or a path to a .npy file or an image folder")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def sorted_rows(x):
    """Rows in lexicographic order, to compare sets of examples whatever the split order."""
    x = np.asarray(x).reshape(len(x), -1)
    return x[np.lexsort(x.T[::-1])]


@pytest.fixture(scope="module")
def digits():
    return load_digits()


# ---------------------------------------------------------------------------------- toy sets

def test_names():
    assert DATASETS == (*TOY_DATASETS, "digits", "mnist")
    assert set(TOY_DATASETS) == {"swissroll", "moons", "8gaussians", "checkerboard", "gmm"}


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_shape_and_determinism(name):
    x = toy_sample(name, 500, generator=gen(0))
    assert x.shape == (500, 2) and x.dtype == torch.float32
    assert torch.equal(x, toy_sample(name, 500, generator=gen(0)))
    assert not torch.allclose(x, toy_sample(name, 500, generator=gen(1)))
    torch.manual_seed(3)
    y = toy_sample(name, 10)
    torch.manual_seed(3)
    assert torch.equal(y, toy_sample(name, 10))  # no generator: the global RNG


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_unit_scale(name):
    x = toy_sample(name, 40_000, generator=gen(0))
    assert x.mean(0).abs().max() < 0.03
    assert (x.std(0) - 1).abs().max() < 0.03


def test_gmm_is_its_exact_mixture():
    gmm = gmm_distribution()
    means, stds, weights = gmm.means, gmm.stds, gmm.weights
    assert means.shape == (8, 2) and torch.allclose(weights.sum(), torch.tensor(1.0).double())
    assert torch.allclose(weights @ means, torch.zeros(2).double(), atol=1e-12)
    variance = weights @ (means**2 + stds**2)
    assert torch.allclose(variance, torch.ones(2).double(), atol=1e-12)
    # The samples fall into the components with the mixture's weights.
    x = toy_sample("gmm", 20_000, generator=gen(0)).double()
    nearest = torch.cdist(x, means).argmin(1)
    frequency = torch.bincount(nearest, minlength=8).double() / len(x)
    assert torch.allclose(frequency, weights, atol=0.02)


def test_load_toy_dataset():
    ds = load_dataset("moons", n=1000, seed=5)
    assert ds.train.shape == (1000, 2) and ds.test.shape == (100, 2)
    assert (ds.name, ds.kind, ds.n_levels, ds.shape, ds.dim) == ("moons", "points", None, (2,), 2)
    both = torch.cat([ds.train, ds.test])
    assert ds.data_range == (float(both.min()), float(both.max()))
    assert json.loads(json.dumps(ds.to_config())) == {
        "name": "moons", "kind": "points", "shape": [2],
        "data_range": list(ds.data_range), "n_levels": None}
    assert torch.equal(ds.train, load_dataset("moons", n=1000, seed=5).train)
    assert not torch.allclose(ds.train, load_dataset("moons", n=1000, seed=6).train)
    default = load_dataset("checkerboard")
    assert len(default.train) == 100_000 and len(default.test) == 10_000


# ------------------------------------------------------------------------------------ digits

def test_digits_levels_and_range(digits):
    assert digits.shape == (1, 8, 8) and digits.dim == 64 and digits.kind == "images"
    assert digits.train.dtype == torch.float32
    assert (digits.data_range, digits.n_levels) == ((-1.0, 1.0), 17)
    values = torch.cat([digits.train, digits.test]).unique()
    assert torch.equal(values, torch.linspace(-1, 1, 17))


def test_digits_split_is_a_fixed_partition(digits):
    reference = sklearn_digits()
    assert (len(digits.train), len(digits.test)) == (1438, 359)
    both = torch.cat([digits.train, digits.test]).numpy()
    assert np.array_equal(sorted_rows((both + 1) / 2 * 16), sorted_rows(reference.images))
    again = load_dataset("digits", seed=123)  # the split does not follow the seed
    assert torch.equal(again.train, digits.train) and torch.equal(again.test, digits.test)
    # Each label is its image's label.
    label_of = {img.tobytes(): int(t) for img, t in zip(reference.images, reference.target,
                                                         strict=True)}
    for x, labels in ((digits.train, digits.train_labels), (digits.test, digits.test_labels)):
        images = ((x[:, 0].double() + 1) / 2 * 16).numpy()
        assert [label_of[img.tobytes()] for img in images] == labels.tolist()


def test_digits_subset(digits):
    small = load_dataset("digits", n=100)
    assert torch.equal(small.train, digits.train[:100])
    assert torch.equal(small.train_labels, digits.train_labels[:100])
    assert torch.equal(small.test, digits.test)


# ------------------------------------------------------------------------------------- files

def test_npy_points_round_trip(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3))
    np.save(tmp_path / "points.npy", x)
    ds = load_dataset(str(tmp_path / "points.npy"))
    assert (ds.kind, ds.shape, ds.n_levels) == ("points", (3,), None)
    assert (len(ds.train), len(ds.test)) == (45, 5)
    both = torch.cat([ds.train, ds.test])
    assert np.array_equal(sorted_rows(both), sorted_rows(x.astype(np.float32)))
    assert ds.data_range == (float(x.astype(np.float32).min()), float(x.astype(np.float32).max()))
    assert ds.name == str(tmp_path / "points.npy")


@pytest.mark.parametrize("layout", ["NHW", "NCHW", "NHWC"])
def test_npy_uint8_images(tmp_path, layout):
    channels = 1 if layout == "NHW" else 3
    chw = np.random.default_rng(0).integers(0, 256, size=(20, channels, 6, 5), dtype=np.uint8)
    stored = {"NHW": chw[:, 0], "NCHW": chw, "NHWC": chw.transpose(0, 2, 3, 1)}[layout]
    np.save(tmp_path / "images.npy", stored)
    ds = load_dataset(str(tmp_path / "images.npy"))
    assert (ds.kind, ds.shape, ds.n_levels, ds.data_range) == (
        "images", (channels, 6, 5), 256, (-1.0, 1.0))
    assert (len(ds.train), len(ds.test)) == (18, 2)
    both = torch.cat([ds.train, ds.test]).numpy()
    assert np.allclose(sorted_rows(both), sorted_rows(chw / 255 * 2 - 1), atol=1e-6)


@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGB", 3), ("RGBA", 3)])
def test_image_folder(tmp_path, mode, channels):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(10, 7, 9, 4), dtype=np.uint8)  # 7 high, 9 wide
    for i, p in enumerate(pixels):
        image = Image.fromarray(p[..., 0] if mode == "L" else p[..., : len(mode)], mode)
        image.save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load_dataset(str(tmp_path))
    assert (ds.kind, ds.shape, ds.n_levels, ds.data_range) == (
        "images", (channels, 7, 9), 256, (-1.0, 1.0))
    assert (len(ds.train), len(ds.test)) == (9, 1)
    expected = pixels[..., :channels].transpose(0, 3, 1, 2) / 255 * 2 - 1
    both = torch.cat([ds.train, ds.test]).numpy()
    assert np.allclose(sorted_rows(both), sorted_rows(expected), atol=1e-6)
    assert ds.train.min() >= -1 and ds.train.max() <= 1


def test_image_folder_jpeg(tmp_path):
    for i in range(3):
        Image.new("RGB", (8, 4), (30 * i, 0, 255)).save(tmp_path / f"{i}.JPG")
    ds = load_dataset(str(tmp_path))
    assert ds.shape == (3, 4, 8) and (len(ds.train), len(ds.test)) == (2, 1)


# ------------------------------------------------------------------------------------ errors

def test_unknown_name():
    with pytest.raises(ValueError) as err:
        load_dataset("nope")
    assert str(err.value) == f"unknown data set 'nope'; allowed: {ALLOWED}"
    with pytest.raises(ValueError, match="unknown toy data set 'spiral'; allowed: swissroll, "
                                         "moons, 8gaussians, checkerboard, gmm$"):
        toy_sample("spiral", 10)


def test_missing_path(tmp_path):
    missing = str(tmp_path / "missing.npy")
    with pytest.raises(ValueError) as err:
        load_dataset(missing)
    assert f"data path {missing!r} does not exist" in str(err.value)
    assert ALLOWED in str(err.value)


def test_unsupported_file(tmp_path):
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"unsupported data file '.*data\.csv'; allowed: a \.npy"):
        load_dataset(str(tmp_path / "data.csv"))


def test_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(ValueError) as err:
        load_dataset(str(tmp_path))
    assert str(err.value) == f"no .png/.jpg/.jpeg found in {str(tmp_path)!r}"


def test_unreadable_image(tmp_path):
    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match=r"cannot read image '.*b\.png'"):
        load_dataset(str(tmp_path))


def test_sixteen_bit_image(tmp_path):
    Image.fromarray(np.full((4, 4), 1000, dtype=np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(ValueError, match=r"deep\.png' has mode 'I.*'.*allowed: 8-bit"):
        load_dataset(str(tmp_path))


@pytest.mark.parametrize("second,size", [(("L", (8, 9)), "1x9x8"), (("RGB", (8, 8)), "3x8x8")])
def test_mismatched_images(tmp_path, second, size):
    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    Image.new("L", (8, 8)).save(tmp_path / "b.png")
    Image.new(*second).save(tmp_path / "c.png")
    with pytest.raises(ValueError) as err:
        load_dataset(str(tmp_path))
    assert f"image 'c.png' in {str(tmp_path)!r} is {size} (C x H x W) but 'a.png' is 1x8x8" in str(
        err.value)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_array(tmp_path, bad):
    x = np.zeros((10, 2))
    x[3, 1] = bad
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(ValueError, match=r"array in '.*x\.npy' contains 1 non-finite value"):
        load_dataset(str(tmp_path / "x.npy"))


@pytest.mark.parametrize("shape", [(10,), (2, 3, 4, 5, 6), (10, 0)])
def test_wrong_ndim(tmp_path, shape):
    np.save(tmp_path / "x.npy", np.zeros(shape, dtype=np.float32))
    with pytest.raises(ValueError) as err:
        load_dataset(str(tmp_path / "x.npy"))
    assert f"has shape {shape}; allowed: (N, D) points, or (N, H, W)" in str(err.value)


def test_wrong_dtype(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((10, 2), dtype=np.int64))
    with pytest.raises(TypeError, match=r"has dtype int64; allowed: uint8 .* or a floating dtype"):
        load_dataset(str(tmp_path / "x.npy"))


def test_too_few_examples(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"number of examples in '.*x\.npy' must be >= 2, got 1"):
        load_dataset(str(tmp_path / "x.npy"))


def test_bad_n():
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        load_dataset("moons", n=0)
    with pytest.raises(TypeError, match="n must be an integer, got True"):
        load_dataset("moons", n=True)
    with pytest.raises(ValueError, match="n for 'digits' must be <= 1438, got 5000"):
        load_dataset("digits", n=5000)


def test_dataset_validates():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="unknown data kind 'audio'; allowed: points, images"):
        Dataset("d", x, x, "audio", (0.0, 1.0), None)
    with pytest.raises(ValueError, match=r"'images' data need examples of shape \(C, H, W\)"):
        Dataset("d", x, x, "images", (0.0, 1.0), None)
    with pytest.raises(ValueError, match=r"train examples have shape \(2,\) but test examples"):
        Dataset("d", x, torch.zeros(4, 3), "points", (0.0, 1.0), None)
