"""One confidence-interval record and the few estimators the project uses (docs/results.md, "Statistics").

Every method, study and the report take their intervals from here, so one figure is computed one way
and printed one way:

* :class:`CI` -- ``estimate, lo, hi, level, method, n``; ``lo``/``hi`` are ``None`` (never NaN) when an
  interval is undefined, e.g. for one seed. The report then prints "1 seed" instead of ``[nan, nan]``.
* :func:`t_interval` -- Student-t interval of the mean over a small sample (seeds):
  ``mean +- t_{(1+level)/2, n-1} * s / sqrt(n)`` with ``s`` the ``ddof=1`` standard deviation.
* :func:`bootstrap` -- percentile or BCa (Efron 1987) bootstrap of any statistic over rows, via
  :func:`scipy.stats.bootstrap`; several arrays are resampled together (paired rows).
* :func:`nested_bootstrap` -- two-level bootstrap of a mean over ``[groups, items]`` (seeds, then
  images within each seed), which scipy does not provide.
* :func:`proportion` -- Clopper-Pearson (exact) or Wilson score interval of ``k / n``, via
  :meth:`scipy.stats.binomtest(...).proportion_ci`.
* :func:`paired_difference` -- mean of ``a - b`` with a paired t or bootstrap interval.
* :func:`geometric_mean_ratio` -- geometric mean of positive ratios, t-interval on the log scale,
  mapped back with ``exp`` (for ratios that span orders of magnitude).

Non-finite inputs are refused by name unless ``nan_policy="omit"`` asks to drop them; ``n`` is then the
number of values actually used.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as _st

from ..errors import DataError

__all__ = [
    "CI",
    "bootstrap",
    "geometric_mean_ratio",
    "nested_bootstrap",
    "paired_difference",
    "proportion",
    "t_interval",
]


@dataclass(frozen=True)
class CI:
    """A point estimate and its confidence interval.

    ``lo``/``hi`` are ``None`` when the interval is undefined (fewer than two values, or no finite
    bootstrap replicate); ``estimate`` is ``None`` only when there is no value at all.
    """

    estimate: float | None
    lo: float | None
    hi: float | None
    level: float = 0.95
    method: str = ""
    n: int = 0

    def __post_init__(self):
        for name in ("estimate", "lo", "hi"):
            v = getattr(self, name)
            if v is not None:
                v = float(v)
                if not math.isfinite(v):
                    raise DataError(
                        f"CI.{name} is {v}: a CI holds finite numbers or None",
                        hint="pass None where the figure is undefined",
                    )
                object.__setattr__(self, name, v)
        if (self.lo is None) != (self.hi is None):
            raise DataError("CI needs both lo and hi, or neither")
        if not 0 < self.level < 1:
            raise DataError(f"CI level must lie in (0, 1), got {self.level}")
        object.__setattr__(self, "n", int(self.n))

    @property
    def defined(self) -> bool:
        """True when the interval exists (``lo`` and ``hi`` are numbers)."""
        return self.lo is not None

    def contains(self, x: float) -> bool:
        """Whether ``lo <= x <= hi`` (False when the interval is undefined)."""
        return self.defined and self.lo <= x <= self.hi

    def map(self, fn: Callable[[float], float], method: str | None = None) -> CI:
        """The CI with ``fn`` (monotone increasing, e.g. ``exp``) applied to estimate and bounds."""
        f = lambda v: None if v is None else float(fn(v))
        return CI(f(self.estimate), f(self.lo), f(self.hi), self.level, method or self.method, self.n)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        if self.estimate is None:
            return "n/a"
        if not self.defined:
            return f"{self.estimate:.4g} ({self.n} value{'s' if self.n != 1 else ''}, no CI)"
        return f"{self.estimate:.4g} [{self.lo:.4g}, {self.hi:.4g}]"


def _clean(values, nan_policy: str, what: str = "values") -> np.ndarray:
    if nan_policy not in ("raise", "omit"):
        raise DataError(f"nan_policy must be 'raise' or 'omit', got {nan_policy!r}")
    v = np.asarray([np.nan if x is None else x for x in np.ravel(np.asarray(values, dtype=object))], float)
    bad = ~np.isfinite(v)
    if bad.any():
        if nan_policy == "raise":
            raise DataError(
                f"{int(bad.sum())} of {len(v)} {what} are NaN, inf or None",
                hint="fix the source, or pass nan_policy='omit' to drop them (n counts the rest)",
            )
        v = v[~bad]
    return v


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise DataError(f"confidence level must lie in (0, 1), got {level}", hint="e.g. level=0.95")


def t_interval(values: Sequence[float], level: float = 0.95, *, nan_policy: str = "raise") -> CI:
    """Mean and Student-t interval over a small sample (e.g. one value per seed).

    ``mean +- t_{(1+level)/2, n-1} * s / sqrt(n)``; one value gives ``lo = hi = None``, zero values
    give ``estimate = None``.
    """
    _check_level(level)
    v = _clean(values, nan_policy)
    n = len(v)
    if n == 0:
        return CI(None, None, None, level, "t", 0)
    m = float(v.mean())
    if n < 2:
        return CI(m, None, None, level, "t", 1)
    half = float(_st.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return CI(m, m - half, m + half, level, "t", n)


def bootstrap(
    values,
    stat: Callable = np.mean,
    *,
    method: str = "percentile",
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    paired: Sequence = (),
    independent: Sequence = (),
) -> CI:
    """``stat(values, *paired)`` (or ``stat(values, *independent)``) with a percentile or BCa bootstrap interval.

    Rows of ``values`` and of each array in ``paired`` are resampled together; arrays in ``independent``
    are separate samples, each resampled on its own (e.g. a ratio of two groups' medians). A statistic that
    takes ``axis`` (like ``np.mean``) runs vectorised. Replicates where ``stat`` is undefined (NaN,
    or a ValueError such as one class only) are dropped; ``n`` is the number of rows. BCa needs the
    jackknife: where it is undefined (constant data), the percentile interval is returned and
    ``method`` says so.
    """
    if method not in ("percentile", "bca"):
        raise DataError(f"bootstrap method must be 'percentile' or 'bca', got {method!r}")
    _check_level(level)
    if paired and independent:
        raise DataError("bootstrap takes paired or independent extra samples, not both")
    arrays = [np.asarray(values)] + [np.asarray(p) for p in (paired or independent)]
    n = len(arrays[0])
    if paired and any(len(a) != n for a in arrays):
        raise DataError(f"paired arrays must have the same length, got {[len(a) for a in arrays]}")
    est = _safe_stat(stat, arrays)
    if est is None or min(len(a) for a in arrays) < 2:
        return CI(est, None, None, level, f"bootstrap-{method}", n)
    lo, hi, used = _scipy_boot(arrays, stat, method, n_resamples, seed, level, not independent)
    return CI(est, lo, hi, level, f"bootstrap-{used}", n)


def _safe_stat(stat, arrays) -> float | None:
    try:
        v = float(stat(*arrays))
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _scipy_boot(arrays, stat, method, n_resamples, seed, level, paired=True):
    def robust(*xs, axis=-1):
        if vectorised:
            return stat(*xs, axis=axis)
        out = _safe_stat(stat, xs)
        return np.nan if out is None else out

    try:
        vectorised = "axis" in inspect.signature(stat).parameters
    except (TypeError, ValueError):
        vectorised = False
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's DegenerateDataWarning: handled below by name in ``method``
        res = _st.bootstrap(
            tuple(arrays),
            robust,
            paired=paired,
            vectorized=vectorised,
            n_resamples=n_resamples,
            confidence_level=level,
            method="percentile" if method == "percentile" else "BCa",
            random_state=np.random.default_rng(seed),
        )
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if math.isfinite(lo) and math.isfinite(hi):
        return lo, hi, method
    dist = np.asarray(res.bootstrap_distribution, float)
    dist = dist[np.isfinite(dist)]
    if not len(dist):
        return None, None, method
    a = (1 - level) / 2
    q = np.quantile(dist, [a, 1 - a])
    return float(q[0]), float(q[1]), "percentile" if method == "percentile" else "percentile (bca undefined)"


def nested_bootstrap(values, *, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> CI:
    """Mean over ``[groups, items]`` (e.g. seeds x images) with a two-level percentile bootstrap.

    Groups are resampled with replacement, then items within each drawn group; NaNs are dropped
    (``n`` counts the finite values). A 1-D array is one group.
    """
    _check_level(level)
    d = np.asarray(values, dtype=float)
    d = d[None] if d.ndim == 1 else d
    if d.ndim != 2:
        raise DataError(f"nested_bootstrap expects [items] or [groups, items], got shape {d.shape}")
    valid = np.isfinite(d)
    nv = int(valid.sum())
    if nv == 0:
        return CI(None, None, None, level, "nested-bootstrap", 0)
    dz, vf = np.where(valid, d, 0.0), valid.astype(float)
    est = float(dz.sum() / nv)
    if nv < 2:
        return CI(est, None, None, level, "nested-bootstrap", nv)
    rng = np.random.default_rng(seed)
    s, m = d.shape
    reps = np.empty(n_resamples)
    block = max(1, 2_000_000 // (s * m))
    for b0 in range(0, n_resamples, block):
        b = min(block, n_resamples - b0)
        si = rng.integers(0, s, (b, s))[:, :, None]
        ii = rng.integers(0, m, (b, s, m))
        reps[b0 : b0 + b] = dz[si, ii].sum((1, 2)) / np.maximum(vf[si, ii].sum((1, 2)), 1)
    a = (1 - level) / 2
    lo, hi = np.quantile(reps, [a, 1 - a])
    return CI(est, float(lo), float(hi), level, "nested-bootstrap", nv)


_PROPORTION_METHODS = {"clopper-pearson": "exact", "wilson": "wilson"}


def proportion(k: int, n: int, method: str = "clopper-pearson", level: float = 0.95) -> CI:
    """``k / n`` with a Clopper-Pearson (exact) or Wilson score interval (scipy.stats.binomtest)."""
    if method not in _PROPORTION_METHODS:
        raise DataError(f"proportion method must be one of {sorted(_PROPORTION_METHODS)}, got {method!r}")
    _check_level(level)
    if int(k) != k or int(n) != n or not 0 <= k <= n:
        raise DataError(f"proportion needs integers 0 <= k <= n, got k={k}, n={n}")
    k, n = int(k), int(n)
    if n == 0:
        return CI(None, None, None, level, method, 0)
    ci = _st.binomtest(k, n).proportion_ci(confidence_level=level, method=_PROPORTION_METHODS[method])
    return CI(k / n, float(ci.low), float(ci.high), level, method, n)


def paired_difference(
    a, b, method: str = "t", *, level: float = 0.95, n_resamples: int = 2000, seed: int = 0, nan_policy: str = "raise"
) -> CI:
    """Mean of ``a - b`` over pairs with a paired t-interval (``method="t"``) or a bootstrap one."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise DataError(f"paired_difference needs arrays of one shape, got {a.shape} and {b.shape}")
    d = _clean(a - b, nan_policy, "differences")
    if method == "t":
        ci = t_interval(d, level)
        return CI(ci.estimate, ci.lo, ci.hi, level, "paired-t", ci.n)
    if method == "bootstrap":
        ci = bootstrap(d, np.mean, n_resamples=n_resamples, seed=seed, level=level)
        return CI(ci.estimate, ci.lo, ci.hi, level, "paired-" + ci.method, ci.n)
    raise DataError(f"paired_difference method must be 't' or 'bootstrap', got {method!r}")


def geometric_mean_ratio(ratios, den=None, *, level: float = 0.95, nan_policy: str = "raise") -> CI:
    """Geometric mean of positive ratios (``ratios / den`` when ``den`` is given), t-interval on the log scale.

    ``exp(mean(log r))`` with bounds ``exp(mean +- t s / sqrt(n))``; a ratio <= 0 is refused.
    """
    r = np.asarray(ratios, float) if den is None else np.asarray(ratios, float) / np.asarray(den, float)
    r = _clean(r, nan_policy, "ratios")
    if (r <= 0).any():
        raise DataError(
            f"geometric_mean_ratio needs positive ratios, got {int((r <= 0).sum())} <= 0",
            hint="a ratio of non-negative figures with a zero denominator or numerator has no log",
        )
    return t_interval(np.log(r), level).map(math.exp, method="t-log")
