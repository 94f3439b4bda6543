"""Hook sessions: one object owns every hook it adds and removes exactly those.

``HookSession`` registers forward, pre-forward, backward and tensor hooks, keeps their handles,
and removes them in reverse order on exit, also when the body raises. It never touches a hook it
did not add, so sessions nest and a user's own hooks survive. It also restores every module's
train/eval mode and every parameter's ``requires_grad`` flag, and (``eval=True``) runs the body in
eval mode. Site-level helpers (:meth:`HookSession.edit`, :meth:`HookSession.capture`) act on
:class:`~innerprobe.core.sites.Site` s, so all three methods say *where* the same way.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..errors import SiteError
from .checks import call_model
from .functional import Interceptor, split_call
from .sites import ResolvedSite, resolve
from .trees import describe, get_element, replace_element

EditFn = Callable[[torch.Tensor, ResolvedSite], "torch.Tensor | None"]


class StopForward(Exception):
    """Raised inside a hook to cut a forward pass short (caught by :meth:`HookSession.run`)."""


@contextlib.contextmanager
def preserved_state(model: nn.Module, *, eval: bool | None = None) -> Iterator[nn.Module]:
    """Restore every module's ``training`` flag and every parameter's ``requires_grad`` on exit.

    With ``eval=True`` the body runs in eval mode; with ``eval=False`` in train mode.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if eval is not None:
            model.train(not eval)
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in grads:
            if p.requires_grad != flag:
                p.requires_grad_(flag)


@dataclass
class Capture:
    """Values recorded at a site, one per call of its module (a reused module fires several times).

    A value is the tensor *as it was at the site*: captures are cloned when taken (``clone=True``,
    the default), so a later in-place operation of the model (``out += identity``,
    ``ReLU(inplace=True)``) cannot change them. Uncloned captures (``clone=False``, or
    ``detach=False`` to keep the autograd graph) alias the model's tensor; reading one that the
    model modified in place afterwards raises :class:`~innerprobe.errors.SiteError` (torch's
    version counter says so) instead of returning the modified values. See docs/sites.md.
    """

    site: ResolvedSite
    values: list = field(default_factory=list)
    versions: list = field(default_factory=list)
    sources: list = field(default_factory=list)  # weak references to the model's own tensors

    def _record(self, value: torch.Tensor, *, detach: bool, clone: bool) -> None:
        self.sources.append(weakref.ref(value))
        v = value.detach() if detach else value
        if clone and detach:
            v = v.clone()
            self.versions.append(None)
        else:  # aliases the model's tensor: remember its version to detect later in-place writes
            self.versions.append(None if v.is_inference() else v._version)
        self.values.append(v)

    def came_from(self, i: int, tensor: torch.Tensor) -> bool:
        """Whether value ``i`` was taken from ``tensor`` itself (same storage; e.g. the site *is* the logits)."""
        src = self.sources[i]() if i < len(self.sources) else None
        return src is not None and src.data_ptr() == tensor.data_ptr() and src.shape == tensor.shape

    def clear(self) -> None:
        """Forget every recorded value (e.g. between batches)."""
        self.values.clear()
        self.versions.clear()
        self.sources.clear()

    def stale(self) -> list[int]:
        """Indices of uncloned values that the model modified in place after they were captured."""
        return [
            i
            for i, (v, ver) in enumerate(zip(self.values, self.versions))
            if ver is not None and isinstance(v, torch.Tensor) and v._version != ver
        ]

    def check(self) -> "Capture":
        """Raise SiteError if an uncloned value was modified in place after capture; returns self."""
        if self.stale():
            raise SiteError(
                f"the value captured at site {self.site} was modified in place later in the forward pass "
                "(e.g. 'out += identity' or ReLU(inplace=True)), so it no longer holds the site's value",
                hint="capture with clone=True (the default) and detach=True, or name the site after the "
                "in-place operation",
            )
        return self

    @property
    def value(self) -> torch.Tensor:
        if not self.values:
            raise SiteError(
                f"site {self.site} was never reached in the forward pass",
                hint="check that the module runs for this input, or that an early stop did not cut it off",
            )
        self.check()
        return self.values[-1]


