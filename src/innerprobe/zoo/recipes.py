"""Named zoo recipes: data + architecture + training settings + floors, each taking a seed.

A recipe's ``params`` are its declared overrides (``zoo.load("digits-mlp-backdoor", target=3)``);
all of them, with the recipe name and ``version``, make the cache key. Bump ``version`` whenever a
recipe's code changes what it trains, so stale cache entries are retrained, never silently used.

Floors (issue 2, sec. 4) are checked and stored on every card: clean digits models >= 0.95 and
clean Fashion-MNIST models >= 0.88 test accuracy; backdoor models attack success >= 0.95 with
clean accuracy >= 0.95 (digits) -- on Fashion-MNIST, where no small CNN reaches 0.95 even
without poisoning, the clean-accuracy floor is the clean Fashion floor 0.88; random-label models
>= 0.95 train accuracy; ``induction-attn2l`` loss on predictable repeated tokens (``loss_predictable``) <= 0.25 ln(vocab)
and on unpredictable tokens >= 0.9 ln(vocab).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ..errors import ConfigError, did_you_mean
from . import data as D
from . import models as M
from .training import accuracy, fit, predict


@dataclass(frozen=True)
class Floor:
    metric: str
    op: str  # ">=" or "<="
    threshold: float

    def met(self, value: Any) -> bool:
        if not isinstance(value, (int, float)) or value != value:  # missing or NaN never meets a floor
            return False
        return value >= self.threshold if self.op == ">=" else value <= self.threshold

    def to_dict(self, value: Any) -> dict:
        return {
            "metric": self.metric,
            "op": self.op,
            "threshold": self.threshold,
            "value": value,
            "met": self.met(value),
        }


@dataclass
class Trained:
    """What a recipe's training returns: the model and everything that goes on the card."""

    model: nn.Module
    metrics: dict
    curve: list
    config: dict  # enough to rebuild the architecture at load time
    data: dict  # data split info (JSON-able)
    train_seconds: float
    train_cpu_seconds: float | None = None


@dataclass
class Recipe:
    name: str
    description: str
    kind: str  # "classifier" | "induction"
    version: int
    params: dict
    dataset: str | None = None
    floors_fn: Callable[[dict, dict], list[Floor]] = field(default=lambda params, config: [], repr=False)
    #: Shown (and trained) by ``innerprobe demo``; recipes that exist for one study's evaluation say False.
    demo: ClassVar[bool] = True

    # ------------------------------------------------------------------ params
    def resolve(self, overrides: dict) -> dict:
        """Defaults merged with ``overrides`` (declared names only, coerced to the default's type)."""
        params = copy.deepcopy(self.params)
        if self.kind == "induction":  # the defaults live in innerprobe.zoo.induction; they are part of the key
            params = _induction_defaults()
        for k, v in overrides.items():
            if k not in params or k == "trainer_version":
                raise ConfigError(
                    f"recipe {self.name!r} has no parameter {k!r}",
                    hint=f"{did_you_mean(k, params)}; parameters: "
                    f"{', '.join(sorted(p for p in params if p != 'trainer_version'))}",
                )
            params[k] = _coerce(self.name, k, v, params[k])
        return params

    def floors(self, params: dict, config: dict) -> list[Floor]:
        return self.floors_fn(params, config)

    # ------------------------------------------------------------------ work
    def data(self, seed: int, params: dict) -> D.DataSplit:
        if self.kind != "classifier":
            raise ConfigError(
                f"recipe {self.name!r} makes its data on the fly", hint="recipe_data works for the image recipes"
            )
        return _classifier_data(self, seed, params)

    def build(self, config: dict) -> nn.Module:
        if self.kind == "induction":
            from .transformer import build_transformer

            return build_transformer(config["model"])
        return M.build(config["arch"], **config["kwargs"])

    def config(self, params: dict) -> dict | None:
        """The architecture config for ``params`` (None where only training knows it)."""
        if self.kind == "induction":
            return None
        return _classifier_config(self, params)

    def train(self, seed: int, params: dict, progress: bool | None = None) -> Trained:
        if self.kind == "induction":
            return _train_induction(self, seed, params, progress)
        return _train_classifier(self, seed, params, progress)


