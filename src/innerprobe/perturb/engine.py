"""The APEX engine: Monte Carlo class counts under activation noise.

APEX (Ren, Luo, Li 2026, arXiv 2602.03586) adds noise to hidden activations, keeps input and
weights fixed, and reads the distribution of predicted classes p_sigma(c|x) over K noisy passes
(apex.md §1: ã_l = φ(z_l) + σ ξ_l; p̂_σ(c|x) = #{k: ŷ_k = c}/K). Efficient implementation
(apex.md §4):

* the K passes of a batch of inputs run as one forward (``repeat_interleave``), several sigmas per
  forward with a per-row sigma, chunked to at most ``chunk_rows`` rows;
* common random numbers: the standard noise is seeded per (sample id, site, call), drawn once and
  scaled for every sigma, so results depend neither on chunk sizes nor on the grid, and two models
  of the same architecture (or two sigmas) see the same noise;
* prefix reuse: when every noise site lies at or after child ``p`` of a plain ``nn.Sequential``,
  children ``[:p]`` run once per input and only the rest is repeated;
* hooks come from a :class:`~innerprobe.core.hooks.HookSession` under ``torch.inference_mode``:
  the model comes back with the same weights, modes, flags and hooks, also after an error.

Only integer counts ``[N, S, C]`` are kept (logits of all passes only on request).
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..core.hooks import HookSession
from ..core.sites import ResolvedSite, Site, resolve
from ..core.trees import logits_of
from ..errors import ConfigError, InnerprobeError, ModelError, SiteError, check
from .noise import NoiseKind, get_kind

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
               nn.Mish, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
               nn.LogSigmoid, nn.Tanhshrink, nn.GLU, nn.Threshold)


def is_activation(module: nn.Module) -> bool:
    """A hidden nonlinearity module: torch's activation classes, or a class named like one
    (Hugging Face ``GELUActivation``, ``NewGELUActivation``, ...)."""
    if isinstance(module, ACTIVATIONS):
        return True
    name = type(module).__name__
    return name.endswith("Activation") or any(k in name for k in ("GELU", "ReLU", "SiLU", "Swish"))


def default_sites(model: nn.Module) -> list[Site]:
    """Outputs of every hidden nonlinearity module, in module order (apex.md §1 'Where (default)')."""
    sites = [Site(name) for name, m in model.named_modules() if name and is_activation(m)]
    if not sites:
        types = sorted({type(m).__name__ for m in model.modules()})
        raise SiteError(
            f"{type(model).__name__} has no activation modules to put noise after",
            hint="pass sites explicitly (e.g. sites=['fc1'] or ':input'); functional activations (F.relu) are invisible "
                 f"to hooks. Module types present: {', '.join(types)}",
        )
    return sites


# ----------------------------------------------------------------------------- seeding
_M64 = (1 << 64) - 1


@functools.lru_cache(maxsize=1 << 16)
def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 finaliser per value): one stream per (seed, sample, site, call)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _M64)) & _M64
        h = (h * 0xBF58476D1CE4E5B9) & _M64
        h ^= h >> 31
        h = (h * 0x94D049BB133111EB) & _M64
        h ^= h >> 29
    return h & ((1 << 63) - 1)


# ----------------------------------------------------------------------------- validation
def check_sigmas(sigmas, *, kind: NoiseKind | None = None, increasing: bool = True) -> np.ndarray:
    try:
        sig = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ConfigError(f"sigmas must be numbers, got {sigmas!r}", hint="e.g. --sigmas 0.1,0.3,1,3 or a numpy array") from None
    check(sig.size > 0, "no sigmas given", "give at least one noise scale, e.g. 0.1,0.3,1,3")
    check(bool(np.isfinite(sig).all()), f"sigmas must be finite, got {sig.tolist()}", "drop nan/inf values")
    check(bool((sig >= 0).all()), f"sigmas must be >= 0, got {sig[sig < 0].tolist()}", "noise scales are standard deviations")
    if increasing:
        check(bool((np.diff(sig) > 0).all()), f"sigmas must be strictly increasing, got {sig.tolist()}",
              "sort them and drop repeats, e.g. numpy.geomspace(0.02, 20, 31)")
    if kind is not None and kind.max_sigma is not None:
        check(bool((sig < kind.max_sigma).all()), f"{kind.name} noise needs sigma < {kind.max_sigma}, got {sig.max()}",
              "for dropout noise sigma is the drop probability")
    return sig


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}",
                         hint="load it with innerprobe.zoo.load_model(...) or pass your nn.Module")


def _check_input(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"inputs must be a torch.Tensor, got {type(x).__name__}", hint="stack your inputs into one tensor [N, ...]")
    check(x.dim() >= 1 and x.shape[0] > 0, f"inputs must have a non-empty batch axis, got shape {tuple(x.shape)}")
    return x


# ----------------------------------------------------------------------------- engine
@dataclass
class _Ctx:
    ids: list[int]
    rows: int
    B: int
    s: int
    sigma_rows: torch.Tensor  # one sigma per (input, sigma) pair, [B * s]
    calls: list[int]
    cache: dict = field(default_factory=dict)


class Engine:
    """Prepared APEX runs on one model and one input batch.

    ``Engine(model, x, sites=None, noise='gaussian', samples=64, relative=False, calibration=None,
    seed=0, chunk_rows=8192, prefix=True, ids=None, noise_cache_mb=0)``; ``noise_cache_mb`` keeps drawn
    noise between :meth:`counts` calls (used by early exit and bisection). :meth:`counts` returns class counts
    ``[N, S, C]`` for a sigma grid or a per-input sigma matrix.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, *, sites=None, noise="gaussian", samples: int = 64,
                 relative: bool = False, calibration: torch.Tensor | None = None, seed: int = 0,
                 chunk_rows: int = 8192, prefix: bool = True, ids: Sequence[int] | None = None, noise_cache_mb: float = 0):
        _check_model(model)
        self.model = model
        self.x = _check_input(x)
        check(isinstance(samples, (int, np.integer)) and not isinstance(samples, bool) and samples >= 1,
              f"samples (K, noisy passes per input) must be a positive integer, got {samples!r}", "K = 32-64 is enough for escape noise")
        check(isinstance(chunk_rows, (int, np.integer)) and chunk_rows >= 1, f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        self.K = int(samples)
        self.kind = get_kind(noise)
        check(not (relative and self.kind.name == "dropout"), "relative sigma makes no sense for dropout noise",
              "dropout's sigma is a probability; use relative=False")
        self.seed = int(seed)
        self.chunk_rows = int(chunk_rows)
        self.ids = list(range(len(x))) if ids is None else [int(i) for i in ids]
        check(len(self.ids) == len(x), f"ids has {len(self.ids)} entries for {len(x)} inputs")
        specs = default_sites(model) if sites is None else sites
        if isinstance(specs, (str, Site)):
            specs = [specs]
        check(len(specs) > 0, "no noise sites given", "pass at least one site, or None for every hidden nonlinearity")
        self.rsites: list[ResolvedSite] = resolve(model, list(specs))
        self.default_sites = sites is None
        self._gen = torch.Generator(device=x.device)
        # optional store of drawn noise across counts() calls (early exit, bisection): same values, no redraw
        self.noise_cache_bytes = int(noise_cache_mb * 2**20)
        self._store: dict | None = {} if noise_cache_mb > 0 else None
        self._store_bytes = 0
        self._ctx: _Ctx | None = None
        self._clean_pass(calibration)
        self.relative = bool(relative)
        self.scale = [r if relative else 1.0 for r in self.rms]
        if relative:
            check(all(r > 0 for r in self.rms), "a noise site has zero activation RMS on the calibration batch",
                  "relative sigma needs non-zero activations; use absolute sigma")
        self.split = self._find_prefix() if prefix else None

    # ------------------------------------------------------------------ clean pass
    def _clean_pass(self, calibration) -> None:
        """Clean logits and predictions, per-site RMS, and checks that sites exist and are not the logits."""
        model, x = self.model, self.x
        sumsq = [0.0] * len(self.rsites)
        count = [0] * len(self.rsites)
        logits_all = []
        at_logits: set[int] = set()
        cal = None if calibration is None else _check_input(calibration)
        passes = [(x, True, cal is None)] + ([(cal, False, True)] if cal is not None else [])
        with torch.inference_mode(), HookSession(model, eval=True) as hs:
            caps = [hs.capture(rs)[0] for rs in self.rsites]
            for part, keep, measure in passes:
                for start in range(0, len(part), 4096):
                    xb = part[start:start + 4096]
                    for c in caps:
                        c.clear()
                    logits = logits_of(_call(model, xb))
                    if keep:
                        logits_all.append(logits.detach().clone())
                    for j, c in enumerate(caps):
                        if not c.values:
                            raise SiteError(f"noise site {self.rsites[j]} was never reached in the forward pass",
                                            hint="pick a module that runs for these inputs")
                        for i, v in enumerate(c.values):
                            if c.came_from(i, logits):  # captures are clones: ask whether it was the logits tensor
                                at_logits.add(j)
                                continue
                            if v.dim() == 0 or v.shape[0] != xb.shape[0]:
                                raise ModelError(f"site {self.rsites[j]} has shape {tuple(v.shape)}: its first axis is not the batch",
                                                 hint="APEX needs batch-first activations at every noise site")
                            if measure and v.is_floating_point():
                                sumsq[j] += float(v.double().pow(2).sum())
                                count[j] += v.numel()
        self.clean_logits = torch.cat(logits_all)
        if self.clean_logits.dim() != 2:
            raise ModelError(f"the model's logits have shape {tuple(self.clean_logits.shape)}, not [batch, classes]",
                             hint="APEX needs a classifier: one logit vector per input")
        self.y0 = self.clean_logits.argmax(-1)
        self.C = self.clean_logits.shape[1]
        self.rms = [math.sqrt(s / max(n, 1)) for s, n in zip(sumsq, count)]
        if at_logits:
            if not self.default_sites:
                j = min(at_logits)
                raise SiteError(f"site {self.rsites[j]} is the model's logits; APEX never perturbs the logits",
                                hint="pick a hidden site, e.g. the nonlinearity before the last layer")
            keep = [j for j in range(len(self.rsites)) if j not in at_logits]
            check(bool(keep), "the model's only activation module produces its logits", "pass hidden sites explicitly", SiteError)
            self.rsites = [self.rsites[j] for j in keep]
            self.rms = [self.rms[j] for j in keep]

    def _find_prefix(self):
        """Index p such that children[:p] of a plain nn.Sequential hold no noise site (None if p == 0 or unsupported)."""
        m = self.model
        if not isinstance(m, nn.Sequential) or type(m).forward is not nn.Sequential.forward:
            return None
        if m._forward_hooks or m._forward_pre_hooks:
            return None  # the user's own root hooks would not fire on a split run
        names = list(m._modules)
        first = len(names)
        for rs in self.rsites:
            if rs.name == "":
                return None
            head = rs.name.split(".")[0]
            if head not in names:
                return None
            first = min(first, names.index(head))
        return first if 0 < first < len(names) else None

    # ------------------------------------------------------------------ hooks
    def _draw(self, ids: list[int], j: int, call: int, shape, dtype, device) -> torch.Tensor:
        out = torch.empty((len(ids), self.K, *shape), dtype=dtype, device=device)
        store = self._store
        for b, i in enumerate(ids):
            key = (i, j, call)
            xi = store.get(key) if store is not None else None
            if xi is not None and xi.shape[1:] == shape and xi.dtype == dtype:
                out[b] = xi
                continue
            self._gen.manual_seed(mix_seed(self.seed, i, j, call))
            out[b] = self.kind.draw((self.K, *shape), self._gen, dtype, device)
            if store is not None and self._store_bytes + out[b].numel() * out.element_size() <= self.noise_cache_bytes:
                store[key] = out[b].clone()
                self._store_bytes += out[b].numel() * out.element_size()
        return out

    def _make_fn(self, j: int):
        def fn(value: torch.Tensor, rs: ResolvedSite):
            ctx = self._ctx
            if ctx is None:
                return None
            call = ctx.calls[j]
            ctx.calls[j] += 1
            if value.shape[0] != ctx.rows:
                raise ModelError(f"site {rs} has {value.shape[0]} rows where {ctx.rows} were fed in",
                                 hint="APEX needs batch-first activations at every noise site")
            if not value.is_floating_point():
                raise SiteError(f"site {rs} holds a {value.dtype} tensor; noise needs floating-point activations",
                                hint="use ':input' only for models with float inputs (for token models pick an embedding output)")
            shape = tuple(value.shape[1:])
            key = (j, call)
            xi = ctx.cache.get(key)
            if xi is None or tuple(xi.shape[2:]) != shape:
                xi = self._draw(ctx.ids, j, call, shape, value.dtype, value.device)
                ctx.cache[key] = xi
            # broadcast instead of materialising: rows are (input b, sigma s, pass k); xi is shared over s (CRN)
            nd = len(shape)
            sig = (ctx.sigma_rows * self.scale[j]).to(value.dtype).view(ctx.B, ctx.s, *([1] * (nd + 1)))
            new = self.kind.apply(value.view(ctx.B, ctx.s, self.K, *shape), sig, xi.unsqueeze(1))
            return new.reshape(ctx.rows, *shape)
        return fn

    # ------------------------------------------------------------------ runs
    def counts(self, sigmas, *, keep_logits: bool = False, progress: bool = False, subset=None):
        """Class counts [N, S, C] (int64 numpy) for a grid ``sigmas`` [S] or a per-input matrix [N, S].

        With ``keep_logits=True`` also returns the logits of every pass, [N, S, K, C]. ``subset``
        (indices into the inputs) runs only those inputs, with the same noise they get in a full run.
        """
        sig = np.asarray(sigmas, dtype=np.float64)
        X, IDS = self.x, self.ids
        if subset is not None:
            sub = np.asarray(subset, dtype=np.int64).reshape(-1)
            X, IDS = self.x[torch.as_tensor(sub)], [self.ids[i] for i in sub.tolist()]
        N = len(X)
        if sig.ndim == 1:
            check_sigmas(sig, kind=self.kind, increasing=False)
            sig = np.broadcast_to(sig, (N, len(sig)))
        else:
            check(sig.ndim == 2 and sig.shape[0] == N, f"a sigma matrix must have shape [N={N}, S], got {sig.shape}")
            check_sigmas(sig.reshape(-1), kind=self.kind, increasing=False)
        S, K, C = sig.shape[1], self.K, self.C
        s_sub = max(1, min(S, self.chunk_rows // K))
        B = max(1, self.chunk_rows // (s_sub * K))
        counts = np.zeros((N, S, C), dtype=np.int64)
        logits_out = torch.empty((N, S, K, C)) if keep_logits else None
        sig_t = torch.tensor(np.ascontiguousarray(sig), dtype=torch.float64)
        blocks = range(0, N, B)
        if progress:
            from ..progress import track

            blocks = track(blocks, "APEX passes", total=math.ceil(N / B))
        model = self.model
        with torch.inference_mode(), HookSession(model, eval=True) as hs:
            for j, rs in enumerate(self.rsites):
                hs.edit([rs], self._make_fn(j))
            try:
                for b0 in blocks:
                    b1 = min(N, b0 + B)
                    ids = IDS[b0:b1]
                    cache: dict = {}
                    xb = X[b0:b1]
                    h = None
                    if self.split is not None:
                        h = xb
                        for child in list(model._modules.values())[: self.split]:
                            h = child(h)
                    for s0 in range(0, S, s_sub):
                        s1 = min(S, s0 + s_sub)
                        nb, ns = b1 - b0, s1 - s0
                        rows = nb * ns * K
                        srows = sig_t[b0:b1, s0:s1].reshape(nb * ns)
                        self._ctx = _Ctx(ids, rows, nb, ns, srows, [0] * len(self.rsites), cache)
                        if self.split is not None:
                            z = h.repeat_interleave(ns * K, dim=0)
                            for child in list(model._modules.values())[self.split:]:
                                z = child(z)
                            out = z
                        else:
                            out = _call(model, xb.repeat_interleave(ns * K, dim=0))
                        logits = logits_of(out)
                        if logits.dim() != 2 or logits.shape != (rows, C):
                            raise ModelError(f"noisy logits have shape {tuple(logits.shape)}, expected {(rows, C)}",
                                             hint="APEX needs a classifier that keeps the batch axis first")
                        pred = logits.argmax(-1).view(nb * ns, K)
                        cnt = torch.zeros(nb * ns, C, dtype=torch.int64).scatter_add_(1, pred, torch.ones_like(pred))
                        counts[b0:b1, s0:s1] = cnt.view(nb, ns, C).numpy()
                        if keep_logits:
                            logits_out[b0:b1, s0:s1] = logits.float().view(nb, ns, K, C)
            finally:
                self._ctx = None
        return (counts, logits_out) if keep_logits else counts

    def fingerprint(self) -> dict:
        """What a saved sweep must match to be resumed: inputs, weights, sites, noise, K, seed."""
        h = hashlib.sha256()
        h.update(self.x.detach().cpu().contiguous().numpy().tobytes())
        for k, v in self.model.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().view(-1).to(torch.float64).numpy().tobytes() if v.is_floating_point()
                     else v.detach().cpu().contiguous().view(-1).numpy().tobytes())
        return {"data_and_weights": h.hexdigest()[:32], "sites": [str(r) for r in self.rsites], "noise": self.kind.name,
                "K": self.K, "seed": self.seed, "relative": self.relative, "ids": hashlib.sha256(str(self.ids).encode()).hexdigest()[:16]}


def _call(model: nn.Module, x: torch.Tensor) -> Any:
    try:
        return model(x)
    except InnerprobeError:
        raise
    except (RuntimeError, TypeError, ValueError) as e:
        raise ModelError(f"the model failed on inputs of shape {tuple(x.shape)}: {str(e).splitlines()[0]}",
                         hint="check that the inputs have the shape and dtype the model expects") from e
