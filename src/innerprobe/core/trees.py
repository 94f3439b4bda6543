"""Read and replace one element of a module's output or input tree.

Handles tensors, tuples, lists, dicts, Hugging Face ``ModelOutput`` and dataclasses. An unknown
container raises a :class:`~innerprobe.errors.SiteError` naming the type, never a bare assert.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..errors import SiteError


def _is_model_output(obj: Any) -> bool:
    return type(obj).__name__.endswith("Output") and hasattr(obj, "to_tuple") and isinstance(obj, dict)


def get_element(obj: Any, index: int | str | None, where: str = "") -> Any:
    """``obj[index]`` for tuples, lists, dicts, ModelOutputs and dataclasses; ``obj`` if index is None."""
    if index is None or (index == 0 and isinstance(obj, torch.Tensor)):
        return obj  # element 0 of a bare tensor is the tensor (blocks that return a tensor or a 1-tuple)
    try:
        if isinstance(obj, (tuple, list)):
            return obj[int(index)]
        if _is_model_output(obj):
            return obj[index] if isinstance(index, str) else obj.to_tuple()[index]
        if isinstance(obj, dict):
            return obj[index]
        if dataclasses.is_dataclass(obj) and isinstance(index, str):
            return getattr(obj, index)
    except (IndexError, KeyError, AttributeError):
        raise SiteError(
            f"{where or 'value'} has no element {index!r}",
            hint=f"its elements are {describe(obj)}",
        ) from None
    raise SiteError(
        f"cannot take element {index!r} of a {type(obj).__name__} at {where or 'this site'}",
        hint="elements are supported for tensors, tuples, lists, dicts, ModelOutput and dataclasses",
    )


def replace_element(obj: Any, index: int | str | None, value: Any, where: str = "") -> Any:
    """A copy of ``obj`` with element ``index`` replaced by ``value`` (``value`` if index is None)."""
    if index is None or (index == 0 and isinstance(obj, torch.Tensor)):
        return value
    get_element(obj, index, where)  # validates
    if isinstance(obj, tuple):
        items = list(obj)
        items[int(index)] = value
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, list):
        items = list(obj)
        items[int(index)] = value
        return items
    if _is_model_output(obj):
        key = index if isinstance(index, str) else list(obj.keys())[index]
        new = type(obj)(**{**dict(obj), key: value})
        return new
    if isinstance(obj, dict):
        return {**obj, index: value}
    return dataclasses.replace(obj, **{index: value})


def describe(obj: Any) -> str:
    """A short description of a tree's structure, for error messages."""
    if isinstance(obj, torch.Tensor):
        return f"Tensor{tuple(obj.shape)}"
    if isinstance(obj, (tuple, list)):
        return "(" + ", ".join(f"{i}: {describe(v)}" for i, v in enumerate(obj)) + ")"
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in obj.items()) + "}"
    return type(obj).__name__


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a classifier's output: a tensor, ``.logits`` of a ModelOutput, or a tuple's first tensor."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    from ..errors import ModelError

    raise ModelError(
        f"the model returned {describe(output)}, which holds no logits",
        hint="a classifier must return logits, a tuple whose first element is logits, or a ModelOutput with .logits",
    )
