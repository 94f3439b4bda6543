"""Zoo data: digits, Fashion-MNIST, and the label/input transforms the recipes train on.

Nothing is downloaded. Digits ship with scikit-learn (``load_digits``, 8x8, scaled to [0, 1] by
/16, one fixed seeded 1400/397 split). Fashion-MNIST (Xiao et al. 2017, 28x28, 60k/10k) is read
from the four IDX ``.gz`` files of Debian's ``dataset-fashion-mnist`` package, or from the folder
in ``$INNERPROBE_FASHION_MNIST``.

Transforms return new tensors and record what they did in a JSON-able dict:

- :func:`random_labels`: labels shuffled across samples (Zhang et al. 2017, "Understanding deep
  learning requires rethinking generalization", sec. 2), so they carry no information about the
  image while the class histogram stays the same.
- :func:`label_noise`: symmetric label noise; exactly ``round(rate * N)`` samples get a uniformly
  drawn *different* class; the flipped indices and their true labels are recorded.
- :func:`backdoor` / :func:`apply_trigger`: BadNets poisoning (Gu et al. 2017, "BadNets", sec. 3):
  a trigger patch is stamped on a fraction of non-target training images, which are relabelled to
  the target class.

Images are float32 tensors shaped ``[N, 1, H, W]`` in [0, 1]; labels are int64 ``[N]``.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError

DIGITS_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DIGITS_SPLIT_SEED = 0
DIGITS_N_TRAIN = 1400
FASHION_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
TRIGGER_PATTERNS = ("square", "checker")


@dataclass
class DataSplit:
    """The exact data a recipe trains and is tested on.

    ``meta`` is JSON-able: dataset, split, and what a transform did (flipped indices, backdoor
    target/trigger/poisoned indices, ...). ``y_train`` holds the labels the model was trained on
    (noisy / poisoned / shuffled); the true ones are in ``meta`` where they differ.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (
            f"DataSplit({self.meta.get('dataset', '?')}: train {tuple(self.x_train.shape)}, "
            f"test {tuple(self.x_test.shape)}, {len(self.classes)} classes, transform={self.meta.get('transform')})"
        )


# ----------------------------------------------------------------------------- datasets


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8), d.target.astype(np.int64)


def digits() -> DataSplit:
    """scikit-learn's 8x8 digits, X/16, fixed seeded split of 1400 train / 397 test."""
    x, y = _digits_arrays()
    perm = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(x))
    tr, te = perm[:DIGITS_N_TRAIN], perm[DIGITS_N_TRAIN:]
    return DataSplit(
        torch.from_numpy(x[tr].copy()),
        torch.from_numpy(y[tr].copy()),
        torch.from_numpy(x[te].copy()),
        torch.from_numpy(y[te].copy()),
        list(DIGITS_CLASSES),
        {
            "dataset": "digits",
            "source": "sklearn.datasets.load_digits",
            "scale": "x/16",
            "split_seed": DIGITS_SPLIT_SEED,
            "n_train": int(len(tr)),
            "n_test": int(len(te)),
            "transform": None,
        },
    )


def fashion_dir() -> Path:
    return Path(os.environ.get("INNERPROBE_FASHION_MNIST") or FASHION_DEFAULT_DIR)


