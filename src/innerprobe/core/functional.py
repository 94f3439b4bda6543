"""Functional-call sites: activations applied as functions (``F.relu``, ``F.gelu``, ``torch.tanh``)
and the k-th call of a reused module, made nameable and hookable like module sites.

Module hooks only see modules. A ``forward`` that calls ``F.relu(x)`` or reuses one ``nn.ReLU``
twice (torchvision's BasicBlock) has places that a module name alone cannot point at. This module
intercepts torch function calls with a :class:`torch.overrides.TorchFunctionMode` and names each
call by the module it runs in (the innermost module whose ``forward`` is executing), the
function's canonical name, and the call's index within that module during one forward pass.

Grammar (docs/sites.md, "Functional calls"; parsed by :func:`split_call`)::

    layer1.0.relu#1           the second call (index 1) of module layer1.0.relu in one forward
    layer1.0/relu#0           the first relu *function* call made directly in layer1.0's forward
    blocks.0.mlp/gelu         every gelu call made directly in blocks.0.mlp's forward
    /relu#0  (or fn:relu#0)   the first relu call made directly in the root model's forward

Canonical function names drop a trailing ``_`` (``relu_`` is ``relu``), so ``F.relu``,
``torch.relu``, ``Tensor.relu`` and ``F.relu(inplace=True)`` are all ``relu``. Calls are counted
per (module, function) and reset at the start of every outermost forward. A call made inside a
function that is itself intercepted is not seen (``F.gelu`` is one call, not its internals).

Small API (also used by the pullback rules to gate functional GELU/SiLU):

* :class:`Interceptor` -- ``add(module, function, call, fn)`` replaces that call's output by
  ``fn(output)``; ``wrap(function, fn)`` replaces every call of ``function`` by
  ``fn(info, func, args, kwargs)``; ``remove()`` undoes everything. A :class:`HookSession` creates
  one for you when a site names a function or a call index.
* :func:`discover` -- every activation call (module or functional) of one forward pass, as
  :class:`FunctionalCall` records with their site strings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

#: canonical names of functions treated as hidden nonlinearities (APEX default sites, coverage)
ACTIVATION_FUNCTIONS = frozenset(
    {
        "relu",
        "relu6",
        "leaky_relu",
        "prelu",
        "rrelu",
        "elu",
        "selu",
        "celu",
        "gelu",
        "silu",
        "mish",
        "softplus",
        "hardtanh",
        "hardswish",
        "hardsigmoid",
        "threshold",
        "glu",
        "tanh",
        "sigmoid",
        "logsigmoid",
        "softsign",
        "tanhshrink",
    }
)

_CALL = re.compile(r"(?P<module>[^/#]*?)(?:/(?P<function>[A-Za-z_][A-Za-z0-9_]*))?(?:#(?P<call>\d+))?")
_NAMES: dict = {}


def function_name(func) -> str:
    """Canonical name of a torch function, method or builtin (trailing ``_`` of in-place ops dropped)."""
    try:
        return _NAMES[func]
    except (KeyError, TypeError):
        pass
    name = getattr(func, "__name__", None) or str(func)
    name = name.rstrip("_") if not name.startswith("__") else name
    try:
        _NAMES[func] = name
    except TypeError:
        pass
    return name


def split_call(text: str) -> tuple[str, str | None, int | None]:
    """``'a.b/gelu#2'`` -> ``('a.b', 'gelu', 2)``; ``'fn:relu#0'`` -> ``('', 'relu', 0)``; plain names pass through."""
    text = text.strip()
    if text.startswith("fn:"):
        text = "/" + text[3:]
    if "/" not in text and "#" not in text:
        return text, None, None
    m = _CALL.fullmatch(text)
    if not m:
        from ..errors import SiteError

        raise SiteError(
            f"cannot parse functional site {text!r}",
            hint="write MODULE#K (k-th call of a module), MODULE/FUNCTION[#K], or fn:FUNCTION[#K] for the root",
        )
    call = m["call"]
    return m["module"], m["function"], None if call is None else int(call)


def format_call(module: str, function: str | None, call: int | None) -> str:
    """Inverse of :func:`split_call` (a root function is written ``/NAME``)."""
    if function is not None:
        text = f"{module}/{function}"
    else:
        text = module
    return text if call is None else f"{text}#{call}"


@dataclass(frozen=True)
class FunctionalCall:
    """One call seen by :func:`discover`: innermost ``module``, canonical ``function`` (None for a
    module call), ``call`` index in that forward, output ``shape``, and whether it ran inside an
    activation *module* (so it is already covered by that module's site)."""

    module: str
    function: str | None
    call: int
    shape: tuple
    in_activation_module: bool = False

    @property
    def site(self) -> str:
        return format_call(self.module, self.function, self.call)


def is_activation_module(module: nn.Module) -> bool:
    """A torch activation class or a class named like one (Hugging Face ``NewGELUActivation``, ...)."""
    name = type(module).__name__
    acts = (
        nn.ReLU,
        nn.ReLU6,
        nn.LeakyReLU,
        nn.PReLU,
        nn.RReLU,
        nn.ELU,
        nn.SELU,
        nn.CELU,
        nn.GELU,
        nn.SiLU,
        nn.Mish,
        nn.Tanh,
        nn.Sigmoid,
        nn.Softplus,
        nn.Softsign,
        nn.Hardtanh,
        nn.Hardswish,
        nn.Hardsigmoid,
        nn.LogSigmoid,
        nn.Tanhshrink,
        nn.GLU,
        nn.Threshold,
    )
    return (
        isinstance(module, acts)
        or name.endswith("Activation")
        or any(k in name for k in ("GELU", "ReLU", "SiLU", "Swish"))
    )


class Interceptor(TorchFunctionMode):
    """Tracks the module stack and call counts of ``model`` and edits chosen calls.

    Module hooks are registered on every submodule (pre-hook pushes its name, an always-called
    forward hook pops it); the function mode is entered only once a function is watched. Call
    :meth:`remove` (a :class:`HookSession` does it on exit) to take everything off again.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.stack: list[str] = []
        self.fn_calls: dict[tuple[str, str], int] = {}
        self.module_calls: dict[str, int] = {}
        self.edits: dict[tuple[str, str], list] = {}  # (module, function) -> [(call or None, fn)]
        self.wraps: dict[str, Callable] = {}
        self.listeners: list[Callable] = []
        self.watch_all = False
        self.removed = False
        self._mode_on = False
        self._handles = []
        self.activation_modules = [n for n, m in model.named_modules() if n and is_activation_module(m)]
        for name, module in model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._push(name)))
            self._handles.append(module.register_forward_hook(self._pop, always_call=True))

    # ------------------------------------------------------------------ module stack
    def _push(self, name: str):
        def pre(module, args):
            if not self.stack:  # a new outermost forward: counts restart
                self.fn_calls.clear()
                self.module_calls.clear()
            self.stack.append(name)
            self.module_calls[name] = self.module_calls.get(name, 0) + 1

        return pre

    def _pop(self, module, args, output):
        if self.stack:
            self.stack.pop()

    def module_call_index(self, name: str) -> int:
        """Index of the current (or last) call of module ``name`` in this forward (0-based)."""
        return self.module_calls.get(name, 0) - 1

    # ------------------------------------------------------------------ registration
    def _mode(self) -> None:
        if not self._mode_on and not self.removed:
            self.__enter__()
            self._mode_on = True

    def add(
        self,
        module: str,
        function: str,
        call: int | None,
        fn: Callable[[torch.Tensor], torch.Tensor],
        *,
        port: str = "output",
    ) -> None:
        """Replace the output (or, ``port='input'``, the first argument) of calls of ``function`` made
        directly in ``module`` (every call, or only call index ``call``) by ``fn(value)``."""
        self.edits.setdefault((module, function), []).append((call, fn, port))
        self._mode()

    def wrap(self, function: str, fn: Callable) -> None:
        """Run every call of ``function`` as ``fn(info, func, args, kwargs)`` (``info`` a
        :class:`FunctionalCall` without shape; ``fn`` calls ``func`` itself)."""
        self.wraps[function] = fn
        self._mode()

    def listen(self, fn: Callable[[FunctionalCall], None], *, everything: bool = True) -> None:
        """Call ``fn(FunctionalCall)`` after every intercepted call (``everything``: not just watched names)."""
        self.listeners.append(fn)
        self.watch_all = self.watch_all or everything
        self._mode()

    def remove(self) -> None:
        """Exit the function mode and remove every module hook this interceptor added."""
        if self.removed:
            return
        self.removed = True
        try:
            if self._mode_on:
                self.__exit__(None, None, None)
                self._mode_on = False
        finally:
            while self._handles:
                self._handles.pop().remove()

    # ------------------------------------------------------------------ the mode
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.stack:
            return func(*args, **kwargs)
        name = function_name(func)
        edits = self.edits.get((self.stack[-1], name))
        wrap = self.wraps.get(name)
        if edits is None and wrap is None and not (self.watch_all and name in ACTIVATION_FUNCTIONS):
            return func(*args, **kwargs)
        module = self.stack[-1]
        key = (module, name)
        k = self.fn_calls.get(key, 0)
        self.fn_calls[key] = k + 1
        info = FunctionalCall(module, name, k, ())
        for call, fn, port in edits or ():
            if port == "input" and (call is None or call == k) and args and isinstance(args[0], torch.Tensor):
                args = (fn(args[0]), *args[1:])
        out = wrap(info, func, args, kwargs) if wrap is not None else func(*args, **kwargs)
        for call, fn, port in edits or ():
            if port == "output" and (call is None or call == k) and isinstance(out, torch.Tensor):
                new = fn(out)
                if new is not None and new is not out and args and out is args[0]:
                    out.copy_(new)  # an in-place op (x.relu_()): its caller may ignore the return value
                elif new is not None:
                    out = new
        if self.listeners and isinstance(out, torch.Tensor):
            rec = FunctionalCall(module, name, k, tuple(out.shape), self._in_activation(module))
            for fn in self.listeners:
                fn(rec)
        return out

    def _in_activation(self, module: str) -> bool:
        return any(module == a or module.startswith(a + ".") for a in self.activation_modules)


def discover(model: nn.Module, *args, **kwargs) -> list[FunctionalCall]:
    """Every activation call of one forward ``model(*args, **kwargs)``: functional calls (with
    ``in_activation_module`` set when they run inside an activation module) and calls of activation
    modules (``function=None``; ``call`` > 0 marks a reused module), in call order.

    Runs in eval mode under ``torch.inference_mode`` and leaves the model as it was.
    """
    from .checks import call_model
    from .hooks import preserved_state

    found: list[FunctionalCall] = []
    acts = {n: m for n, m in model.named_modules() if is_activation_module(m)}
    icp = Interceptor(model)
    icp.listen(found.append)
    handles = []
    for name, module in acts.items():

        def post(mod, a, out, name=name):
            if isinstance(out, torch.Tensor):
                found.append(FunctionalCall(name, None, icp.module_call_index(name), tuple(out.shape)))

        handles.append(module.register_forward_hook(post))
    try:
        with torch.inference_mode(), preserved_state(model, eval=True):
            call_model(model, *args, **kwargs)  # torch's shape/dtype errors as one ModelError line
    finally:
        for h in handles:
            h.remove()
        icp.remove()
    return found


__all__ = [
    "ACTIVATION_FUNCTIONS",
    "FunctionalCall",
    "Interceptor",
    "discover",
    "format_call",
    "function_name",
    "is_activation_module",
    "split_call",
]
