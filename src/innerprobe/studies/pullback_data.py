"""Localisation data for the pullback study: planted-feature digits and 2x2 digit mosaics.

* **Planted stamps** (a dataset modification in the style of Zhou et al. 2022): one of four 3x3
  binary stamps is written into a dimmed digit (x 0.5); the stamp alone decides the label (4
  classes), the digit is a distractor. ``positions='corners'`` puts it in one of the 4 corners (an
  MLP can learn that), ``'random'`` anywhere (a CNN is needed). The ground-truth mask is the 3x3 block.
* **Mosaics** (Arras et al. 2022): a CNN is trained on 16x16 canvases holding one digit in a random
  quadrant; a test mosaic holds two tiles of the target class and two of other classes.

Models are built with ``zoo.models`` and trained with ``zoo.training.fit``, seeded, and cached as
safetensors under the temp folder (``$TMPDIR/innerprobe-pullback``), keyed by recipe and seed.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

STAMPS = torch.tensor([
    [[1, 0, 1], [0, 1, 0], [1, 0, 1]],  # X
    [[0, 1, 0], [1, 1, 1], [0, 1, 0]],  # plus
    [[1, 1, 1], [1, 0, 1], [1, 1, 1]],  # ring
    [[1, 1, 1], [0, 0, 0], [1, 1, 1]],  # bars
], dtype=torch.float32)
CORNERS = [(0, 0), (0, 5), (5, 0), (5, 5)]


def planted(x: torch.Tensor, seed: int, positions: str = "corners", copies: int = 1, dim: float = 0.5):
    """(images [N*copies, 1, 8, 8], labels (stamp id), masks [N*copies, 8, 8] bool)."""
    gen = torch.Generator().manual_seed(seed)
    xs = x.repeat(copies, 1, 1, 1) * dim
    n = xs.shape[0]
    labels = torch.randint(0, len(STAMPS), (n,), generator=gen)
    if positions == "corners":
        pos = torch.tensor(CORNERS)[torch.randint(0, 4, (n,), generator=gen)]
    else:
        pos = torch.randint(0, 6, (n, 2), generator=gen)
    masks = torch.zeros(n, 8, 8, dtype=torch.bool)
    out = xs.clone()
    for i in range(n):
        r, c = int(pos[i, 0]), int(pos[i, 1])
        out[i, 0, r:r + 3, c:c + 3] = STAMPS[labels[i]]
        masks[i, r:r + 3, c:c + 3] = True
    return out, labels, masks


def canvases(x: torch.Tensor, y: torch.Tensor, seed: int, copies: int = 2):
    """Training canvases 16x16 with one 8x8 digit in a random quadrant (label = the digit)."""
    gen = torch.Generator().manual_seed(seed)
    xs, ys = x.repeat(copies, 1, 1, 1), y.repeat(copies)
    q = torch.randint(0, 4, (xs.shape[0],), generator=gen)
    out = torch.zeros(xs.shape[0], 1, 16, 16)
    for i in range(xs.shape[0]):
        r, c = 8 * (int(q[i]) // 2), 8 * (int(q[i]) % 2)
        out[i, :, r:r + 8, c:c + 8] = xs[i]
    return out, ys


def mosaics(x: torch.Tensor, y: torch.Tensor, n: int, seed: int):
    """(mosaics [n, 1, 16, 16], target classes [n], target-tile masks [n, 16, 16]): 2 tiles of the target, 2 of others."""
    gen = torch.Generator().manual_seed(seed)
    by_class = {c: torch.nonzero(y == c)[:, 0] for c in range(10)}
    out = torch.zeros(n, 1, 16, 16)
    masks = torch.zeros(n, 16, 16, dtype=torch.bool)
    targets = torch.randint(0, 10, (n,), generator=gen)
    for i in range(n):
        c = int(targets[i])
        others = [k for k in range(10) if k != c]
        oc = [others[j] for j in torch.randperm(9, generator=gen)[:2].tolist()]
        classes = [c, c] + oc
        slots = torch.randperm(4, generator=gen).tolist()
        for cls, slot in zip(classes, slots):
            pool = by_class[cls]
            img = x[pool[torch.randint(0, len(pool), (1,), generator=gen)]][0]
            r, col = 8 * (slot // 2), 8 * (slot % 2)
            out[i, :, r:r + 8, col:col + 8] = img
            if cls == c:
                masks[i, r:r + 8, col:col + 8] = True
    return out, targets, masks


# --------------------------------------------------------------------------- trained models
RECIPES = {
    # name: (builder kwargs, data kind, epochs, quick epochs)
    # (epochs are small on purpose: every one reaches ~100% test accuracy, recorded in the study)
    "planted-cnn": ({"arch": "cnn", "channels": (16, 32, 64), "num_classes": 4, "image_size": 8}, "random", 8, 8),
    "planted-deep-mlp": ({"arch": "deep_mlp", "width": 64, "depth": 6, "num_classes": 4}, "corners", 20, 20),
    "mosaic-cnn": ({"arch": "cnn", "channels": (16, 32, 64), "num_classes": 10, "image_size": 16}, "canvas", 8, 8),
}


def _cache_dir() -> Path:
    return Path(os.environ.get("INNERPROBE_PULLBACK_TMP") or Path(tempfile.gettempdir()) / "innerprobe-pullback")


def train_local(name: str, seed: int, quick: bool = False):
    """(model in eval mode, info dict) for one of :data:`RECIPES`; trained on digits and cached."""
    from safetensors.torch import load_file, save_file

    from .. import zoo

    kwargs, kind, epochs, q_epochs = RECIPES[name]
    epochs = q_epochs if quick else epochs
    key = hashlib.sha1(json.dumps([name, kwargs, kind, epochs, seed, 1], sort_keys=True, default=str).encode()).hexdigest()[:12]
    path = _cache_dir() / f"{name}-{seed}-{key}"
    kw = {k: v for k, v in kwargs.items() if k != "arch"}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = zoo.models.build(kwargs["arch"], **kw)
    split = zoo.recipe_data("digits-cnn", seed=0)
    if kind == "canvas":
        xtr, ytr = canvases(split.x_train, split.y_train, seed * 7 + 1)
        xte, yte = canvases(split.x_test, split.y_test, seed * 7 + 2, copies=1)
    else:
        xtr, ytr, _ = planted(split.x_train, seed * 7 + 1, kind, copies=3)
        xte, yte, _ = planted(split.x_test, seed * 7 + 2, kind)
    if (path / "model.safetensors").is_file():
        model.load_state_dict(load_file(path / "model.safetensors"))
        info = json.loads((path / "info.json").read_text())
    else:
        run = zoo.training.fit(model, xtr, ytr, epochs=epochs, lr=2e-3, batch_size=64, seed=seed, description=f"training {name} (seed {seed})")
        model.eval()
        info = {"name": name, "seed": seed, "epochs": epochs, "train_seconds": run["train_seconds"],
                "train_accuracy": zoo.training.accuracy(model, xtr, ytr)}
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
        (path / "info.json").write_text(json.dumps(info))
    model.eval()
    info["test_accuracy"] = zoo.training.accuracy(model, xte, yte)
    return model, info