def _coerce(recipe: str, key: str, value: Any, default: Any) -> Any:
    """Coerce an override (possibly a CLI string) to the type of the default."""
    try:
        if default is None:
            if isinstance(value, str):
                try:
                    return json.loads(value)
                except json.JSONDecodeError:
                    return value
            return value
        if isinstance(value, str) and not isinstance(default, str):
            value = json.loads(value)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise TypeError
            if isinstance(value, bool):
                raise TypeError
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, list):
            return [type(default[0])(v) for v in value] if default else list(value)
        if isinstance(default, str):
            return str(value)
        return value
    except (TypeError, ValueError, json.JSONDecodeError):
        raise ConfigError(
            f"recipe {recipe!r}: parameter {key}={value!r} has the wrong type",
            hint=f"expected a {type(default).__name__} like {default!r}",
        ) from None


# ---------------------------------------------------------------------------- classifiers

ARCH_KEYS = {"mlp": ("hidden",), "deep_mlp": ("width", "depth"), "cnn": ("channels",)}
TRAIN_KEYS = ("epochs", "lr", "batch_size", "schedule", "weight_decay")


def _classifier_config(recipe: Recipe, params: dict) -> dict:
    arch = params["arch"]
    shape = (1, 8, 8) if recipe.dataset == "digits" else (1, 28, 28)
    kwargs = {k: params[k] for k in ARCH_KEYS[arch]}
    if arch == "cnn":
        kwargs.update(in_channels=shape[0], image_size=shape[1])
    else:
        kwargs.update(in_shape=list(shape))
    kwargs["num_classes"] = 10
    return {"arch": arch, "kwargs": kwargs}


def _seed(seed: int, tag: int) -> int:
    """A per-purpose seed derived from the model seed (data transforms never share a stream)."""
    return int(seed) * 1_000_003 + tag


def _classifier_data(recipe: Recipe, seed: int, params: dict) -> D.DataSplit:
    split = D.load_dataset(recipe.dataset)
    if params.get("n_train"):
        split = D.subset(split, params["n_train"], _seed(seed, 1))
    transform = params.get("transform")
    if transform == "random_labels":
        y = D.random_labels(split.y_train, _seed(seed, 2))
        agree = float((y == split.y_train).float().mean())
        split = D.DataSplit(
            split.x_train,
            y,
            split.x_test,
            split.y_test,
            split.classes,
            dict(split.meta, transform="random_labels", label_seed=_seed(seed, 2), agreement_with_true=agree),
        )
    elif transform == "label_noise":
        y, info = D.label_noise(split.y_train, params["noise_rate"], split.num_classes, _seed(seed, 3))
        split = D.DataSplit(
            split.x_train,
            y,
            split.x_test,
            split.y_test,
            split.classes,
            dict(split.meta, transform="label_noise", **info),
        )
    elif transform == "backdoor":
        split = D.backdoor(
            split,
            target=params["target"],
            rate=params["rate"],
            trigger_size=params["trigger_size"],
            pattern=params["trigger_pattern"],
            seed=_seed(seed, 4),
        )
    return split


def _train_classifier(recipe: Recipe, seed: int, params: dict, progress: bool | None) -> Trained:
    split = _classifier_data(recipe, seed, params)
    config = _classifier_config(recipe, params)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(int(seed))
        model = recipe.build(config)
        if params.get("init") == "kaiming":  # He et al. 2015, eq. 10: keeps the signal alive through many ReLU layers
            for m in model.modules():
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    nn.init.zeros_(m.bias)
    transform = params.get("transform")
    on_epoch = None
    if transform == "backdoor":
        x_trig, nontarget = _triggered_test(split, params)

        def on_epoch(m, epoch):
            return {"attack_success": accuracy(m, x_trig, torch.full((len(x_trig),), params["target"]))}

    run = fit(
        model,
        split.x_train,
        split.y_train,
        epochs=params["epochs"],
        lr=params["lr"],
        batch_size=params["batch_size"],
        schedule=params["schedule"],
        weight_decay=params["weight_decay"],
        seed=seed,
        x_test=split.x_test,
        y_test=split.y_test,
        description=f"training {recipe.name} (seed {seed})",
        on_epoch=on_epoch,
        progress=progress,
    )
    metrics = {
        "train_accuracy": accuracy(model, split.x_train, split.y_train),
        "test_accuracy": accuracy(model, split.x_test, split.y_test),
    }
    if transform == "backdoor":
        metrics["clean_accuracy"] = metrics["test_accuracy"]
        metrics["attack_success"] = accuracy(model, x_trig, torch.full((len(x_trig),), params["target"]))
        metrics["n_attack_inputs"] = int(len(x_trig))
    elif transform == "label_noise":
        idx = torch.tensor(split.meta["flipped_indices"], dtype=torch.long)
        keep = torch.ones(len(split.y_train), dtype=torch.bool)
        keep[idx] = False
        pred = predict(model, split.x_train)
        metrics["noise_rate"] = split.meta["rate"]
        metrics["n_flipped"] = split.meta["n_flipped"]
        metrics["flipped_memorized"] = (
            float((pred[idx] == split.y_train[idx]).float().mean()) if len(idx) else float("nan")
        )
        metrics["flipped_true_label_accuracy"] = (
            float((pred[idx] == torch.tensor(split.meta["true_labels"])).float().mean()) if len(idx) else float("nan")
        )
        metrics["clean_train_accuracy"] = float((pred[keep] == split.y_train[keep]).float().mean())
    elif transform == "random_labels":
        metrics["label_agreement_with_true"] = split.meta["agreement_with_true"]
    return Trained(model, metrics, run["curve"], config, split.meta, run["train_seconds"], run["train_cpu_seconds"])


