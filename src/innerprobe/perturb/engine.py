"""The APEX engine: Monte Carlo class counts under activation noise.

APEX (Ren, Luo, Li 2026, arXiv 2602.03586) adds noise to hidden activations, keeps input and
weights fixed, and reads the distribution of predicted classes p_sigma(c|x) over K noisy passes
(docs/apex.md, 'Definitions': ã_l = φ(z_l) + σ ξ_l; p̂_σ(c|x) = #{k: ŷ_k = c}/K). Efficient implementation
(docs/apex.md, 'How it is computed'):

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
import inspect
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.hooks import HookSession
from ..core.sites import ResolvedSite, Site, resolve
from ..core.trees import logits_of
from ..errors import ConfigError, InnerprobeError, ModelError, SiteError, check
from .noise import NoiseKind, get_kind
from .outputs import Readout, as_readout
from .where import default_sites, embedding_site, is_activation, preset

__all__ = ["NONFINITE", "Engine", "check_sigmas", "default_sites", "is_activation", "mix_seed"]

#: class id of the "non-finite logits" outcome in ``Engine.classes`` (its own outcome, never a class)
NONFINITE = -2
#: readouts with more classes than this (a vocabulary) count only the classes that occur
DENSE_MAX = 4096

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
        raise ConfigError(
            f"sigmas must be numbers, got {sigmas!r}", hint="e.g. --sigmas 0.1,0.3,1,3 or a numpy array"
        ) from None
    check(sig.size > 0, "no sigmas given", "give at least one noise scale, e.g. 0.1,0.3,1,3")
    check(bool(np.isfinite(sig).all()), f"sigmas must be finite, got {sig.tolist()}", "drop nan/inf values")
    check(
        bool((sig >= 0).all()),
        f"sigmas must be >= 0, got {sig[sig < 0].tolist()}",
        "noise scales are standard deviations",
    )
    if increasing:
        check(
            bool((np.diff(sig) > 0).all()),
            f"sigmas must be strictly increasing, got {sig.tolist()}",
            "sort them and drop repeats, e.g. numpy.geomspace(0.02, 20, 31)",
        )
    if kind is not None and kind.max_sigma is not None:
        check(
            bool((sig < kind.max_sigma).all()),
            f"{kind.name} noise needs sigma < {kind.max_sigma}, got {sig.max()}",
            "for dropout noise sigma is the drop probability",
        )
    return sig


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"expected a torch.nn.Module, got {type(model).__name__}",
            hint="load it with innerprobe.zoo.load_model(...) or pass your nn.Module",
        )


def _check_input(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ConfigError(
            f"inputs must be a torch.Tensor, got {type(x).__name__}", hint="stack your inputs into one tensor [N, ...]"
        )
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
    seed=0, chunk_rows=None, prefix=True, ids=None, noise_cache_mb=0, readout=None, position=None, tokens=None)``.
    ``sites``: None (every hidden nonlinearity, module or functional), ``'residual'``, or site specs
    (``':input'`` on token ids is the token embedding's output). ``readout`` / ``position`` /
    ``tokens`` say what is counted (:class:`~innerprobe.perturb.outputs.Readout`: logits of a
    classifier, or of a language model at a position, over the vocabulary or candidates).
    ``chunk_rows=None`` picks the rows per forward from a ~1 GiB activation budget (at most 8192).
    ``noise_cache_mb`` keeps drawn noise between :meth:`counts` calls (early exit, bisection).
    :meth:`counts` returns outcome counts ``[N, S, len(classes)]``; ``classes[j]`` is column j's class
    (or token id); ``NONFINITE`` marks the column of passes whose scores were not finite.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        sites=None,
        noise="gaussian",
        samples: int = 64,
        relative: bool = False,
        calibration: torch.Tensor | None = None,
        seed: int = 0,
        chunk_rows: int | None = None,
        prefix: bool = True,
        ids: Sequence[int] | None = None,
        noise_cache_mb: float = 0,
        readout: Readout | None = None,
        position=None,
        tokens=None,
    ):
        _check_model(model)
        self.model = model
        self.x = _check_input(x)
        check(
            isinstance(samples, (int, np.integer)) and not isinstance(samples, bool) and samples >= 1,
            f"samples (K, noisy passes per input) must be a positive integer, got {samples!r}",
            "K = 32-64 is enough for escape noise",
        )
        check(
            chunk_rows is None
            or isinstance(chunk_rows, (int, np.integer))
            and not isinstance(chunk_rows, bool)
            and chunk_rows >= 1,
            f"chunk_rows must be a positive integer, got {chunk_rows!r}",
        )
        self.K = int(samples)
        self.kind = get_kind(noise)
        check(
            not (relative and self.kind.name == "dropout"),
            "relative sigma makes no sense for dropout noise",
            "dropout's sigma is a probability; use relative=False",
        )
        self.seed = int(seed)
        self.ids = list(range(len(x))) if ids is None else [int(i) for i in ids]
        check(len(self.ids) == len(x), f"ids has {len(self.ids)} entries for {len(x)} inputs")
        self.tokens_in = not (x.is_floating_point() or x.is_complex())
        self.readout = as_readout(readout, position=position, tokens=tokens)
        self.call_kwargs, self._kept = _call_kwargs(model, x, self.readout)
        self.default_sites = sites is None
        self.rsites = self._resolve_sites(sites)
        self._gen = torch.Generator(device=x.device)
        # optional store of drawn noise across counts() calls (early exit, bisection): same values, no redraw
        self.noise_cache_bytes = int(noise_cache_mb * 2**20)
        self._store: dict | None = {} if noise_cache_mb > 0 else None
        self._store_bytes = 0
        self._ctx: _Ctx | None = None
        self._clean_pass(calibration)
        self.chunk_rows = int(chunk_rows) if chunk_rows is not None else self._auto_rows()
        self._init_classes()
        self.relative = bool(relative)
        self.scale = [r if relative else 1.0 for r in self.rms]
        if relative:
            check(
                all(r > 0 for r in self.rms),
                "a noise site has zero activation RMS on the calibration batch",
                "relative sigma needs non-zero activations; use absolute sigma",
            )
        calls = any("/" in r.name or "#" in r.name for r in self.rsites)
        self.split = self._find_prefix() if prefix and not calls and not self.call_kwargs else None

    def _resolve_sites(self, sites) -> list[ResolvedSite]:
        """Site specs -> resolved sites; ':input' on token ids becomes the token embedding's output."""
        try:
            specs = preset(self.model, sites, self.x[:1])  # may run one example forward (functional activations)
        except ModelError as e:
            raise _retype(e, self.model, self.x) from e
        if isinstance(specs, (str, Site)):
            specs = [specs]
        check(len(specs) > 0, "no noise sites given", "pass at least one site, or None for every hidden nonlinearity")
        rsites = resolve(self.model, list(specs))
        if self.tokens_in:
            emb = None
            for i, rs in enumerate(rsites):
                if rs.name == "" and rs.site.port == "input":
                    emb = emb or resolve(self.model, embedding_site(self.model))[0]
                    rsites[i] = emb
            rsites = list(dict.fromkeys(rsites))
        return rsites

    def _auto_rows(self) -> int:
        """Rows per forward: the largest noise-site activation and the logits, ~6 live copies, within ~1 GiB."""
        per_row = max([self._row_bytes, *self._site_row_bytes]) if self._site_row_bytes else self._row_bytes
        return int(max(1, min(8192, 2**30 // max(1, 6 * per_row))))

    # ------------------------------------------------------------------ clean pass
    def _clean_pass(self, calibration) -> None:
        """Clean scores and predictions, per-site RMS, and checks that sites exist and are not the logits."""
        model, x = self.model, self.x
        sumsq = [0.0] * len(self.rsites)
        count = [0] * len(self.rsites)
        self._site_row_bytes = [0] * len(self.rsites)
        logits_all = []
        at_logits: set[int] = set()
        cal = None if calibration is None else _check_input(calibration)
        passes = [(x, True, cal is None)] + ([(cal, False, True)] if cal is not None else [])
        step = 256 if self.tokens_in else 4096
        with torch.inference_mode(), HookSession(model, eval=True) as hs:
            caps = [hs.capture(rs)[0] for rs in self.rsites]
            for part, keep, measure in passes:
                for start in range(0, len(part), step):
                    xb = part[start : start + step]
                    for c in caps:
                        c.clear()
                    out = _call(model, xb, self.call_kwargs)
                    raw = logits_of(out)
                    if start == 0 and keep:  # (re)bind the readout to this model and these inputs
                        self.readout.bind(out, len(x), seq_len=x.shape[1] if x.dim() > 1 else None, kept=self._kept)
                        self._row_bytes = raw[:1].numel() * raw.element_size()
                    if keep:
                        logits_all.append(self.readout(out, torch.arange(start, start + len(xb))).detach().clone())
                    for j, c in enumerate(caps):
                        if not c.values:
                            raise SiteError(
                                f"noise site {self.rsites[j]} was never reached in the forward pass",
                                hint=_unreached_hint(self.rsites[j]),
                            )
                        for i, v in enumerate(c.values):
                            if c.came_from(i, raw):  # captures are clones: ask whether it was the logits tensor
                                at_logits.add(j)
                                continue
                            if v.dim() == 0 or v.shape[0] != xb.shape[0]:
                                raise ModelError(
                                    f"site {self.rsites[j]} has shape {tuple(v.shape)}: its first axis is not the "
                                    f"batch",
                                    hint="APEX needs batch-first activations at every noise site",
                                )
                            self._site_row_bytes[j] = max(self._site_row_bytes[j], v[:1].numel() * v.element_size())
                            if measure and v.is_floating_point():
                                sumsq[j] += float(v.double().pow(2).sum())
                                count[j] += v.numel()
        self.clean_logits = torch.cat(logits_all)
        _check_finite_clean(self.clean_logits)
        self.y0_token = self.clean_logits.argmax(-1)
        self.C = self.clean_logits.shape[1]
        self.rms = [math.sqrt(s / max(n, 1)) for s, n in zip(sumsq, count)]
        if at_logits:
            if not self.default_sites:
                j = min(at_logits)
                raise SiteError(
                    f"site {self.rsites[j]} is the model's logits; APEX never perturbs the logits",
                    hint="pick a hidden site, e.g. the nonlinearity before the last layer",
                )
            keep = [j for j in range(len(self.rsites)) if j not in at_logits]
            check(
                bool(keep),
                "the model's only activation module produces its logits",
                "pass hidden sites explicitly",
                SiteError,
            )
            self.rsites = [self.rsites[j] for j in keep]
            self.rms = [self.rms[j] for j in keep]
            self._site_row_bytes = [self._site_row_bytes[j] for j in keep]

    # ------------------------------------------------------------------ outcome table
    def _init_classes(self) -> None:
        """Columns of the counts: every class when there are few (dense); else the classes that occur,
        starting with the clean predictions (a vocabulary readout); NONFINITE is added when it occurs."""
        C = self.C
        self.dense = C <= DENSE_MAX
        self._lut = torch.full((C + 1,), -1, dtype=torch.int64)  # code C = non-finite scores
        if self.dense:
            self.classes = list(range(C))
            self._lut[:C] = torch.arange(C)
        else:
            self.classes = []
            self._add_codes(torch.unique(self.y0_token))
        self.y0 = self._lut[self.y0_token]
        self.nonfinite_warned = False

    def _add_codes(self, codes: torch.Tensor) -> None:
        new = codes[self._lut[codes] < 0]
        if len(new):
            new = torch.unique(new)
            self._lut[new] = torch.arange(len(self.classes), len(self.classes) + len(new))
            self.classes += [NONFINITE if int(c) == self.C else int(c) for c in new]

    def columns(self, pred: torch.Tensor) -> torch.Tensor:
        """Column index of each predicted code (class / token id, or C for non-finite), growing the table."""
        if bool((self._lut[pred] < 0).any()):
            self._add_codes(pred.reshape(-1))
        return self._lut[pred]

    def pad(self, counts: np.ndarray) -> np.ndarray:
        """Counts with zero columns appended for outcomes first seen after they were made."""
        w = len(self.classes) - counts.shape[-1]
        return counts if w <= 0 else np.concatenate([counts, np.zeros((*counts.shape[:-1], w), counts.dtype)], -1)

    @property
    def n_outcomes(self) -> int:
        return len(self.classes)

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
        """Standard noise [len(ids), K, *shape], one seeded stream per (seed, input id, site, call) (CRN),
        drawn straight into its slice of the output (no per-input allocation or copy)."""
        out = torch.empty((len(ids), self.K, *shape), dtype=dtype, device=device)
        store, gen, kind, seed = self._store, self._gen, self.kind, self.seed
        for b, i in enumerate(ids):
            if store is not None:
                xi = store.get((i, j, call))
                if xi is not None and xi.shape[1:] == shape and xi.dtype == dtype:
                    out[b] = xi
                    continue
            gen.manual_seed(mix_seed(seed, i, j, call))
            kind.draw_into(out[b], gen)
            if store is not None and self._store_bytes + out[b].numel() * out.element_size() <= self.noise_cache_bytes:
                store[(i, j, call)] = out[b].clone()
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
                raise ModelError(
                    f"site {rs} has {value.shape[0]} rows where {ctx.rows} were fed in",
                    hint="APEX needs batch-first activations at every noise site",
                )
            if not value.is_floating_point():
                raise SiteError(
                    f"site {rs} holds a {value.dtype} tensor; noise needs floating-point activations",
                    hint="use ':input' only for models with float inputs (for token models pick an embedding output)",
                )
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
        """Outcome counts [N, S, len(classes)] (int64 numpy) for a grid ``sigmas`` [S] or a per-input matrix [N, S].

        With ``keep_logits=True`` also returns the scores of every pass, [N, S, K, C]. ``subset``
        (indices into the inputs) runs only those inputs, with the same noise they get in a full run.
        A pass whose scores are not all finite is counted in the ``NONFINITE`` column (with a warning).
        """
        sig = np.asarray(sigmas, dtype=np.float64)
        X, IDS, idx = self.x, self.ids, torch.arange(len(self.x))
        if subset is not None:
            sub = np.asarray(subset, dtype=np.int64).reshape(-1)
            idx = torch.as_tensor(sub)
            X, IDS = self.x[idx], [self.ids[i] for i in sub.tolist()]
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
        parts = []
        logits_out = torch.empty((N, S, K, C)) if keep_logits else None
        sig_t = torch.tensor(np.ascontiguousarray(sig), dtype=torch.float64)
        blocks = range(0, N, B)
        if progress:
            from ..progress import track

            blocks = track(blocks, "APEX passes", total=math.ceil(N / B))
        with torch.inference_mode(), HookSession(self.model, eval=True) as hs:
            for j, rs in enumerate(self.rsites):
                hs.edit([rs], self._make_fn(j))
            try:
                for b0 in blocks:
                    b1 = min(N, b0 + B)
                    self._block(X[b0:b1], IDS[b0:b1], idx[b0:b1], sig_t[b0:b1], s_sub, parts, b0, logits_out)
            finally:
                self._ctx = None
        counts = np.zeros((N, S, self.n_outcomes), dtype=np.int64)
        for b0, s0, cnt in parts:
            counts[b0 : b0 + cnt.shape[0], s0 : s0 + cnt.shape[1], : cnt.shape[2]] = cnt
        return (counts, logits_out) if keep_logits else counts

    def _block(self, xb, ids, idx, sig_b, s_sub, parts, b0, logits_out) -> None:
        """All sigmas of one block of inputs: prefix once, then K x (sigma chunk) noisy rows per forward."""
        model, K, C = self.model, self.K, self.C
        S = sig_b.shape[1]
        cache: dict = {}
        h = None
        if self.split is not None:
            h = xb
            for child in list(model._modules.values())[: self.split]:
                h = child(h)
        nb = len(xb)
        for s0 in range(0, S, s_sub):
            s1 = min(S, s0 + s_sub)
            ns = s1 - s0
            rows = nb * ns * K
            self._ctx = _Ctx(ids, rows, nb, ns, sig_b[:, s0:s1].reshape(nb * ns), [0] * len(self.rsites), cache)
            if self.split is not None:
                out = h.repeat_interleave(ns * K, dim=0)
                for child in list(model._modules.values())[self.split :]:
                    out = child(out)
            else:
                out = _call(model, xb.repeat_interleave(ns * K, dim=0), self.call_kwargs)
            scores = self.readout(out, idx.repeat_interleave(ns * K))
            if scores.dim() != 2 or scores.shape != (rows, C):
                raise ModelError(
                    f"noisy scores have shape {tuple(scores.shape)}, expected {(rows, C)}",
                    hint="APEX needs a model that keeps the batch axis first",
                )
            pred = scores.argmax(-1)
            bad = ~torch.isfinite(scores).all(-1)
            if bool(bad.any()):
                pred = torch.where(bad, torch.full_like(pred, C), pred)
                self._warn_nonfinite(int(bad.sum()), rows)
            col = self.columns(pred).view(nb * ns, K)
            W = self.n_outcomes
            cnt = torch.zeros(nb * ns, W, dtype=torch.int64).scatter_add_(1, col, torch.ones_like(col))
            parts.append((b0, s0, cnt.view(nb, ns, W).numpy()))
            if logits_out is not None:
                logits_out[b0 : b0 + nb, s0:s1] = scores.float().view(nb, ns, K, C)

    def _warn_nonfinite(self, bad: int, rows: int) -> None:
        if not self.nonfinite_warned:
            self.nonfinite_warned = True
            warnings.warn(
                f"APEX: {bad} of {rows} noisy passes gave non-finite logits (overflow at a large sigma?); they are "
                "counted as their own outcome 'non-finite', never as a class (docs/apex.md)",
                RuntimeWarning,
                stacklevel=3,
            )

    def fingerprint(self) -> dict:
        """What a saved sweep must match to be resumed: inputs, weights, sites, noise, K, seed, readout."""
        h = hashlib.sha256()
        h.update(self.x.detach().cpu().contiguous().numpy().tobytes())
        for k, v in self.model.state_dict().items():
            h.update(k.encode())
            h.update(
                v.detach().cpu().contiguous().view(-1).to(torch.float64).numpy().tobytes()
                if v.is_floating_point()
                else v.detach().cpu().contiguous().view(-1).numpy().tobytes()
            )
        readout = hashlib.sha256(json.dumps(self.readout.describe(), sort_keys=True).encode()).hexdigest()[:16]
        return {
            "data_and_weights": h.hexdigest()[:32],
            "sites": [str(r) for r in self.rsites],
            "noise": self.kind.name,
            "K": self.K,
            "seed": self.seed,
            "relative": self.relative,
            "ids": hashlib.sha256(str(self.ids).encode()).hexdigest()[:16],
            "readout": readout,
        }


def _check_finite_clean(scores: torch.Tensor) -> None:
    """Clean scores must be finite: with NaN weights or inputs there is no clean prediction to escape from."""
    bad = ~torch.isfinite(scores).all(-1)
    if bool(bad.any()):
        rows = torch.nonzero(bad)[:5, 0].tolist()
        raise ModelError(
            f"the clean logits of {int(bad.sum())} of {len(scores)} inputs are not finite (inputs {rows}...)",
            hint="check the weights and inputs for NaN/inf (torch.isfinite(x).all()); APEX needs a finite clean "
            "prediction",
        )


def _unreached_hint(rs: ResolvedSite) -> str:
    if "/" in rs.name:
        return (
            "a functional site MODULE/FUNCTION#K counts calls made directly in MODULE's forward; "
            "innerprobe.core.functional.discover(model, x) lists the calls that happen"
        )
    return "pick a module that runs for these inputs"


def _call_kwargs(model: nn.Module, x: torch.Tensor, readout: Readout) -> tuple[dict, torch.Tensor | None]:
    """Keyword arguments for a Hugging Face model: no KV cache, and logits only at the read positions
    (``logits_to_keep``); the positions kept, or None."""
    if getattr(model, "config", None) is None or not hasattr(model.config, "use_cache"):
        return {}, None
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}, None
    kw = {"use_cache": False} if "use_cache" in params else {}
    if "logits_to_keep" in params and x.dim() == 2 and not x.is_floating_point():
        kept = readout.positions(x.shape[1], len(x))
        if kept is not None:
            kept = torch.unique(kept)
            kw["logits_to_keep"] = kept
            return kw, kept
    return kw, None


def _call(model: nn.Module, x: torch.Tensor, kwargs: dict | None = None) -> Any:
    try:
        return model(x, **(kwargs or {}))
    except InnerprobeError:
        raise
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        if getattr(e, "_innerprobe_from_hook", False) or isinstance(e, torch.OutOfMemoryError):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        err = ModelError(
            f"the model failed on inputs of shape {tuple(x.shape)} ({x.dtype}): {first[:300]}",
            hint="check that the inputs have the shape and dtype the model expects",
        )
        raise _retype(err, model, x) from e


def _retype(err: ModelError, model: nn.Module, x: torch.Tensor) -> ModelError:
    """A forward error on float inputs to a model that embeds token ids: say so, instead of a generic hint."""
    if x.is_floating_point() and any(isinstance(m, nn.Embedding) for m in model.modules()):
        return ModelError(
            err.message,
            hint=f"this model embeds integer token ids, but the inputs are {x.dtype}: pass them as "
            "torch.long (on the CLI a .pt/.npy file of integer ids)",
        )
    return err
