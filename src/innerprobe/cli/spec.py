"""The one ``--model`` parser of the command line: ``name@seed`` for zoo models, honoured by every command.

A zoo spec ``digits-mlp@1`` names recipe ``digits-mlp``, seed 1: the model *and* its default data
(``zoo.recipe_data(name, seed=1)``) come from that seed. Anything else (``path/file.py:factory``, a
local Hugging Face folder) is passed to :func:`innerprobe.zoo.load_model` unchanged and has no seed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..core.checks import check_seed
from ..errors import ConfigError, ModelError

_SEED = re.compile(r"\d+\Z")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``--model``: ``text`` as given, ``name`` (recipe or path), ``seed`` (zoo only), ``zoo``."""

    text: str
    name: str
    seed: int = 0
    zoo: bool = False

    def load(self, weights=None):
        """The model, in eval mode (zoo models from the cache at this seed, trained if missing)."""
        from .. import zoo

        return zoo.load_model(
            f"{self.name}@{self.seed}" if self.zoo else self.text, weights=None if weights is None else str(weights)
        )

    def data(self):
        """The zoo recipe's data split for this seed; refused for non-zoo models."""
        from .. import zoo

        if not self.zoo:
            raise ConfigError(
                f"model {self.text!r} is not a zoo recipe, so it has no default data",
                hint="pass the inputs explicitly (--data / --inputs FILE: .npy, .npz, .pt or .safetensors)",
            )
        return zoo.recipe_data(self.name, seed=self.seed)


def parse_model(text: str) -> ModelSpec:
    """``'digits-mlp@1'`` -> ModelSpec(name='digits-mlp', seed=1, zoo=True); a bad seed is reported as one."""
    from ..zoo import RECIPES

    if not isinstance(text, str) or not text.strip():
        raise ModelError(
            "--model must be a non-empty model spec",
            hint="a zoo name (innerprobe zoo list), path/file.py:factory or a local Hugging Face folder",
        )
    text = text.strip()
    base, at, seed = text.rpartition("@")
    if at and base in RECIPES:
        if not _SEED.match(seed):
            raise ConfigError(
                f"bad seed {seed!r} in model spec {text!r}: a seed is a non-negative integer",
                hint=f"e.g. {base}@0 or {base}@1",
            )
        return ModelSpec(text, base, check_seed(seed, f"seed in --model {base}@..."), True)  # 0 .. 2**63 - 1
    if text in RECIPES:
        return ModelSpec(text, text, 0, True)
    return ModelSpec(text, text)