class HookSession:
    """Context manager that owns the hooks it adds. ``with HookSession(model) as hs: ...``"""

    def __init__(self, model: nn.Module, *, eval: bool | None = None):
        self.model = model
        self._eval = eval
        self._handles: list = []
        self._state = None
        self._open = False

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "HookSession":
        self._state = preserved_state(self.model, eval=self._eval)
        self._state.__enter__()
        self._open = True
        return self

    def __exit__(self, *exc) -> bool:
        try:
            self.remove_all()
        finally:
            self._open = False
            if self._state is not None:
                self._state.__exit__(*exc)
                self._state = None
        return False

    def remove_all(self) -> None:
        """Remove every hook this session added, newest first."""
        while self._handles:
            self._handles.pop().remove()

    @property
    def n_hooks(self) -> int:
        return len(self._handles)

    def _keep(self, handle):
        if not self._open:
            handle.remove()
            raise RuntimeError("HookSession used outside its 'with' block")
        self._handles.append(handle)
        return handle

    # ------------------------------------------------------------------ raw hooks
    def forward_hook(self, module: nn.Module, fn: Callable, *, with_kwargs: bool = False, prepend: bool = False):
        return self._keep(module.register_forward_hook(fn, with_kwargs=with_kwargs, prepend=prepend))

    def pre_hook(self, module: nn.Module, fn: Callable, *, with_kwargs: bool = False, prepend: bool = False):
        return self._keep(module.register_forward_pre_hook(fn, with_kwargs=with_kwargs, prepend=prepend))

    def backward_hook(self, module: nn.Module, fn: Callable):
        return self._keep(module.register_full_backward_hook(fn))

    def backward_pre_hook(self, module: nn.Module, fn: Callable):
        return self._keep(module.register_full_backward_pre_hook(fn))

    def tensor_hook(self, tensor: torch.Tensor, fn: Callable):
        return self._keep(tensor.register_hook(fn))

    # ------------------------------------------------------------------ site helpers
    def edit(self, site, fn: EditFn) -> list[ResolvedSite]:
        """Replace the value at each resolved site by ``fn(value, rsite)`` (None keeps it).

        With selectors (heads, positions, units) only the selected elements change.
        """
        rsites = (
            site
            if isinstance(site, list) and site and isinstance(site[0], ResolvedSite)
            else ([site] if isinstance(site, ResolvedSite) else resolve(self.model, site))
        )
        for rs in rsites:
            self._edit_one(rs, fn)
        return rsites

    def _edit_one(self, rs: ResolvedSite, fn: EditFn) -> None:
        s = rs.site

        def apply(value: Any) -> Any:
            if not isinstance(value, torch.Tensor):
                raise SiteError(
                    f"site {s} holds a {describe(value)}, not a tensor", hint="pick an element, e.g. ':output.0'"
                )
            try:
                new = fn(value, rs)
            except Exception as e:  # the caller's own function: its error is not the model's
                e._innerprobe_from_hook = True
                raise
            if new is None:
                return value
            mask = s.mask_like(value)
            return new if mask is None else torch.where(mask, new, value)

        base, function, call = split_call(s.module)
        if function is not None:  # a functional call (core/functional.py): the function mode edits it
            self._calls().add(base, function, call, apply, port=s.port)
            return
        if call is not None:  # the call-th call of a reused module only
            icp, inner = self._calls(), apply

            def apply(value: Any) -> Any:  # noqa: F811
                return inner(value) if icp.module_call_index(base) == call else value

        if s.port == "output":

            def hook(module, args, output):
                return replace_element(output, s.index, apply(get_element(output, s.index, str(s))), str(s))

            self.forward_hook(rs.module, hook)
        else:

            def pre(module, args, kwargs):
                if isinstance(s.index, str) and s.index in kwargs:
                    kwargs = {**kwargs, s.index: apply(kwargs[s.index])}
                    return args, kwargs
                i = 0 if s.index is None else s.index
                if isinstance(i, str) or not -len(args) <= i < len(args):
                    raise SiteError(
                        f"input {s.index!r} not found at site {s}",
                        hint=f"positional inputs: {len(args)}, keyword inputs: {sorted(kwargs)}",
                    )
                args = list(args)
                args[i] = apply(args[i])
                return tuple(args), kwargs

            self.pre_hook(rs.module, pre, with_kwargs=True)

    def _calls(self) -> Interceptor:
        """This session's functional-call interceptor (created on first use, removed with its hooks)."""
        icp = getattr(self, "_interceptor", None)
        if icp is None or icp.removed:
            icp = self._interceptor = Interceptor(self.model)
            self._keep(icp)
        return icp

    def capture(self, site, *, detach: bool = True, stop: bool = False, clone: bool = True) -> list[Capture]:
        """Record the value at each resolved site on every call. ``stop=True`` ends the forward there.

        Values are cloned (``clone=True``) so the model's later in-place operations cannot change
        them; ``detach=False`` keeps the autograd graph and so the model's own tensor, which
        :attr:`Capture.value` refuses to return if the model modified it in place afterwards.
        """
        caps = []
        for rs in resolve(self.model, site) if not isinstance(site, ResolvedSite) else [site]:
            cap = Capture(rs)

            def fn(value, _rs, cap=cap):
                cap._record(value, detach=detach, clone=clone and not stop)  # nothing runs after a stop
                if stop:
                    raise StopForward

            self._edit_one(rs, fn)
            caps.append(cap)
        return caps

    def run(self, *args, **kwargs):
        """Call the model; returns None if a hook stopped the forward early.

        Torch's shape/dtype/device errors from the forward become one
        :class:`~innerprobe.errors.ModelError` naming the inputs (see :func:`.checks.call_model`).
        """
        try:
            return call_model(self.model, *args, **kwargs)
        except StopForward:
            return None


def count_hooks(model: nn.Module) -> int:
    """Total number of forward, pre-forward and backward hooks on all modules (for hygiene checks)."""
    total = 0
    for m in model.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            total += len(getattr(m, attr, {}) or {})
    return total


def run_with_cache(
    model: nn.Module, sites, *args, eval: bool | None = True, **kwargs
) -> tuple[Any, dict[str, torch.Tensor]]:
    """Run ``model(*args)`` and return (output, {site string: last value}) for the given sites.

    Runs in eval mode by default, so a train-mode model's BatchNorm statistics are left as they
    were; ``eval=None`` keeps the model's own modes (and then its train-mode forward updates them).
    """
    with HookSession(model, eval=eval) as hs:
        caps = hs.capture(sites)
        out = hs.run(*args, **kwargs)
    return out, {str(c.site): c.value for c in caps}
