"""The model zoo: named recipes trained reproducibly on the CPU and cached, nothing downloaded.

>>> from innerprobe import zoo
>>> model, card = zoo.load("digits-mlp", seed=0)            # trains (progress bar) if missing
>>> split = zoo.recipe_data("digits-mlp-backdoor", target=3)  # the exact data it trains on
>>> model = zoo.load_model("path/to/net.py:make", weights="net.safetensors")

Recipes (``zoo.RECIPES`` / ``innerprobe zoo list``): digits-mlp, digits-deep-mlp, digits-cnn,
digits-mlp-random-labels, digits-cnn-random-labels, digits-mlp-label-noise, digits-mlp-backdoor,
digits-cnn-backdoor, fashion-cnn, fashion-cnn-random-labels, fashion-cnn-backdoor, induction-attn2l.
The backdoor scan's eval set adds the bdset-* recipes (:mod:`.backdoor_set`, docs/scan.md).
See :mod:`.recipes` for the floors every card records, :mod:`.cache` for the cache layout.
"""

from __future__ import annotations

import platform
import warnings

from ..errors import CacheError
from . import backdoor_set, data, localisation, models, training  # backdoor_set, localisation register recipes
from .cache import cache_root, entry_dir, fingerprint
from .data import DataSplit, apply_trigger
from .ioi_model import ioi_recipes
from .loading import load_model
from .recipes import RECIPES, Recipe, get_recipe

RECIPES.update({r.name: r for r in ioi_recipes()})  # IOI recipes (issue 10), registered here: no recipes<->ioi cycle

__all__ = [
    "DataSplit",
    "RECIPES",
    "Recipe",
    "apply_trigger",
    "cache_root",
    "card_path",
    "data",
    "get_recipe",
    "load",
    "load_model",
    "models",
    "recipe_data",
    "status",
    "training",
    "backdoor_set",
    "localisation",
]


class CacheWarning(UserWarning):
    """A cache entry was invalid and is being retrained."""


def recipe_data(name: str, seed: int = 0, **overrides) -> DataSplit:
    """The exact data recipe ``name`` trains on for ``seed`` (noisy / poisoned / shuffled labels included)."""
    recipe = get_recipe(name)
    return recipe.data(seed, recipe.resolve(overrides))


def _key(name: str, seed: int, overrides: dict):
    recipe = get_recipe(name)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        from ..errors import ConfigError

        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    params = recipe.resolve(overrides)
    fp = fingerprint(recipe.name, recipe.version, params)
    return recipe, params, fp, entry_dir(recipe.name, seed, fp)


def card_path(name: str, seed: int = 0, **overrides):
    """The cache folder of ``name``/``seed``/``overrides`` (which may not exist yet)."""
    return _key(name, seed, overrides)[3]


def _load_entry(recipe: Recipe, params: dict, fp: str, seed: int, path):
    from .cache import check_card, load_weights, read_card

    card = read_card(path)
    check_card(card, path, recipe=recipe.name, fp=fp, seed=seed)
    config = recipe.config(params)
    if config is None:
        config = card.get("config")
        if not isinstance(config, dict):
            raise CacheError(f"cache entry {path}: the card has no model config")
    elif card.get("config") != config:
        raise CacheError(
            f"cache entry {path}: the card's model config {card.get('config')} is not the recipe's {config}"
        )
    try:
        model = recipe.build(config)
    except CacheError:
        raise
    except Exception as e:  # a config the builder rejects is a corrupt card
        raise CacheError(
            f"cache entry {path}: cannot rebuild the model from its card ({type(e).__name__}: {e})"
        ) from None
    load_weights(path, model, card)
    model.eval()
    return model, card


