"""Results as data: a JSON round-trip with provenance, and ``to_dataframe()``.

A :class:`Result` holds a ``kind`` (e.g. ``"apex"``), headline ``rows`` (records made by
:func:`row`, with fixed fields), a JSON-able ``data`` dict (config echo), named ``tables`` (lists
of row dicts, each one DataFrame) and optional numpy ``arrays`` (saved next to the JSON as ``.npz``,
loaded with ``allow_pickle=False``). Plots, the report and the CLI read result files only, so
notebooks, CLI and CI share one path. The row format is described in docs/results.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .core.stats import CI
from .errors import ConfigError, DataError, did_you_mean

ROW_FIELDS = ("metric", "model", "condition", "seeds", "value", "lo", "hi", "n")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")


def _identifier(name, what: str) -> str:
    if not isinstance(name, str) or not _IDENT.match(name):
        raise ConfigError(
            f"{what} {name!r} is not an identifier (letters, digits, '_', '.', '-'; no spaces or '=')",
            hint="put parameter values in condition={...}, e.g. metric='acc', condition={'sigma': 64}",
        )
    return name


def _scalar(v, what: str):
    v = to_jsonable(v)
    if isinstance(v, list) and all(x is None or isinstance(x, (str, int, float, bool)) for x in v):
        return v
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    raise ConfigError(f"{what} must be a number, string, bool, None or a flat list, got {type(v).__name__}")


def row(
    metric: str,
    value,
    *,
    model: str | None = None,
    condition: dict | None = None,
    seeds=(),
    n: int | None = None,
    **extra,
) -> dict:
    """One headline record: ``{"metric", "model", "condition", "seeds", "value", "lo", "hi", "n", ...extra}``.

    ``value`` is a number (``lo``/``hi`` None) or a :class:`~innerprobe.core.stats.CI` (its bounds, ``n``,
    ``ci_level`` and ``ci_method`` are copied). ``condition`` maps identifiers to values (``{"noise": "all",
    "sigma": 64}``): numbers live in fields, never in key strings, so a metric name or key with a space or
    ``=`` is refused. ``seeds`` are ints. A NaN value is stored as None (undefined), never as NaN.
    """
    _identifier(metric, "row metric")
    cond = {}
    for k, v in (condition or {}).items():
        if _identifier(k, "condition key") in ROW_FIELDS:
            raise ConfigError(f"condition key {k!r} clashes with the row field of that name", hint="rename the key")
        cond[k] = _scalar(v, f"condition[{k!r}]")
    seed_list = []
    for s in seeds if isinstance(seeds, (list, tuple, range, np.ndarray)) else [seeds]:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)):
            raise ConfigError(
                f"row seeds must be ints, got {s!r}",
                hint="put other per-run identifiers (e.g. a target class) in condition or an extra field",
            )
        seed_list.append(int(s))
    out = {"metric": metric, "model": None if model is None else str(model), "condition": cond, "seeds": seed_list}
    if isinstance(value, CI):
        out.update(
            value=value.estimate,
            lo=value.lo,
            hi=value.hi,
            n=value.n if n is None else int(n),
            ci_level=value.level,
            ci_method=value.method,
        )
    else:
        v = _scalar(value, "row value")
        if isinstance(v, bool) or (v is not None and not isinstance(v, (int, float))):
            raise ConfigError(f"row value must be a number, None or a CI, got {value!r}")
        out.update(value=v, lo=None, hi=None, n=(len(seed_list) or None) if n is None else int(n))
    for k, v in extra.items():
        if _identifier(k, "row field") in out:
            raise ConfigError(f"extra field {k!r} clashes with a fixed row field", hint=f"fixed: {', '.join(out)}")
        out[k] = to_jsonable(v)
    return out


def describe(r: dict) -> str:
    """One line for a terminal: ``metric (model; key value, ...): value [lo, hi] (n seeds)``."""

    def num(v):
        return "n/a" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    where = "; ".join(
        x
        for x in (r.get("model") or "", ", ".join(f"{k} {num(v)}" for k, v in (r.get("condition") or {}).items()))
        if x
    )
    ci = "" if r.get("lo") is None else f" [{num(r['lo'])}, {num(r['hi'])}]"
    seeds = r.get("seeds") or []
    count = f" ({len(seeds)} seed{'s' if len(seeds) != 1 else ''})" if seeds else ""
    return f"{r['metric']}{f' ({where})' if where else ''}: {num(r.get('value'))}{ci}{count}"


def rows_frame(rows: list[dict]):
    """Rows as a tidy DataFrame: one column per fixed field, one per condition key (the ``condition`` dict
    is expanded), extras last."""
    import pandas as pd

    flat = []
    for r in rows:
        cond = r.get("condition") or {}
        flat.append(
            {
                **{k: r.get(k) for k in ROW_FIELDS if k != "condition"},
                **cond,
                **{k: v for k, v in r.items() if k not in ROW_FIELDS},
            }
        )
    return pd.DataFrame(flat)


def provenance(
    *,
    seed: int | None = None,
    model: str | None = None,
    sites: Any = None,
    config: dict | None = None,
    device: str = "cpu",
) -> dict:
    """The provenance block every result carries."""
    import torch

    prov = {
        "innerprobe": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "seed": seed,
        "model": model,
        "sites": None if sites is None else [str(s) for s in (sites if isinstance(sites, (list, tuple)) else [sites])],
        "config": to_jsonable(config or {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    transformers = sys.modules.get("transformers")  # only if the caller already uses it: never import it here
    if transformers is not None:
        prov["transformers"] = getattr(transformers, "__version__", None)
    return prov


def to_jsonable(obj: Any) -> Any:
    """Tensors and arrays to lists, numpy scalars to Python, NaN/inf to None, dataclasses to dicts."""
    try:
        import torch

        if isinstance(obj, torch.Tensor):
            obj = obj.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Path):
        return str(obj)
    return obj


@dataclass
class Result:
    """A method's or study's output, as data."""

    kind: str
    data: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    tables: dict[str, list[dict]] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.rows and "rows" in self.tables:
            raise ConfigError(
                "a Result with headline rows cannot also have a table named 'rows'", hint="rename the table"
            )

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "rows": to_jsonable(self.rows),
            "data": to_jsonable(self.data),
            "tables": to_jsonable(self.tables),
            "provenance": to_jsonable(self.provenance),
            "arrays": sorted(self.arrays),
        }

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (JSON) and, if there are arrays, ``path`` with suffix ``.npz``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(path)
        if self.arrays:
            np.savez_compressed(path.with_suffix(".npz"), **{k: np.asarray(v) for k, v in self.arrays.items()})
        return path

    @classmethod
    def load(cls, path: str | Path) -> Result:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(
                f"cannot read result file {path}: {e}", hint="pass a .json file written by innerprobe"
            ) from None
        if not isinstance(d, dict) or "kind" not in d:
            raise DataError(f"{path} is not an innerprobe result (no 'kind')")
        arrays = {}
        names = d.get("arrays") or []
        if names:
            with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
                arrays = {k: z[k] for k in names}
        return cls(
            kind=d["kind"],
            data=d.get("data", {}),
            rows=d.get("rows") or [],
            tables=d.get("tables", {}),
            provenance=d.get("provenance", {}),
            arrays=arrays,
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_dataframe(self, table: str | None = None):
        """A tidy pandas DataFrame: the headline rows (``table`` None or ``"rows"``; condition keys become
        columns), else the named table (the first table when there are no rows and ``table`` is None)."""
        import pandas as pd

        if self.rows and table in (None, "rows"):
            return rows_frame(self.rows)
        if not self.tables:
            if table is not None:
                raise ConfigError(
                    f"result has no table {table!r}",
                    hint="it has no tables" + ("; its headline rows are to_dataframe('rows')" if self.rows else ""),
                )
            return pd.DataFrame([{k: v for k, v in to_jsonable(self.data).items() if not isinstance(v, (dict, list))}])
        name = table or next(iter(self.tables))
        if name not in self.tables:
            names = (["rows"] if self.rows else []) + list(self.tables)
            raise ConfigError(
                f"result has no table {name!r}; it has: {', '.join(names)}", hint=did_you_mean(name, names)
            )
        return pd.DataFrame(self.tables[name])