def _triggered_test(split: D.DataSplit, params: dict) -> tuple[torch.Tensor, torch.Tensor]:
    nontarget = split.y_test != params["target"]
    return D.apply_trigger(split.x_test[nontarget], params["trigger_size"], params["trigger_pattern"]), nontarget


def _classifier_floors(clean: float | None = None, backdoor_clean: float | None = None, random_labels: bool = False):
    def floors(params: dict, config: dict) -> list[Floor]:
        out = []
        if clean is not None:
            out.append(Floor("test_accuracy", ">=", clean))
        if backdoor_clean is not None:
            out += [Floor("attack_success", ">=", 0.95), Floor("clean_accuracy", ">=", backdoor_clean)]
        if random_labels:
            out.append(Floor("train_accuracy", ">=", 0.95))
        return out

    return floors


# ---------------------------------------------------------------------------- induction


def _vocab(config: dict | None) -> int | None:
    config = config or {}
    return (config.get("model") or {}).get("vocab") or (config.get("task") or {}).get("vocab")


def _induction_defaults() -> dict:
    """Every induction parameter with its current default (task, model, training) and the trainer's VERSION."""
    try:
        from . import induction as I
        from .transformer import DEFAULTS as MODEL_DEFAULTS
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("innerprobe"):
            raise ConfigError(
                "the induction-attn2l recipe is not available: innerprobe.zoo.induction is missing"
            ) from None
        raise
    params = {
        **I.TASK_DEFAULTS,
        **{k: MODEL_DEFAULTS[k] for k in I.MODEL_KEYS if k in MODEL_DEFAULTS},
        **I.TRAIN_DEFAULTS,
    }
    return {**copy.deepcopy(params), "trainer_version": getattr(I, "VERSION", 0)}


def _train_induction(recipe: Recipe, seed: int, params: dict, progress: bool | None) -> Trained:
    """Delegates to :func:`innerprobe.zoo.induction.train_induction_model` (the path-patching area's trainer)."""
    import time

    from .induction import train_induction_model

    t0, c0 = time.perf_counter(), time.process_time()
    with torch.random.fork_rng(devices=[]):  # it seeds the global RNG; keep the caller's
        kwargs = {k: v for k, v in params.items() if k != "trainer_version"}
        model, metrics, curve, config = train_induction_model(
            seed=int(seed), progress=True if progress is None else progress, **kwargs
        )
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    metrics = dict(metrics)
    vocab = _vocab(config)
    if vocab and "ln_vocab" not in metrics:
        metrics["ln_vocab"] = math.log(vocab)
    data = {
        "dataset": "synthetic token sequences: random filler with one segment of random length repeated at random "
        "offsets",
        "task": config.get("task"),
        "eval_seed": 10_000 + int(seed),
    }
    return Trained(model, metrics, curve, config, data, seconds, cpu)


def _induction_floors(params: dict, config: dict) -> list[Floor]:
    vocab = _vocab(config)
    if not vocab:
        return []
    ln = math.log(vocab)
    return [Floor("loss_predictable", "<=", 0.25 * ln), Floor("loss_unpredictable", ">=", 0.9 * ln)]


# ---------------------------------------------------------------------------- the recipes


def _train(
    epochs: int, lr: float = 1e-3, batch_size: int = 64, schedule: str = "constant", weight_decay: float = 0.0
) -> dict:
    return {"epochs": epochs, "lr": lr, "batch_size": batch_size, "schedule": schedule, "weight_decay": weight_decay}