def _make_card(recipe: Recipe, params: dict, fp: str, seed: int, trained) -> dict:
    import numpy
    import torch

    from .. import __version__
    from ..results import to_jsonable
    from .training import default_threads

    metrics = to_jsonable(trained.metrics)
    floors = [f.to_dict(metrics.get(f.metric)) for f in recipe.floors(params, trained.config)]
    return to_jsonable(
        {
            "recipe": recipe.name,
            "description": recipe.description,
            "recipe_version": recipe.version,
            "fingerprint": fp,
            "seed": int(seed),
            "params": params,
            "config": trained.config,
            "versions": {
                "innerprobe": __version__,
                "torch": torch.__version__,
                "numpy": numpy.__version__,
                "python": platform.python_version(),
            },
            "data": trained.data,
            "metrics": metrics,
            "floors": floors,
            "floors_met": {f["metric"]: f["met"] for f in floors},
            "all_floors_met": all(f["met"] for f in floors),
            "train_seconds": trained.train_seconds,
            "train_cpu_seconds": trained.train_cpu_seconds,
            "train_threads": default_threads(),
            "n_parameters": sum(p.numel() for p in trained.model.parameters()),
            "curve": trained.curve,
        }
    )


def load(
    name: str,
    seed: int = 0,
    *,
    train_if_missing: bool = True,
    force: bool = False,
    progress: bool | None = None,
    **overrides,
):
    """``(model, card)`` for recipe ``name`` and ``seed``: from the cache, else trained and cached.

    ``overrides`` are declared recipe parameters (e.g. ``target=3`` for a backdoor recipe); they
    are part of the cache key. An invalid entry (corrupt, or from another recipe version) is
    retrained with a :class:`CacheWarning`, or, with ``train_if_missing=False``, refused with a
    :class:`~innerprobe.errors.CacheError`. ``force=True`` retrains regardless. The model comes
    back in eval mode.
    """
    from .cache import entry_lock, write_entry

    recipe, params, fp, path = _key(name, seed, overrides)
    reason = None
    if not force:
        if path.exists():
            try:
                return _load_entry(recipe, params, fp, seed, path)
            except CacheError as e:
                reason = e.message
        if not train_if_missing:
            cmd = f"innerprobe zoo train {name} --seed {seed}" + "".join(
                f" --set {k}={v}" for k, v in overrides.items()
            )
            if reason:
                raise CacheError(
                    f"invalid zoo cache entry, refusing to use it: {reason}",
                    hint=f"retrain it with '{cmd} --force' or delete {path}",
                )
            raise CacheError(
                f"{name} (seed {seed}) is not in the zoo cache {cache_root()}",
                hint=f"train it with '{cmd}' or pass train_if_missing=True",
            )
    with entry_lock(path):
        if not force and path.exists():  # another process may have (re)trained it while we waited
            try:
                return _load_entry(recipe, params, fp, seed, path)
            except CacheError as e:
                reason = e.message
        if reason:
            warnings.warn(f"{reason}; retraining", CacheWarning, stacklevel=2)
        trained = recipe.train(seed, params, progress=progress)
        card = write_entry(path, trained.model, _make_card(recipe, params, fp, seed, trained))
    trained.model.eval()
    return trained.model, card


def status(name: str, seed: int = 0, **overrides) -> tuple[str, dict | None]:
    """``("cached", card)``, ``("missing", None)`` or ``("invalid: reason", None)``, without training or loading.

    Checks the card and the weights' checksum; key/shape checks happen in :func:`load`.
    """
    recipe, params, fp, path = _key(name, seed, overrides)
    if not path.exists():
        return "missing", None
    from .cache import check_card, read_card

    try:
        card = read_card(path)
        check_card(card, path, recipe=recipe.name, fp=fp, seed=seed)
        from .cache import WEIGHTS, sha256_file

        if not (path / WEIGHTS).is_file():
            raise CacheError("no weights file")
        if card.get("weights_sha256") != sha256_file(path / WEIGHTS):
            raise CacheError("the weights do not match the checksum on the card")
    except CacheError as e:
        return f"invalid: {e.message}", None
    return "cached", card