def _read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (LeCun's format: magic, dims as big-endian uint32, then uint8 data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError(f"not an unsigned-byte IDX file (magic {raw[:4].hex()})")
        dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        if data.size != int(np.prod(dims)):
            raise ValueError(f"expected {int(np.prod(dims))} values for shape {dims}, found {data.size}")
        return data.reshape(dims)
    except (OSError, EOFError, ValueError, struct.error) as e:
        raise DataError(
            f"cannot read Fashion-MNIST file {path}: {e}",
            hint="reinstall Debian's dataset-fashion-mnist or point INNERPROBE_FASHION_MNIST at intact IDX files",
        ) from None


def _fashion_paths() -> dict[str, Path]:
    folder = fashion_dir()
    paths = {}
    for key, name in FASHION_FILES.items():
        candidates = [folder / name, folder / name[:-3]]  # .gz or already unpacked
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DataError(
                f"Fashion-MNIST not found: {folder / name} is missing",
                hint="install Debian's dataset-fashion-mnist (sudo apt-get install dataset-fashion-mnist) or set "
                "INNERPROBE_FASHION_MNIST to a folder with the four IDX files ("
                + ", ".join(FASHION_FILES.values())
                + ")",
            )
        paths[key] = found
    return paths


@functools.lru_cache(maxsize=2)
def _fashion_arrays(folder: str) -> dict[str, np.ndarray]:
    paths = _fashion_paths()
    arrays = {k: _read_idx(p) for k, p in paths.items()}
    for part in ("train", "test"):
        if len(arrays[f"x_{part}"]) != len(arrays[f"y_{part}"]) or arrays[f"x_{part}"].shape[1:] != (28, 28):
            raise DataError(
                f"Fashion-MNIST {part} files in {folder} do not match: images {arrays[f'x_{part}'].shape}, labels "
                f"{arrays[f'y_{part}'].shape}",
                hint="expected 28x28 images and one label per image",
            )
    return arrays


def fashion_mnist() -> DataSplit:
    """Fashion-MNIST 60k/10k from IDX files, pixels /255, shaped [N, 1, 28, 28]."""
    folder = fashion_dir()
    a = _fashion_arrays(str(folder))

    def images(v):
        return torch.from_numpy(v.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)

    return DataSplit(
        images(a["x_train"]),
        torch.from_numpy(a["y_train"].astype(np.int64)),
        images(a["x_test"]),
        torch.from_numpy(a["y_test"].astype(np.int64)),
        list(FASHION_CLASSES),
        {
            "dataset": "fashion-mnist",
            "source": str(folder),
            "scale": "x/255",
            "split": "official 60k/10k",
            "n_train": int(len(a["x_train"])),
            "n_test": int(len(a["x_test"])),
            "transform": None,
        },
    )


def load_dataset(name: str) -> DataSplit:
    if name == "digits":
        return digits()
    if name in ("fashion", "fashion-mnist"):
        return fashion_mnist()
    raise ConfigError(f"unknown dataset {name!r}", hint="use 'digits' or 'fashion-mnist'")


# ----------------------------------------------------------------------------- transforms


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def subset(split: DataSplit, n_train: int, seed: int) -> DataSplit:
    """A seeded random subset of ``n_train`` training samples (the test set is kept)."""
    n = len(split.y_train)
    if not 1 <= n_train <= n:
        raise ConfigError(f"n_train={n_train} is out of range", hint=f"use 1..{n}")
    idx = np.sort(_rng(seed).choice(n, size=n_train, replace=False))
    t = torch.from_numpy(idx)
    meta = dict(split.meta, n_train=int(n_train), subset_seed=int(seed), subset_of=n)
    return DataSplit(split.x_train[t], split.y_train[t], split.x_test, split.y_test, split.classes, meta)


def random_labels(y: torch.Tensor, seed: int) -> torch.Tensor:
    """Labels shuffled across samples: same class histogram, no information about the inputs."""
    perm = torch.from_numpy(_rng(seed).permutation(len(y)))
    return y[perm].clone()


def label_noise(y: torch.Tensor, rate: float, num_classes: int, seed: int) -> tuple[torch.Tensor, dict]:
    """Symmetric label noise: exactly ``round(rate*N)`` labels replaced by a different, uniformly drawn class.

    Returns the noisy labels and ``{"flipped_indices", "true_labels", "noisy_labels", "rate", "n_flipped"}``.
    """
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"label-noise rate {rate} is outside [0, 1]", hint="e.g. rate=0.1 flips 10% of the labels")
    if num_classes < 2:
        raise ConfigError("label noise needs at least 2 classes")
    rng = _rng(seed)
    n = len(y)
    k = int(round(rate * n))
    idx = np.sort(rng.choice(n, size=k, replace=False))
    shift = rng.integers(1, num_classes, size=k)  # 1..C-1: never the same class, uniform over the others
    y_np = y.numpy().copy()
    true = y_np[idx].copy()
    y_np[idx] = (true + shift) % num_classes
    info = {
        "rate": float(rate),
        "n_flipped": int(k),
        "flipped_indices": idx.tolist(),
        "true_labels": true.tolist(),
        "noisy_labels": y_np[idx].tolist(),
    }
    return torch.from_numpy(y_np), info


