"""Zoo classifiers as ``nn.Sequential`` with readable child names, so sites read naturally.

Every classifier takes images ``[N, C, H, W]`` and returns logits ``[N, num_classes]``; MLPs
flatten inside. Names: ``flatten, fc1, relu1, fc2, relu2, ..., out`` (MLPs) and
``conv1, bn1, relu1, pool1, conv2, ..., flatten, out`` (CNNs), e.g. site ``"relu2"`` or ``"@ReLU"``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

from torch import nn

from ..errors import ConfigError


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def _pick(table: dict, key: str, what: str):
    if key not in table:
        raise ConfigError(f"unknown {what} {key!r}", hint=f"use one of {', '.join(table)}")
    return table[key]


def mlp(
    in_shape: Sequence[int] = (1, 8, 8), hidden: Sequence[int] = (128, 128), num_classes: int = 10, act: str = "relu"
) -> nn.Sequential:
    """Flatten, then ``fc_i -> {act}_i`` per hidden width (``act`` relu, gelu or tanh), then ``out``."""
    act_cls = _pick(ACTS, act, "activation")
    if not hidden or any(int(h) < 1 for h in hidden):
        raise ConfigError(f"hidden widths must be positive, got {list(hidden)}", hint="e.g. hidden=(128, 128)")
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    width = _numel(in_shape)
    for i, h in enumerate(hidden, 1):
        layers += [(f"fc{i}", nn.Linear(width, int(h))), (f"{act}{i}", act_cls())]
        width = int(h)
    layers.append(("out", nn.Linear(width, num_classes)))
    return nn.Sequential(OrderedDict(layers))


def deep_mlp(
    in_shape: Sequence[int] = (1, 8, 8), width: int = 64, depth: int = 6, num_classes: int = 10
) -> nn.Sequential:
    """An MLP with ``depth`` (>= 6 by default) hidden layers of the same ``width``."""
    if depth < 1:
        raise ConfigError(f"depth must be >= 1, got {depth}")
    return mlp(in_shape, [width] * depth, num_classes)


def cnn(
    in_channels: int = 1,
    image_size: int = 8,
    channels: Sequence[int] = (16, 32, 64),
    num_classes: int = 10,
    act: str = "relu",
    pool: str = "max",
    batchnorm: bool = True,
) -> nn.Sequential:
    """``conv_i (3x3, pad 1) -> bn_i -> {act}_i -> pool_i (2x2 max or avg)`` per channel count, then ``flatten, out``."""
    act_cls, pool_cls = _pick(ACTS, act, "activation"), _pick(POOLS, pool, "pooling")
    if len(channels) < 1:
        raise ConfigError("a CNN needs at least one conv layer", hint="e.g. channels=(16, 32, 64)")
    size = int(image_size)
    if size >> len(channels) < 1:
        raise ConfigError(
            f"{len(channels)} 2x2 poolings do not fit a {image_size}x{image_size} image", hint="use fewer conv layers"
        )
    layers: list[tuple[str, nn.Module]] = []
    c_in = in_channels
    for i, c in enumerate(channels, 1):
        layers += [(f"conv{i}", nn.Conv2d(c_in, int(c), 3, padding=1))] + (
            [(f"bn{i}", nn.BatchNorm2d(int(c)))] if batchnorm else []
        )
        layers += [(f"{act}{i}", act_cls()), (f"pool{i}", pool_cls(2))]
        c_in, size = int(c), size // 2
    layers += [("flatten", nn.Flatten()), ("out", nn.Linear(c_in * size * size, num_classes))]
    return nn.Sequential(OrderedDict(layers))


BUILDERS = {"mlp": mlp, "deep_mlp": deep_mlp, "cnn": cnn}


def build(arch: str, **kwargs) -> nn.Sequential:
    if arch not in BUILDERS:
        from ..errors import did_you_mean

        raise ConfigError(f"unknown architecture {arch!r}", hint=did_you_mean(arch, BUILDERS))
    return BUILDERS[arch](**kwargs)
