"""Localisation recipes: planted-feature digits and 2x2 digit mosaics, with ground-truth masks (docs/zoo.md).

* **Planted stamps** (a dataset modification in the style of Zhou et al. 2022): one of four 3x3
  binary stamps is written into a dimmed digit (x 0.5); the stamp alone decides the label (4
  classes), the digit is a distractor. ``positions='corners'`` puts it in one of the 4 corners (an
  MLP can learn that), ``'random'`` anywhere (a CNN is needed). The ground-truth mask is the 3x3 block.
* **Mosaics** (Arras et al. 2022): a CNN is trained on 16x16 canvases holding one digit in a random
  quadrant; a test mosaic holds two tiles of the target class and two of other classes.

The models are zoo recipes (``loc-planted-cnn``, ``loc-planted-deep-mlp``, ``loc-mosaic-cnn``), trained
on the 8x8 digits and cached like every other zoo model (``zoo.load("loc-mosaic-cnn", seed=1)``).
"""

from __future__ import annotations

import torch

from . import data as D
from .recipes import RECIPES, Floor, Recipe, Trained
from .training import accuracy, fit

STAMPS = torch.tensor(
    [
        [[1, 0, 1], [0, 1, 0], [1, 0, 1]],  # X
        [[0, 1, 0], [1, 1, 1], [0, 1, 0]],  # plus
        [[1, 1, 1], [1, 0, 1], [1, 1, 1]],  # ring
        [[1, 1, 1], [0, 0, 0], [1, 1, 1]],  # bars
    ],
    dtype=torch.float32,
)
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
        out[i, 0, r : r + 3, c : c + 3] = STAMPS[labels[i]]
        masks[i, r : r + 3, c : c + 3] = True
    return out, labels, masks


def canvases(x: torch.Tensor, y: torch.Tensor, seed: int, copies: int = 2):
    """Training canvases 16x16 with one 8x8 digit in a random quadrant (label = the digit)."""
    gen = torch.Generator().manual_seed(seed)
    xs, ys = x.repeat(copies, 1, 1, 1), y.repeat(copies)
    q = torch.randint(0, 4, (xs.shape[0],), generator=gen)
    out = torch.zeros(xs.shape[0], 1, 16, 16)
    for i in range(xs.shape[0]):
        r, c = 8 * (int(q[i]) // 2), 8 * (int(q[i]) % 2)
        out[i, :, r : r + 8, c : c + 8] = xs[i]
    return out, ys


def mosaics(x: torch.Tensor, y: torch.Tensor, n: int, seed: int):
    """(mosaics [n, 1, 16, 16], target classes [n], target-tile masks [n, 16, 16]): 2 tiles of the target, 2 others."""
    gen = torch.Generator().manual_seed(seed)
    by_class = {c: torch.nonzero(y == c)[:, 0] for c in range(10)}
    out = torch.zeros(n, 1, 16, 16)
    masks = torch.zeros(n, 16, 16, dtype=torch.bool)
    targets = torch.randint(0, 10, (n,), generator=gen)
    for i in range(n):
        c = int(targets[i])
        others = [k for k in range(10) if k != c]
        oc = [others[j] for j in torch.randperm(9, generator=gen)[:2].tolist()]
        slots = torch.randperm(4, generator=gen).tolist()
        for cls, slot in zip([c, c] + oc, slots):
            pool = by_class[cls]
            img = x[pool[torch.randint(0, len(pool), (1,), generator=gen)]][0]
            r, col = 8 * (slot // 2), 8 * (slot % 2)
            out[i, :, r : r + 8, col : col + 8] = img
            if cls == c:
                masks[i, r : r + 8, col : col + 8] = True
    return out, targets, masks


class LocRecipe(Recipe):
    """A localisation recipe: ``kind`` of data is ``random`` / ``corners`` (planted stamps) or ``canvas`` (mosaics)."""

    demo = False  # evaluation-set models: the study that needs them trains them

    def data(self, seed: int, params: dict) -> D.DataSplit:
        digits = D.load_dataset("digits")
        s = int(seed) * 7
        if params["data"] == "canvas":
            xtr, ytr = canvases(digits.x_train, digits.y_train, s + 1)
            xte, yte = canvases(digits.x_test, digits.y_test, s + 2, copies=1)
            classes = list(digits.classes)
        else:
            xtr, ytr, _ = planted(digits.x_train, s + 1, params["data"], copies=3)
            xte, yte, _ = planted(digits.x_test, s + 2, params["data"])
            classes = ["X", "plus", "ring", "bars"]
        return D.DataSplit(xtr, ytr, xte, yte, classes, {"dataset": "digits", "transform": params["data"]})

    def config(self, params: dict) -> dict:
        kwargs = {k: v for k, v in params.items() if k not in ("arch", "data", "epochs", "lr", "batch_size")}
        return {"arch": params["arch"], "kwargs": kwargs}

    def train(self, seed: int, params: dict, progress: bool | None = None) -> Trained:
        split, config = self.data(seed, params), self.config(params)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = self.build(config)
        run = fit(
            model,
            split.x_train,
            split.y_train,
            epochs=params["epochs"],
            lr=params["lr"],
            batch_size=params["batch_size"],
            seed=seed,
            description=f"training {self.name} (seed {seed})",
            progress=progress,
        )
        model.eval()
        metrics = {
            "train_accuracy": accuracy(model, split.x_train, split.y_train),
            "test_accuracy": accuracy(model, split.x_test, split.y_test),
        }
        return Trained(model, metrics, run["curve"], config, split.meta, run["train_seconds"], run["train_cpu_seconds"])


def _floors(params: dict, config: dict) -> list[Floor]:
    return [Floor("test_accuracy", ">=", 0.9)]


_TRAIN = {"lr": 2e-3, "batch_size": 64}
LOC_RECIPES: dict[str, LocRecipe] = {
    r.name: r
    for r in (
        LocRecipe(
            "loc-planted-cnn",
            "CNN 16/32/64 on dimmed 8x8 digits with a 3x3 stamp anywhere; the stamp is the label",
            "classifier",
            1,
            {
                "arch": "cnn",
                "channels": [16, 32, 64],
                "num_classes": 4,
                "image_size": 8,
                "data": "random",
                "epochs": 8,
                **_TRAIN,
            },
            "digits-planted",
            _floors,
        ),
        LocRecipe(
            "loc-planted-deep-mlp",
            "deep MLP 6x64 on dimmed 8x8 digits with a 3x3 stamp in a corner; the stamp is the label",
            "classifier",
            1,
            {"arch": "deep_mlp", "width": 64, "depth": 6, "num_classes": 4, "data": "corners", "epochs": 20, **_TRAIN},
            "digits-planted",
            _floors,
        ),
        LocRecipe(
            "loc-mosaic-cnn",
            "CNN 16/32/64 on 16x16 canvases with one 8x8 digit in a random quadrant (for mosaics)",
            "classifier",
            1,
            {
                "arch": "cnn",
                "channels": [16, 32, 64],
                "num_classes": 10,
                "image_size": 16,
                "data": "canvas",
                "epochs": 8,
                **_TRAIN,
            },
            "digits-mosaic",
            _floors,
        ),
    )
}
RECIPES.update(LOC_RECIPES)