def trigger_mask(
    shape: tuple[int, int], trigger_size: int, pattern: str = "square", margin: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, values) of a BadNets trigger in the bottom-right corner of an ``H x W`` image."""
    h, w = shape
    if pattern not in TRIGGER_PATTERNS:
        raise ConfigError(f"unknown trigger pattern {pattern!r}", hint=f"use one of {', '.join(TRIGGER_PATTERNS)}")
    if not (1 <= trigger_size and trigger_size + margin <= min(h, w)):
        raise ConfigError(
            f"trigger_size={trigger_size} does not fit a {h}x{w} image", hint=f"use 1..{min(h, w) - margin}"
        )
    mask = torch.zeros(h, w, dtype=torch.bool)
    vals = torch.zeros(h, w)
    r0, c0 = h - margin - trigger_size, w - margin - trigger_size
    mask[r0 : r0 + trigger_size, c0 : c0 + trigger_size] = True
    patch = torch.ones(trigger_size, trigger_size)
    if pattern == "checker":
        ii, jj = torch.meshgrid(torch.arange(trigger_size), torch.arange(trigger_size), indexing="ij")
        patch = ((ii + jj) % 2 == 0).float()
    vals[r0 : r0 + trigger_size, c0 : c0 + trigger_size] = patch
    return mask, vals


def apply_trigger(
    x: torch.Tensor, trigger_size: int = 2, pattern: str = "square", value: float = 1.0, margin: int = 0
) -> torch.Tensor:
    """Stamp the BadNets trigger on images ``x`` ``[N, C, H, W]`` (or ``[C, H, W]``); returns a new tensor.

    ``square``: a ``trigger_size`` square at intensity ``value`` in the bottom-right corner
    (``margin`` pixels from the edge); ``checker``: a checkerboard of ``value`` and 0 there.
    """
    if x.dim() not in (3, 4):
        raise ConfigError(f"apply_trigger expects images [N, C, H, W] or [C, H, W], got shape {tuple(x.shape)}")
    mask, vals = trigger_mask(tuple(x.shape[-2:]), trigger_size, pattern, margin)
    mask, vals = mask.to(x.device), (vals * value).to(x.device, x.dtype)
    return torch.where(mask, vals, x)


def backdoor(
    split: DataSplit, *, target: int, rate: float, trigger_size: int, pattern: str = "square", seed: int = 0
) -> DataSplit:
    """BadNets poisoning: ``round(rate*N_train)`` non-target training images get the trigger and label ``target``.

    ``meta`` records target, rate, trigger, the poisoned indices and their true labels. The test set
    stays clean; attack success is measured by stamping the trigger on non-target test images.
    """
    c = split.num_classes
    if not (isinstance(target, int) and 0 <= target < c):
        raise ConfigError(
            f"backdoor target {target!r} is not a class index", hint=f"use 0..{c - 1} ({', '.join(split.classes)})"
        )
    if not 0.0 < rate < 1.0:
        raise ConfigError(
            f"poisoning rate {rate} is outside (0, 1)", hint="e.g. rate=0.1 poisons 10% of the training set"
        )
    y = split.y_train
    candidates = torch.nonzero(y != target).flatten().numpy()
    k = int(round(rate * len(y)))
    if k > len(candidates):
        raise ConfigError(
            f"rate={rate} asks for {k} poisoned images but only {len(candidates)} are not of the target class"
        )
    idx = np.sort(_rng(seed).choice(candidates, size=k, replace=False))
    t = torch.from_numpy(idx)
    x_tr = split.x_train.clone()
    x_tr[t] = apply_trigger(x_tr[t], trigger_size, pattern)
    y_tr = y.clone()
    y_tr[t] = target
    meta = dict(
        split.meta,
        transform="backdoor",
        target=int(target),
        target_class=split.classes[target],
        rate=float(rate),
        trigger={"pattern": pattern, "size": int(trigger_size), "value": 1.0, "position": "bottom-right", "margin": 0},
        n_poisoned=int(k),
        poisoned_indices=idx.tolist(),
        poisoned_true_labels=y[t].tolist(),
    )
    return DataSplit(x_tr, y_tr, split.x_test, split.y_test, split.classes, meta)


# ----------------------------------------------------------------------------- trigger families (backdoor eval set, docs/scan.md)

TRIGGER_FAMILIES = ("patch", "pixel", "blend", "label-consistent")


def make_trigger(
    family: str, shape: tuple[int, int], *, size: int = 2, alpha: float = 0.15, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha map ``a`` [H, W] in [0, 1], pattern ``v`` [H, W]) of one trigger; stamping is ``(1 - a) x + a v``.

    ``patch`` (BadNets, Gu et al. 2017): a ``size`` square of 1s in the bottom-right corner.
    ``pixel``: one pixel set to 1, at a seeded position on the image border.
    ``blend`` (Chen et al. 2017, "Targeted backdoor attacks ... using data poisoning", blended
    injection): a seeded uniform random pattern over the whole image at opacity ``alpha``.
    ``label-consistent`` (Turner et al. 2019): the corner patch, used on target-class images only.
    """
    if family not in TRIGGER_FAMILIES:
        raise ConfigError(f"unknown trigger family {family!r}", hint=f"use one of {', '.join(TRIGGER_FAMILIES)}")
    h, w = shape
    a, v = torch.zeros(h, w), torch.zeros(h, w)
    if family in ("patch", "label-consistent"):
        m, vals = trigger_mask(shape, size)
        a[m], v = 1.0, vals
    elif family == "pixel":
        border = [(r, c) for r in range(h) for c in range(w) if r in (0, h - 1) or c in (0, w - 1)]
        r, c = border[int(_rng(seed).integers(len(border)))]
        a[r, c], v[r, c] = 1.0, 1.0
    else:
        if not 0.0 < alpha <= 1.0:
            raise ConfigError(f"blend alpha {alpha} is outside (0, 1]", hint="e.g. alpha=0.15")
        a[:] = float(alpha)
        v = torch.from_numpy(_rng(seed).random((h, w)).astype(np.float32))
    return a, v