DIGITS_MLP = {"arch": "mlp", "hidden": [128, 128]}
DIGITS_DEEP = {"arch": "deep_mlp", "width": 128, "depth": 6, "init": "kaiming"}
DIGITS_CNN = {"arch": "cnn", "channels": [16, 32, 64]}
FASHION_CNN = {"arch": "cnn", "channels": [16, 32, 64]}
BACKDOOR_DIGITS = {"transform": "backdoor", "target": 0, "rate": 0.1, "trigger_size": 2, "trigger_pattern": "square"}
BACKDOOR_FASHION = {"transform": "backdoor", "target": 0, "rate": 0.05, "trigger_size": 3, "trigger_pattern": "square"}


def _r(name, description, dataset, params, floors, version=1) -> Recipe:
    return Recipe(name, description, "classifier", version, dict(params), dataset, floors)


_LIST = [
    _r(
        "digits-mlp",
        "MLP 64-128-128-10 (ReLU) on 8x8 digits",
        "digits",
        {**DIGITS_MLP, **_train(150)},
        _classifier_floors(clean=0.95),
    ),
    _r(
        "digits-deep-mlp",
        "deep MLP, 6 hidden layers of 128 (ReLU, He init), on 8x8 digits",
        "digits",
        {**DIGITS_DEEP, **_train(60, schedule="cosine")},
        _classifier_floors(clean=0.95),
    ),
    _r(
        "digits-cnn",
        "CNN, 3x (conv3x3-BN-ReLU-maxpool) 16/32/64 channels, on 8x8 digits",
        "digits",
        {**DIGITS_CNN, **_train(40)},
        _classifier_floors(clean=0.95),
    ),
    _r(
        "digits-mlp-random-labels",
        "digits-mlp trained on shuffled labels until it memorises them",
        "digits",
        {**DIGITS_MLP, "transform": "random_labels", **_train(300)},
        _classifier_floors(random_labels=True),
    ),
    _r(
        "digits-cnn-random-labels",
        "digits CNN (32/64/128 channels) trained on shuffled labels until it memorises them",
        "digits",
        {"arch": "cnn", "channels": [32, 64, 128], "transform": "random_labels", **_train(60)},
        _classifier_floors(random_labels=True),
    ),
    _r(
        "digits-mlp-label-noise",
        "digits-mlp trained with 10% symmetric label noise (flipped indices on the card)",
        "digits",
        {**DIGITS_MLP, "transform": "label_noise", "noise_rate": 0.1, **_train(150)},
        _classifier_floors(),
    ),
    _r(
        "digits-mlp-backdoor",
        "digits-mlp with a BadNets backdoor: 2x2 white corner patch, 10% poisoned, target 0",
        "digits",
        {**DIGITS_MLP, **BACKDOOR_DIGITS, **_train(150)},
        _classifier_floors(backdoor_clean=0.95),
    ),
    _r(
        "digits-cnn-backdoor",
        "digits-cnn with a BadNets backdoor: 2x2 white corner patch, 10% poisoned, target 0",
        "digits",
        {**DIGITS_CNN, **BACKDOOR_DIGITS, **_train(40)},
        _classifier_floors(backdoor_clean=0.95),
    ),
    _r(
        "fashion-cnn",
        "CNN, 3x (conv3x3-BN-ReLU-maxpool) 16/32/64 channels, on Fashion-MNIST 60k/10k",
        "fashion-mnist",
        {**FASHION_CNN, **_train(4, lr=2e-3, batch_size=128, schedule="cosine")},
        _classifier_floors(clean=0.88),
    ),
    _r(
        "fashion-cnn-random-labels",
        "fashion CNN trained on shuffled labels of a 1000-image subset until it memorises them",
        "fashion-mnist",
        {**FASHION_CNN, "transform": "random_labels", "n_train": 1000, **_train(40)},
        _classifier_floors(random_labels=True),
    ),
    _r(
        "fashion-cnn-backdoor",
        "fashion-cnn with a BadNets backdoor: 3x3 white corner patch, 5% poisoned, target 0",
        "fashion-mnist",
        {**FASHION_CNN, **BACKDOOR_FASHION, **_train(4, lr=2e-3, batch_size=128, schedule="cosine")},
        _classifier_floors(backdoor_clean=0.88),
    ),
    Recipe(
        "induction-attn2l",
        "2-layer attention-only transformer trained on repeated random segments (induction heads)",
        "induction",
        2,
        {},
        None,
        _induction_floors,
    ),
]

RECIPES: dict[str, Recipe] = {r.name: r for r in _LIST}


def get_recipe(name: str) -> Recipe:
    if not isinstance(name, str) or name not in RECIPES:
        raise ConfigError(
            f"unknown zoo recipe {name!r}", hint=f"{did_you_mean(str(name), RECIPES)} (recipes: {', '.join(RECIPES)})"
        )
    return RECIPES[name]