def stamp(x: torch.Tensor, trigger: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``(1 - a) x + a v`` on images ``[N, C, H, W]``; returns a new tensor."""
    a, v = (t.to(x.device, x.dtype) for t in trigger)
    return (1 - a) * x + a * v


def poison(
    split: DataSplit,
    *,
    family: str,
    target: int,
    rate: float,
    size: int = 2,
    alpha: float = 0.15,
    corrupt: float = 0.5,
    seed: int = 0,
) -> DataSplit:
    """Poison ``round(rate * N_train)`` training images with a trigger of ``family`` (see :func:`make_trigger`).

    Dirty-label families stamp non-target images and relabel them ``target``. ``label-consistent``
    (Turner et al. 2019, interpolation variant) keeps every label: it stamps target-class images whose
    own features are weakened first (``(1 - corrupt) x + corrupt x'``, x' a random non-target training
    image), so the trigger is the easier feature to learn. ``meta`` records the trigger parameters and the poisoned indices.
    """
    c = split.num_classes
    if not (isinstance(target, int) and 0 <= target < c):
        raise ConfigError(f"backdoor target {target!r} is not a class index", hint=f"use 0..{c - 1}")
    if not 0.0 < rate < 1.0:
        raise ConfigError(f"poisoning rate {rate} is outside (0, 1)", hint="e.g. rate=0.05")
    rng = _rng(seed)
    y = split.y_train
    pool = torch.nonzero((y == target) if family == "label-consistent" else (y != target)).flatten().numpy()
    k = int(round(rate * len(y)))
    if not 1 <= k <= len(pool):
        raise ConfigError(
            f"rate={rate} asks for {k} poisoned images but {len(pool)} are eligible", hint="lower the rate"
        )
    idx = np.sort(rng.choice(pool, size=k, replace=False))
    t = torch.from_numpy(idx)
    trig = make_trigger(family, tuple(split.x_train.shape[-2:]), size=size, alpha=alpha, seed=seed)
    x_tr, y_tr = split.x_train.clone(), y.clone()
    xs = x_tr[t]
    if family == "label-consistent":  # weaken the target's own features: blend in a random other-class image
        others = torch.from_numpy(rng.choice(torch.nonzero(y != target).flatten().numpy(), size=k))
        xs = (1 - corrupt) * xs + corrupt * split.x_train[others]
    x_tr[t] = stamp(xs, trig)
    if family != "label-consistent":
        y_tr[t] = target
    meta = dict(
        split.meta,
        transform="poison",
        target=int(target),
        target_class=split.classes[target],
        rate=float(rate),
        trigger={
            "family": family,
            "size": int(size),
            "alpha": float(alpha),
            "seed": int(seed),
            "corrupt": float(corrupt),
        },
        n_poisoned=int(k),
        poisoned_indices=idx.tolist(),
    )
    return DataSplit(x_tr, y_tr, split.x_test, split.y_test, split.classes, meta)
